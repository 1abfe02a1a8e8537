//! Whole-slide images to patch coordinates, the first half of CLAM's preprocessing
//! (`docs/DESIGN.md` §12), without a system library:
//!
//! - [`slide`]: one reader interface; [`tiff_slide`] reads tiled (and small stripped) TIFF and
//!   Aperio SVS without a system library (JPEG with shared tables through [`jpeg`], libjpeg-turbo's
//!   decoder built from source, so pixels equal OpenSlide's; LZW, deflate, predictors in Rust),
//!   with magnification and microns per pixel from the file; the `openslide` feature adds the
//!   other vendors through libopenslide.
//! - [`resample`]: PIL's `Image.resize` (bilinear, bicubic, antialiased when shrinking), bit for
//!   bit, for the resizes TRIDENT's and the encoders' transforms do.
//! - [`segment`]: CLAM's tissue segmentation (saturation threshold or Otsu, median blur,
//!   morphological closing, tissue and hole area filters) with CLAM's presets.
//! - [`patching`]: the grid of patches at a target magnification, with CLAM's `four_pt` test,
//!   written as a CLAM/TRIDENT patch `.h5`.
//! - [`overlay`]: thumbnails with the tissue mask drawn, and score heatmaps aligned with `coords`.
//! - [`batch`]: slide lists for batch runs: sharding across machines (`i/n`, Slurm arrays), the
//!   output layout with skip-if-done checks, patching one slide, the process list.

pub mod batch;
pub mod jpeg;
pub mod overlay;
pub mod patching;
pub mod resample;
pub mod segment;
pub mod slide;
pub mod tiff_slide;

#[cfg(feature = "openslide")]
pub mod openslide;

pub use slide::{open, Level, Properties, SlideReader};
