//! GiMP (Jin et al., MICCAI 2023; `docs/DESIGN.md` §2–§11): the patch aggregator, a gene encoder
//! (GroupMSA, or SNN for the ablation), masked patch modelling (a learnable mask token after the
//! input projection, a `LN + Linear(d → D_in)` decoder on the patch tokens), and the fine-tuning
//! head `Linear(d_pat → d) + ReLU + Dropout + Linear(d → C)` on `CLS_pat = [CLS_img, CLS_ge]`.
//! A patient without a slide or without expression gets a learned "missing" embedding for that
//! half of `CLS_pat` *(ours)*.

use crate::aggregator::{AggregatorConfig, PatchAggregator};
use crate::arch::{config, to_value, ArchInfo, InputKind, Training};
use crate::group_msa::{GroupMsa, GroupMsaConfig, Tokenizer};
use crate::model::{BagInput, Input, Model, Output};
use crate::snn::{Snn, SnnConfig};
use candle_core::{Result, Tensor};
use gimp_nn::nystrom::NystromConfig;
use gimp_nn::{ops, Init, LayerNorm, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GeneEncoderConfig {
    GroupMsa(GroupMsaConfig),
    Snn(SnnConfig),
}

impl GeneEncoderConfig {
    /// The architecture a gene pre-training checkpoint of this encoder is saved as, and its
    /// config.
    pub fn checkpoint_arch(&self) -> (&'static ArchInfo, serde_json::Value) {
        match self {
            Self::GroupMsa(c) => (&crate::group_msa::ARCH, to_value(c)),
            Self::Snn(c) => (&crate::snn::ARCH, to_value(c)),
        }
    }

    pub fn dim(&self) -> usize {
        match self {
            Self::GroupMsa(c) => c.dim,
            Self::Snn(c) => *c.hidden.last().unwrap_or(&256),
        }
    }
}

/// A gene encoder with its supervised head (the gene pre-training model).
pub enum GeneEncoder {
    GroupMsa(Box<GroupMsa>),
    Snn(Box<Snn>),
}

impl GeneEncoder {
    pub fn new(s: &Scope, cfg: &GeneEncoderConfig) -> Result<Self> {
        Ok(match cfg {
            GeneEncoderConfig::GroupMsa(c) => {
                Self::GroupMsa(Box::new(GroupMsa::new(s, c.clone())?))
            }
            GeneEncoderConfig::Snn(c) => Self::Snn(Box::new(Snn::new(s, c.clone())?)),
        })
    }

    /// `(embedding [B, d_ge], logits [B, C])` of standardised expression `[B, G]`.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<(Tensor, Tensor)> {
        match self {
            Self::GroupMsa(m) => m.encode_with_logits(x, mode),
            Self::Snn(m) => m.encode_with_logits(x, mode),
        }
    }
}

/// GiMP's gene encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneEncoderKind {
    /// GroupMSA (the paper).
    GroupMsa,
    /// SNN (the Table 2 ablation).
    Snn,
}

/// GiMP's sizes and gene encoder — what a run file's `[model]` sets — from which
/// [`GimpSettings::config`] builds every [`GimpConfig`] (the registry's default is
/// [`GimpSettings::paper`]).
#[derive(Debug, Clone, PartialEq)]
pub struct GimpSettings {
    /// Hidden size `d` of the aggregator and of GroupMSA.
    pub dim: usize,
    pub heads: usize,
    pub landmarks: usize,
    pub gene_encoder: GeneEncoderKind,
    /// GroupMSA's genes per fragment, groups, tokenizer and dropout.
    pub fragment: usize,
    pub groups: usize,
    pub gene_tokenizer: Tokenizer,
    pub gene_dropout: f64,
    pub head_dropout: f64,
}

impl GimpSettings {
    /// The paper's: d 512, 8 heads, 256 landmarks, GroupMSA with fragments of 252 genes in 16
    /// groups (`docs/DESIGN.md` §4–§6), head dropout 0.25.
    pub fn paper() -> Self {
        Self {
            dim: 512,
            heads: 8,
            landmarks: 256,
            gene_encoder: GeneEncoderKind::GroupMsa,
            fragment: 252,
            groups: 16,
            gene_tokenizer: Tokenizer::Shared,
            gene_dropout: 0.1,
            head_dropout: 0.25,
        }
    }

