//! Prov-GigaPath tile encoder: ViT-g with 16-pixel patches (1536 wide, 40 blocks, 24 heads),
//! LayerScale and packed SwiGLU MLPs, class token output.
//!
//! TRIDENT's `GigaPathInferenceEncoder` (local weights): `timm.create_model(
//! "vit_giant_patch14_dinov2", img_size=224, in_chans=3, patch_size=16, embed_dim=1536,
//! depth=40, num_heads=24, mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True)`; timm's
//! `vit_giant_patch14_dinov2` definition adds `init_values=1e-5, mlp_layer=SwiGLUPacked,
//! act_layer=SiLU` (fc1 8192 → fc2 from 4096). Transform `Resize(256, BICUBIC)`,
//! `CenterCrop(224)`, ImageNet mean/std.

use super::{Arch, EncoderSpec, Filter, Transform, IMAGENET_MEAN, IMAGENET_STD};
use crate::vit::{Mlp, Pooling, PosResample, VitConfig};

pub const CONFIG: VitConfig = VitConfig {
    patch: 16,
    head_dim: 64,
    reg_tokens: 0,
    no_embed_class: false,
    layer_scale: true,
    mlp: Mlp::SwiGluPacked,
    pooling: Pooling::ClassToken,
    eps: 1e-6,
    pos_resample: PosResample::Antialiased,
};

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "gigapath",
    summary: "Prov-GigaPath tile encoder (ViT-g/16, SwiGLU)",
    out_dim: 1536,
    width: 1536,
    patch: 16,
    arch: Arch::TimmVit(CONFIG),
    transform: Transform {
        resize: Some(256),
        filter: Filter::Bicubic,
        crop: Some(224),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "huggingface.co/prov-gigapath/prov-gigapath: pytorch_model.bin",
};
