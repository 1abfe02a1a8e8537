//! CLAM's tissue segmentation (`WholeSlideImage.segmentTissue`), on a low-resolution overview:
//! HSV saturation → median blur (`mthresh`) → threshold (`sthresh`, or Otsu) → morphological
//! closing (`close × close` ones) → tissue regions and their holes, filtered by area.
//!
//! CLAM traces contours with OpenCV (`RETR_CCOMP`) and measures polygon areas; here regions are
//! raster components — tissue 8-connected, background 4-connected (the same duality OpenCV's
//! border following uses) — and areas are pixel counts. Areas are in units of a 512 × 512 level-0
//! reference patch, as CLAM's `a_t`/`a_h` are. A hole is a background component that does not
//! touch the image border; it belongs to the tissue region around it. One simplification: a
//! small island of tissue inside a kept hole counts as tissue of the surrounding region (CLAM
//! would drop its patches unless the island passes `a_t` by itself).

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// Segmentation parameters, by CLAM's names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentParams {
    /// Saturation threshold (0–255): a pixel is tissue when its blurred saturation exceeds it.
    pub sthresh: u8,
    /// Median blur kernel (odd).
    pub mthresh: usize,
    /// Closing kernel side (0: no closing).
    pub close: usize,
    /// Otsu's threshold instead of `sthresh`.
    pub use_otsu: bool,
    /// Minimum tissue region area, in 512 × 512 level-0 reference patches.
    pub a_t: f64,
    /// Minimum hole area, in reference patches.
    pub a_h: f64,
    /// At most this many holes per region (the largest).
    pub max_n_holes: usize,
    /// Downsample of the overview segmented (CLAM: the level nearest 64×).
    pub downsample: f64,
}

/// CLAM's presets (`presets/*.csv`) and its command-line defaults.
pub const PRESETS: &[(&str, SegmentParams)] = &[
    ("clam", preset(8, 7, 4, 100.0, 16.0, 8)),
    ("tcga", preset(8, 7, 4, 16.0, 4.0, 8)),
    ("bwh_biopsy", preset(15, 11, 2, 1.0, 1.0, 2)),
    ("bwh_resection", preset(15, 11, 4, 100.0, 16.0, 8)),
];

const fn preset(
    sthresh: u8,
    mthresh: usize,
    close: usize,
    a_t: f64,
    a_h: f64,
    max_n_holes: usize,
) -> SegmentParams {
    SegmentParams {
        sthresh,
        mthresh,
        close,
        use_otsu: false,
        a_t,
        a_h,
        max_n_holes,
        downsample: 64.0,
    }
}

impl SegmentParams {
    pub fn preset(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, p)| p.clone())
    }

    pub fn check(&self) -> Result<(), String> {
        if self.mthresh.is_multiple_of(2) {
            return Err(format!(
                "the median blur kernel (mthresh) must be odd, got {}",
                self.mthresh
            ));
        }
        if self.downsample.is_nan() || self.downsample < 1.0 {
            return Err(format!(
                "the segmentation downsample must be ≥ 1, got {}",
                self.downsample
            ));
        }
        if !(self.a_t >= 0.0 && self.a_h >= 0.0) {
            return Err("a_t and a_h must be ≥ 0".into());
        }
        Ok(())
    }
}

/// One tissue region (a foreground component).
#[derive(Debug, Clone, Serialize)]
pub struct Region {
    /// Bounding box in overview pixels: x, y, width, height.
    pub bbox: [u32; 4],
    /// Area in reference patches.
    pub area: f64,
    pub kept: bool,
    /// Kept holes: their areas in reference patches.
    pub holes: Vec<f64>,
}

/// The result: per-pixel classes of the overview, and the regions.
pub struct TissueMask {
    pub width: usize,
    pub height: usize,
    /// Level-0 pixels per overview pixel (x, y).
    pub downsample: [f64; 2],
    pub regions: Vec<Region>,
    /// The threshold applied (Otsu's when chosen).
    pub threshold: u8,
    /// 1 inside a kept region's outline (its holes included), else 0.
    inside: Vec<u8>,
    /// 1 in a kept hole.
    hole: Vec<u8>,
}

impl TissueMask {
    fn at(&self, v: &[u8], x0: f64, y0: f64) -> bool {
        let x = (x0 / self.downsample[0]).floor();
        let y = (y0 / self.downsample[1]).floor();
        if x < 0.0 || y < 0.0 || x >= self.width as f64 || y >= self.height as f64 {
            return false;
        }
        v[y as usize * self.width + x as usize] != 0
    }

    /// Is level-0 point `(x, y)` inside a kept region's outline (holes included)?
    pub fn inside(&self, x: f64, y: f64) -> bool {
        self.at(&self.inside, x, y)
    }