    /// The gene encoder of `n_genes` genes with a classifier of `n_classes` outputs.
    pub fn gene_encoder(&self, n_genes: usize, n_classes: usize) -> GeneEncoderConfig {
        match self.gene_encoder {
            GeneEncoderKind::GroupMsa => GeneEncoderConfig::GroupMsa(GroupMsaConfig {
                n_genes,
                fragment: self.fragment,
                dim: self.dim,
                groups: self.groups,
                heads: self.heads,
                mlp_ratio: 4,
                dropout: self.gene_dropout,
                n_classes,
                tokenizer: self.gene_tokenizer,
                linear_start: false,
                deep_genes: None,
            }),
            GeneEncoderKind::Snn => GeneEncoderConfig::Snn(SnnConfig::small(n_genes, n_classes)),
        }
    }

    /// GiMP on `d_in`-wide features and `n_genes` genes with `n_classes` outputs.
    pub fn config(&self, d_in: usize, n_genes: usize, n_classes: usize) -> GimpConfig {
        let mut aggregator = AggregatorConfig::gimp(d_in);
        aggregator.dim = self.dim;
        aggregator.attention = NystromConfig {
            dim: self.dim,
            heads: self.heads,
            dim_head: self.dim / self.heads.max(1),
            landmarks: self.landmarks,
            ..NystromConfig::transmil(self.dim)
        };
        GimpConfig {
            aggregator,
            genes: self.gene_encoder(n_genes.max(1), n_classes),
            n_classes,
            head_dropout: self.head_dropout,
            expression_alone: ExpressionAlone::FusionHead,
        }
    }
}

/// Which answer of a patient a fine-tuning step scores (`docs/DESIGN.md` §31).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// From both halves of `CLS_pat` (or what the patient has).
    Both = 0,
    /// From the slide alone (the expression half is the learned missing embedding).
    SlideAlone = 1,
    /// From the expression alone.
    ExpressionAlone = 2,
}

/// [`Gimp::finetune_step_bytes`]: the gene encoder's share of a fine-tuning step.
const GENE_ENCODER_BYTES: u64 = 180_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GimpConfig {
    pub aggregator: AggregatorConfig,
    pub genes: GeneEncoderConfig,
    pub n_classes: usize,
    pub head_dropout: f64,
    /// Who answers for a patient with expression but no slide (docs/DESIGN.md §31).
    #[serde(default)]
    pub expression_alone: ExpressionAlone,
}

/// How GiMP answers from expression alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpressionAlone {
    /// The fine-tuning head on `[missing-slide embedding, CLS_ge]` (the paper's model has no
    /// other answer).
    #[default]
    FusionHead,
    /// The gene encoder's own classifier from gene pre-training: with the encoder frozen in
    /// fine-tuning, GiMP then answers from expression exactly as its gene-only model does.
    GeneEncoder,
}

impl GimpConfig {
    pub fn pat_dim(&self) -> usize {
        self.aggregator.dim + self.genes.dim()
    }
}

/// Parameter scopes: `aggregator.*`, `genes.*`, `mpm.*`, `missing.*`, `head.*`.
pub struct Gimp {
    pub cfg: GimpConfig,
    pub aggregator: PatchAggregator,
    pub genes: GeneEncoder,
    mask_token: Tensor,
    decoder_norm: LayerNorm,
    decoder: Linear,
    missing_img: Tensor,
    missing_ge: Tensor,
    head1: Linear,
    head2: Linear,
}

/// Masked patch modelling on one window.
pub struct Masked {
    pub cls_img: Tensor,
    /// Mean absolute error over the masked rows and every feature.
    pub reconstruction: Tensor,
}

