//! TANGLE (Jaume et al., CVPR 2024; mahmoodlab/TANGLE at 266a756, `core/models/mmssl.py`,
//! `core/models/abmil.py`, `core/loss/tangle_loss.py`, `train_tangle.py`): slide representation
//! learning by aligning a slide with its expression profile, CLIP-style.
//!
//! * Slide encoder (`ABMILEmbedder`): `pre_attn` = two `Linear(d → d) – LayerNorm – GELU –
//!   Dropout(0.1)` blocks, then `BatchedABMIL`'s gated attention (`Linear(d → hidden)` tanh and
//!   sigmoid branches, each with Dropout 0.25, `attention_c` → 1 score per patch), softmax over the
//!   patches, and the attention-weighted sum of the `pre_attn` embeddings: the `d`-wide slide
//!   embedding (`d` = the patch-feature width, the reference's `embedding_dim`).
//! * Expression encoder (`MLP`): two `Linear – LayerNorm – ReLU – Dropout(0.2)` blocks of width
//!   `G` (the gene count: `hidden_dim = n_tokens_rna` in the reference) and `Linear(G → d)`.
//! * Pre-training ([`Model::pretrain_loss`]): `n_tokens` (2048) patches drawn with replacement
//!   from each slide, and either the symmetric InfoNCE between slide and expression embeddings at
//!   temperature 0.01 (`--method tangle`: `0.5·CE(S/τ) + 0.5·CE(Sᵀ/τ)` on cosine similarities),
//!   or, with `reconstruction` (`--method tanglerec`), the MSE between the expression and an MLP
//!   (`d → d → d → G`) of the slide embedding, the expression encoder then unused.
//! * Downstream: the reference fits a logistic regression on the frozen slide embeddings of
//!   whole slides (`run_linear_probing.py`). Here a `classifier` Linear on the slide embedding,
//!   either on a detached embedding (`probe`: only the classifier learns — the linear probe) or
//!   trained end to end with the encoder (TANGLE fine-tuned). Names are the reference's, so a
//!   `train_tangle.py` state dict supplies every encoder weight.

use crate::arch::{
    config, count_indexed, shape, to_value, ArchInfo, InputKind, Pretraining, Training,
    TrainingDefaults,
};
use crate::gated_attention::GatedAttention;
use crate::model::{bag, Input, Model, Output};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};
use gimp_nn::{loss, ops, LayerNorm, Linear, Mode, Scope};
use rand::Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TangleConfig {
    /// Patch-feature width, the width of the slide and expression embeddings (`embedding_dim`).
    pub d_in: usize,
    /// Width of the gated attention (`hidden_dim`; the reference's default equals `embedding_dim`).
    pub hidden: usize,
    pub n_genes: usize,
    /// Width of the expression MLP's blocks (the reference: the gene count).
    pub rna_hidden: usize,
    pub n_classes: usize,
    /// TANGLE-Rec: pre-train by reconstructing the expression from the slide embedding.
    #[serde(default)]
    pub reconstruction: bool,
    /// Linear probe: the classifier reads a detached slide embedding, so only it learns.
    #[serde(default)]
    pub probe: bool,
    /// InfoNCE temperature (0.01).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Patches drawn with replacement from each slide at pre-training (2048; 0: every patch).
    #[serde(default = "default_tokens")]
    pub n_tokens: usize,
}

fn default_temperature() -> f64 {
    0.01
}

fn default_tokens() -> usize {
    2048
}

impl TangleConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            hidden: d_in,
            n_genes,
            rna_hidden: n_genes,
            n_classes,
            reconstruction: false,
            probe: false,
            temperature: default_temperature(),
            n_tokens: default_tokens(),
        }
    }
}

