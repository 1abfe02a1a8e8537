//! The patch encoder of a prediction: the one place that knows which network turns patches into
//! features (ResNet50-trunc today, through `gimp_extract`'s `FeatureRun`). When encoders are
//! chosen from a registry, this file is what changes.

use gimp_extract::extract::FeatureRun;
use gimp_extract::resnet::ResNet50Trunc;
use gimp_io::h5::PatchFile;
use gimp_train::compat::FeatureKind;
use std::path::{Path, PathBuf};

/// The name ResNet50-trunc's features are recorded under (the `encoder` attribute of a feature
/// file; `gimp_train::compat::LEGACY_ENCODER` for files that lack it).
pub const RESNET50_TRUNC: &str = gimp_train::compat::LEGACY_ENCODER;

pub struct SlideEncoder {
    net: ResNet50Trunc,
    weights: PathBuf,
    /// Patches per forward pass.
    pub batch: usize,
}

impl SlideEncoder {
    /// ResNet50-trunc from torchvision-named weights (safetensors or a `.pth` state dict).
    pub fn open(weights: &Path, batch: usize) -> Result<Self, crate::PredictError> {
        let tensors = gimp_io::weights::read(weights)?;
        let net = ResNet50Trunc::new(tensors).map_err(|e| {
            crate::PredictError::Msg(format!(
                "{}: not ResNet-50 weights by torchvision's names ({e})",
                weights.display()
            ))
        })?;
        Ok(Self {
            net,
            weights: weights.to_path_buf(),
            batch,
        })
    }

    pub fn name(&self) -> &'static str {
        RESNET50_TRUNC
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
            net: &self.net,
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
