//! Patch encoders: the registry ([`ENCODERS`], a list; one file per encoder with its
//! architecture, transform and reference) and the [`PatchEncoder`] interface extraction and
//! prediction run. An encoder is loaded from the user's weights file by the reference code's
//! parameter names; nothing is downloaded.
//!
//! ```no_run
//! let spec = gimp_extract::encoders::find("uni_v1").unwrap();
//! let enc = spec.load(std::path::Path::new("pytorch_model.bin"))?;
//! let rgb = vec![0u8; 2 * 3 * 224 * 224];
//! let features = enc.forward(&rgb, 2)?; // [2, 1024]
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod conch_v1;
pub mod conch_v15;
pub mod gigapath;
pub mod hoptimus0;
pub mod phikon_v2;
pub mod resnet50_trunc;
pub mod uni_v1;
pub mod uni_v2;
pub mod virchow2;

use crate::attn_pool::AttentionalPooler;
use crate::vit::{self, Vit, VitConfig};
use crate::weights::Params;
use candle_core::Tensor;
use gimp_io::{DataError, ErrorKind, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every encoder `extract --encoder` offers, in the order `--list` shows them.
pub static ENCODERS: &[&EncoderSpec] = &[
    &resnet50_trunc::SPEC,
    &uni_v1::SPEC,
    &uni_v2::SPEC,
    &conch_v1::SPEC,
    &conch_v15::SPEC,
    &virchow2::SPEC,
    &gigapath::SPEC,
    &hoptimus0::SPEC,
    &phikon_v2::SPEC,
];

/// The encoder called `name` (TRIDENT's names: `uni_v1`, `virchow2`, …).
pub fn find(name: &str) -> Option<&'static EncoderSpec> {
    ENCODERS.iter().copied().find(|s| s.name == name)
}

/// Names of every encoder, for error messages.
pub fn names() -> Vec<&'static str> {
    ENCODERS.iter().map(|s| s.name).collect()
}

/// Resampling filter of a transform's resize: PIL's filters, as torchvision applies them to PIL
/// images (run by [`gimp_slide::resample`], PIL's algorithm bit for bit).
pub use gimp_slide::resample::Filter;

/// What the reference's evaluation transform does to a square patch before the network:
/// resize to `resize` (when given), centre-crop to `crop` (when given), `/255`, then per-channel
/// mean and standard deviation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub resize: Option<u32>,
    pub filter: Filter,
    pub crop: Option<u32>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

impl Transform {
    /// Side the network sees; `None`: the patch as given (CLAM's ResNet50-trunc).
    pub fn input_size(&self) -> Option<u32> {
        self.crop.or(self.resize)
    }

    /// `u8 [B, 3, S, S]` → `(v / 255 − mean) / std`, as `ToTensor` then `Normalize`.
    pub fn normalise(&self, rgb: &[u8], side: usize) -> Vec<f32> {
        let plane = side * side;
        let mut out = vec![0f32; rgb.len()];
        out.par_chunks_mut(plane.max(1))
            .zip(rgb.par_chunks(plane.max(1)))
            .enumerate()
            .for_each(|(i, (o, s))| {
                let c = i % 3;
                let (m, sd) = (self.mean[c], self.std[c]);
                o.iter_mut()
                    .zip(s)
                    .for_each(|(o, &v)| *o = (v as f32 / 255.0 - m) / sd);
            });
        out
    }

    /// A line for `extract --list`.
    pub fn describe(&self) -> String {
        let f = match self.filter {
            Filter::Bilinear => "bilinear",
            Filter::Bicubic => "bicubic",
        };
        let mut s = match (self.resize, self.crop) {
            (Some(r), Some(c)) => format!("resize {r} ({f}), crop {c}"),
            (Some(r), None) => format!("resize {r} ({f})"),
            (None, Some(c)) => format!("crop {c}"),
            (None, None) => "as read".to_string(),
        };
        s.push_str(&format!(
            "; mean ({}, {}, {}) std ({}, {}, {})",
            self.mean[0], self.mean[1], self.mean[2], self.std[0], self.std[1], self.std[2]
        ));
        s
    }
}

