//! CONCH v1.5 (the patch encoder of TITAN, Ding et al. 2024): a ViT-L/16 trunk with LayerScale
//! run at 448 px, then an attentional pooler with one query and a LayerNorm; 768-d.
//!
//! TRIDENT's `Conchv15InferenceEncoder` builds its own tower
//! (`trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py`, the same as TITAN's
//! `return_conch()`): `CONCHVisionTower` = `vit_large(init_values=1.0)` — an iBOT/timm-style
//! `VisionTransformer` (embedding 1024, 24 blocks, 16 heads, MLP ×4, GELU, `qkv_bias`, LayerNorm
//! ε 1e-6) built at the default `img_size=224`, so its position embeddings cover a 14 × 14 grid
//! — then `AttentionalPooler(d_model=768, context_dim=1024, n_head=8, n_queries=1)` (LayerNorms
//! on the tokens and the query, bias-free `to_q`, `to_kv` (keys, then values), `to_out`) and
//! `ln_contrast`. Forward: `trunk.forward_features` (every token after the final LayerNorm),
//! `attn_pool_contrast(x)[:, 0]`, `ln_contrast`. `create_model_from_pretrained(img_size=448)`
//! loads `pytorch_model_vision.bin` strictly, first resizing a `trunk.pos_embed` of another grid
//! to 14 × 14 (timm's `resample_abs_pos_embed`, bilinear, no antialiasing); at 448 px the trunk's
//! `interpolate_pos_encoding` resamples the 14 × 14 grid to 28 × 28 on every call (bicubic,
//! scale factor `28.1 / 14`). Transform `Resize(448, BILINEAR)`, `CenterCrop(448)`, ImageNet
//! mean and std. TRIDENT runs it in float16; gimp-rs in float32.

use super::{
    Arch, EncoderSpec, Filter, PatchEncoder, PooledVitEncoder, Transform, IMAGENET_MEAN,
    IMAGENET_STD,
};
use crate::attn_pool::{AttentionalPooler, PoolerWeights};
use crate::vit::{self, Mlp, Pooling, PosResample, Vit, VitConfig};
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
    pooling: Pooling::Tokens,
    eps: 1e-6,
    pos_resample: PosResample::ScaleFactorPlusTenth,
};

/// The trunk's position grid: `vit_large` at its default 224 px, whatever the file holds.
pub const POS_GRID: usize = 14;

/// Heads of the attentional pooler.
pub const POOLER_HEADS: usize = 8;

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "conch_v15",
    summary: "CONCH v1.5 (ViT-L/16 at 448 px, LayerScale, attentional pooler)",
    out_dim: 768,
    width: 1024,
    patch: 16,
    arch: Arch::ConchV15,
    transform: Transform {
        resize: Some(448),
        filter: Filter::Bilinear,
        crop: Some(448),
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "huggingface.co/MahmoodLab/conchv1_5: pytorch_model_vision.bin",
};

const TRUNK: &str = "trunk.";
const POOL: &str = "attn_pool_contrast.";

/// The names of the tower with as many trunk blocks as `have`.
pub fn expected_keys(have: &BTreeSet<String>) -> BTreeSet<String> {
    let mut k: BTreeSet<String> = CONFIG
        .expected_keys(vit::depth_under(have, TRUNK))
        .into_iter()
        .map(|n| format!("{TRUNK}{n}"))
        .collect();
    for n in [
        "query",
        "ln_k.weight",
        "ln_k.bias",
        "ln_q.weight",
        "ln_q.bias",
        "to_q.weight",
        "to_kv.weight",
        "to_out.weight",
    ] {
        k.insert(format!("{POOL}{n}"));
    }
    k.insert("ln_contrast.weight".into());
    k.insert("ln_contrast.bias".into());
    k
}

/// Builds the tower from the file's tensors (names checked by the caller).
pub fn load(spec: &'static EncoderSpec, mut p: Params) -> Result<Box<dyn PatchEncoder>> {
    p.strip_prefix(TRUNK);
    resize_pos_embed(&mut p)?;
    let vit = Vit::load(CONFIG, &mut p)?;
    let c = vit.dim();
    let n = |s: &str| format!("{POOL}{s}");
    let (qs, query) = p.take_any(&n("query"))?;
    if qs.len() != 2 || qs[0] == 0 || qs[1] == 0 {
        return Err(p.shape_error(&n("query"), &qs, "[queries, D]"));
    }
    let dm = qs[1];
    let (ws, w_q) = p.take_any(&n("to_q.weight"))?;
    if ws.len() != 2 || ws[1] != dm || ws[0] == 0 || !ws[0].is_multiple_of(POOLER_HEADS) {
        return Err(p.shape_error(
            &n("to_q.weight"),
            &ws,
            &format!("[inner, {dm}] with inner divisible by {POOLER_HEADS} heads"),
        ));
    }
    let inner = ws[0];
    // `to_kv` gives the keys, then the values (`chunk(2, dim=-1)`).
    let kv = p.take(&n("to_kv.weight"), &[2 * inner, c])?;
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
        w_q,
        w_k: kv[..inner * c].to_vec(),
        w_v: kv[inner * c..].to_vec(),
        w_o: p.take(&n("to_out.weight"), &[dm, inner])?,
        b_q: None,
        b_v: None,
        b_o: None,
        ln_out: (
            p.take("ln_contrast.weight", &[dm])?,
            p.take("ln_contrast.bias", &[dm])?,
        ),
        heads: POOLER_HEADS,
    };
    Ok(Box::new(PooledVitEncoder {
        spec,
        vit,
        pooler: AttentionalPooler::new(weights, c, dm, inner),
    }))
}

/// A `pos_embed` of another grid is resized to [`POS_GRID`] as the reference's loader does
/// (bilinear, no antialiasing; the class token's row kept).
fn resize_pos_embed(p: &mut Params) -> Result<()> {
    let Some(shape) = p.shape("pos_embed") else {
        return Ok(()); // Vit::load reports the missing tensor.
    };
    let (rows, d) = match shape[..] {
        [1, rows, d] if rows > 1 && d > 0 => (rows, d),
        _ => return Ok(()), // Vit::load reports the shape.
    };
    let grid = ((rows - 1) as f64).sqrt().round() as usize;
    if grid == POS_GRID || grid * grid + 1 != rows {
        return Ok(());
    }
    let (_, pos) = p.take_any("pos_embed")?;
    let mut out = pos[..d].to_vec();
    out.extend(vit::resample_bilinear(&pos[d..], grid, POS_GRID, d));
    let t = Tensor::from_vec(
        out,
        (1, POS_GRID * POS_GRID + 1, d),
        &candle_core::Device::Cpu,
    )
    .map_err(|e| DataError::new(ErrorKind::Shape, p.path(), format!("pos_embed: {e}")))?;
    p.insert("pos_embed".into(), t);
    Ok(())
}
