//! H-optimus-0 (Bioptimus): ViT-g/14 (1536 wide, 40 blocks, 24 heads) with LayerScale, packed
//! SwiGLU MLPs and 4 register tokens, its own normalisation; class token output.
//!
//! TRIDENT's `HOptimus0InferenceEncoder`: `timm.create_model("vit_giant_patch14_reg4_dinov2",
//! num_classes=0, img_size=224, global_pool="token", init_values=1e-5,
//! dynamic_img_size=True)`; timm's definition adds `mlp_ratio=2.66667*2,
//! mlp_layer=SwiGLUPacked, act_layer=SiLU, reg_tokens=4, no_embed_class=True`. Transform
//! `Resize(224)` (bilinear, no crop), mean (0.707223, 0.578729, 0.703617), std (0.211883,
//! 0.230117, 0.177517).

use super::{Arch, EncoderSpec, Filter, Transform};
use crate::vit::{Mlp, Pooling, PosResample, VitConfig};

pub const CONFIG: VitConfig = VitConfig {
    patch: 14,
    head_dim: 64,
    reg_tokens: 4,
    no_embed_class: true,
    layer_scale: true,
    mlp: Mlp::SwiGluPacked,
    pooling: Pooling::ClassToken,
    eps: 1e-6,
    pos_resample: PosResample::Antialiased,
};

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "hoptimus0",
    summary: "H-optimus-0 (ViT-g/14, SwiGLU, 4 registers, own normalisation)",
    out_dim: 1536,
    width: 1536,
    patch: 14,
    arch: Arch::TimmVit(CONFIG),
    transform: Transform {
        resize: Some(224),
        filter: Filter::Bilinear,
        crop: None,
        mean: [0.707223, 0.578729, 0.703617],
        std: [0.211883, 0.230117, 0.177517],
    },
    weights: "huggingface.co/bioptimus/H-optimus-0: pytorch_model.bin",
};
