//! Deep Zoom (DZI) geometry over a slide, and rendering one tile from the slide's pyramid.
//!
//! DZI level `L` of a `W × H` image is the image shrunk by `2^(max − L)` (`max = ⌈log2
//! max(W, H)⌉`, so level `max` is full resolution and level 0 one pixel); each level is cut into
//! `TILE`-pixel squares (no overlap), the last row and column cut short. A tile is read from the
//! slide level whose downsample is the largest not above the tile's (OpenSlide's choice) and
//! shrunk to size, so the reader's own pyramid does most of the work. Where a level of the file
//! *is* the Deep Zoom level — the same scale and 256-pixel JPEG tiles on the same grid, as in
//! scanners' 40× pyramids at downsample 1, 4, 16, 64 — the stored tile is handed out as it is
//! ([`tile_jpeg`]): no decoding, no re-encoding, the scanner's own pixels.

use gimp_slide::SlideReader;
use image::RgbImage;

/// Tile side in pixels.
pub const TILE: u32 = 256;
/// JPEG quality of a tile (OpenSlide's deepzoom server uses 75; pathologists look closely).
pub const JPEG_QUALITY: u8 = 85;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pyramid {
    pub width: u64,
    pub height: u64,
}

/// The part of the slide one tile shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TileRegion {
    /// Level-0 top-left corner.
    pub x0: i64,
    pub y0: i64,
    /// Level-0 pixels per tile pixel.
    pub scale: f64,
    /// Tile size in pixels (`TILE`, less at the right and bottom edges).
    pub width: u32,
    pub height: u32,
}

impl Pyramid {
    pub fn new(width: u64, height: u64) -> Self {
        Self { width, height }
    }

    /// The full-resolution level's index.
    pub fn max_level(&self) -> u32 {
        let side = self.width.max(self.height).max(1);
        64 - (side - 1).leading_zeros()
    }

    /// Size of level `level` in pixels, `None` past the last level.
    pub fn level_size(&self, level: u32) -> Option<(u64, u64)> {
        let max = self.max_level();
        if level > max {
            return None;
        }
        let shift = max - level;
        let div = |v: u64| v.div_ceil(1u64 << shift).max(1);
        Some((div(self.width), div(self.height)))
    }

    /// The region of tile `(col, row)` of `level`; `None` for a level or tile that does not exist.
    pub fn tile(&self, level: u32, col: u64, row: u64) -> Option<TileRegion> {
        let (w, h) = self.level_size(level)?;
        let (x, y) = (col.checked_mul(TILE as u64)?, row.checked_mul(TILE as u64)?);
        if x >= w || y >= h {
            return None;
        }
        let scale = (1u64 << (self.max_level() - level)) as f64;
        Some(TileRegion {
            x0: (x as f64 * scale) as i64,
            y0: (y as f64 * scale) as i64,
            scale,
            width: (w - x).min(TILE as u64) as u32,
            height: (h - y).min(TILE as u64) as u32,
        })
    }

    /// The `.dzi` descriptor.
    pub fn descriptor(&self) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpeg" Overlap="0" TileSize="{TILE}"><Size Width="{}" Height="{}"/></Image>
"#,
            self.width, self.height
        )
    }
}

/// The pixels of `r` from the slide's best level, shrunk to the tile's size.
pub fn render(slide: &dyn SlideReader, r: &TileRegion) -> gimp_io::Result<RgbImage> {
    let level = slide.best_level_for_downsample(r.scale);
    let ds = slide.levels()[level].downsample;
    let w = ((r.width as f64 * r.scale / ds).ceil() as u32).max(1);
    let h = ((r.height as f64 * r.scale / ds).ceil() as u32).max(1);
    let img = slide.read_region(r.x0, r.y0, level, w, h)?;
    Ok(if (w, h) == (r.width, r.height) {
        img
    } else {
        image::imageops::resize(
            &img,
            r.width,
            r.height,
            image::imageops::FilterType::Triangle,
        )
    })
}

/// The JPEG of tile `r`: the file's own tile when one of its levels is exactly this tile (see
/// [`stored_tile`]), else rendered from the pyramid ([`render`]) and encoded.
pub fn tile_jpeg(slide: &dyn SlideReader, r: &TileRegion) -> Result<Vec<u8>, String> {
    if let Some(stored) = stored_tile(slide, r) {
        return stored.map_err(|e| e.to_string());
    }
    let img = render(slide, r).map_err(|e| e.to_string())?;
    jpeg(&img).map_err(|e| format!("JPEG encoding: {e}"))
}

/// The stored JPEG tile that shows exactly `r`, when there is one: `r` is a whole
/// `TILE × TILE` tile, a level of the slide has `r`'s scale (its size is level 0's divided by
/// the scale, rounded either way: less than one tile pixel of drift at the far edge), the
/// level is kept in `TILE`-pixel JPEG tiles, and the tile lies wholly inside the level (the
/// file's edge tiles are padded, Deep Zoom's are cut short).
pub fn stored_tile(slide: &dyn SlideReader, r: &TileRegion) -> Option<gimp_io::Result<Vec<u8>>> {
    if (r.width, r.height) != (TILE, TILE) {
        return None;
    }
    let levels = slide.levels();
    let l0 = levels.first()?;
    let (level, l) = levels.iter().enumerate().find(|(_, l)| {
        (l.width as f64 * r.scale - l0.width as f64).abs() < r.scale
            && (l.height as f64 * r.scale - l0.height as f64).abs() < r.scale
    })?;
    let span = TILE as f64 * r.scale;
    let (col, row) = ((r.x0 as f64 / span) as u64, (r.y0 as f64 / span) as u64);
    let inside = |i: u64, side: u64| (i + 1).checked_mul(TILE as u64).is_some_and(|e| e <= side);
    if !inside(col, l.width) || !inside(row, l.height) {
        return None;
    }
    slide.stored_jpeg_tile(level, TILE, col, row)
}

/// JPEG bytes of an image.
pub fn jpeg(img: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, JPEG_QUALITY).encode(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ColorType::Rgb8,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_halve_down_to_one_pixel() {
        let p = Pyramid::new(2220, 2967);
        assert_eq!(p.max_level(), 12); // 2^12 = 4096 ≥ 2967 > 2048
        assert_eq!(p.level_size(12), Some((2220, 2967)));
        assert_eq!(p.level_size(11), Some((1110, 1484)));
        assert_eq!(p.level_size(0), Some((1, 1)));
        assert_eq!(p.level_size(13), None);
        assert_eq!(Pyramid::new(256, 256).max_level(), 8);
        assert_eq!(Pyramid::new(1, 1).max_level(), 0);
    }

    #[test]
    fn tiles_cover_the_level_and_stop_at_its_edge() {
        let p = Pyramid::new(2220, 2967);
        let t = p.tile(12, 8, 11).unwrap();
        assert_eq!((t.x0, t.y0, t.width, t.height), (2048, 2816, 172, 151));
        assert_eq!(p.tile(12, 9, 0), None);
        assert_eq!(p.tile(12, 0, 12), None);
        let t = p.tile(10, 0, 0).unwrap();
        assert_eq!((t.scale, t.width, t.height), (4.0, 256, 256));
        let t = p.tile(0, 0, 0).unwrap();
        assert_eq!((t.width, t.height), (1, 1));
        assert_eq!(p.tile(99, 0, 0), None);
        assert_eq!(p.tile(12, u64::MAX, 0), None);
        assert!(p.descriptor().contains(r#"Width="2220" Height="2967""#));
    }
}