    /// Is level-0 point `(x, y)` in a kept hole?
    pub fn in_hole(&self, x: f64, y: f64) -> bool {
        self.at(&self.hole, x, y)
    }

    /// Is overview pixel `(x, y)` tissue (inside a kept region and not in a kept hole)?
    pub fn is_tissue_px(&self, x: usize, y: usize) -> bool {
        let i = y * self.width + x;
        self.inside[i] != 0 && self.hole[i] == 0
    }

    pub fn kept_regions(&self) -> impl Iterator<Item = &Region> {
        self.regions.iter().filter(|r| r.kept)
    }

    /// Tissue fraction of the overview.
    pub fn tissue_fraction(&self) -> f64 {
        let n = (0..self.height)
            .flat_map(|y| (0..self.width).map(move |x| (x, y)))
            .filter(|&(x, y)| self.is_tissue_px(x, y))
            .count();
        n as f64 / (self.width * self.height).max(1) as f64
    }
}

/// OpenCV's 8-bit HSV saturation: `255 · (max − min) / max`.
pub fn saturation(img: &RgbImage) -> Vec<u8> {
    img.pixels()
        .map(|p| {
            let [r, g, b] = p.0;
            let mx = r.max(g).max(b) as u32;
            let mn = r.min(g).min(b) as u32;
            (255 * (mx - mn) + mx / 2).checked_div(mx).unwrap_or(0) as u8
        })
        .collect()
}

/// Median of a `k × k` window, borders replicated (OpenCV's `medianBlur`).
pub fn median_blur(v: &[u8], w: usize, h: usize, k: usize) -> Vec<u8> {
    if k <= 1 || w == 0 || h == 0 {
        return v.to_vec();
    }
    let r = (k / 2) as isize;
    let clamp = |i: isize, n: usize| i.clamp(0, n as isize - 1) as usize;
    let half = (k * k / 2) as u32;
    let mut out = vec![0u8; v.len()];
    for y in 0..h {
        let rows: Vec<usize> = (-r..=r).map(|d| clamp(y as isize + d, h)).collect();
        let mut hist = [0u32; 256];
        for dx in -r..=r {
            let x = clamp(dx, w);
            for &yy in &rows {
                hist[v[yy * w + x] as usize] += 1;
            }
        }
        for x in 0..w {
            if x > 0 {
                let old = clamp(x as isize - r - 1, w);
                let new = clamp(x as isize + r, w);
                for &yy in &rows {
                    hist[v[yy * w + old] as usize] -= 1;
                    hist[v[yy * w + new] as usize] += 1;
                }
            }
            let mut acc = 0;
            for (val, &c) in hist.iter().enumerate() {
                acc += c;
                if acc > half {
                    out[y * w + x] = val as u8;
                    break;
                }
            }
        }
    }
    out
}

/// Otsu's threshold of an 8-bit image.
pub fn otsu(v: &[u8]) -> u8 {
    let mut hist = [0f64; 256];
    for &x in v {
        hist[x as usize] += 1.0;
    }
    let total = v.len() as f64;
    let sum: f64 = hist.iter().enumerate().map(|(i, c)| i as f64 * c).sum();
    let (mut w0, mut sum0, mut best, mut best_t) = (0.0, 0.0, -1.0, 0u8);
    for (t, &c) in hist.iter().enumerate() {
        w0 += c;
        sum0 += t as f64 * c;
        let w1 = total - w0;
        if w0 == 0.0 || w1 == 0.0 {
            continue;
        }
        let (m0, m1) = (sum0 / w0, (sum - sum0) / w1);
        let between = w0 * w1 * (m0 - m1) * (m0 - m1);
        if between > best {
            best = between;
            best_t = t as u8;
        }
    }
    best_t
}

