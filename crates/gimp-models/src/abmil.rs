//! ABMIL as pathology MIL papers use it (`docs/DESIGN.md` §16): gated attention over 1024-d
//! features (Ilse et al. 2018, with CLAM's layer sizes). Parameter names follow PORPOISE's
//! `PorpoiseAMIL` (`attention_net.0`, `attention_net.3.attention_{a,b,c}`, `classifier`), so its
//! state dicts load as they are.

use crate::arch::{config, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::model::{bag, Input, Model, Output};
use candle_core::{DType, Result, Tensor};
use gimp_nn::gated_attention::{extreme_rows, gated_attention_pool, GatedLayers, Pooled};
use gimp_nn::{ops, Activation, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbmilConfig {
    pub d_in: usize,
    pub hidden: usize,
    pub attention_dim: usize,
    pub n_classes: usize,
    pub dropout: f64,
}

impl AbmilConfig {
    pub fn small(d_in: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            hidden: 512,
            attention_dim: 256,
            n_classes,
            dropout: 0.25,
        }
    }
}

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

pub struct Abmil {
    pub cfg: AbmilConfig,
    fc: Linear,
    attention: GatedAttention,
    classifier: Linear,
}

impl Abmil {
    pub fn new(s: &Scope, cfg: AbmilConfig) -> Result<Self> {
        let net = s.pp("attention_net");
        Ok(Self {
            fc: Linear::xavier(&net.pp("0"), cfg.d_in, cfg.hidden)?,
            attention: GatedAttention::new(
                &net.pp("3"),
                cfg.hidden,
                cfg.attention_dim,
                1,
                cfg.dropout,
            )?,
            classifier: Linear::xavier(&s.pp("classifier"), cfg.hidden, cfg.n_classes)?,
            cfg,
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

impl Model for Abmil {
    fn training_step_bytes(&self, patches: usize) -> Option<u64> {
        Some(gated_pool_step_bytes(
            self.cfg.d_in,
            self.cfg.hidden,
            patches,
        ))
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let p = self.attention.pool(&self.fc, bag(input)?, 0, mode)?;
        let m = p.pooled; // [1, hidden]
        let logits = self.classifier.forward(&m)?.squeeze(0)?;
        Ok(Output {
            logits,
            embedding: m.squeeze(0)?,
            attention: Some(p.scores.squeeze(0)?),
        })
    }
}

/// ABMIL in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "abmil",
    summary: "Gated attention MIL on patch features (Ilse et al. 2018, pathology variant)",
    reference: "PORPOISE PorpoiseAMIL",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults::CLAM),
    default_config: |d, c| to_value(&AbmilConfig::small(d.features, c)),
    build: |s, v| Ok(Box::new(Abmil::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let fc = shape(w, "attention_net.0.weight")?;
        let att = shape(w, "attention_net.3.attention_a.0.weight")?;
        let mut c = AbmilConfig::small(fc[1], shape(w, "classifier.weight")?[0]);
        c.hidden = fc[0];
        c.attention_dim = att[0];
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
