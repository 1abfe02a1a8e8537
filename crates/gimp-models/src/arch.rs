//! What an architecture says about itself. Each model file defines one [`ArchInfo`] (CLAM two)
//! next to its config and code: how to build it, what a patient must give it, how the reference
//! code trains it, and how to read a reference state dict's shapes back into its config. The
//! [`registry`](crate::registry) is only the list of them; nothing outside this crate matches on
//! an architecture's name.

use crate::model::{BagInput, Input, Model};
use candle_core::{Result, Tensor};
use gimp_nn::optim::Kind;
use gimp_nn::Scope;
use serde_json::Value;
use std::collections::BTreeMap;

/// What a model reads from a patient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// A bag of patch features.
    Slide,
    /// An expression vector.
    Expression,
    /// Slide features and/or expression of one patient (GiMP: either may be absent).
    Multimodal,
    /// Slide features and expression, both required (the reference fusion models drop
    /// patients without both).
    Paired,
}

/// The modalities a model needed but was not given (its `Display` says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingInput(pub InputKind);

impl std::fmt::Display for MissingInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            InputKind::Slide => "reads slide features, which were not given",
            InputKind::Expression => "reads expression, which was not given",
            InputKind::Multimodal => "needs slide features and/or expression; neither was given",
            InputKind::Paired => "needs both slide features and expression",
        })
    }
}

impl std::error::Error for MissingInput {}

impl InputKind {
    pub fn reads_slides(self) -> bool {
        self != InputKind::Expression
    }

    pub fn reads_expression(self) -> bool {
        self != InputKind::Slide
    }

    /// Whether a patient with these modalities can be given to the model.
    pub fn accepts(self, has_slides: bool, has_expression: bool) -> bool {
        match self {
            InputKind::Slide => has_slides,
            InputKind::Expression => has_expression,
            InputKind::Multimodal => has_slides || has_expression,
            InputKind::Paired => has_slides && has_expression,
        }
    }

    /// The model's input from what a patient has; a modality the model does not read is left
    /// out, one it needs and lacks is an error.
    pub fn select<'a>(
        self,
        bag: Option<BagInput<'a>>,
        expression: Option<&'a Tensor>,
    ) -> std::result::Result<Input<'a>, MissingInput> {
        match (self, bag, expression) {
            (InputKind::Slide, Some(b), _) => Ok(Input::Bag(b)),
            (InputKind::Expression, _, Some(e)) => Ok(Input::Expression(e)),
            (InputKind::Paired, Some(b), Some(e)) => Ok(Input::Patient {
                bag: Some(b),
                expression: Some(e),
            }),
            (InputKind::Multimodal, b, e) if b.is_some() || e.is_some() => Ok(Input::Patient {
                bag: b,
                expression: e,
            }),
            (kind, _, _) => Err(MissingInput(kind)),
        }
    }
}

/// Input widths of a cohort: patch-feature width and gene count (0 where absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub features: usize,
    pub genes: usize,
}

impl Dims {
    /// The same width for both inputs (tests and single-input callers).
    pub fn both(n: usize) -> Self {
        Self {
            features: n,
            genes: n,
        }
    }
}

/// How the reference code trains a model, as far as gimp-rs's one trainer reaches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainingDefaults {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub optimizer: Kind,
    /// Adam's (β₁, β₂).
    pub betas: (f64, f64),
    /// Cosine decay of the rate over the run (else constant, as most reference code).
    pub cosine: bool,
    /// Patients whose gradients are averaged into one optimiser step.
    pub accumulate: usize,
    /// A self-supervised stage ([`Model::pretrain_loss`]) runs before the supervised one, with
    /// this recipe.
    pub pretraining: Option<Pretraining>,
    /// Train on the `k` most variable genes of the training split (`docs/DESIGN.md` §38);
    /// `None` reads every gene.
    pub top_variance_genes: Option<usize>,
}

impl TrainingDefaults {
    /// AdamW at 1e-4 with decay 1e-4 for 50 epochs: the choice for models whose authors
    /// published no training code of their own for this task (GroupMSA, the image–omic
    /// adaptations).
    pub const ADAMW: Self = Self {
        epochs: 50,
        lr: 1e-4,
        weight_decay: 1e-4,
        optimizer: Kind::AdamW,
        betas: (0.9, 0.999),
        cosine: false,
        accumulate: 1,
        pretraining: None,
        top_variance_genes: None,
    };

    /// CLAM's and PORPOISE's `Adam(lr 2e-4, weight_decay 1e-5)` (an L2 penalty) for 50 epochs.
    pub const CLAM: Self = Self {
        epochs: 50,
        lr: 2e-4,
        weight_decay: 1e-5,
        optimizer: Kind::AdamL2,
        ..Self::ADAMW
    };

    /// MCAT's and PORPOISE's survival scripts: 20 epochs, gradients of 32 patients per step.
    pub const MCAT: Self = Self {
        epochs: 20,
        accumulate: 32,
        ..Self::CLAM
    };

    /// The 2,000 most variable genes of the training split (`docs/DESIGN.md` §38): what the
    /// gene-only models read by default.
    pub const VARIABLE_GENES: usize = 2_000;

