//! One entry point for every feature-file format, chosen by extension.

use crate::bag::Bag;
use crate::error::{DataError, ErrorKind, Result};
use std::path::{Path, PathBuf};

/// The feature-file formats users bring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureFormat {
    /// CLAM `h5_files/*.h5` (features + coords).
    H5,
    /// torch `pt_files/*.pt` (one bare f32 tensor).
    Pt,
    /// NumPy `.npy`.
    Npy,
    /// safetensors (`features`, optional `coords`).
    Safetensors,
}

impl FeatureFormat {
    pub const ALL: [FeatureFormat; 4] = [Self::H5, Self::Pt, Self::Npy, Self::Safetensors];

    pub fn extension(self) -> &'static str {
        match self {
            Self::H5 => "h5",
            Self::Pt => "pt",
            Self::Npy => "npy",
            Self::Safetensors => "safetensors",
        }
    }

    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "h5" | "hdf5" => Ok(Self::H5),
            "pt" | "pth" => Ok(Self::Pt),
            "npy" => Ok(Self::Npy),
            "safetensors" => Ok(Self::Safetensors),
            _ => Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                "unknown feature file extension (expected .h5, .pt, .npy or .safetensors)",
            )),
        }
    }
}

/// Reads a bag from any supported feature file.
pub fn read_bag(path: &Path, max_bytes: u64) -> Result<Bag> {
    match FeatureFormat::from_path(path)? {
        FeatureFormat::H5 => crate::h5::read_features(path, max_bytes),
        FeatureFormat::Pt => crate::pt::read_bag(path, max_bytes),
        FeatureFormat::Npy => crate::npy::read_bag(path, max_bytes),
        FeatureFormat::Safetensors => crate::safetensors_io::read_bag(path, max_bytes),
    }
}

/// Opens any supported feature file for reading by rows ([`crate::bag::BagRows`]), with its
/// coordinates where it has them: an h5 file reads a window's chunks as asked
/// ([`crate::h5::FeatureRows`]); the other formats are read whole first (their readers have no
/// windowed form).
pub fn open_rows(
    path: &Path,
    max_bytes: u64,
) -> Result<(Box<dyn crate::bag::BagRows>, Option<crate::bag::Coords>)> {
    match FeatureFormat::from_path(path)? {
        FeatureFormat::H5 => {
            let (rows, coords) = crate::h5::open_feature_rows(path, max_bytes)?;
            Ok((Box::new(rows), coords))
        }
        _ => {
            let mut bag = read_bag(path, max_bytes)?;
            let coords = bag.coords.take();
            Ok((Box::new(bag), coords))
        }
    }
}

/// The name of the encoder that made a feature file's features, where the file records it (the
/// `encoder` attribute of an h5 file's `features`); `.pt`, `.npy` and `.safetensors` bags carry
/// no such record.
pub fn recorded_encoder(path: &Path) -> Result<Option<String>> {
    match FeatureFormat::from_path(path)? {
        FeatureFormat::H5 => Ok(crate::h5::read_provenance(path)?.map(|p| p.encoder)),
        _ => Ok(None),
    }
}

/// Reads `[N, D]` from a feature file's header (h5, pt) or the whole file (npy, safetensors are
/// cheap to parse).
pub fn bag_shape(path: &Path) -> Result<(usize, usize)> {
    let shape = match FeatureFormat::from_path(path)? {
        FeatureFormat::H5 => return crate::h5::feature_shape(path),
        FeatureFormat::Pt => crate::pt::shape(path)?,
        FeatureFormat::Npy => {
            let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
            let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
                .map_err(|e| DataError::malformed(path, format!("not a .npy file: {e}")))?;
            npy.shape().iter().map(|&v| v as usize).collect()
        }
        FeatureFormat::Safetensors => {
            let b = crate::safetensors_io::read_bag(path, u64::MAX)?;
            vec![b.n, b.d]
        }
    };
    match shape.as_slice() {
        [n, d] | [1, n, d] => Ok((*n, *d)),
        other => Err(DataError::new(
            ErrorKind::Shape,
            path,
            format!("expected features of shape [N, D], found {other:?}"),
        )),
    }
}

/// Where a slide's feature file is, trying CLAM's `h5_files/` and `pt_files/` sub-folders and a
/// flat folder (TransMIL), in the order of `formats`.
pub fn locate(dir: &Path, slide_id: &str, formats: &[FeatureFormat]) -> Option<PathBuf> {
    for fmt in formats {
        let ext = fmt.extension();
        let sub = match fmt {
            FeatureFormat::H5 => Some("h5_files"),
            FeatureFormat::Pt => Some("pt_files"),
            _ => None,
        };
        let mut candidates = Vec::new();
        if let Some(sub) = sub {
            candidates.push(dir.join(sub).join(format!("{slide_id}.{ext}")));
        }
        candidates.push(dir.join(format!("{slide_id}.{ext}")));
        if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
            return Some(found);
        }
    }
    None
}
