//! SurvPath (Jaume et al., CVPR 2024; mahmoodlab/SurvPath at 3f73ddd, `models/model_SurvPath.py`,
//! `models/layers/cross_attention.py`): biological-pathway tokens and patch tokens in one
//! attention layer with a sparse pattern.
//!
//! * Pathway tokens: the expression cut into pathways (the genes of each pathway of a
//!   composition table — Hallmarks, Reactome or both — read by `gimp_io::pathways`), each through
//!   its own two SNN blocks (`Linear – ELU – AlphaDropout 0.25`, widths 256, 256) → `P` tokens of
//!   width `d` (256).
//! * Patch tokens: `wsi_projection_net` (`Linear(d_in → d)`) of every patch.
//! * `MMAttentionLayer` (pre-LayerNorm, one head of `d/2`, no residual, no output projection):
//!   pathways attend to pathways and patches (one softmax over both), patches attend to
//!   pathways only — no patch↔patch attention, so the cost is linear in the bag.
//! * `FeedForward(d/2)` (LayerNorm – Linear – GELU – Dropout 0.1 – Linear, no residual), a
//!   LayerNorm, the mean of the pathway tokens and the mean of the patch tokens concatenated
//!   (`d`), and `to_logits` (`Linear(d → d/4) – ReLU – Linear(d/4 → C)`).
//!
//! Training (`SurvivalDataset` with `sample=True`): each training step reads `num_patches` (4096)
//! patches drawn without replacement, in slide order, and a bag with fewer is zero-padded to
//! 4096 rows that the model sees (its mask is built but `forward` passes `mask=None`);
//! [`Model::training_forward`] does the same. Evaluation reads every patch. Names are the
//! reference's, so its state dicts load as they are.

use crate::arch::{
    config, gene_group_networks, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults,
};
use crate::model::{bag, expression, Input, Model, Output};
use candle_core::{Result, Tensor};
use gimp_nn::{ops, LayerNorm, Linear, Mode, Scope};
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurvPathConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    /// Genes of each pathway, as indices into the expression vector (the composition table's
    /// pathways restricted to the cohort's genes, each sorted by gene name as the reference's
    /// `_setup_survpath`). Empty: [`DEFAULT_PATHWAYS`] equal contiguous chunks (gimp-rs's
    /// fallback when no table is given; the reference always reads one).
    #[serde(default)]
    pub groups: Vec<Vec<u32>>,
    /// `wsi_projection_dim` (256): the width of every token.
    #[serde(default = "default_d")]
    pub d: usize,
    /// Widths of each pathway's SNN blocks ([256, 256]); the last must be `d`.
    #[serde(default = "default_omic_hidden")]
    pub omic_hidden: Vec<usize>,
    /// Dropout of the feed-forward layer (0.1).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// Patches read per training step (4096; 0: every patch).
    #[serde(default = "default_patches")]
    pub num_patches: usize,
}

/// Pathways of the fallback layout when no composition table is given (the 50 Hallmarks).
pub const DEFAULT_PATHWAYS: usize = 50;

fn default_d() -> usize {
    256
}

fn default_omic_hidden() -> Vec<usize> {
    vec![256, 256]
}

fn default_dropout() -> f64 {
    0.1
}

fn default_patches() -> usize {
    4096
}

impl SurvPathConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            groups: Vec::new(),
            d: default_d(),
            omic_hidden: default_omic_hidden(),
            dropout: default_dropout(),
            num_patches: default_patches(),
        }
    }

    /// The gene indices of every pathway.
    pub fn group_indices(&self) -> Vec<Vec<u32>> {
        if !self.groups.is_empty() {
            return self.groups.clone();
        }
        let (g, k) = (self.n_genes, DEFAULT_PATHWAYS.min(self.n_genes).max(1));
        (0..k)
            .map(|i| ((i * g / k) as u32..((i + 1) * g / k) as u32).collect())
            .collect()
    }
}