impl Gimp {
    pub fn new(s: &Scope, cfg: GimpConfig) -> Result<Self> {
        let d = cfg.aggregator.dim;
        let dge = cfg.genes.dim();
        Ok(Self {
            aggregator: PatchAggregator::new(&s.pp("aggregator"), cfg.aggregator.clone())?,
            genes: GeneEncoder::new(&s.pp("genes"), &cfg.genes)?,
            mask_token: s.get("mpm.mask_token", &[1, 1, d], Init::Normal(0.02))?,
            decoder_norm: LayerNorm::new(&s.pp("mpm.decoder_norm"), d)?,
            decoder: Linear::new(&s.pp("mpm.decoder"), d, cfg.aggregator.d_in, true)?,
            missing_img: s.get("missing.img", &[d], Init::Normal(0.02))?,
            missing_ge: s.get("missing.genes", &[dge], Init::Normal(0.02))?,
            head1: Linear::new(&s.pp("head.0"), d + dge, d, true)?,
            head2: Linear::new(&s.pp("head.3"), d, cfg.n_classes, true)?,
            cfg,
        })
    }

    /// MPM on a window `[L, D_in]`: rows in `masked` are replaced by the mask token after the
    /// input projection; the decoder reconstructs the masked patch tokens; L1 on those rows.
    pub fn masked_patch_modelling(
        &self,
        window: &Tensor,
        masked: &[usize],
        mode: &Mode,
    ) -> Result<Masked> {
        let (l, _) = window.dims2()?;
        let h = self.aggregator.embed(window)?; // [1, L, d]
        if let Some(&bad) = masked.iter().find(|&&i| i >= l) {
            candle_core::bail!("masked row {bad} outside a window of {l} patches");
        }
        let h = gimp_nn::ops::replace_rows(&h, &self.mask_token, masked)?;
        // Only CLS and the masked patches are read after the aggregator, so its last layer
        // computes just those rows (`encode_selected`), and only they are decoded: the L1 loss
        // reads nothing else (the decoder and its norm act row by row).
        let mut masked_sorted = masked.to_vec();
        masked_sorted.sort_unstable();
        masked_sorted.dedup();
        let rows: Vec<usize> = std::iter::once(0)
            .chain(masked_sorted.iter().map(|&i| i + 1))
            .collect();
        let tokens = self
            .aggregator
            .encode_selected(h, mode, &rows)?
            .squeeze(0)?; // [1 + |masked|, d]
        let cls_img = tokens.get(0)?;
        let reconstruction = if masked_sorted.is_empty() {
            Tensor::zeros((), candle_core::DType::F32, window.device())?
        } else {
            let idx = gimp_nn::loss::index_tensor(&masked_sorted, window.device())?;
            let patches = tokens.narrow(0, 1, masked_sorted.len())?;
            let recon = self
                .decoder
                .forward(&self.decoder_norm.forward(&patches)?)?;
            (recon - window.index_select(&idx, 0)?)?.abs()?.mean_all()?
        };
        Ok(Masked {
            cls_img,
            reconstruction,
        })
    }

    /// Estimated peak resident memory, in bytes, of one fine-tuning step on a bag of `patches`
    /// patches (`--memory-limit`): the aggregator's (`PatchAggregator::training_step_bytes`)
    /// plus the frozen gene encoder's evaluation pass and the model's other parameters, which
    /// do not grow with the bag (`GENE_ENCODER_BYTES`, measured with the paper's 60,480 genes).
    pub fn finetune_step_bytes(&self, patches: usize) -> u64 {
        self.aggregator.training_step_bytes(patches) + GENE_ENCODER_BYTES
    }

    /// `CLS_img` of a whole bag, or the learned missing-slide embedding.
    pub fn cls_img(&self, bag: Option<BagInput>, mode: &Mode) -> Result<Tensor> {
        match bag {
            Some(x) => self.aggregator.cls(x, mode),
            None => Ok(self.missing_img.clone()),
        }
    }