    /// GroupMSA trained alone (`docs/DESIGN.md` §38): AdamW at 1e-3 (the demo preset's gene
    /// stage), 20 epochs of mini-batches of 16 patients, the [`Self::VARIABLE_GENES`] most
    /// variable genes.
    pub const GENE_ENCODER: Self = Self {
        epochs: 20,
        lr: 1e-3,
        accumulate: 16,
        top_variance_genes: Some(Self::VARIABLE_GENES),
        ..Self::ADAMW
    };
}

/// The recipe of a self-supervised stage before the supervised one: AdamW, batches of `batch`
/// patients, a linear warm-up over the first `warmup_percent` % of the steps, then cosine decay
/// to zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pretraining {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup_percent: usize,
}

impl Pretraining {
    /// MGCA's optimiser (AdamW, lr 2e-5, weight decay 0.05, warm-up over the first 40 % of the
    /// steps), 50 epochs of 16-patient batches: the image–omic adaptations' stage (MGCA, BioViL,
    /// REFERS; `docs/DESIGN.md` §24).
    pub const MGCA: Self = Self {
        epochs: 50,
        batch: 16,
        lr: 2e-5,
        weight_decay: 0.05,
        warmup_percent: 40,
    };
}

/// Which trainer a model needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Training {
    /// gimp-train's supervised trainer (`gimp-rs train --arch`), with these defaults.
    Supervised(TrainingDefaults),
    /// GiMP's own three stages (`pretrain-genes`, `pretrain`, `finetune`).
    GimpStages,
}

/// Puts gene groups (positions in the expression vector) into a model config.
pub type SetGeneGroups = fn(&mut Value, &[Vec<u32>]) -> Result<()>;

/// One architecture.
pub struct ArchInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Where the parameter names come from.
    pub reference: &'static str,
    pub input: InputKind,
    pub training: Training,
    /// Default config for inputs of these widths and `n_classes`.
    pub default_config: fn(Dims, usize) -> Value,
    pub build: fn(&Scope, &Value) -> Result<Box<dyn Model>>,
    /// The config a weights file implies (layer widths and class count read from its shapes).
    pub config_from_weights: fn(&BTreeMap<String, Tensor>) -> Result<Value>,
    /// For models that take the expression as groups of genes (MCAT's signatures): puts the
    /// groups (positions in the expression vector) into a config.
    pub set_gene_groups: Option<SetGeneGroups>,
}

impl ArchInfo {
    /// The supervised trainer's defaults, or an error for a model trained otherwise.
    pub fn supervised_defaults(&self) -> Result<TrainingDefaults> {
        match self.training {
            Training::Supervised(d) => Ok(d),
            Training::GimpStages => candle_core::bail!(
                "{} is trained with its own stages (pretrain-genes, pretrain, finetune), not the supervised trainer",
                self.name
            ),
        }
    }

    /// The self-supervised stage's recipe, for a model that has one.
    pub fn pretraining(&self) -> Option<Pretraining> {
        match self.training {
            Training::Supervised(d) => d.pretraining,
            Training::GimpStages => None,
        }
    }

    pub fn self_supervised(&self) -> bool {
        self.pretraining().is_some()
    }
}

/// A model's config from JSON.
pub(crate) fn config<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| candle_core::Error::Msg(format!("invalid model config: {e}")))
}

pub(crate) fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

/// The shape of weight `name`, or an error naming it.
pub(crate) fn shape(w: &BTreeMap<String, Tensor>, name: &str) -> Result<Vec<usize>> {
    w.get(name)
        .map(|t| t.dims().to_vec())
        .ok_or_else(|| candle_core::Error::Msg(format!("the weights have no '{name}'")))
}

/// How many consecutive `{prefix}{i}{suffix}` weights exist from `i = 0`.
pub(crate) fn count_indexed(w: &BTreeMap<String, Tensor>, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| w.contains_key(&format!("{prefix}{i}{suffix}")))
        .count()
}

/// `config_from_weights` of the adaptations that have no reference weights.
pub(crate) fn no_reference(name: &str) -> Result<Value> {
    Err(candle_core::Error::Msg(format!(
        "{name} has no reference weights to read (the model is gimp-rs's own): use a gimp-rs checkpoint, which stores its config"
    )))
}

/// The per-group SNNs MCAT, SurvPath and MMP share (`sig_networks.{i}.{j}.0.weight`), read from
/// a state dict: the genes in all, the hidden widths (every group has group 0's), and the groups
/// as consecutive slices of one expression vector (the references take one vector per group).
pub(crate) struct GeneGroupNetworks {
    pub genes: usize,
    pub hidden: Vec<usize>,
    pub groups: Vec<Vec<u32>>,
}

pub(crate) fn gene_group_networks(w: &BTreeMap<String, Tensor>) -> Result<GeneGroupNetworks> {
    let sizes = (0..count_indexed(w, "sig_networks.", ".0.0.weight"))
        .map(|i| shape(w, &format!("sig_networks.{i}.0.0.weight")).map(|s| s[1]))
        .collect::<Result<Vec<_>>>()?;
    let hidden = (0..count_indexed(w, "sig_networks.0.", ".0.weight"))
        .map(|j| shape(w, &format!("sig_networks.0.{j}.0.weight")).map(|s| s[0]))
        .collect::<Result<_>>()?;
    let mut start = 0u32;
    let groups = sizes
        .iter()
        .map(|&k| {
            let g = (start..start + k as u32).collect();
            start += k as u32;
            g
        })
        .collect();
    Ok(GeneGroupNetworks {
        genes: sizes.iter().sum(),
        hidden,
        groups,
    })
}
