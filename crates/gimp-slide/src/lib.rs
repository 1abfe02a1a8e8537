//! Whole-slide images to patch coordinates, the first half of CLAM's preprocessing
//! (`docs/DESIGN.md` §12), without a system library:
//!
//! - [`slide`]: one reader interface; [`tiff_slide`] reads tiled (and small stripped) TIFF and
//!   Aperio SVS in pure Rust (JPEG with shared tables, LZW, deflate, predictors), with
//!   magnification and microns per pixel from the file; the `openslide` feature adds the other
//!   vendors through libopenslide.
//! - [`segment`]: CLAM's tissue segmentation (saturation threshold or Otsu, median blur,
//!   morphological closing, tissue and hole area filters) with CLAM's presets.
//! - [`patching`]: the grid of patches at a target magnification, with CLAM's `four_pt` test,
//!   written as a CLAM/TRIDENT patch `.h5`.
//! - [`overlay`]: thumbnails with the tissue mask drawn, and score heatmaps aligned with `coords`.
//! - [`batch`]: slide lists for batch runs: sharding across machines (`i/n`, Slurm arrays), the
//!   output layout with skip-if-done checks, patching one slide, the process list.

pub mod batch;
pub mod dicom;
pub mod jpeg2000;
pub mod overlay;
pub mod patching;
pub mod segment;
pub mod slide;
pub mod tiff_slide;

#[cfg(feature = "openslide")]
pub mod openslide;

pub use slide::{open, Level, Properties, SlideReader};
