//! Pictures for checking by eye: the segmentation drawn on the overview (CLAM's `masks/*.jpg`)
//! and per-patch scores as a heatmap over the slide (CLAM's `create_heatmaps.py`), both as PNG.

use crate::segment::TissueMask;
use gimp_io::{DataError, ErrorKind, Result};
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use std::path::Path;

const TISSUE: Rgb<u8> = Rgb([0, 200, 0]);
const HOLE: Rgb<u8> = Rgb([0, 0, 255]);
const PATCH: Rgb<u8> = Rgb([255, 140, 0]);

/// The overview with tissue outlines (green), kept holes (blue) and, when given, the patch
/// squares (orange), all in level-0 coordinates scaled to the overview.
pub fn segmentation_qc(
    overview: &RgbImage,
    mask: &TissueMask,
    patches: Option<(&[[i64; 2]], f64)>,
) -> RgbImage {
    let mut img = overview.clone();
    let (w, h) = (
        mask.width.min(img.width() as usize),
        mask.height.min(img.height() as usize),
    );
    let tissue = |x: usize, y: usize| mask.is_tissue_px(x, y);
    for y in 0..h {
        for x in 0..w {
            let t = tissue(x, y);
            let edge = [(1isize, 0isize), (-1, 0), (0, 1), (0, -1)]
                .iter()
                .any(|(dx, dy)| {
                    let (xx, yy) = (x as isize + dx, y as isize + dy);
                    if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                        return t;
                    }
                    tissue(xx as usize, yy as usize) != t
                });
            if edge && t {
                img.put_pixel(x as u32, y as u32, TISSUE);
            } else if edge
                && mask.in_hole(x as f64 * mask.downsample[0], y as f64 * mask.downsample[1])
            {
                img.put_pixel(x as u32, y as u32, HOLE);
            }
        }
    }
    if let Some((coords, size0)) = patches {
        for c in coords {
            let x0 = c[0] as f64 / mask.downsample[0];
            let y0 = c[1] as f64 / mask.downsample[1];
            let x1 = (c[0] as f64 + size0) / mask.downsample[0];
            let y1 = (c[1] as f64 + size0) / mask.downsample[1];
            rect(&mut img, x0, y0, x1, y1, PATCH);
        }
    }
    img
}

fn rect(img: &mut RgbImage, x0: f64, y0: f64, x1: f64, y1: f64, c: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let (x0, y0) = (x0.floor() as i64, y0.floor() as i64);
    let (x1, y1) = (
        (x1.ceil() as i64 - 1).max(x0),
        (y1.ceil() as i64 - 1).max(y0),
    );
    let mut put = |x: i64, y: i64| {
        if x >= 0 && y >= 0 && x < w && y < h {
            img.put_pixel(x as u32, y as u32, c);
        }
    };
    for x in x0..=x1 {
        put(x, y0);
        put(x, y1);
    }
    for y in y0..=y1 {
        put(x0, y);
        put(x1, y);
    }
}

