//! Phikon-v2 (Owkin): DINOv2 ViT-L/16 with LayerScale, saved by Hugging Face `transformers`
//! (`Dinov2Model`); output `last_hidden_state[:, 0]`, the normalised class token (1024-d).
//!
//! TRIDENT's `Phikonv2InferenceEncoder`: `AutoModel.from_pretrained("owkin/phikon-v2")`,
//! forward `model(x).last_hidden_state[:, 0, :]`; transform `Resize(224)`, `CenterCrop(224)`,
//! ImageNet mean/std. The published file has `transformers` 4's names
//! (`attention.attention.query`, `attention.output.dense`); `transformers` 5 saves
//! `attention.q_proj` … `attention.o_proj`; both are read. `transformers`' `Dinov2Layer` is the same pre-norm block as timm's (separate
//! query / key / value projections, `layer_scale1.lambda1`, exact GELU, LayerNorm ε 1e-6), so the
//! file's names are mapped onto timm's and the shared body runs it. `embeddings.mask_token` is
//! only used in pre-training and is read and dropped. At 224 (the only size the transform gives)
//! no position-embedding resampling happens; `transformers` resamples differently from timm, so
//! other sizes are not offered.

use super::{Arch, EncoderSpec, Filter, Transform, IMAGENET_MEAN, IMAGENET_STD};
use crate::vit::{Mlp, Pooling, PosResample, VitConfig};
use crate::weights::Params;
use candle_core::Tensor;
use gimp_io::{DataError, ErrorKind, Result};
use std::collections::BTreeSet;

pub const CONFIG: VitConfig = VitConfig {
    patch: 16,
    head_dim: 64,
    reg_tokens: 0,
    no_embed_class: false,
    layer_scale: true,
    mlp: Mlp::Gelu,
    pooling: Pooling::ClassToken,
    eps: 1e-6,
    pos_resample: PosResample::Antialiased,
};

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "phikon_v2",
    summary: "Phikon-v2 (DINOv2 ViT-L/16, Hugging Face names)",
    out_dim: 1024,
    width: 1024,
    patch: 16,
    arch: Arch::HfDinov2(CONFIG),
    transform: Transform {
        resize: Some(224),
        filter: Filter::Bilinear,
        crop: Some(224),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "huggingface.co/owkin/phikon-v2: model.safetensors",
};

const LAYER: &str = "encoder.layer.";

/// Number of `encoder.layer.N.` groups among `keys`.
pub fn depth_of(keys: &BTreeSet<String>) -> usize {
    keys.iter()
        .filter_map(|k| {
            k.strip_prefix(LAYER)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// The two generations of `transformers`' attention names: query, key, value, output.
const ATTENTION_NAMES: [[&str; 4]; 2] = [
    [
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
        "attention.output.dense",
    ],
    [
        "attention.q_proj",
        "attention.k_proj",
        "attention.v_proj",
        "attention.o_proj",
    ],
];

/// Which attention names a file uses (`transformers` 5's when it has any of them).
fn attention_names(keys: &BTreeSet<String>) -> [&'static str; 4] {
    if keys.iter().any(|k| k.contains(".attention.q_proj.")) {
        ATTENTION_NAMES[1]
    } else {
        ATTENTION_NAMES[0]
    }
}

/// Per-block names besides attention: (Hugging Face, timm).
const BLOCK_NAMES: [(&str, &str); 10] = [
    ("norm1.weight", "norm1.weight"),
    ("norm1.bias", "norm1.bias"),
    ("layer_scale1.lambda1", "ls1.gamma"),
    ("norm2.weight", "norm2.weight"),
    ("norm2.bias", "norm2.bias"),
    ("mlp.fc1.weight", "mlp.fc1.weight"),
    ("mlp.fc1.bias", "mlp.fc1.bias"),
    ("mlp.fc2.weight", "mlp.fc2.weight"),
    ("mlp.fc2.bias", "mlp.fc2.bias"),
    ("layer_scale2.lambda1", "ls2.gamma"),
];

const TOP_NAMES: [(&str, &str); 6] = [
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    (
        "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.weight",
    ),
    (
        "embeddings.patch_embeddings.projection.bias",
        "patch_embed.proj.bias",
    ),
    ("layernorm.weight", "norm.weight"),
    ("layernorm.bias", "norm.bias"),
];

/// The names a `Dinov2Model` with as many layers as `have` saves (in `have`'s generation of
/// attention names).
pub fn expected_keys(have: &BTreeSet<String>) -> BTreeSet<String> {
    let attn = attention_names(have);
    let mut k: BTreeSet<String> = TOP_NAMES.iter().map(|(hf, _)| hf.to_string()).collect();
    k.insert("embeddings.mask_token".into());
    for i in 0..depth_of(have) {
        for (hf, _) in BLOCK_NAMES {
            k.insert(format!("{LAYER}{i}.{hf}"));
        }
        for part in attn {
            for wb in ["weight", "bias"] {
                k.insert(format!("{LAYER}{i}.{part}.{wb}"));
            }
        }
    }
    k
}

/// Renames the tensors to timm's names and stacks query, key and value into `attn.qkv`.
pub fn to_timm_names(p: &mut Params) -> Result<()> {
    let keys = p.keys();
    let (depth, attn) = (depth_of(&keys), attention_names(&keys));
    p.remove("embeddings.mask_token");
    for (hf, timm) in TOP_NAMES {
        p.rename(hf, timm);
    }
    for i in 0..depth {
        for (hf, timm) in BLOCK_NAMES {
            p.rename(&format!("{LAYER}{i}.{hf}"), &format!("blocks.{i}.{timm}"));
        }
        for wb in ["weight", "bias"] {
            p.rename(
                &format!("{LAYER}{i}.{}.{wb}", attn[3]),
                &format!("blocks.{i}.attn.proj.{wb}"),
            );
            let mut parts = Vec::with_capacity(3);
            for part in &attn[..3] {
                let name = format!("{LAYER}{i}.{part}.{wb}");
                parts.push(p.remove(&name).ok_or_else(|| {
                    DataError::new(ErrorKind::Missing, p.path(), format!("no tensor '{name}'"))
                })?);
            }
            let qkv = Tensor::cat(&parts, 0).map_err(|e| {
                DataError::new(
                    ErrorKind::Shape,
                    p.path(),
                    format!("{LAYER}{i}: query, key and value {wb}s differ in shape: {e}"),
                )
            })?;
            p.insert(format!("blocks.{i}.attn.qkv.{wb}"), qkv);
        }
    }
    Ok(())
}
