//! UNI (Chen et al., Nature Medicine 2024): ViT-L/16 with LayerScale, class token output.
//!
//! TRIDENT's `UNIInferenceEncoder` (`trident/patch_encoder_models/load.py`):
//! `timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
//! num_classes=0, dynamic_img_size=True)`, weights `MahmoodLab/UNI` `pytorch_model.bin` loaded
//! strictly; transform `Resize(224)`, `CenterCrop(224)`, ImageNet mean/std. timm's default
//! `global_pool='token'` returns the normalised class token (1024-d).

use super::{Arch, EncoderSpec, Filter, Transform, IMAGENET_MEAN, IMAGENET_STD};
use crate::vit::{Mlp, Pooling, PosResample, VitConfig};

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
    name: "uni_v1",
    summary: "UNI (ViT-L/16, LayerScale)",
    out_dim: 1024,
    width: 1024,
    patch: 16,
    arch: Arch::TimmVit(CONFIG),
    transform: Transform {
        resize: Some(224),
        filter: Filter::Bilinear,
        crop: Some(224),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "huggingface.co/MahmoodLab/UNI: pytorch_model.bin",
};
