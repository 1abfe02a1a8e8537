//! Virchow 2 (Paige): ViT-H/14 (1280 wide, 32 blocks, 16 heads) with LayerScale, packed SwiGLU
//! MLPs and 4 register tokens; output the class token ⊕ the mean of the patch tokens (2560-d).
//!
//! TRIDENT's `Virchow2InferenceEncoder`: `timm.create_model("vit_huge_patch14_224",
//! img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375,
//! global_pool="", dynamic_img_size=True, mlp_layer=SwiGLUPacked, act_layer=SiLU)`; forward
//! `cat([out[:, 0], out[:, 5:].mean(1)])` (5 = class + 4 registers). `no_embed_class` is left
//! False, so the position embeddings cover the class and register tokens. Transform
//! `Resize(224, BICUBIC)` (no crop), ImageNet mean/std.

use super::{Arch, EncoderSpec, Filter, Transform, IMAGENET_MEAN, IMAGENET_STD};
use crate::vit::{Mlp, Pooling, PosResample, VitConfig};

pub const CONFIG: VitConfig = VitConfig {
    patch: 14,
    head_dim: 80,
    reg_tokens: 4,
    no_embed_class: false,
    layer_scale: true,
    mlp: Mlp::SwiGluPacked,
    pooling: Pooling::ClassTokenAndPatchMean,
    eps: 1e-6,
    pos_resample: PosResample::Antialiased,
};

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "virchow2",
    summary: "Virchow2 (ViT-H/14, SwiGLU, 4 registers; class ⊕ mean of patch tokens)",
    out_dim: 2560,
    width: 1280,
    patch: 14,
    arch: Arch::TimmVit(CONFIG),
    transform: Transform {
        resize: Some(224),
        filter: Filter::Bicubic,
        crop: None,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "huggingface.co/paige-ai/Virchow2: pytorch_model.bin",
};