/// One SNN block per width, `{i}.0` inside a pathway's Sequential: `Linear – ELU –
/// AlphaDropout(0.25)`.
pub(crate) fn snn_blocks(s: &Scope, d_in: usize, hidden: &[usize]) -> Result<Vec<Linear>> {
    let mut prev = d_in;
    hidden
        .iter()
        .enumerate()
        .map(|(j, &h)| {
            let l = Linear::new(&s.pp(format!("{j}.0")), prev, h, true);
            prev = h;
            l
        })
        .collect()
}

pub(crate) fn snn_forward(blocks: &[Linear], x: &Tensor, mode: &Mode) -> Result<Tensor> {
    let mut h = x.clone();
    for b in blocks {
        h = ops::alpha_dropout(&b.forward(&h)?.elu(1.0)?, 0.25, mode)?;
    }
    Ok(h)
}

/// Which token pairs attend (`MMAttention`'s `attn_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// SurvPath's `partial`: pathways → pathways and patches (one softmax), patches → pathways.
    Partial,
    /// MMP's `full`: both token kinds attend to all tokens.
    Full,
}

/// `MMAttentionLayer(dim = d, dim_head = d/2, heads = 1, residual = False)` (`norm`,
/// `attn.to_qkv`), as SurvPath and MMP build it.
pub(crate) struct PathwayAttention {
    norm: LayerNorm,
    to_qkv: Linear,
    inner: usize,
    pattern: Pattern,
}

/// What [`PathwayAttention::forward`] returns: the tokens `[P + N, d/2]` and the pre-softmax
/// pathway → patch scores `[P, N]`.
pub(crate) struct Attended {
    pub tokens: Tensor,
    pub pathway_to_patch: Tensor,
}

impl PathwayAttention {
    pub(crate) fn new(s: &Scope, d: usize, pattern: Pattern) -> Result<Self> {
        let inner = d / 2;
        Ok(Self {
            norm: LayerNorm::new(&s.pp("norm"), d)?,
            to_qkv: Linear::new(&s.pp("attn.to_qkv"), d, 3 * inner, false)?,
            inner,
            pattern,
        })
    }

    /// Tokens `[P + N, d]`, pathways first.
    pub(crate) fn forward(&self, x: &Tensor, pathways: usize) -> Result<Attended> {
        let n = x.dim(0)? - pathways;
        let qkv = self.to_qkv.forward(&self.norm.forward(x)?)?;
        let i = self.inner;
        let q = (qkv.narrow(1, 0, i)? * (1.0 / (i as f64).sqrt()))?;
        let (k, v) = (qkv.narrow(1, i, i)?, qkv.narrow(1, 2 * i, i)?);
        let (q_path, q_hist) = (q.narrow(0, 0, pathways)?, q.narrow(0, pathways, n)?);
        let k_path = k.narrow(0, 0, pathways)?;
        let k_hist = k.narrow(0, pathways, n)?;
        let cross_hist = q_hist.matmul(&k_path.t()?)?; // [N, P]
        let attn_path = q_path.matmul(&k_path.t()?)?; // [P, P]
        let cross_path = q_path.matmul(&k_hist.t()?)?; // [P, N]
        let path_rows = ops::softmax_last(&Tensor::cat(&[&attn_path, &cross_path], 1)?)?;
        let out_path = path_rows.matmul(&v)?;
        let out_hist = match self.pattern {
            Pattern::Partial => {
                ops::softmax_last(&cross_hist)?.matmul(&v.narrow(0, 0, pathways)?)?
            }
            Pattern::Full => {
                // As MMP's `MMAttention` (`attn_mode='full'`): the patch → pathway block is
                // softmaxed, then concatenated with the raw patch → patch scores and softmaxed
                // again.
                let attn_hist = q_hist.matmul(&k_hist.t()?)?; // [N, N]
                let rows = Tensor::cat(&[&ops::softmax_last(&cross_hist)?, &attn_hist], 1)?;
                ops::softmax_last(&rows)?.matmul(&v)?
            }
        };
        Ok(Attended {
            tokens: Tensor::cat(&[&out_path, &out_hist], 0)?,
            pathway_to_patch: cross_path,
        })
    }
}

