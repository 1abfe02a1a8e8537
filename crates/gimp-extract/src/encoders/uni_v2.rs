//! UNI2-h: ViT-H/14 (1536 wide, 24 blocks, 24 heads) with LayerScale, packed SwiGLU MLPs and
//! 8 register tokens, class token output.
//!
//! TRIDENT's `UNIv2InferenceEncoder`: `timm.create_model("vit_giant_patch14_224",
//! img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
//! mlp_ratio=2.66667*2, num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked,
//! act_layer=SiLU, reg_tokens=8, dynamic_img_size=True)`, weights `MahmoodLab/UNI2-h`
//! `pytorch_model.bin`; transform `Resize(224)`, `CenterCrop(224)`, ImageNet mean/std.

use super::{Arch, EncoderSpec, Filter, Transform, IMAGENET_MEAN, IMAGENET_STD};
use crate::vit::{Mlp, Pooling, PosResample, VitConfig};

pub const CONFIG: VitConfig = VitConfig {
    patch: 14,
    head_dim: 64,
    reg_tokens: 8,
    no_embed_class: true,
    layer_scale: true,
    mlp: Mlp::SwiGluPacked,
    pooling: Pooling::ClassToken,
    eps: 1e-6,
    pos_resample: PosResample::Antialiased,
};

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "uni_v2",
    summary: "UNI2-h (ViT-H/14, SwiGLU, 8 registers)",
    out_dim: 1536,
    width: 1536,
    patch: 14,
    arch: Arch::TimmVit(CONFIG),
    transform: Transform {
        resize: Some(224),
        filter: Filter::Bilinear,
        crop: Some(224),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "huggingface.co/MahmoodLab/UNI2-h: pytorch_model.bin",
};
