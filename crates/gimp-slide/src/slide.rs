//! The one interface every slide reader implements, and [`open`], which picks the reader.
//!
//! Conventions are OpenSlide's, so coordinates in patch files mean the same thing whichever reader
//! made them: a region is addressed by its top-left corner in **level-0 pixels** and its size in
//! pixels **of the level read**; areas outside the slide read as black (OpenSlide's transparent
//! pixels after CLAM's `.convert("RGB")`).

use gimp_io::{DataError, ErrorKind, Result};
use image::RgbImage;
use std::collections::BTreeMap;
use std::path::Path;

/// The largest region one read may ask for (3 GB of RGB).
pub const MAX_REGION_PIXELS: u64 = 1 << 30;

/// One resolution of the pyramid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Level {
    pub width: u64,
    pub height: u64,
    /// Level-0 pixels per pixel of this level (mean of the two axes, as OpenSlide reports it).
    pub downsample: f64,
}

/// What the file says about its scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// Vendor or container: `aperio`, `generic-tiff`, or OpenSlide's vendor name.
    pub vendor: String,
    /// Microns per level-0 pixel.
    pub mpp: Option<[f64; 2]>,
    /// Objective power of level 0 (`AppMag` for Aperio).
    pub objective_power: Option<f64>,
    /// Every key/value the file carries (Aperio description fields, TIFF tags, OpenSlide
    /// properties).
    pub raw: BTreeMap<String, String>,
}

impl Properties {
    /// Magnification of level 0: the objective power when the file states it, else estimated
    /// from the pixel size (10 µm / mpp: 0.25 µm → 40×, 0.5 µm → 20×), else `None`.
    pub fn magnification(&self) -> Option<(f64, MagnificationSource)> {
        if let Some(m) = self.objective_power.filter(|m| *m > 0.0) {
            return Some((m, MagnificationSource::Objective));
        }
        let mpp = self.mpp?;
        (mpp[0] > 0.0).then(|| (10.0 / mpp[0], MagnificationSource::FromMpp))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MagnificationSource {
    Objective,
    FromMpp,
}

/// A whole-slide image. Readers are shared between threads: feature extraction reads patches
/// from several threads at once.
pub trait SlideReader: Send + Sync {
    fn path(&self) -> &Path;
    /// Level 0 first, then decreasing resolution.
    fn levels(&self) -> &[Level];
    fn properties(&self) -> &Properties;
    /// `w × h` pixels of `level`, starting at level-0 pixel `(x0, y0)`, after the checks of
    /// [`SlideReader::read_region`] (the level exists, the region is within the size limit).
    fn read_checked(&self, x0: i64, y0: i64, level: usize, w: u32, h: u32) -> Result<RgbImage>;

    /// `w × h` pixels of `level`, starting at level-0 pixel `(x0, y0)`.
    fn read_region(&self, x0: i64, y0: i64, level: usize, w: u32, h: u32) -> Result<RgbImage> {
        let n = self.levels().len();
        if level >= n {
            return Err(DataError::new(
                ErrorKind::Value,
                self.path(),
                format!("level {level} requested; the slide has {n} levels"),
            ));
        }
        if (w as u64) * (h as u64) > MAX_REGION_PIXELS {
            return Err(DataError::new(
                ErrorKind::TooLarge,
                self.path(),
                format!("a {w}×{h} region is over the 1-gigapixel read limit"),
            ));
        }
        self.read_checked(x0, y0, level, w, h)
    }
    /// Tile `(col, row)` of `level` as the file stores it, one complete JPEG stream, when the
    /// level is kept in `tile × tile` JPEG tiles that any JPEG decoder shows in the right colours
    /// (a tile server hands these out without decoding them); `None` when it is not (other
    /// codecs or tile sizes, Aperio's RGB-coded JPEG, a tile past the level's edge, a reader
    /// that does not say).
    fn stored_jpeg_tile(
        &self,
        _level: usize,
        _tile: u32,
        _col: u64,
        _row: u64,
    ) -> Option<Result<Vec<u8>>> {
        None
    }
    /// Names of the associated images (`thumbnail`, `label`, `macro`).
    fn associated_names(&self) -> Vec<String>;
    fn read_associated(&self, name: &str) -> Result<RgbImage>;

    /// The level whose downsample is the largest not above `downsample` (OpenSlide's
    /// `get_best_level_for_downsample`).
    fn best_level_for_downsample(&self, downsample: f64) -> usize {
        let levels = self.levels();
        let mut best = 0;
        for (i, l) in levels.iter().enumerate() {
            if l.downsample <= downsample * (1.0 + 1e-6) && l.downsample >= levels[best].downsample
            {
                best = i;
            }
        }
        best
    }

    /// The whole slide at roughly `downsample`, read from the best level and then shrunk by
    /// area averaging; returns the image and its exact downsample per axis.
    fn overview(&self, downsample: f64, max_pixels: u64) -> Result<(RgbImage, [f64; 2])> {
        let level = self.best_level_for_downsample(downsample);
        let l = self.levels()[level];
        let l0 = self.levels()[0];
        if l.width * l.height > max_pixels {
            return Err(DataError::new(
                ErrorKind::TooLarge,
                self.path(),
                format!(
                    "the slide has no level near downsample {downsample:.0} (best: level {level}, \
                     {}×{} pixels, over the {max_pixels}-pixel limit for an overview); \
                     use a larger downsample",
                    l.width, l.height
                ),
            ));
        }
        let img = self.read_region(0, 0, level, l.width as u32, l.height as u32)?;
        let target_w = ((l0.width as f64 / downsample).round() as u32).max(1);
        let target_h = ((l0.height as f64 / downsample).round() as u32).max(1);
        let img = if target_w < img.width() && target_h < img.height() {
            image::imageops::thumbnail(&img, target_w, target_h)
        } else {
            img
        };
        let ds = [
            l0.width as f64 / img.width() as f64,
            l0.height as f64 / img.height() as f64,
        ];
        Ok((img, ds))
    }
}

/// One decoded tile (or strip, or frame) of a level: `width × height` RGB pixels, row-major.
/// Edge tiles may be smaller than the grid's cell.
pub(crate) struct TilePixels {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

/// The decoded tiles a reader keeps, oldest dropped first past `capacity` (a 240–512 px RGB
/// tile is 0.2–0.8 MB).
pub(crate) struct TileCache<K> {
    tiles: std::collections::HashMap<K, std::sync::Arc<TilePixels>>,
    order: std::collections::VecDeque<K>,
    capacity: usize,
}

impl<K: std::hash::Hash + Eq + Copy> TileCache<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            tiles: Default::default(),
            order: Default::default(),
            capacity,
        }
    }