/// `train_tangle.py`'s recipe for the pre-training stage, run by the trainer's self-supervised
/// stage ([`Model::pretrain_loss`]): `AdamW(lr 1e-4)` (PyTorch's default decay 0.01 — the
/// script's `--weight_decay` is never passed to the optimiser), batches of 64 patients, 100
/// epochs, a linear warm-up over 5 epochs then cosine decay, per batch. The reference warms up
/// from `1e-5·lr` and decays to 1e-8; the trainer's schedule warms up from `lr / warm-up steps`
/// and decays to 0 — the same curve to within 1e-8 of the rate. TANGLE keeps the epoch with the
/// highest smooth rank of the training embeddings; the stage keeps the last (TANGLE-Rec's rule).
pub const PRETRAINING: Pretraining = Pretraining {
    epochs: 100,
    batch: 64,
    lr: 1e-4,
    weight_decay: 0.01,
    warmup_percent: 5,
};

/// `Linear – LayerNorm – activation – Dropout`, named `{i}.0` and `{i}.1` inside a Sequential.
struct Block {
    linear: Linear,
    norm: LayerNorm,
}

impl Block {
    fn new(s: &Scope, linear: &str, norm: &str, d_in: usize, d_out: usize) -> Result<Self> {
        Ok(Self {
            linear: Linear::new(&s.pp(linear), d_in, d_out, true)?,
            norm: LayerNorm::new(&s.pp(norm), d_out)?,
        })
    }

    fn forward(&self, x: &Tensor, gelu: bool, p: f64, mode: &Mode) -> Result<Tensor> {
        let h = self.norm.forward(&self.linear.forward(x)?)?;
        if gelu && mode.train && p > 0.0 && h.dtype() == DType::F32 && h.device().is_cpu() {
            return gelu_dropout(&h, p, mode);
        }
        let h = if gelu { ops::gelu(&h)? } else { h.relu()? };
        ops::dropout(&h, p, mode)
    }
}

/// `dropout(gelu(x))` in training as one op (`GeluDropout`): the same values and mask draws as
/// `ops::dropout(&ops::gelu(x))`, but it keeps a one-byte keep mask and no GELU output, and its
/// backward pass forms the gradient in one pass — candle's GELU backward builds half a dozen
/// temporaries the size of `x`, which on a whole bag (`[N, 1024]` twice in `pre_attn`) made a
/// TANGLE fine-tuning step take over twice PyTorch's memory.
fn gelu_dropout(x: &Tensor, p: f64, mode: &Mode) -> Result<Tensor> {
    let mask = mode.scaled_keep_mask(x.elem_count(), p);
    let scale = (1.0 / (1.0 - p)) as f32;
    let keep = mask.iter().map(|&m| m != 0.0).collect();
    drop(mask);
    x.contiguous()?.apply_op1(GeluDropout { keep, scale })
}

/// Elements per parallel task of [`GeluDropout`]'s passes.
const CHUNK: usize = 1 << 14;

/// candle's `gelu_erf` on an `f32`, the same expression (`UnaryOp::GeluErf`).
fn gelu_erf(v: f32) -> f32 {
    (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.) * 0.5 * v
}

/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// d/dx gelu_erf(x) = ½(1 + erf(x/√2)) + x·φ(x).
fn gelu_erf_derivative(v: f32) -> f32 {
    0.5 * (1.0 + candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2))
        + v * FRAC_1_SQRT_2PI * (-0.5 * v * v).exp()
}

struct GeluDropout {
    keep: Vec<bool>,
    scale: f32,
}

impl GeluDropout {
    fn factor(&self, i: usize) -> f32 {
        if self.keep[i] {
            self.scale
        } else {
            0.0
        }
    }
}

/// The `f32` values of a contiguous CPU tensor, borrowed.
fn with_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => f(&v[a..b]),
        _ => candle_core::bail!("gelu-dropout: a contiguous f32 CPU tensor"),
    }
}

