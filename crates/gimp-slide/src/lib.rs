//! Whole-slide images to patch coordinates, the first half of CLAM's preprocessing
//! (`docs/DESIGN.md` §12), without a system library:
//!
//! - [`slide`]: one reader interface; [`tiff_slide`] reads tiled (and small stripped) TIFF and
//!   Aperio SVS and OME-TIFF pyramids (SubIFDs) without a system library (JPEG with shared
//!   tables through [`jpeg`], libjpeg-turbo's decoder built from source, so pixels equal
//!   OpenSlide's; LZW, deflate, predictors in Rust), with magnification and microns per pixel
//!   from the file; the `openslide` feature adds the other vendors through libopenslide.
//! - [`resample`]: PIL's `Image.resize` (bilinear, bicubic, antialiased when shrinking), bit for
//!   bit, for the resizes TRIDENT's and the encoders' transforms do.
//! - [`resolution`]: microns per pixel and magnification, from the file and the user's
//!   `--mpp` / `--level0-magnification`, with warnings for doubtful values.
//! - [`segment`]: CLAM's tissue segmentation (saturation threshold or Otsu, median blur,
//!   morphological closing, tissue and hole area filters) with CLAM's presets.
//! - [`patching`]: the grid of patches at a target magnification, with CLAM's `four_pt` test,
//!   written as a CLAM/TRIDENT patch `.h5`.
//! - [`outline`]: the tissue mask as valid polygons in level-0 pixels; [`qupath`]: QuPath's
//!   GeoJSON out (tissue annotations, scored patch detections) and in (`--roi`, `--exclude`).
//! - [`overlay`]: thumbnails with the tissue mask drawn, and score heatmaps aligned with `coords`.
//! - [`batch`]: slide lists for batch runs: sharding across machines (`i/n`, Slurm arrays), the
//!   output layout with skip-if-done checks, patching one slide, the process list.

pub mod batch;
pub mod dicom;
pub mod formats;
pub mod jpeg;
pub mod jpeg2000;
pub mod outline;
pub mod overlay;
pub mod patching;
pub mod qupath;
pub mod resample;
pub mod resolution;
pub mod segment;
pub mod slide;
pub mod tiff_slide;

#[cfg(feature = "openslide")]
pub mod openslide;

pub use formats::open;
pub use slide::{Level, Properties, SlideReader};