/// Scores → percentiles in [0, 1] (ties share their mean rank), as CLAM normalises attention
/// before drawing: the picture then shows a slide's ranking, whatever the score's scale.
pub fn percentiles(scores: &[f32]) -> Vec<f32> {
    let n = scores.len();
    if n <= 1 {
        return vec![1.0; n];
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut out = vec![0f32; n];
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let rank = (i + j) as f32 / 2.0 / (n - 1) as f32;
        for &k in &idx[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// A diverging blue–white–red ramp (the look of matplotlib's `coolwarm`, CLAM's default).
pub fn coolwarm(t: f32) -> Rgb<u8> {
    const STOPS: [(f32, [f32; 3]); 3] = [
        (0.0, [59.0, 76.0, 192.0]),
        (0.5, [221.0, 221.0, 221.0]),
        (1.0, [180.0, 4.0, 38.0]),
    ];
    let t = t.clamp(0.0, 1.0);
    let (a, b) = if t <= 0.5 {
        (STOPS[0], STOPS[1])
    } else {
        (STOPS[1], STOPS[2])
    };
    let f = (t - a.0) / (b.0 - a.0);
    Rgb(std::array::from_fn(|i| {
        (a.1[i] + (b.1[i] - a.1[i]) * f).round() as u8
    }))
}

/// Blends each patch's colour (from its percentile) over the overview with opacity `alpha`;
/// where patches overlap their percentiles are averaged. `downsample` is level-0 pixels per
/// overview pixel; `size0` the patch side in level-0 pixels.
pub fn heatmap(
    overview: &RgbImage,
    downsample: [f64; 2],
    coords: &[[i64; 2]],
    size0: f64,
    scores: &[f32],
    alpha: f32,
) -> RgbImage {
    let (w, h) = (overview.width() as usize, overview.height() as usize);
    let mut sum = vec![0f32; w * h];
    let mut cnt = vec![0u32; w * h];
    let p = percentiles(scores);
    for (c, &v) in coords.iter().zip(&p) {
        let x0 = (c[0] as f64 / downsample[0]).floor().max(0.0) as usize;
        let y0 = (c[1] as f64 / downsample[1]).floor().max(0.0) as usize;
        let x1 = (((c[0] as f64 + size0) / downsample[0]).ceil() as usize).min(w);
        let y1 = (((c[1] as f64 + size0) / downsample[1]).ceil() as usize).min(h);
        for y in y0..y1 {
            for x in x0..x1 {
                sum[y * w + x] += v;
                cnt[y * w + x] += 1;
            }
        }
    }
    let mut img = overview.clone();
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if cnt[i] == 0 {
                continue;
            }
            let c = coolwarm(sum[i] / cnt[i] as f32);
            let px = img.get_pixel_mut(x as u32, y as u32);
            for k in 0..3 {
                px.0[k] = (px.0[k] as f32 * (1.0 - alpha) + c.0[k] as f32 * alpha).round() as u8;
            }
        }
    }
    img
}

/// The tissue outlines alone (green, opaque) and kept holes (blue) on a transparent image the
/// size of the mask's overview: the layer the viewer draws over the slide.
pub fn tissue_outline(mask: &TissueMask) -> RgbaImage {
    let (w, h) = (mask.width, mask.height);
    let mut img = RgbaImage::new(w as u32, h as u32);
    for y in 0..h {
        for x in 0..w {
            let t = mask.is_tissue_px(x, y);
            let edge = [(1isize, 0isize), (-1, 0), (0, 1), (0, -1)]
                .iter()
                .any(|(dx, dy)| {
                    let (xx, yy) = (x as isize + dx, y as isize + dy);
                    if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                        return t;
                    }
                    mask.is_tissue_px(xx as usize, yy as usize) != t
                });
            if !edge {
                continue;
            }
            let c = if t {
                Some(TISSUE)
            } else if mask.in_hole(x as f64 * mask.downsample[0], y as f64 * mask.downsample[1]) {
                Some(HOLE)
            } else {
                None
            };
            if let Some(Rgb([r, g, b])) = c {
                img.put_pixel(x as u32, y as u32, Rgba([r, g, b, 255]));
            }
        }
    }
    img
}

/// Writes an RGBA PNG atomically.
pub fn save_rgba_png(img: &RgbaImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ColorType::Rgba8,
        )
        .map_err(|e| DataError::malformed(path, format!("could not encode PNG: {e}")))?;
    gimp_io::atomic::write_bytes_atomic(path, &bytes)
}

/// Writes a PNG atomically.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ColorType::Rgb8,
        )
        .map_err(|e| DataError::malformed(path, format!("could not encode PNG: {e}")))?;
    gimp_io::atomic::write_bytes_atomic(path, &bytes)
}