    pub fn get(&self, key: &K) -> Option<std::sync::Arc<TilePixels>> {
        self.tiles.get(key).cloned()
    }

    /// Adds a decoded tile. Another thread may have decoded the same tile meanwhile (tiles are
    /// decoded outside the reader's lock): then it is already in the order.
    pub fn keep(&mut self, key: K, tile: std::sync::Arc<TilePixels>) {
        if self.tiles.insert(key, tile).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.tiles.remove(&old);
            }
        }
    }
}

/// Pixels `[x, x+w) × [y, y+h)` of a `size` image stored in a grid of `cell`-sized tiles, in the
/// image's own coordinates; `tile(col, row)` gives a tile, or `None` where none is stored.
/// Outside the image and in missing tiles the pixels are black (OpenSlide's transparent pixels
/// after conversion to RGB).
pub(crate) fn compose_tiles(
    (x, y, w, h): (i64, i64, u32, u32),
    size: (u64, u64),
    cell: (u32, u32),
    mut tile: impl FnMut(u64, u64) -> Result<Option<std::sync::Arc<TilePixels>>>,
) -> Result<RgbImage> {
    let mut out = RgbImage::new(w, h);
    let (cw, ch) = (cell.0.max(1) as i64, cell.1.max(1) as i64);
    let x_lo = x.max(0);
    let y_lo = y.max(0);
    let x_hi = (x + w as i64).min(size.0 as i64);
    let y_hi = (y + h as i64).min(size.1 as i64);
    if x_lo >= x_hi || y_lo >= y_hi {
        return Ok(out);
    }
    for ty in y_lo / ch..=(y_hi - 1) / ch {
        for tx in x_lo / cw..=(x_hi - 1) / cw {
            let Some(t) = tile(tx as u64, ty as u64)? else {
                continue;
            };
            let (ox, oy) = (tx * cw, ty * ch);
            let sx0 = x_lo.max(ox);
            let sx1 = x_hi.min(ox + t.width as i64);
            let sy0 = y_lo.max(oy);
            let sy1 = y_hi.min(oy + t.height as i64);
            if sx0 >= sx1 {
                continue;
            }
            let n = ((sx1 - sx0) * 3) as usize;
            for sy in sy0..sy1 {
                let src = (((sy - oy) * t.width as i64 + (sx0 - ox)) * 3) as usize;
                let dst = (((sy - y) * w as i64 + (sx0 - x)) * 3) as usize;
                out.as_mut()[dst..dst + n].copy_from_slice(&t.rgb[src..src + n]);
            }
        }
    }
    Ok(out)
}