/// Max (dilate) or min (erode) over a `k × k` window anchored as OpenCV anchors it
/// (offsets `−k/2 … k−1−k/2`); pixels outside the image never take part.
fn morph(v: &[u8], w: usize, h: usize, k: usize, dilate: bool) -> Vec<u8> {
    let a = (k / 2) as isize;
    let lo = -a;
    let hi = k as isize - 1 - a;
    let pick = |acc: u8, x: u8| if dilate { acc.max(x) } else { acc.min(x) };
    let init = if dilate { 0 } else { 255 };
    let mut tmp = vec![0u8; v.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = init;
            for d in lo..=hi {
                let xx = x as isize + d;
                if xx >= 0 && (xx as usize) < w {
                    acc = pick(acc, v[y * w + xx as usize]);
                }
            }
            tmp[y * w + x] = acc;
        }
    }
    let mut out = vec![0u8; v.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = init;
            for d in lo..=hi {
                let yy = y as isize + d;
                if yy >= 0 && (yy as usize) < h {
                    acc = pick(acc, tmp[yy as usize * w + x]);
                }
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// Labels connected components of pixels where `on(i)` holds; 0 = not in a component.
/// Returns the labels and the component count. Labels follow scan order of first pixels.
fn label(w: usize, h: usize, eight: bool, on: impl Fn(usize) -> bool) -> (Vec<u32>, usize) {
    let mut lab = vec![0u32; w * h];
    let mut n = 0;
    let mut stack = Vec::new();
    for start in 0..w * h {
        if lab[start] != 0 || !on(start) {
            continue;
        }
        n += 1;
        lab[start] = n as u32;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % w) as isize, (i / w) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    if (dx == 0 && dy == 0) || (!eight && dx != 0 && dy != 0) {
                        continue;
                    }
                    let (xx, yy) = (x + dx, y + dy);
                    if xx < 0 || yy < 0 || xx >= w as isize || yy >= h as isize {
                        continue;
                    }
                    let j = yy as usize * w + xx as usize;
                    if lab[j] == 0 && on(j) {
                        lab[j] = n as u32;
                        stack.push(j);
                    }
                }
            }
        }
    }
    (lab, n)
}

