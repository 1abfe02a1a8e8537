//! The patch encoder of a prediction: the one place that turns a slide's patches into features,
//! with the registered encoder (`gimp_extract::encoders`) the model was trained on.

use gimp_extract::encoders::{self, PatchEncoder};
use gimp_extract::extract::{FeatureRun, Layout};
use gimp_io::h5::PatchFile;
use gimp_train::compat::FeatureKind;
use std::path::{Path, PathBuf};

/// The encoder assumed for a model whose checkpoint records no encoder (ResNet50-trunc, what
/// `gimp-rs extract` wrote before encoders were recorded).
pub const DEFAULT_ENCODER: &str = gimp_train::compat::LEGACY_ENCODER;

pub struct SlideEncoder {
    net: Box<dyn PatchEncoder>,
    weights: PathBuf,
    weights_sha256: String,
    /// Patches per forward pass.
    pub batch: usize,
}

impl SlideEncoder {
    /// Registered encoder `name` (`gimp-rs extract --list`) from the user's weights file.
    pub fn open(name: &str, weights: &Path, batch: usize) -> Result<Self, crate::PredictError> {
        let spec = encoders::find(name).ok_or_else(|| {
            crate::PredictError::Msg(format!(
                "unknown encoder '{name}'; known: {}",
                encoders::names().join(", ")
            ))
        })?;
        let net = spec.load(weights)?;
        Ok(Self {
            net,
            weights: weights.to_path_buf(),
            weights_sha256: gimp_io::weights::sha256_hex(weights)?,
            batch,
        })
    }

    pub fn name(&self) -> &'static str {
        self.net.name()
    }

    /// The features it writes: its width and name.
    pub fn kind(&self) -> FeatureKind {
        FeatureKind {
            width: self.net.out_dim(),
            encoder: Some(self.name().to_string()),
        }
    }

    pub fn weights(&self) -> &Path {
        &self.weights
    }

    fn run<'a>(&'a self, out: &'a Path) -> FeatureRun<'a> {
        FeatureRun {
            encoder: self.net.as_ref(),
            weights_sha256: &self.weights_sha256,
            layout: Layout::Clam,
            batch: self.batch,
            input_size: None,
            out,
            pt: false,
        }
    }

    /// Whether slide `id`'s features in `out` are complete (a rerun skips them).
    pub fn is_done(&self, out: &Path, id: &str, n_patches: usize) -> bool {
        self.run(out).is_done(id, n_patches)
    }

    /// Extracts the features of `slide`'s patches into `out`'s `h5_files/{id}.h5`.
    pub fn extract(
        &self,
        out: &Path,
        slide: &Path,
        patches: &PatchFile,
        patch_path: &Path,
        progress: impl FnMut(usize),
    ) -> gimp_io::Result<usize> {
        self.run(out).slide(slide, patches, patch_path, progress)
    }
}