/// How an encoder's network is built from its weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arch {
    /// timm's `VisionTransformer` by timm's parameter names.
    TimmVit(VitConfig),
    /// Hugging Face `Dinov2Model` by its parameter names, run by the same ViT body.
    HfDinov2(VitConfig),
    /// CONCH v1's CoCa image tower: a timm ViT trunk and an `nn.MultiheadAttention` pooler,
    /// by the CoCa model's names (`visual.*`).
    ConchV1,
    /// CONCH v1.5's tower: an iBOT-style ViT trunk and an einsum pooler (`trunk.*`,
    /// `attn_pool_contrast.*`).
    ConchV15,
    /// CLAM's ResNet-50 truncated after `layer3`, by torchvision's names.
    ResNet50Trunc,
}

/// One registry entry: everything about an encoder but its weights.
#[derive(Debug)]
pub struct EncoderSpec {
    /// TRIDENT's name, used on the command line and in `features_{name}/`.
    pub name: &'static str,
    /// What it is, for `--list`.
    pub summary: &'static str,
    /// Output width with the published weights.
    pub out_dim: usize,
    /// Embedding width and patch side of the published weights (tells files apart whose
    /// parameter names are the same).
    pub width: usize,
    pub patch: usize,
    pub arch: Arch,
    pub transform: Transform,
    /// Where the published weights are and which file to pass.
    pub weights: &'static str,
}

/// An encoder ready to run: `u8` RGB patches in, one feature vector per patch out.
pub trait PatchEncoder: Send + Sync {
    fn name(&self) -> &'static str;
    /// Feature width.
    fn out_dim(&self) -> usize;
    /// Side the network sees (`None`: the patch as given).
    fn input_size(&self) -> Option<u32>;
    fn transform(&self) -> &Transform;
    /// `rgb` `u8 [B, 3, S, S]` (channel-first, already resized and cropped by
    /// [`Transform`]) → features `[B, out_dim]`, row-major.
    fn forward_sized(&self, rgb: &[u8], batch: usize, side: usize)
        -> candle_core::Result<Vec<f32>>;
    /// [`forward_sized`](Self::forward_sized) at the encoder's input size (the side is read from
    /// the buffer's length when the encoder takes any size).
    fn forward(&self, rgb: &[u8], batch: usize) -> candle_core::Result<Vec<f32>> {
        let side = match self.input_size() {
            Some(s) => s as usize,
            None => ((rgb.len() / (3 * batch.max(1))) as f64).sqrt().round() as usize,
        };
        self.forward_sized(rgb, batch, side)
    }
}

impl EncoderSpec {
    /// The parameter names this encoder's file must hold, given the names a file holds (ViTs
    /// take their depth from the file).
    pub fn expected_keys(&self, have: &BTreeSet<String>) -> BTreeSet<String> {
        match self.arch {
            Arch::TimmVit(cfg) => cfg.expected_keys(vit::depth_of(have)),
            Arch::HfDinov2(_) => phikon_v2::expected_keys(have),
            Arch::ConchV1 => conch_v1::expected_keys(have),
            Arch::ConchV15 => conch_v15::expected_keys(have),
            Arch::ResNet50Trunc => resnet50_trunc::expected_keys(),
        }
    }

    /// The name this encoder reads a file's tensor by, or `None` for a tensor it ignores by
    /// design (ResNet50-trunc: past `layer3`; CONCH v1: the CoCa model's text side).
    fn own_name(&self, key: &str) -> Option<String> {
        match self.arch {
            Arch::ResNet50Trunc => resnet50_trunc::own_name(key),
            Arch::ConchV1 => conch_v1::own_name(key),
            _ => Some(key.to_string()),
        }
    }