impl CustomOp1 for GeluDropout {
    fn name(&self) -> &'static str {
        "gelu-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => &v[a..b],
            _ => candle_core::bail!("gelu-dropout: a contiguous f32 input"),
        };
        if x.len() != self.keep.len() {
            candle_core::bail!(
                "gelu-dropout: mask of {} for {} values",
                self.keep.len(),
                x.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (y, x))| {
                for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                    *y = gelu_erf(x) * self.factor(c * CHUNK + j);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        let dx = with_f32(x, |xs| {
            with_f32(&g, |gs| {
                let mut dx = vec![0f32; xs.len()];
                dx.par_chunks_mut(CHUNK)
                    .zip(xs.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
                    .enumerate()
                    .for_each(|(c, (dx, (xs, gs)))| {
                        for (j, (d, (&x, &g))) in dx.iter_mut().zip(xs.iter().zip(gs)).enumerate() {
                            *d = g * self.factor(c * CHUNK + j) * gelu_erf_derivative(x);
                        }
                    });
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// TANGLE's `MLP`: `blocks.0`, `blocks.1` (Linear – LayerNorm – ReLU – Dropout 0.2) and the
/// Linear `blocks.2`.
pub struct Mlp {
    blocks: [Block; 2],
    out: Linear,
}

impl Mlp {
    pub fn new(s: &Scope, d_in: usize, hidden: usize, d_out: usize) -> Result<Self> {
        let b = s.pp("blocks");
        Ok(Self {
            blocks: [
                Block::new(&b, "0.0", "0.1", d_in, hidden)?,
                Block::new(&b, "1.0", "1.1", hidden, hidden)?,
            ],
            out: Linear::new(&b.pp("2"), hidden, d_out, true)?,
        })
    }

    /// Rows `[B, d_in]` → `[B, d_out]`.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let mut h = x.clone();
        for b in &self.blocks {
            h = b.forward(&h, false, 0.2, mode)?;
        }
        self.out.forward(&h)
    }
}

/// The slide encoder (`ABMILEmbedder` with `BatchedABMIL`, softmax, "regular" aggregation).
pub struct SlideEncoder {
    pre_attn: [Block; 2],
    attn: GatedAttention,
}

impl SlideEncoder {
    pub fn new(s: &Scope, d: usize, hidden: usize) -> Result<Self> {
        let p = s.pp("pre_attn");
        Ok(Self {
            pre_attn: [
                Block::new(&p, "0", "1", d, d)?,
                Block::new(&p, "4", "5", d, d)?,
            ],
            attn: GatedAttention::torch_init(&s.pp("attn"), d, hidden, 1, 0.25)?,
        })
    }

    /// Bag `[N, d]` → (slide embedding `[d]`, raw attention `[N]`).
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<(Tensor, Tensor)> {
        let mut h = x.clone();
        for b in &self.pre_attn {
            h = b.forward(&h, true, 0.1, mode)?;
        }
        let raw = self.attn.forward(&h, mode)?.t()?.contiguous()?; // [1, N]
        let slide = ops::softmax_last(&raw)?.matmul(&h)?.squeeze(0)?;
        Ok((slide, raw.squeeze(0)?))
    }
}

pub struct Tangle {
    pub cfg: TangleConfig,
    wsi: SlideEncoder,
    rna: Mlp,
    reconstruction: Option<Mlp>,
    /// `mean_projector.layers`: the reference builds it when `hidden ≠ d_in` and never calls it
    /// (its use in `MMSSL.forward` is commented out); kept so those state dicts load.
    _mean_projector: Option<Linear>,
    classifier: Linear,
}

impl Tangle {
    pub fn new(s: &Scope, cfg: TangleConfig) -> Result<Self> {
        let (d, g) = (cfg.d_in, cfg.n_genes);
        if d == 0 || g == 0 || cfg.hidden == 0 || cfg.rna_hidden == 0 {
            candle_core::bail!("TANGLE needs patch features and expression (widths {d} and {g})");
        }
        if cfg.temperature.is_nan() || cfg.temperature <= 0.0 {
            candle_core::bail!("TANGLE: temperature {} must be positive", cfg.temperature);
        }
        Ok(Self {
            wsi: SlideEncoder::new(&s.pp("wsi_embedder"), d, cfg.hidden)?,
            rna: Mlp::new(&s.pp("rna_embedder"), g, cfg.rna_hidden, d)?,
            reconstruction: if cfg.reconstruction {
                Some(Mlp::new(&s.pp("rna_reconstruction"), d, d, g)?)
            } else {
                None
            },
            _mean_projector: if cfg.hidden != d {
                Some(Linear::new(
                    &s.pp("mean_projector.layers"),
                    d,
                    cfg.hidden,
                    true,
                )?)
            } else {
                None
            },
            classifier: Linear::new(&s.pp("classifier"), d, cfg.n_classes, true)?,
            cfg,
        })
    }

    /// The slide embeddings `[B, d]` of bags (every patch of each).
    pub fn slide_embeddings(&self, bags: &[Tensor], mode: &Mode) -> Result<Tensor> {
        let e = bags
            .iter()
            .map(|b| self.wsi.forward(b, mode).map(|(e, _)| e))
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&e, 0)
    }

    /// The expression embeddings `[B, d]` of expression rows `[B, G]`.
    pub fn expression_embeddings(&self, expression: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.rna.forward(expression, mode)
    }

    /// The pre-training loss of already sampled bags and their expression rows `[B, G]`
    /// (`train_loop` of `train_tangle.py`): symmetric InfoNCE, or TANGLE-Rec's MSE.
    pub fn objective(&self, bags: &[Tensor], expression: &Tensor, mode: &Mode) -> Result<Tensor> {
        let wsi = self.slide_embeddings(bags, mode)?;
        match &self.reconstruction {
            Some(rec) => {
                let diff = (rec.forward(&wsi, mode)? - expression)?;
                diff.sqr()?.mean_all()
            }
            None => {
                let rna = self.expression_embeddings(expression, mode)?;
                loss::info_nce(&wsi, &rna, self.cfg.temperature)
            }
        }
    }

    /// `n_tokens` rows of `x` drawn uniformly with replacement (`TangleDataset`'s
    /// `torch.randint`), from the mode's seeded stream; every row when `n_tokens` is 0.
    fn sample_tokens(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (n, k) = (x.dim(0)?, self.cfg.n_tokens);
        if k == 0 || n == 0 {
            return Ok(x.clone());
        }
        let rows: Vec<u32> = mode.with_rng(|r| (0..k).map(|_| r.gen_range(0..n) as u32).collect());
        x.index_select(&Tensor::new(rows.as_slice(), x.device())?, 0)
    }
}

impl Model for Tangle {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let (slide, attention) = self.wsi.forward(&*bag(input)?, mode)?;
        let read = if self.cfg.probe {
            slide.detach()
        } else {
            slide.clone()
        };
        Ok(Output {
            logits: self.classifier.forward(&read.unsqueeze(0)?)?.squeeze(0)?,
            embedding: slide,
            attention: Some(attention),
        })
    }

    fn pretrain_loss(&self, batch: &[(Tensor, Tensor)], mode: &Mode) -> Result<Option<Tensor>> {
        if batch.is_empty() {
            return Ok(None);
        }
        let bags = batch
            .iter()
            .map(|(x, _)| self.sample_tokens(x, mode))
            .collect::<Result<Vec<_>>>()?;
        let expression = Tensor::stack(&batch.iter().map(|(_, g)| g).collect::<Vec<_>>(), 0)?;
        self.objective(&bags, &expression, mode).map(Some)
    }
}

fn config_from_weights(w: &BTreeMap<String, Tensor>, probe: bool) -> Result<Value> {
    let pre = shape(w, "wsi_embedder.pre_attn.0.weight")?;
    let rna = shape(w, "rna_embedder.blocks.0.0.weight")?;
    let mut c = TangleConfig::new(pre[1], rna[1], shape(w, "classifier.weight")?[0]);
    c.hidden = shape(w, "wsi_embedder.attn.attention_a.0.weight")?[0];
    c.rna_hidden = rna[0];
    c.reconstruction = count_indexed(w, "rna_reconstruction.blocks.", ".0.weight") > 0;
    c.probe = probe;
    Ok(to_value(&c))
}

/// The training both variants share: the contrastive stage ([`PRETRAINING`]), then the
/// supervised one (AdamW 1e-4, as for models whose authors published no code for this step). The expression MLP is
/// as wide as the gene count (`G × G` weights twice), so TANGLE reads the 4,999 most variable
/// genes of the training split, the size of its BRCA expression vectors (4,908 for NSCLC).
const TRAINING: Training = Training::Supervised(TrainingDefaults {
    pretraining: Some(PRETRAINING),
    top_variance_genes: Some(4_999),
    ..TrainingDefaults::ADAMW
});

/// TANGLE fine-tuned: the pre-trained slide encoder and a linear classifier trained together.
pub const ARCH: ArchInfo = ArchInfo {
    name: "tangle",
    summary: "TANGLE: ABMIL slide encoder pre-trained against an expression MLP (symmetric InfoNCE), then fine-tuned with a linear head (Jaume et al. 2024)",
    reference: "mahmoodlab/TANGLE core/models/mmssl.py MMSSL (ABMILEmbedder, MLP), core/loss/tangle_loss.py",
    input: InputKind::Paired,
    training: TRAINING,
    default_config: |d, c| to_value(&TangleConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Tangle::new(s, config(v)?)?)),
    config_from_weights: |w| config_from_weights(w, false),
    set_gene_groups: None,
};

/// TANGLE linear probe: the same pre-training, then only a linear classifier on the frozen
/// slide embedding.
pub const ARCH_PROBE: ArchInfo = ArchInfo {
    name: "tangle_probe",
    summary: "TANGLE linear probe: the pre-trained slide encoder frozen, a linear classifier on its slide embedding (Jaume et al. 2024)",
    reference: "mahmoodlab/TANGLE core/models/mmssl.py MMSSL, run_linear_probing.py",
    input: InputKind::Paired,
    training: TRAINING,
    default_config: |d, c| {
        to_value(&TangleConfig {
            probe: true,
            ..TangleConfig::new(d.features, d.genes, c)
        })
    },
    build: |s, v| Ok(Box::new(Tangle::new(s, config(v)?)?)),
    config_from_weights: |w| config_from_weights(w, true),
    set_gene_groups: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    #[test]
    fn gelu_dropout_is_gelu_then_dropout() -> Result<()> {
        let x = Var::from_tensor(&Tensor::randn(0f32, 2f32, (37, 70), &Device::Cpu)?)?;
        let w = Tensor::randn(0f32, 1f32, (37, 70), &Device::Cpu)?;
        let mode = || Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(5));
        let fused = gelu_dropout(x.as_tensor(), 0.1, &mode())?;
        let graph = ops::dropout(&ops::gelu(x.as_tensor())?, 0.1, &mode())?;
        // The same values and the same mask draws, bit for bit.
        assert_eq!(fused.to_vec2::<f32>()?, graph.to_vec2::<f32>()?);
        assert!(fused.flatten_all()?.to_vec1::<f32>()?.contains(&0.0));
        let grad = |y: &Tensor| -> Result<Vec<f32>> {
            let g = (y * &w)?.sum_all()?.backward()?;
            g.get(x.as_tensor())
                .expect("a gradient")
                .flatten_all()?
                .to_vec1()
        };
        let (a, b) = (grad(&fused)?, grad(&graph)?);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "gradients differ by {worst}");
        Ok(())
    }
}