/// `FeedForward(dim, mult = 1)`: `norm`, `net.0` (Linear), GELU, Dropout, `net.3` (Linear).
pub(crate) struct FeedForward {
    norm: LayerNorm,
    l1: Linear,
    l2: Linear,
    dropout: f64,
}

impl FeedForward {
    pub(crate) fn new(s: &Scope, dim: usize, dropout: f64) -> Result<Self> {
        Ok(Self {
            norm: LayerNorm::new(&s.pp("norm"), dim)?,
            l1: Linear::new(&s.pp("net.0"), dim, dim, true)?,
            l2: Linear::new(&s.pp("net.3"), dim, dim, true)?,
            dropout,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let h = ops::gelu(&self.l1.forward(&self.norm.forward(x)?)?)?;
        self.l2.forward(&ops::dropout(&h, self.dropout, mode)?)
    }
}

pub struct SurvPath {
    pub cfg: SurvPathConfig,
    groups: Vec<Tensor>,
    wsi: Linear,
    sig: Vec<Vec<Linear>>,
    attention: PathwayAttention,
    feed_forward: FeedForward,
    layer_norm: LayerNorm,
    logits1: Linear,
    logits2: Linear,
}

impl SurvPath {
    pub fn new(s: &Scope, cfg: SurvPathConfig) -> Result<Self> {
        let d = cfg.d;
        if d < 4 || !d.is_multiple_of(4) {
            candle_core::bail!("SurvPath: d = {d} must be a positive multiple of 4");
        }
        if cfg.omic_hidden.last() != Some(&d) {
            candle_core::bail!(
                "SurvPath: the pathway SNN widths {:?} must end at d = {d}",
                cfg.omic_hidden
            );
        }
        let groups = cfg.group_indices();
        if groups.is_empty()
            || groups.iter().any(|g| g.is_empty())
            || groups.iter().flatten().any(|&i| i as usize >= cfg.n_genes)
        {
            candle_core::bail!(
                "SurvPath: every pathway needs genes, with indices below {}",
                cfg.n_genes
            );
        }
        let sig = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                snn_blocks(
                    &s.pp(format!("sig_networks.{i}")),
                    g.len(),
                    &cfg.omic_hidden,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let dev = s.device().clone();
        Ok(Self {
            groups: groups
                .iter()
                .map(|g| Tensor::new(g.as_slice(), &dev))
                .collect::<Result<_>>()?,
            wsi: Linear::new(&s.pp("wsi_projection_net.0"), cfg.d_in, d, true)?,
            sig,
            attention: PathwayAttention::new(&s.pp("cross_attender"), d, Pattern::Partial)?,
            feed_forward: FeedForward::new(&s.pp("feed_forward"), d / 2, cfg.dropout)?,
            layer_norm: LayerNorm::new(&s.pp("layer_norm"), d / 2)?,
            logits1: Linear::new(&s.pp("to_logits.0"), d, d / 4, true)?,
            logits2: Linear::new(&s.pp("to_logits.2"), d / 4, cfg.n_classes, true)?,
            cfg,
        })
    }

    /// The pathway tokens `[P, d]` of an expression vector.
    fn pathway_tokens(&self, g: &Tensor, mode: &Mode) -> Result<Tensor> {
        let tokens = self
            .groups
            .iter()
            .zip(&self.sig)
            .map(|(idx, blocks)| snn_forward(blocks, &g.index_select(idx, 0)?.unsqueeze(0)?, mode))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&tokens, 0)
    }

    fn run(&self, x: &Tensor, g: &Tensor, mode: &Mode) -> Result<Output> {
        let pathways = self.groups.len();
        let omic = self.pathway_tokens(g, mode)?;
        let tokens = Tensor::cat(&[&omic, &self.wsi.forward(x)?], 0)?;
        let a = self.attention.forward(&tokens, pathways)?;
        let h = self
            .layer_norm
            .forward(&self.feed_forward.forward(&a.tokens, mode)?)?;
        let n = h.dim(0)? - pathways;
        let embedding = Tensor::cat(
            &[
                &h.narrow(0, 0, pathways)?.mean(0)?,
                &h.narrow(0, pathways, n)?.mean(0)?,
            ],
            0,
        )?;
        let logits = self
            .logits2
            .forward(&self.logits1.forward(&embedding.unsqueeze(0)?)?.relu()?)?
            .squeeze(0)?;
        Ok(Output {
            logits,
            embedding,
            // Per patch: the pathways' pre-softmax scores for it, averaged over the pathways.
            attention: Some(a.pathway_to_patch.mean(0)?),
        })
    }
}

/// `num_patches` rows of the bag drawn without replacement and kept in bag order, zero-padded to
/// `num_patches` rows when the bag is smaller (`SurvivalDataset._load_wsi_embs_from_path`).
pub fn sample_patches(x: &Tensor, num_patches: usize, mode: &Mode) -> Result<Tensor> {
    let n = x.dim(0)?;
    if num_patches == 0 {
        return Ok(x.clone());
    }
    if n >= num_patches {
        let mut rows: Vec<u32> = mode.with_rng(|r| {
            sample(r, n, num_patches)
                .into_iter()
                .map(|i| i as u32)
                .collect()
        });
        rows.sort_unstable();
        return x.index_select(&Tensor::new(rows.as_slice(), x.device())?, 0);
    }
    x.pad_with_zeros(0, 0, num_patches - n)
}

impl Model for SurvPath {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        self.run(&*bag(input)?, expression(input)?, mode)
    }

    /// The reference's training view of a bag: `num_patches` sampled (or zero-padded) rows; the
    /// per-patch scores then refer to those rows and are left out.
    fn training_forward(
        &self,
        input: &Input,
        _label: usize,
        mode: &Mode,
    ) -> Result<(Output, Option<Tensor>)> {
        if !mode.train {
            return Ok((self.forward(input, mode)?, None));
        }
        let x = sample_patches(&*bag(input)?, self.cfg.num_patches, mode)?;
        let mut out = self.run(&x, expression(input)?, mode)?;
        out.attention = None;
        Ok((out, None))
    }
}

/// Widths, pathway sizes and class count of a SurvPath state dict; pathways read as consecutive
/// slices of one expression vector.
fn config_from_weights(w: &BTreeMap<String, Tensor>) -> Result<Value> {
    let proj = shape(w, "wsi_projection_net.0.weight")?;
    let g = gene_group_networks(w)?;
    let mut c = SurvPathConfig::new(proj[1], g.genes, shape(w, "to_logits.2.weight")?[0]);
    c.d = proj[0];
    c.omic_hidden = g.hidden;
    c.groups = g.groups;
    Ok(to_value(&c))
}

/// SurvPath in the registry; its pathways come from a composition table when given.
pub const ARCH: ArchInfo = ArchInfo {
    name: "survpath",
    summary: "SurvPath: pathway tokens and patch tokens in one sparse-attention transformer layer (Jaume et al. 2024)",
    reference: "mahmoodlab/SurvPath models/model_SurvPath.py SurvPath, models/layers/cross_attention.py",
    input: InputKind::Paired,
    // `scripts/survpath.sh`: RAdam (decoupled decay) with lr and decay from a grid, cosine
    // schedule after one warm-up epoch, batch 1; AdamW stands in for RAdam (gimp-nn has no
    // RAdam), at `main.py`'s defaults: lr 1e-4, decay 1e-5, 20 epochs.
    training: Training::Supervised(TrainingDefaults {
        epochs: 20,
        lr: 1e-4,
        weight_decay: 1e-5,
        cosine: true,
        ..TrainingDefaults::ADAMW
    }),
    default_config: |d, c| to_value(&SurvPathConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(SurvPath::new(s, config(v)?)?)),
    config_from_weights,
    set_gene_groups: Some(|c, groups| {
        c["groups"] = to_value(&groups);
        Ok(())
    }),
};