    /// The names of `have` this encoder reads them by.
    fn own_names(&self, have: &BTreeSet<String>) -> BTreeSet<String> {
        have.iter().filter_map(|k| self.own_name(k)).collect()
    }

    /// Loads the encoder from the user's weights file (safetensors, or a `torch.save`d state
    /// dict: `pytorch_model.bin`, `.pth`, `.pt`).
    pub fn load(&'static self, path: &Path) -> Result<Box<dyn PatchEncoder>> {
        let map = gimp_io::weights::read(path)?;
        self.load_from(map, path)
    }

    /// [`load`](Self::load) from tensors already read (`path` names them in errors).
    pub fn load_from(
        &'static self,
        map: BTreeMap<String, Tensor>,
        path: &Path,
    ) -> Result<Box<dyn PatchEncoder>> {
        let map: BTreeMap<String, Tensor> = map
            .into_iter()
            .filter_map(|(k, v)| Some((self.own_name(&k)?, v)))
            .collect();
        let have: BTreeSet<String> = map.keys().cloned().collect();
        self.check_keys(&have, &map, path)?;
        let mut p = Params::new(map, path, self.name);
        match self.arch {
            Arch::TimmVit(cfg) => Ok(Box::new(VitEncoder {
                spec: self,
                vit: Vit::load(cfg, &mut p)?,
            })),
            Arch::HfDinov2(cfg) => {
                phikon_v2::to_timm_names(&mut p)?;
                Ok(Box::new(VitEncoder {
                    spec: self,
                    vit: Vit::load(cfg, &mut p)?,
                }))
            }
            Arch::ConchV1 => conch_v1::load(self, p),
            Arch::ConchV15 => conch_v15::load(self, p),
            Arch::ResNet50Trunc => resnet50_trunc::load(self, p),
        }
    }

    /// Missing or unexpected names → one error listing them and naming the encoder the file
    /// looks like.
    fn check_keys(
        &self,
        have: &BTreeSet<String>,
        map: &BTreeMap<String, Tensor>,
        path: &Path,
    ) -> Result<()> {
        let want = self.expected_keys(have);
        let missing: Vec<&String> = want.difference(have).collect();
        // ResNet files are often whole training checkpoints or carry more than the network
        // (the test fixture holds patches and reference outputs): only missing names count.
        let unexpected: Vec<&String> = match self.arch {
            Arch::ResNet50Trunc => Vec::new(),
            _ => have.difference(&want).collect(),
        };
        if missing.is_empty() && unexpected.is_empty() && !want.is_empty() {
            return Ok(());
        }
        let list = |v: &[&String]| {
            let mut s = v
                .iter()
                .take(12)
                .map(|k| k.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            if v.len() > 12 {
                s.push_str(&format!(", … ({} in all)", v.len()));
            }
            s
        };
        let mut msg = format!("not {} weights:", self.name);
        if !missing.is_empty() {
            msg.push_str(&format!(" missing [{}]", list(&missing)));
        }
        if !unexpected.is_empty() {
            msg.push_str(&format!(" unexpected [{}]", list(&unexpected)));
        }
        let like: Vec<String> = looks_like(have, map)
            .into_iter()
            .filter(|s| s.name != self.name)
            .map(|s| format!("{} (--encoder {})", s.summary, s.name))
            .collect();
        if like.is_empty() {
            msg.push_str("; it matches no other registered encoder");
        } else {
            msg.push_str(&format!("; the file looks like {}", like.join(" or ")));
        }
        Err(DataError::new(ErrorKind::Missing, path, msg))
    }
}

/// The registered encoders whose parameter names (then embedding width and patch side) match a
/// file's best, when at least half its names do; several when they tie (UNI and Prov-GigaPath
/// share every name and differ in width).
pub fn looks_like(
    have: &BTreeSet<String>,
    map: &BTreeMap<String, Tensor>,
) -> Vec<&'static EncoderSpec> {
    let patch_shape = [
        "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.weight",
        "visual.trunk.patch_embed.proj.weight",
        "trunk.patch_embed.proj.weight",
    ]
    .iter()
    .find_map(|k| map.get(*k))
    .map(|t| t.dims().to_vec());
    let scored: Vec<(f64, &'static EncoderSpec)> = ENCODERS
        .iter()
        .map(|spec| {
            let have = &spec.own_names(have);
            let want = spec.expected_keys(have);
            let common = want.intersection(have).count() as f64;
            let union = want.union(have).count().max(1) as f64;
            let mut score = common / union;
            if let Some(s) = &patch_shape {
                if score >= 0.5 && s.len() == 4 && s[0] == spec.width && s[3] == spec.patch {
                    score += 1.0;
                }
            }
            (score, *spec)
        })
        .filter(|(s, _)| *s >= 0.5)
        .collect();
    let top = scored.iter().map(|(s, _)| *s).fold(0.0, f64::max);
    scored
        .into_iter()
        .filter(|(s, _)| *s >= top - 1e-9)
        .map(|(_, spec)| spec)
        .collect()
}

/// A ViT trunk whose tokens an attentional pooler reduces (CONCH v1 and v1.5).
pub(crate) struct PooledVitEncoder {
    pub spec: &'static EncoderSpec,
    pub vit: Vit,
    pub pooler: AttentionalPooler,
}

impl PatchEncoder for PooledVitEncoder {
    fn name(&self) -> &'static str {
        self.spec.name
    }

