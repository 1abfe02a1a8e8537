//! Resizing exactly as PIL's `Image.resize` does for 8-bit images — what torchvision's `Resize`
//! runs on a PIL image, and what TRIDENT's patcher runs to bring a patch to the target
//! magnification — so that features match TRIDENT's to the last bit of the input.
//!
//! PIL's algorithm (`libImaging/Resample.c`, written here from its description): a separable
//! convolution, first along rows then along columns (each pass skipped when that side keeps its
//! size). For output pixel `i` of a side shrunk by `scale = in / out`, the kernel is centred at
//! `(i + 0.5) · scale` in input coordinates and, when shrinking, stretched by `scale` (its support
//! grows with it: the antialiasing); it covers the input pixels from `round(centre − support)` to
//! `round(centre + support)` clamped to the image, each weighted by the filter at
//! `(j + 0.5 − centre) / stretch` and normalised to sum 1. The weights are then fixed point
//! (22 fractional bits, rounded half away from zero), each pass sums `u8 × weight` in 32-bit
//! integers with a half added, shifts back and clamps to 0..=255. The horizontal pass only
//! computes the rows the vertical pass reads. Pillow 13 runs the vertical pass first when the
//! height loses more than twice as many pixels as the width (see [`resize`]).

/// PIL's resampling filters that the encoders' transforms use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR` (torchvision's default `InterpolationMode.BILINEAR`): the triangle.
    Bilinear,
    /// `Image.BICUBIC`: Keys' cubic with a = −0.5 (PIL's default for `Image.resize`).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Fractional bits of the fixed-point weights: 32 bits less 8 for the sample and 2 of headroom
/// for kernels whose partial sums leave [0, 1].
const PRECISION_BITS: u32 = 22;

/// The taps of one output side: output pixel `i` reads `count[i]` input pixels from `first[i]`
/// with weights `weights[i * width ..]`.
struct Taps {
    first: Vec<usize>,
    count: Vec<usize>,
    width: usize,
    weights: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let stretch = scale.max(1.0);
    let support = filter.support() * stretch;
    let width = support.ceil() as usize * 2 + 1;
    let mut t = Taps {
        first: Vec::with_capacity(out_size),
        count: Vec::with_capacity(out_size),
        width,
        weights: vec![0; out_size * width],
    };
    let mut k = vec![0f64; width];
    for i in 0..out_size {
        let centre = (i as f64 + 0.5) * scale;
        // PIL rounds by adding a half and truncating toward zero (C's `(int)` cast).
        let lo = ((centre - support + 0.5) as i64).max(0) as usize;
        let hi = ((centre + support + 0.5) as i64).min(in_size as i64) as usize;
        let n = hi.saturating_sub(lo).min(width);
        let mut total = 0.0;
        for (j, kj) in k.iter_mut().enumerate().take(n) {
            *kj = filter.weight(((lo + j) as f64 - centre + 0.5) / stretch);
            total += *kj;
        }
        let row = &mut t.weights[i * width..(i + 1) * width];
        for (w, &kj) in row.iter_mut().zip(&k).take(n) {
            let v = if total != 0.0 { kj / total } else { kj };
            let fixed = v * (1u32 << PRECISION_BITS) as f64;
            *w = if v < 0.0 {
                (fixed - 0.5) as i32
            } else {
                (fixed + 0.5) as i32
            };
        }
        t.first.push(lo);
        t.count.push(n);
    }
    t
}

/// A weighted sum back to a byte: PIL's rounding and clamping.
#[inline]
fn to_u8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes an interleaved 8-bit image of `channels` samples per pixel from `w × h` to
/// `out_w × out_h` as PIL's `Image.resize(size, filter)` does (bit for bit). A side that keeps
/// its size is not filtered; an image that keeps both is returned as it is.
pub fn resize(
    src: &[u8],
    w: usize,
    h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    assert_eq!(
        src.len(),
        w * h * channels,
        "resize: buffer is not w × h × channels"
    );
    if out_w == 0 || out_h == 0 {
        return Vec::new();
    }
    if (w, h) == (out_w, out_h) {
        return src.to_vec();
    }
    let vertical = taps(h, out_h, filter);
    let horizontal = (out_w != w).then(|| taps(w, out_w, filter));
    match horizontal {
        // Pillow 13 filters columns first when the height shrinks by more than twice as many
        // pixels as the width (Pillow#9549; earlier versions never do). The order changes the
        // intermediate rounding, so it is followed. Square patches resized to squares never
        // take this branch, so their pixels are the same under every Pillow version.
        Some(hz) if out_h < h && (h - out_h) as i64 > 2 * (w as i64 - out_w as i64) => {
            let tall = vertical_pass(src, w * channels, &vertical, 0);
            horizontal_pass(&tall, w, out_h, channels, &hz, 0)
        }
        Some(hz) => {
            // Only the rows the vertical pass reads are filtered horizontally.
            let row_lo = vertical.first[0];
            let row_hi = vertical.first[out_h - 1] + vertical.count[out_h - 1];
            let rows = horizontal_pass(src, w, row_hi - row_lo, channels, &hz, row_lo);
            if out_h == h {
                rows
            } else {
                vertical_pass(&rows, out_w * channels, &vertical, row_lo)
            }
        }
        None => vertical_pass(src, w * channels, &vertical, 0),
    }
}

/// Rows `first_row .. first_row + n_rows` of `src` (`w` pixels wide) filtered along x.
fn horizontal_pass(
    src: &[u8],
    w: usize,
    n_rows: usize,
    channels: usize,
    t: &Taps,
    first_row: usize,
) -> Vec<u8> {
    let out_w = t.first.len();
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; n_rows * out_w * channels];
    for (r, out_row) in out.chunks_exact_mut(out_w * channels).enumerate() {
        let in_row = &src[(first_row + r) * w * channels..][..w * channels];
        for x in 0..out_w {
            let k = &t.weights[x * t.width..][..t.count[x]];
            let first = t.first[x];
            for c in 0..channels {
                let mut acc = half;
                for (j, &kj) in k.iter().enumerate() {
                    acc += in_row[(first + j) * channels + c] as i32 * kj;
                }
                out_row[x * channels + c] = to_u8(acc);
            }
        }
    }
    out
}

/// `src` (rows of `stride` bytes, its first row being input row `row_offset`) filtered along y.
fn vertical_pass(src: &[u8], stride: usize, t: &Taps, row_offset: usize) -> Vec<u8> {
    let out_h = t.first.len();
    let half = 1i32 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; out_h * stride];
    for (y, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let k = &t.weights[y * t.width..][..t.count[y]];
        let first = t.first[y] - row_offset;
        for (i, o) in out_row.iter_mut().enumerate() {
            let mut acc = half;
            for (j, &kj) in k.iter().enumerate() {
                acc += src[(first + j) * stride + i] as i32 * kj;
            }
            *o = to_u8(acc);
        }
    }
    out
}

/// [`resize`] of an RGB image.
pub fn resize_rgb(
    img: &image::RgbImage,
    out_w: u32,
    out_h: u32,
    filter: Filter,
) -> image::RgbImage {
    let (w, h) = img.dimensions();
    let out = resize(
        img.as_raw(),
        w as usize,
        h as usize,
        3,
        out_w as usize,
        out_h as usize,
        filter,
    );
    image::RgbImage::from_raw(out_w, out_h, out).expect("resize returns out_w × out_h × 3 bytes")
}
