//! Which reader opens a slide: the one format module that knows every other (each reader's file
//! knows only the shared interface in [`crate::slide`]).

use crate::slide::SlideReader;
use gimp_io::{DataError, Result};
use std::path::Path;

/// Opens a slide with the reader its bytes call for: TIFF and BigTIFF (Aperio SVS, OME-TIFF,
/// generic tiled TIFF) and DICOM (a series folder or one of its files) with no system library;
/// anything else through OpenSlide when built with the `openslide` feature.
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
            gimp_io::ErrorKind::Unsupported,
            path,
            format!(
                "not a TIFF or DICOM file (first bytes {magic:02x?}, extension '{ext}'); this \
                 build reads tiled TIFF, Aperio SVS, OME-TIFF and DICOM WSI. For MRXS, NDPI, SCN, VMS and other vendor formats \
                 build with `--features openslide` (needs libopenslide), or convert the slide to \
                 a pyramidal TIFF"
            ),
        ))
    }
}
