//! Gated attention `w·(tanh(V h) ⊙ σ(U h))` (CLAM's `Attn_Net_Gated`) and attention pooling
//! with it, shared by ABMIL, CLAM-SB/MB, PORPOISE and MCAT; the memory of a training step of a
//! model that pools with it.

use candle_core::{DType, Result, Tensor};
use gimp_nn::gated_attention::{extreme_rows, gated_attention_pool, GatedLayers, Pooled};
use gimp_nn::{ops, Activation, Linear, Mode, Scope};

/// Gated attention `w·(tanh(V h) ⊙ σ(U h))` (CLAM's `Attn_Net_Gated`), `K` scores per patch.
pub struct GatedAttention {
    a: Linear,
    b: Linear,
    c: Linear,
    dropout: f64,
}

impl GatedAttention {
    pub fn new(s: &Scope, l: usize, d: usize, k: usize, dropout: f64) -> Result<Self> {
        Ok(Self {
            a: Linear::xavier(&s.pp("attention_a.0"), l, d)?,
            b: Linear::xavier(&s.pp("attention_b.0"), l, d)?,
            c: Linear::xavier(&s.pp("attention_c"), d, k)?,
            dropout,
        })
    }

    /// With PyTorch's default initialisation (PORPOISE MMF, MCAT: no init call).
    pub fn torch_init(s: &Scope, l: usize, d: usize, k: usize, dropout: f64) -> Result<Self> {
        Ok(Self {
            a: Linear::new(&s.pp("attention_a.0"), l, d, true)?,
            b: Linear::new(&s.pp("attention_b.0"), l, d, true)?,
            c: Linear::new(&s.pp("attention_c"), d, k, true)?,
            dropout,
        })
    }

    /// Raw (pre-softmax) scores `[N, K]`.
    pub fn forward(&self, h: &Tensor, mode: &Mode) -> Result<Tensor> {
        let a = ops::dropout(&self.a.forward(h)?.tanh()?, self.dropout, mode)?;
        let b = ops::dropout(&ops::sigmoid(&self.b.forward(h)?)?, self.dropout, mode)?;
        self.c.forward(&a.mul(&b)?)
    }

    /// `fc → ReLU → dropout → gated attention → softmax over the bag → pooling` of the bag `x`
    /// (`fc`'s dropout is the attention's), with the embeddings of each branch's `k` most and
    /// least attended patches (`gimp_nn::gated_attention::Pooled`). On the CPU one fused op
    /// that keeps no `[N, hidden]` tensor (`docs/DESIGN.md` §17); elsewhere candle's ops.
    pub fn pool(&self, fc: &Linear, x: &Tensor, k: usize, mode: &Mode) -> Result<Pooled> {
        if x.dtype() == DType::F32 && x.device().is_cpu() {
            let layers = GatedLayers {
                fc,
                a: &self.a,
                b: &self.b,
                c: &self.c,
            };
            return gated_attention_pool(x, layers, self.dropout, k, mode);
        }
        self.pool_graph(fc, x, k, mode)
    }

    /// [`Self::pool`] from candle's ordinary ops with autograd (every intermediate kept): the
    /// path on other devices, and the reference the fused op is compared with.
    pub fn pool_graph(&self, fc: &Linear, x: &Tensor, k: usize, mode: &Mode) -> Result<Pooled> {
        let h = ops::dropout(&fc.forward_act(x, Activation::Relu)?, self.dropout, mode)?;
        let scores = self.forward(&h, mode)?.t()?.contiguous()?; // [K, N]
        let pooled = ops::softmax_last(&scores)?.matmul(&h)?;
        let n = h.dim(0)?;
        let extremes = if k > 0 && n >= k {
            let rows: Vec<u32> = scores
                .detach()
                .to_vec2::<f32>()?
                .iter()
                .flat_map(|r| extreme_rows(r, k))
                .map(|i| i as u32)
                .collect();
            let count = rows.len();
            Some(h.index_select(&Tensor::from_vec(rows, count, h.device())?, 0)?)
        } else {
            None
        };
        Ok(Pooled {
            pooled,
            scores: scores.detach(),
            extremes,
        })
    }
}

/// Bytes besides those growing with the bag, of a training step of a gated-attention model.
const TRAINING_BASE_BYTES: u64 = 150_000_000;
/// `hidden`-wide buffers per patch alive at a training step's peak besides the bag: the fused
/// pooling op (`gimp_nn::gated_attention`) keeps at most the embeddings, and nothing
/// `hidden`-wide on bags whose embeddings exceed `GIMP_KEEP_ATTENTION_MB`.
const TRAINING_PATCH_COPIES: f64 = 1.0;

/// The peak memory of a training step of ABMIL or CLAM on `patches` patches:
/// `TRAINING_BASE_BYTES + patches · 4 · (d_in + TRAINING_PATCH_COPIES · hidden)`, at or above
/// `/usr/bin/time -v` of `bench_steps --only clam_sb_step_N` at 6,000, 24,000 and 150,000
/// patches (`docs/PERFORMANCE.md`, "Training on whole slides").
pub(crate) fn gated_pool_step_bytes(d_in: usize, hidden: usize, patches: usize) -> u64 {
    let per_patch = 4.0 * (d_in as f64 + TRAINING_PATCH_COPIES * hidden as f64);
    TRAINING_BASE_BYTES + (patches as f64 * per_patch) as u64
}