use image::ImageEncoder;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_rank_and_share_ties() {
        assert_eq!(percentiles(&[3.0, 1.0, 2.0]), vec![1.0, 0.0, 0.5]);
        assert_eq!(percentiles(&[1.0, 1.0, 2.0]), vec![0.25, 0.25, 1.0]);
        assert_eq!(coolwarm(0.0), Rgb([59, 76, 192]));
        assert_eq!(coolwarm(1.0), Rgb([180, 4, 38]));
    }

    #[test]
    fn heatmap_colours_only_patches() {
        let base = RgbImage::from_pixel(10, 10, Rgb([255, 255, 255]));
        let img = heatmap(
            &base,
            [10.0, 10.0],
            &[[0, 0], [50, 50]],
            20.0,
            &[0.0, 1.0],
            1.0,
        );
        assert_eq!(*img.get_pixel(0, 0), coolwarm(0.0));
        assert_eq!(*img.get_pixel(6, 6), coolwarm(1.0));
        assert_eq!(*img.get_pixel(9, 0), Rgb([255, 255, 255]));
    }
}

/// Where a bag's patches lie on the slide: their level-0 corners, in the bag's row order, and
/// their level-0 side.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchGrid {
    pub coords: Vec<[i64; 2]>,
    pub size_level0: f64,
}

impl PatchGrid {
    /// The grid of a feature file's `n` rows: its own `coords`, else the patch file's (which must
    /// then list `n` patches); a patch file given beside coords must list the same ones in the
    /// same order. The patch side is `size_level0` when given, else the patch file's attribute.
    pub fn resolve(
        features: &Path,
        feature_coords: Option<Vec<[i64; 2]>>,
        n: usize,
        patches: Option<&Path>,
        size_level0: Option<f64>,
    ) -> gimp_io::Result<Self> {
        let patch_file = patches
            .map(|p| gimp_io::h5::read_patches(p).map(|f| (p, f)))
            .transpose()?;
        let coords = match (&patch_file, feature_coords) {
            (_, Some(c)) => c,
            (Some((_, p)), None) if p.coords.len() == n => p.coords.clone(),
            _ => {
                return Err(DataError::new(
                    ErrorKind::Missing,
                    features,
                    "no coords; give the matching patch file",
                ))
            }
        };
        if let Some((path, p)) = &patch_file {
            if p.coords.len() != n || p.coords != coords {
                return Err(DataError::new(
                    ErrorKind::Mismatch,
                    path,
                    format!(
                        "{} patches, but {} has {n} (or in another order): they are not the same slide's",
                        p.coords.len(),
                        features.display()
                    ),
                ));
            }
        }
        let size_level0 =
            match (&patch_file, size_level0) {
                (_, Some(s)) => s,
                (Some((path, p)), None) => p.attrs.level0_patch_size().ok_or_else(|| {
                    DataError::new(
                        ErrorKind::Missing,
                        path,
                        "no patch size in the attributes; give the level-0 patch size",
                    )
                })?,
                (None, None) => return Err(DataError::new(
                    ErrorKind::Missing,
                    features,
                    "the level-0 patch size is unknown: give the slide's patch file or the size",
                )),
            };
        Ok(Self {
            coords,
            size_level0,
        })
    }
}

/// Writes per-patch scores beside each other as `{out}/{id}.scores.csv` (`row, x, y, score,
/// percentile`) and `{out}/{id}.scores.h5` (CLAM's `attention_scores` and `coords`).
pub fn write_scores(
    out: &Path,
    id: &str,
    coords: &[[i64; 2]],
    scores: &[f32],
) -> gimp_io::Result<()> {
    let pct = percentiles(scores);
    let mut csv = String::from("row,x,y,score,percentile\n");
    for (i, (c, (s, p))) in coords.iter().zip(scores.iter().zip(&pct)).enumerate() {
        csv.push_str(&format!("{i},{},{},{s},{p}\n", c[0], c[1]));
    }
    gimp_io::atomic::write_bytes_atomic(&out.join(format!("{id}.scores.csv")), csv.as_bytes())?;
    gimp_io::h5::write_scores(&out.join(format!("{id}.scores.h5")), coords, scores)
}