/// Segments an overview image whose pixels are `downsample` level-0 pixels.
pub fn segment(img: &RgbImage, downsample: [f64; 2], p: &SegmentParams) -> TissueMask {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let sat = saturation(img);
    let med = median_blur(&sat, w, h, p.mthresh);
    let threshold = if p.use_otsu { otsu(&med) } else { p.sthresh };
    let bin: Vec<u8> = med
        .iter()
        .map(|&v| if v > threshold { 255 } else { 0 })
        .collect();
    let bin = if p.close > 0 {
        let d = morph(&bin, w, h, p.close, true);
        morph(&d, w, h, p.close, false)
    } else {
        bin
    };
    let (fg, n_fg) = label(w, h, true, |i| bin[i] != 0);
    let (bg, n_bg) = label(w, h, false, |i| bin[i] == 0);

    // Which tissue region each background component is a hole of (None: it reaches the border).
    let mut owner: Vec<Option<u32>> = vec![None; n_bg + 1];
    let mut border = vec![false; n_bg + 1];
    let mut bg_area = vec![0usize; n_bg + 1];
    let mut fg_area = vec![0usize; n_fg + 1];
    let mut bbox = vec![[usize::MAX, usize::MAX, 0, 0]; n_fg + 1];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            if fg[i] != 0 {
                let c = fg[i] as usize;
                fg_area[c] += 1;
                let b = &mut bbox[c];
                b[0] = b[0].min(x);
                b[1] = b[1].min(y);
                b[2] = b[2].max(x + 1);
                b[3] = b[3].max(y + 1);
                continue;
            }
            let c = bg[i] as usize;
            bg_area[c] += 1;
            if x == 0 || y == 0 || x + 1 == w || y + 1 == h {
                border[c] = true;
            }
            if owner[c].is_none() {
                let n4 = [
                    (x > 0).then(|| i - 1),
                    (x + 1 < w).then(|| i + 1),
                    (y > 0).then(|| i - w),
                    (y + 1 < h).then(|| i + w),
                ];
                owner[c] = n4.into_iter().flatten().map(|j| fg[j]).find(|&l| l != 0);
            }
        }
    }
    // A region's parent is the region whose hole it sits in: the background just left of its
    // first pixel in scan order tells (parents are labelled before their children).
    let mut parent: Vec<Option<u32>> = vec![None; n_fg + 1];
    let mut seen = vec![false; n_fg + 1];
    for i in 0..w * h {
        let c = fg[i] as usize;
        if c == 0 || seen[c] {
            continue;
        }
        seen[c] = true;
        if i % w > 0 {
            let b = bg[i - 1] as usize;
            if b != 0 && !border[b] {
                parent[c] = owner[b];
            }
        }
    }

    let ref_area = (512.0 * 512.0 / (downsample[0] * downsample[1]))
        .floor()
        .max(1.0);
    let mut holes_of: Vec<Vec<usize>> = vec![Vec::new(); n_fg + 1];
    for b in 1..=n_bg {
        if let (false, Some(o)) = (border[b], owner[b]) {
            holes_of[o as usize].push(b);
        }
    }
    let mut kept = vec![false; n_fg + 1];
    let mut kept_hole = vec![false; n_bg + 1];
    let mut regions = Vec::with_capacity(n_fg);
    for c in 1..=n_fg {
        let area = fg_area[c] as f64;
        kept[c] = area > 0.0 && area > p.a_t * ref_area;
        let mut hs = holes_of[c].clone();
        hs.sort_by(|a, b| bg_area[*b].cmp(&bg_area[*a]).then(a.cmp(b)));
        let mut hole_areas = Vec::new();
        if kept[c] {
            for &b in hs.iter().take(p.max_n_holes) {
                if bg_area[b] as f64 > p.a_h * ref_area {
                    kept_hole[b] = true;
                    hole_areas.push(bg_area[b] as f64 / ref_area);
                }
            }
        }
        let b = bbox[c];
        regions.push(Region {
            bbox: [
                b[0] as u32,
                b[1] as u32,
                (b[2] - b[0]) as u32,
                (b[3] - b[1]) as u32,
            ],
            area: area / ref_area,
            kept: kept[c],
            holes: hole_areas,
        });
    }
    // Inside a kept outline: the region itself, any region nested in it, and its holes.
    let mut inside_kept = vec![false; n_fg + 1];
    for c in 1..=n_fg {
        inside_kept[c] = kept[c] || parent[c].is_some_and(|p| inside_kept[p as usize]);
    }
    let mut inside = vec![0u8; w * h];
    let mut hole = vec![0u8; w * h];
    for i in 0..w * h {
        let region = if fg[i] != 0 {
            Some(fg[i])
        } else {
            owner[bg[i] as usize].filter(|_| !border[bg[i] as usize])
        };
        if region.is_some_and(|r| inside_kept[r as usize]) {
            inside[i] = 1;
        }
        if fg[i] == 0 && kept_hole[bg[i] as usize] {
            hole[i] = 1;
        }
    }
    TissueMask {
        width: w,
        height: h,
        downsample,
        regions,
        threshold,
        inside,
        hole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc(w: u32, h: u32, cx: f64, cy: f64, r: f64, hole_r: f64) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| {
            let d = ((x as f64 - cx).powi(2) + (y as f64 - cy).powi(2)).sqrt();
            if d < r && d >= hole_r {
                image::Rgb([200, 80, 160])
            } else {
                image::Rgb([240, 240, 240])
            }
        })
    }

    #[test]
    fn finds_a_region_and_its_hole() {
        let img = disc(200, 160, 100.0, 80.0, 60.0, 20.0);
        let mut p = SegmentParams::preset("tcga").unwrap();
        p.a_t = 0.5;
        p.a_h = 0.05;
        // 1 overview pixel = 8 level-0 pixels → one reference patch = 64 × 64 = 4096 px.
        let m = segment(&img, [8.0, 8.0], &p);
        let kept: Vec<_> = m.kept_regions().collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].holes.len(), 1);
        let area_px = kept[0].area * 4096.0;
        let expect = std::f64::consts::PI * (60.0f64.powi(2) - 20.0f64.powi(2));
        assert!(
            (area_px / expect - 1.0).abs() < 0.05,
            "{area_px} vs {expect}"
        );
        assert!(m.inside(100.0 * 8.0, 80.0 * 8.0) && m.in_hole(100.0 * 8.0, 80.0 * 8.0));
        assert!(m.inside(140.0 * 8.0, 80.0 * 8.0) && !m.in_hole(140.0 * 8.0, 80.0 * 8.0));
        assert!(!m.inside(5.0 * 8.0, 5.0 * 8.0));
        // The hole is too small for a_h = 1: then it is tissue.
        p.a_h = 1.0;
        let m = segment(&img, [8.0, 8.0], &p);
        assert!(!m.in_hole(800.0, 640.0) && m.inside(800.0, 640.0));
        // The region is too small for a_t = 10: nothing is kept.
        p.a_t = 10.0;
        let m = segment(&img, [8.0, 8.0], &p);
        assert_eq!(m.kept_regions().count(), 0);
        assert_eq!(m.tissue_fraction(), 0.0);
    }

    #[test]
    fn median_otsu_and_closing_behave_like_opencv() {
        let v = vec![0, 0, 0, 0, 255, 0, 0, 0, 0];
        assert_eq!(median_blur(&v, 3, 3, 3), vec![0; 9]);
        let v: Vec<u8> = (0..100).map(|i| if i < 50 { 20 } else { 200 }).collect();
        let t = otsu(&v);
        assert!((20..200).contains(&t));
        // Closing fills a one-pixel gap between two blocks.
        let mut b = vec![0u8; 7 * 3];
        for y in 0..3 {
            for x in [0, 1, 2, 4, 5, 6] {
                b[y * 7 + x] = 255;
            }
        }
        let c = morph(&morph(&b, 7, 3, 3, true), 7, 3, 3, false);
        assert!(c.iter().all(|&x| x == 255));
    }
}
