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

/// Opens a slide with the reader its bytes call for: TIFF and BigTIFF (Aperio SVS, generic
/// tiled TIFF) and DICOM (a series folder or one of its files) in pure Rust; anything else
/// through OpenSlide when built with the `openslide` feature.
pub fn open(path: &Path) -> Result<Box<dyn SlideReader>> {
    if path.is_dir() || crate::dicom::is_dicom_file(path) {
        return Ok(Box::new(crate::dicom::DicomSlide::open(path)?));
    }
    let mut magic = [0u8; 4];
    {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
        let n = f.read(&mut magic).map_err(|e| DataError::io(path, e))?;
        if n < 4 {
            return Err(DataError::malformed(
                path,
                "file shorter than any slide header",
            ));
        }
    }
    let is_tiff = matches!(&magic, b"II*\0" | b"MM\0*" | b"II+\0" | b"MM\0+");
    if is_tiff {
        let ours = crate::tiff_slide::TiffSlide::open(path);
        // TIFF-based vendor formats (NDPI, Philips TIFF) that the pure-Rust reader refuses go to
        // OpenSlide when it is built in.
        #[cfg(feature = "openslide")]
        if ours.is_err() {
            if let Ok(s) = crate::openslide::OpenSlide::open(path) {
                return Ok(Box::new(s));
            }
        }
        return Ok(Box::new(ours?));
    }
    #[cfg(feature = "openslide")]
    {
        Ok(Box::new(crate::openslide::OpenSlide::open(path)?))
    }
    #[cfg(not(feature = "openslide"))]
    {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_string())
            .unwrap_or_default();
        Err(DataError::new(
            ErrorKind::Unsupported,
            path,
            format!(
                "not a TIFF or DICOM file (first bytes {magic:02x?}, extension '{ext}'); this \
                 build reads tiled TIFF, Aperio SVS and DICOM WSI. For MRXS, NDPI, SCN, VMS and other vendor formats \
                 build with `--features openslide` (needs libopenslide), or convert the slide to \
                 a pyramidal TIFF"
            ),
        ))
    }
}