    /// `CLS_ge` of standardised expression `[G]` from the (frozen unless `train_genes`) gene
    /// encoder, or the learned missing-expression embedding.
    pub fn cls_ge(&self, expr: Option<&Tensor>, train_genes: bool, mode: &Mode) -> Result<Tensor> {
        match expr {
            Some(x) => {
                if train_genes {
                    self.genes.forward(&x.unsqueeze(0)?, mode)?.0.squeeze(0)
                } else {
                    // Frozen: evaluation behaviour and no gradient (`docs/DESIGN.md` §4).
                    Ok(self
                        .genes
                        .forward(&x.unsqueeze(0)?, &Mode::eval())?
                        .0
                        .squeeze(0)?
                        .detach())
                }
            }
            None => Ok(self.missing_ge.clone()),
        }
    }

    /// Logits `[C]` from expression `[G]` alone when [`ExpressionAlone::GeneEncoder`] answers
    /// them; `None` when the fusion head does.
    pub fn expression_alone_logits(&self, expr: &Tensor) -> Result<Option<Tensor>> {
        match self.cfg.expression_alone {
            ExpressionAlone::FusionHead => Ok(None),
            ExpressionAlone::GeneEncoder => {
                let (_, logits) = self.genes.forward(&expr.unsqueeze(0)?, &Mode::eval())?;
                Ok(Some(logits.squeeze(0)?))
            }
        }
    }

    /// The classification head on `CLS_pat` `[d_pat]` → logits `[C]`.
    pub fn head(&self, cls_pat: &Tensor, mode: &Mode) -> Result<Tensor> {
        let h = self.head1.forward(&cls_pat.unsqueeze(0)?)?.relu()?;
        let h = ops::dropout(&h, self.cfg.head_dropout, mode)?;
        self.head2.forward(&h)?.squeeze(0)
    }
}

impl Gimp {
    /// The logits `[C]` of a patient with what it has: the expression-alone answer where
    /// [`ExpressionAlone::GeneEncoder`] gives it, else the head on `CLS_pat` (the missing
    /// embedding for an absent half). What evaluation and validation score.
    pub fn logits(
        &self,
        bag: Option<BagInput>,
        expr: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<Tensor> {
        if let (None, Some(e)) = (bag, expr) {
            if let Some(l) = self.expression_alone_logits(e)? {
                return Ok(l);
            }
        }
        let cls_pat = Tensor::cat(
            &[self.cls_img(bag, mode)?, self.cls_ge(expr, false, mode)?],
            0,
        )?;
        self.head(&cls_pat, mode)
    }

    /// A patient's answers in a fine-tuning step, each `(which, logits [C])`. With `subsets` and
    /// both halves: both halves once, then the head with both, with the slide alone and with
    /// the expression alone, equally weighted (`docs/DESIGN.md` §31). The last is kept even
    /// where the gene encoder's classifier answers expression alone: without it the slide-alone
    /// answers were worse (demo seed 0: 26 → 22 of 32 right). Otherwise the head on what the
    /// patient has. `train_genes`: the gene encoder is trained too.
    pub fn training_answers(
        &self,
        bag: Option<BagInput>,
        expr: Option<&Tensor>,
        subsets: bool,
        train_genes: bool,
        mode: &Mode,
    ) -> Result<Vec<(Answer, Tensor)>> {
        let head = |img: &Tensor, ge: &Tensor| self.head(&Tensor::cat(&[img, ge], 0)?, mode);
        let img = self.cls_img(bag, mode)?;
        let ge = self.cls_ge(expr, train_genes, mode)?;
        if !(subsets && bag.is_some() && expr.is_some()) {
            return Ok(vec![(Answer::Both, head(&img, &ge)?)]);
        }
        let no_ge = self.cls_ge(None, false, mode)?;
        let no_img = self.cls_img(None, mode)?;
        Ok(vec![
            (Answer::Both, head(&img, &ge)?),
            (Answer::SlideAlone, head(&img, &no_ge)?),
            (Answer::ExpressionAlone, head(&no_img, &ge)?),
        ])
    }

    /// `CLS_pat`, the logits and (with a slide) the last layer's CLS attention over the patches.
    pub fn predict(
        &self,
        bag: Option<BagInput>,
        expr: Option<&Tensor>,
        mode: &Mode,
    ) -> Result<Output> {
        let (cls_img, attention) = match bag {
            Some(x) if !mode.train => {
                let (cls, attention) = self.aggregator.cls_and_attention(x, mode)?;
                (cls, Some(attention))
            }
            Some(x) => {
                let enc =
                    self.aggregator
                        .encode(self.aggregator.embed(&*x.tensor()?)?, mode, false)?;
                (enc.tokens.get(0)?.get(0)?, None)
            }
            None => (self.missing_img.clone(), None),
        };
        let cls_pat = Tensor::cat(&[cls_img, self.cls_ge(expr, false, mode)?], 0)?;
        let alone = match (bag, expr) {
            (None, Some(e)) => self.expression_alone_logits(e)?,
            _ => None,
        };
        let logits = match alone {
            Some(l) => l,
            None => self.head(&cls_pat, mode)?,
        };
        Ok(Output {
            logits,
            embedding: cls_pat,
            attention,
        })
    }
}

impl Model for Gimp {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        match input {
            Input::Bag(b) => self.predict(Some(*b), None, mode),
            Input::Expression(e) => self.predict(None, Some(e), mode),
            Input::Patient { bag, expression } => self.predict(*bag, *expression, mode),
        }
    }
}

