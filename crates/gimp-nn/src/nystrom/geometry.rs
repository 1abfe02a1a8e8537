//! Where a bag's rows sit in the sequence the attention works on, for every path alike.
//!
//! The reference front-pads the bag with zero rows to a multiple of the landmark count, takes
//! each landmark as the mean of one segment of consecutive padded rows (padding included, so
//! the divisor is always the segment length), and un-pads by keeping `n` consecutive padded
//! rows: the last `n` (nystrom-attention 0.0.14) or, with the legacy front slice, the first `n`
//! (0.0.9, which TransMIL pins).

use crate::cpu::lanes;
use crate::cpu::matmul::View;

/// The padded layout of a bag of `n` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geometry {
    /// Tokens in the bag.
    pub n: usize,
    /// Zero rows in front of the tokens.
    pub pad: usize,
    /// `n + pad`, a multiple of the landmark count.
    pub padded: usize,
    /// Padded rows per landmark segment.
    pub segment: usize,
    /// The first padded row un-padding keeps: `pad`, or 0 with the legacy front slice.
    pub start: usize,
}

impl Geometry {
    /// The layout for `landmarks` landmarks. Zero landmarks, which every op rejects with an
    /// error of its own, count as one here so that building a layout never panics.
    pub fn new(n: usize, landmarks: usize, legacy_front_slice: bool) -> Self {
        let m = landmarks.max(1);
        let pad = (m - n % m) % m;
        let padded = n + pad;
        Self {
            n,
            pad,
            padded,
            segment: segment_len(padded, m),
            start: if legacy_front_slice { 0 } else { pad },
        }
    }

    /// The padded row whose output becomes token `t`'s after un-padding.
    pub fn output_position(&self, t: usize) -> usize {
        self.start + t
    }
}

/// Padded rows per landmark segment (`padded` a multiple of `landmarks`).
pub(crate) fn segment_len(padded: usize, landmarks: usize) -> usize {
    padded / landmarks
}

/// Landmarks as segment means, accumulated row by row: the streaming path adds each row as it
/// is projected and never holds Q whole.
pub(crate) struct SegmentMeans {
    sums: Vec<f32>,
    cols: usize,
    len: usize,
}

impl SegmentMeans {
    /// `segments` sums of `cols` values, each to be divided by `len` rows.
    pub fn new(segments: usize, cols: usize, len: usize) -> Self {
        Self {
            sums: vec![0f32; segments * cols],
            cols,
            len,
        }
    }

    #[inline(always)]
    pub fn add(&mut self, segment: usize, row: &[f32]) {
        let at = segment * self.cols;
        lanes::axpy(&mut self.sums[at..at + self.cols], 1.0, row);
    }

    /// The means, `[segments, cols]`.
    #[inline(always)]
    pub fn finish(mut self) -> Vec<f32> {
        let inv = 1.0 / self.len as f32;
        self.sums.iter_mut().for_each(|a| *a *= inv);
        self.sums
    }
}

crate::multiversion! {
    /// Means of `l` consecutive rows: `[rows / l, cols]`.
    pub(crate) fn segment_means(x: View, l: usize) -> Vec<f32> {
        let segments = x.rows / l;
        let mut means = SegmentMeans::new(segments, x.cols, l);
        for r in 0..segments * l {
            means.add(r / l, x.row(r));
        }
        means.finish()
    }
}
