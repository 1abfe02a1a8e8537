//! CONCH v1 (Lu et al., Nature Medicine 2024): the image tower of a CoCa model — a timm ViT-B/16
//! trunk at 448 px, then an attentional pooler with one query and a LayerNorm; 512-d.
//!
//! TRIDENT's `Conchv1InferenceEncoder` (`trident/patch_encoder_models/load.py`):
//! `conch.open_clip_custom.create_model_from_pretrained('conch_ViT-B-16', checkpoint_path)`,
//! forward `model.encode_image(x, proj_contrast=False, normalize=False)`. In mahmoodlab/CONCH,
//! `conch_ViT-B-16.json` gives `embed_dim` 512, `image_size` 448, patch 16,
//! `attentional_pool_contrast` with 8 heads and 1 query; `coca_model._build_vision_tower` builds
//! the trunk as `timm VisionTransformer(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4,
//! img_size=448, patch_size=16, num_classes=0, dynamic_img_size=True)` run by its
//! `forward_features` (every token after the final LayerNorm); `vision_tower.VisualModel.
//! forward_no_head` pools with `attn_pool_contrast(x)[:, 0]` — an `nn.MultiheadAttention(512, 8,
//! kdim=768, vdim=768)` whose query is `ln_q(query)` and whose keys and values are `ln_k(x)` —
//! then `ln_contrast`, and stops: `proj_contrast` is not applied and the output is not
//! normalised. The transform (`open_clip_custom/transform.py`): `Resize(448, BICUBIC)`,
//! `CenterCrop(448)`, OpenAI CLIP's mean and std.
//!
//! The weights file is the whole CoCa model (`pytorch_model.bin`), loaded non-strictly by the
//! reference: the text tower (`text.*`), the captioning decoder (`text_decoder.*`),
//! `logit_scale` and the captioning pooler (`visual.attn_pool_caption.*`, `visual.ln_caption.*`)
//! are not used by the image embedding and are dropped unread; `visual.proj_contrast` is
//! expected (it is part of the tower) but, as in TRIDENT, not applied.

use super::{Arch, EncoderSpec, Filter, PatchEncoder, PooledVitEncoder, Transform};
use crate::attn_pool::{AttentionalPooler, PoolerWeights};
use crate::vit::{self, Mlp, Pooling, PosResample, Vit, VitConfig};
use crate::weights::Params;
use gimp_io::Result;
use std::collections::BTreeSet;

pub const CONFIG: VitConfig = VitConfig {
    patch: 16,
    head_dim: 64,
    reg_tokens: 0,
    no_embed_class: false,
    layer_scale: false,
    mlp: Mlp::Gelu,
    pooling: Pooling::Tokens,
    eps: 1e-6,
    pos_resample: PosResample::Antialiased,
};

/// Heads of the attentional pooler (`attn_pooler_heads`).
pub const POOLER_HEADS: usize = 8;

/// OpenAI CLIP's normalisation (`OPENAI_DATASET_MEAN` / `_STD`), which CONCH v1 keeps.
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "conch_v1",
    summary: "CONCH v1 (CoCa ViT-B/16 at 448 px, attentional pooler)",
    out_dim: 512,
    width: 768,
    patch: 16,
    arch: Arch::ConchV1,
    transform: Transform {
        resize: Some(448),
        filter: Filter::Bicubic,
        crop: Some(448),
        mean: OPENAI_MEAN,
        std: OPENAI_STD,
    },
    weights: "huggingface.co/MahmoodLab/CONCH: pytorch_model.bin",
};

const TRUNK: &str = "visual.trunk.";
const POOL: &str = "visual.attn_pool_contrast.";

/// Parts of the CoCa file the image embedding does not use.
const UNUSED: [&str; 5] = [
    "text.",
    "text_decoder.",
    "logit_scale",
    "visual.attn_pool_caption.",
    "visual.ln_caption.",
];

/// The name CONCH v1 reads a file's tensor by, or `None` for the parts it drops.
pub fn own_name(key: &str) -> Option<String> {
    (!UNUSED.iter().any(|u| key.starts_with(u))).then(|| key.to_string())
}

/// The names of the tower with as many trunk blocks as `have`.
pub fn expected_keys(have: &BTreeSet<String>) -> BTreeSet<String> {
    let mut k: BTreeSet<String> = CONFIG
        .expected_keys(vit::depth_under(have, TRUNK))
        .into_iter()
        .map(|n| format!("{TRUNK}{n}"))
        .collect();
    for n in [
        "query",
        "attn.q_proj_weight",
        "attn.k_proj_weight",
        "attn.v_proj_weight",
        "attn.in_proj_bias",
        "attn.out_proj.weight",
        "attn.out_proj.bias",
        "ln_q.weight",
        "ln_q.bias",
        "ln_k.weight",
        "ln_k.bias",
    ] {
        k.insert(format!("{POOL}{n}"));
    }
    for n in [
        "visual.ln_contrast.weight",
        "visual.ln_contrast.bias",
        "visual.proj_contrast",
    ] {
        k.insert(n.to_string());
    }
    k
}

/// Builds the tower from the file's tensors (names checked by the caller).
pub fn load(spec: &'static EncoderSpec, mut p: Params) -> Result<Box<dyn PatchEncoder>> {
    p.strip_prefix(TRUNK);
    let vit = Vit::load(CONFIG, &mut p)?;
    let c = vit.dim();
    let n = |s: &str| format!("{POOL}{s}");
    let (qs, query) = p.take_any(&n("query"))?;
    if qs.len() != 2 || qs[0] == 0 || qs[1] == 0 || !qs[1].is_multiple_of(POOLER_HEADS) {
        return Err(p.shape_error(
            &n("query"),
            &qs,
            &format!("[queries, D] with D divisible by {POOLER_HEADS} heads"),
        ));
    }
    let dm = qs[1];
    // nn.MultiheadAttention packs the query, key and value biases in one vector.
    let bias = p.take(&n("attn.in_proj_bias"), &[3 * dm])?;
    let weights = PoolerWeights {
        query,
        ln_q: (
            p.take(&n("ln_q.weight"), &[dm])?,
            p.take(&n("ln_q.bias"), &[dm])?,
        ),
        ln_k: (
            p.take(&n("ln_k.weight"), &[c])?,
            p.take(&n("ln_k.bias"), &[c])?,
        ),
        w_q: p.take(&n("attn.q_proj_weight"), &[dm, dm])?,
        w_k: p.take(&n("attn.k_proj_weight"), &[dm, c])?,
        w_v: p.take(&n("attn.v_proj_weight"), &[dm, c])?,
        w_o: p.take(&n("attn.out_proj.weight"), &[dm, dm])?,
        b_q: Some(bias[..dm].to_vec()),
        b_v: Some(bias[2 * dm..].to_vec()),
        b_o: Some(p.take(&n("attn.out_proj.bias"), &[dm])?),
        ln_out: (
            p.take("visual.ln_contrast.weight", &[dm])?,
            p.take("visual.ln_contrast.bias", &[dm])?,
        ),
        heads: POOLER_HEADS,
    };
    // Part of the tower, checked, but not applied (`proj_contrast=False`).
    let (ps, _) = p.take_any("visual.proj_contrast")?;
    if ps.len() != 2 || ps[0] != dm {
        return Err(p.shape_error("visual.proj_contrast", &ps, &format!("[{dm}, E]")));
    }
    Ok(Box::new(PooledVitEncoder {
        spec,
        vit,
        pooler: AttentionalPooler::new(weights, c, dm, dm),
    }))
}