/// GiMP in the registry; trained by its own three stages.
pub const ARCH: ArchInfo = ArchInfo {
    name: "gimp",
    summary: "GiMP: patch aggregator + GroupMSA, MPM and gene-induced triplet pre-training, MLP head on CLS_pat",
    reference: "gimp-rs (docs/DESIGN.md §2–§11; the paper published no code)",
    input: InputKind::Multimodal,
    training: Training::GimpStages,
    default_config: |d, c| to_value(&GimpSettings::paper().config(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Gimp::new(s, config(v)?)?)),
    config_from_weights: |_| {
        Err(candle_core::Error::Msg(
            "a GiMP model is read from a gimp-rs checkpoint, which stores its config".into(),
        ))
    },
    set_gene_groups: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use gimp_nn::ParamStore;

    /// The reconstruction loss computed on the selected rows equals the whole computation:
    /// every token through both layers and the decoder, then L1 on the masked rows.
    #[test]
    fn masked_patch_modelling_equals_the_whole_computation() {
        let cfg = GimpConfig {
            aggregator: AggregatorConfig::gimp(24),
            genes: GeneEncoderConfig::GroupMsa(GroupMsaConfig {
                dim: 32,
                heads: 4,
                fragment: 10,
                groups: 5,
                ..GroupMsaConfig::gimp(50, 2)
            }),
            n_classes: 2,
            head_dropout: 0.0,
            expression_alone: ExpressionAlone::FusionHead,
        };
        let store = ParamStore::new(5);
        let model = Gimp::new(&store.root(), cfg).unwrap();
        let window = Tensor::randn(0f32, 1f32, (300, 24), &Device::Cpu).unwrap();
        let masked = vec![7usize, 0, 299, 150, 3, 8];
        let mode = Mode::eval();
        let fast = model
            .masked_patch_modelling(&window, &masked, &mode)
            .unwrap();
        let h = model.aggregator.embed(&window).unwrap();
        let mut m = vec![0f32; 300];
        masked.iter().for_each(|&i| m[i] = 1.0);
        let mask = Tensor::from_vec(m, (1, 300, 1), &Device::Cpu).unwrap();
        let keep = mask.affine(-1.0, 1.0).unwrap();
        let h = (h.broadcast_mul(&keep).unwrap() + mask.broadcast_mul(&model.mask_token).unwrap())
            .unwrap();
        let tokens = model
            .aggregator
            .encode(h, &mode, false)
            .unwrap()
            .tokens
            .squeeze(0)
            .unwrap();
        let recon = model
            .decoder
            .forward(
                &model
                    .decoder_norm
                    .forward(&tokens.narrow(0, 1, 300).unwrap())
                    .unwrap(),
            )
            .unwrap();
        let slow = gimp_nn::loss::masked_l1(&recon, &window, &masked).unwrap();
        let (a, b) = (
            fast.reconstruction.to_scalar::<f32>().unwrap(),
            slow.to_scalar::<f32>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
        let cls = (fast.cls_img - tokens.get(0).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(cls < 1e-5, "{cls}");
    }
}