    fn out_dim(&self) -> usize {
        self.pooler.out_dim()
    }

    fn input_size(&self) -> Option<u32> {
        self.spec.transform.input_size()
    }

    fn transform(&self) -> &Transform {
        &self.spec.transform
    }

    fn forward_sized(
        &self,
        rgb: &[u8],
        batch: usize,
        side: usize,
    ) -> candle_core::Result<Vec<f32>> {
        check_input(self.spec, rgb, batch, side)?;
        let x = self.spec.transform.normalise(rgb, side);
        let tokens = self
            .vit
            .forward(&x, batch, side)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.spec.name)))?;
        Ok(self
            .pooler
            .forward(&tokens, batch, self.vit.tokens_for(side)))
    }
}

fn check_input(
    spec: &EncoderSpec,
    rgb: &[u8],
    batch: usize,
    side: usize,
) -> candle_core::Result<()> {
    if rgb.len() != batch * 3 * side * side {
        candle_core::bail!(
            "{}: {} bytes for {batch} patches of 3 × {side} × {side}",
            spec.name,
            rgb.len()
        );
    }
    Ok(())
}

/// A ViT-family encoder: the shared body with a registry entry's transform and pooling.
struct VitEncoder {
    spec: &'static EncoderSpec,
    vit: Vit,
}

impl PatchEncoder for VitEncoder {
    fn name(&self) -> &'static str {
        self.spec.name
    }

    fn out_dim(&self) -> usize {
        self.vit.out_dim()
    }

    fn input_size(&self) -> Option<u32> {
        self.spec.transform.input_size()
    }

    fn transform(&self) -> &Transform {
        &self.spec.transform
    }

    fn forward_sized(
        &self,
        rgb: &[u8],
        batch: usize,
        side: usize,
    ) -> candle_core::Result<Vec<f32>> {
        check_input(self.spec, rgb, batch, side)?;
        if matches!(self.spec.arch, Arch::HfDinov2(_)) && side != self.vit.native_size() {
            // `transformers` resamples position embeddings its own way (no antialiasing, a
            // scale factor), which the timm-style resampling would not reproduce.
            candle_core::bail!(
                "{}: runs at {} px only (got {side})",
                self.spec.name,
                self.vit.native_size()
            );
        }
        let x = self.spec.transform.normalise(rgb, side);
        self.vit
            .forward(&x, batch, side)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", self.spec.name)))
    }
}
