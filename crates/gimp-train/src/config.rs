//! The run configuration: one TOML file, named presets, every field overridable. The `paper`
//! preset is the paper's protocol exactly (docs/DESIGN.md §4–§9, §11); `demo` is small enough to run the
//! whole pipeline in minutes on two cores. Every choice is a type, checked when the file is
//! read: a bad value is an error naming the field, the value and the allowed values. The
//! preset only chooses starting values; no behaviour depends on its name.
//!
//! Every setting type of a run is here: GiMP's run file ([`RunConfig`]), the task
//! ([`TaskConfig`]), early stopping, the genes a model reads, and a compared system's settings
//! ([`SupervisedConfig`], built in one place from its defaults and the overrides the CLI,
//! `experiment` and Python pass: [`SupervisedConfig::build`]).

use crate::error::{Result, TrainError};
use gimp_io::expression::ExpressionTransform;
pub use gimp_models::gimp::GeneEncoderKind;
use gimp_models::gimp::GimpSettings;
use gimp_models::group_msa::Tokenizer;
use gimp_models::{ArchInfo, Pretraining, TrainingDefaults};
use gimp_nn::checkpoint::Preprocessing;
use gimp_nn::loss::Mining;
use gimp_nn::optim::Kind;
use gimp_nn::survival::{SurvivalLoss, REFERENCE_ALPHA};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The named starting points of a run file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The paper's hyper-parameters.
    Paper,
    /// Small and fast: the whole pipeline in minutes on a laptop CPU.
    Demo,
}

impl Preset {
    pub const ALL: [Preset; 2] = [Preset::Paper, Preset::Demo];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Paper => "paper",
            Preset::Demo => "demo",
        }
    }
}

impl std::str::FromStr for Preset {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown preset '{s}', expected one of: paper, demo"))
    }
}

/// Which inputs the fine-tuned model sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Modalities {
    /// Slides and expression (GiMP).
    Both,
    /// Expression treated as missing: the image-only part.
    Image,
    /// Slides treated as missing.
    Genes,
}

impl std::str::FromStr for Modalities {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "both" => Ok(Self::Both),
            "image" => Ok(Self::Image),
            "genes" => Ok(Self::Genes),
            other => Err(format!(
                "unknown modalities '{other}'; known: both, image, genes"
            )),
        }
    }
}

impl Modalities {
    pub fn slides(self) -> bool {
        self != Modalities::Genes
    }

    pub fn expression(self) -> bool {
        self != Modalities::Image
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub preset: Preset,
    pub seed: u64,
    /// Which split of the cohort (index into its split files).
    pub fold: usize,
    pub model: ModelConfig,
    pub genes: GeneStage,
    pub pretrain: PretrainStage,
    pub finetune: FinetuneStage,
    /// Classification (default) or survival with its loss (`docs/DESIGN.md` §34): every stage
    /// trains for it — the gene encoder's and the fine-tuned head's loss, the triplets' groups.
    #[serde(default)]
    pub task: TaskConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Hidden size `d` of the aggregator and GroupMSA.
    pub dim: usize,
    pub heads: usize,
    pub landmarks: usize,
    /// `group_msa` (GiMP) or `snn` (the Table 2 ablation).
    pub gene_encoder: GeneEncoderKind,
    pub fragment: usize,
    pub groups: usize,
    /// GroupMSA's fragment tokenizer: `shared` (docs/DESIGN.md §4) or `per_fragment`.
    #[serde(default)]
    pub gene_tokenizer: Tokenizer,
    /// Dropout inside GroupMSA's blocks *(ours: 0.1)*.
    #[serde(default = "default_gene_dropout")]
    pub gene_dropout: f64,
    pub head_dropout: f64,
    /// Expression transform before z-scoring: `log2p1` (FPKM) or `none`.
    pub transform: ExpressionTransform,
}

impl ModelConfig {
    /// GiMP's sizes and gene encoder as this `[model]` sets them.
    pub fn gimp(&self) -> GimpSettings {
        GimpSettings {
            dim: self.dim,
            heads: self.heads,
            landmarks: self.landmarks,
            gene_encoder: self.gene_encoder,
            fragment: self.fragment,
            groups: self.groups,
            gene_tokenizer: self.gene_tokenizer,
            gene_dropout: self.gene_dropout,
            head_dropout: self.head_dropout,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneStage {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Off in both presets: the paper keeps the best of all epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Model selection inside the training part (`docs/DESIGN.md` §41): the epoch count (and
    /// any `lr`/`weight_decay` grid; a gene grid does not apply, GiMP reads every gene) chosen
    /// by inner folds of the training patients, then the encoder trained on all of them; the
    /// validation part is left to the later stages. Off in the paper preset, on in the demo's
    /// (`[genes.selection] folds = 0` turns it off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// What the selection chose (in the gene stage's checkpoint and `genes/selection.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Chosen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Triplet {
    /// On `CLS_pat = [CLS_img, CLS_ge]` (GiMP).
    GeneInduced,
    /// On `CLS_img` alone ("Aggregator + Triplet").
    ImageOnly,
    Off,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainStage {
    /// 0 skips pre-training (fine-tune from scratch).
    pub epochs: usize,
    /// Patients per batch (class-balanced, at least two per class).
    pub batch: usize,
    /// Window length `L`.
    pub window: usize,
    pub mask_ratio: f64,
    /// Masked patch modelling on (else the window is encoded unmasked).
    pub mpm: bool,
    pub triplet: Triplet,
    pub mining: Mining,
    /// Triplet margin δ.
    pub margin: f64,
    pub triplet_weight: f64,
    pub reconstruction_weight: f64,
    pub lr: f64,
    pub weight_decay: f64,
    /// Survival runs: which censored patients join the gene-induced triplets
    /// (`docs/DESIGN.md` §34).
    #[serde(default)]
    pub censored: CensoredInTriplets,
    /// Whether a batch's windows are backpropagated together or one at a time
    /// (`docs/DESIGN.md` §42).
    #[serde(default)]
    pub window_gradients: WindowGradients,
}

/// How GiMP pre-training backpropagates a batch of windows. The triplet loss couples the
/// batch's windows, so backpropagating them together keeps every window's graph until the
/// batch's backward pass (about 0.55 GB per 6,000-patch window); one at a time encodes each
/// window twice (about a third more time) and keeps one graph. Both give the same gradient;
/// the sums run in another order, so the weights agree to rounding, not bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowGradients {
    /// One at a time when the batch holds more than [`WindowGradients::TOGETHER_PATCHES`]
    /// patches (the paper's 8 windows of 6,000), else together.
    #[default]
    Auto,
    Together,
    OneAtATime,
}

impl WindowGradients {
    /// The most patches a batch backpropagates together under `auto`: about 1.5 GB of graphs.
    pub const TOGETHER_PATCHES: usize = 16_384;

    pub fn one_at_a_time(self, windows: usize, window: usize) -> bool {
        match self {
            Self::Auto => windows.saturating_mul(window) > Self::TOGETHER_PATCHES,
            Self::Together => false,
            Self::OneAtATime => true,
        }
    }
}

/// Survival runs: which censored patients GiMP's pre-training forms triplets with. A censored
/// patient's time bin is only a lower bound of its event's, except in the last bin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CensoredInTriplets {
    /// Those censored in the last bin (their bin is certain); the others are left out of the
    /// triplet batches.
    #[default]
    CertainBin,
    /// None: only patients with an event.
    LeaveOut,
    /// Every censored patient, in the bin of its censoring time (a lower bound taken as the
    /// truth; for comparison).
    ObservedBin,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneStage {
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Train the gene encoder too (default: frozen, `docs/DESIGN.md` §4).
    pub train_genes: bool,
    /// Random cap on patches per training bag (evaluation always uses the whole bag).
    pub max_patches: Option<usize>,
    /// Refuse, before fine-tuning, a training bag whose step would need more gigabytes than
    /// this (`--memory-limit`; the estimate is `Gimp::finetune_step_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_gb: Option<f64>,
    /// `both`, `image` (expression treated as missing: the image-only part) or `genes`.
    pub modalities: Modalities,
    /// Probability that a training patient's expression is hidden (its half of `CLS_pat` becomes
    /// the learned "missing" embedding) for that step. 0 in the paper preset. A frozen gene
    /// encoder that separates the training set makes the head ignore the image half; hiding it
    /// now and then makes the head learn both (modality dropout, *ours*).
    #[serde(default)]
    pub modality_dropout: f64,
    /// Train and select GiMP for a missing modality too (*ours*, off in the paper preset): for a
    /// patient with both, each step's loss is the mean cross-entropy of the head on both halves,
    /// on the slide alone and on the expression alone (the absent half is the learned "missing"
    /// embedding), and validation scores the same three answers, so the epoch kept is the best
    /// for a deployment where either modality may be absent (docs/DESIGN.md §31).
    #[serde(default)]
    pub modality_subsets: bool,
    /// Off in both presets: the paper fine-tunes up to 70 epochs and keeps the best.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Patients whose gradients are averaged into one optimiser step (1 in both presets); the
    /// Cox loss's partial likelihood is taken over these patients, so it needs 2 or more
    /// (`RunConfig::set_task` makes it 32).
    #[serde(default = "one")]
    pub accumulate: usize,
}

fn one() -> usize {
    1
}

fn default_gene_dropout() -> f64 {
    0.1
}

impl RunConfig {
    /// The paper's hyper-parameters (`docs/DESIGN.md` §4–§9): d 512, L 6000, mask 0.5, δ 0.8, AdamW 1e-4
    /// cosine, 100 pre-training epochs, ≤ 70 fine-tuning epochs.
    pub fn paper() -> Self {
        Self {
            preset: Preset::Paper,
            seed: 0,
            fold: 0,
            model: ModelConfig {
                dim: 512,
                heads: 8,
                landmarks: 256,
                gene_encoder: GeneEncoderKind::GroupMsa,
                fragment: 252,
                groups: 16,
                gene_tokenizer: Tokenizer::Shared,
                gene_dropout: 0.1,
                head_dropout: 0.25,
                transform: ExpressionTransform::Log2p1,
            },
            genes: GeneStage {
                epochs: 50,
                batch: 16,
                lr: 1e-4,
                weight_decay: 1e-4,
                early_stopping: None,
                selection: None,
                chosen: None,
            },
            pretrain: PretrainStage {
                epochs: 100,
                batch: 8,
                window: 6000,
                mask_ratio: 0.5,
                mpm: true,
                triplet: Triplet::GeneInduced,
                mining: Mining::Random,
                margin: 0.8,
                triplet_weight: 1.0,
                reconstruction_weight: 1.0,
                lr: 1e-4,
                weight_decay: 1e-4,
                censored: CensoredInTriplets::CertainBin,
                window_gradients: WindowGradients::Auto,
            },
            finetune: FinetuneStage {
                epochs: 70,
                lr: 1e-4,
                weight_decay: 1e-4,
                train_genes: false,
                max_patches: None,
                memory_limit_gb: None,
                modalities: Modalities::Both,
                modality_dropout: 0.0,
                modality_subsets: false,
                early_stopping: None,
                accumulate: 1,
            },
            task: TaskConfig::default(),
        }
    }

    /// Sets the task, and the fine-tuning step's patients as it needs them
    /// ([`TaskConfig::patients_per_step`]).
    pub fn set_task(&mut self, task: TaskConfig) {
        self.task = task;
        self.finetune.accumulate = task.patients_per_step(self.finetune.accumulate);
    }

    /// Small and fast: the whole pipeline in minutes on a laptop CPU.
    pub fn demo() -> Self {
        let mut c = Self::paper();
        c.preset = Preset::Demo;
        c.model.dim = 64;
        c.model.heads = 4;
        c.model.landmarks = 32;
        c.model.fragment = 100;
        c.model.groups = 8;
        // Measured on the demo cohort (96 training patients, 2,000 genes): with the shared
        // tokenizer GroupMSA overfits (78–81% test); one tokenizer per fragment and fragments of
        // 100 genes (20 tokens) reach 94–97% (docs/TRAINING.md).
        c.model.gene_tokenizer = Tokenizer::PerFragment;
        c.genes = GeneStage {
            epochs: 20,
            batch: 16,
            lr: 1e-3,
            weight_decay: 1e-4,
            early_stopping: None,
            // The gene encoder's epochs chosen inside the training patients (§41).
            selection: Some(Selection::default_for_gene_models()),
            chosen: None,
        };
        c.pretrain.epochs = 6;
        c.pretrain.window = 256;
        c.pretrain.lr = 5e-4;
        c.finetune.epochs = 8;
        c.finetune.lr = 3e-4;
        c.finetune.max_patches = Some(512);
        // With 96 training patients the frozen gene half separates the training set after one
        // epoch and the head ignores the image half. Training (and selecting the epoch on) the
        // answers with both halves, the slide alone and the expression alone makes it use both
        // and answer with either alone (docs/TRAINING.md, "The demo"; DESIGN.md §31).
        c.finetune.modality_subsets = true;
        c
    }

    pub fn preset(preset: Preset) -> Self {
        match preset {
            Preset::Paper => Self::paper(),
            Preset::Demo => Self::demo(),
        }
    }

    /// Reads a run file: `preset = "…"` selects the base, any other field overrides it. Errors
    /// name the field (`finetune.modalities`), the value and what was expected.
    pub fn from_toml(text: &str) -> std::result::Result<Self, String> {
        let overrides: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let base = match overrides.get("preset") {
            None => Preset::Paper,
            Some(toml::Value::String(s)) => s.parse().map_err(|e| format!("preset: {e}"))?,
            Some(other) => return Err(format!("preset: expected a string, found {other}")),
        };
        let mut table = toml::Table::try_from(Self::preset(base)).map_err(|e| e.to_string())?;
        merge(&mut table, overrides);
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }
}

fn merge(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Early stopping as CLAM's `EarlyStopping`: after an epoch whose validation loss is not at
/// most the lowest so far, a counter goes up (an equal loss resets it, as in CLAM); training
/// ends once the counter reaches `patience` after an epoch whose 0-based index is above
/// `stop_epoch`. The epoch kept is still the best by the selection rule ([`better`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    pub patience: usize,
    pub stop_epoch: usize,
}

impl EarlyStopping {
    /// CLAM's defaults (`patience=20, stop_epoch=50`).
    pub const CLAM: Self = Self {
        patience: 20,
        stop_epoch: 50,
    };

    /// `base` with a patience and stop epoch given on a command line; patience 0 turns early
    /// stopping off, and a value given where `base` is off starts from CLAM's.
    pub fn with_overrides(
        base: Option<Self>,
        patience: Option<usize>,
        stop_epoch: Option<usize>,
    ) -> Option<Self> {
        if patience == Some(0) {
            return None;
        }
        if patience.is_none() && stop_epoch.is_none() {
            return base;
        }
        let e = base.unwrap_or(Self::CLAM);
        Some(Self {
            patience: patience.unwrap_or(e.patience),
            stop_epoch: stop_epoch.unwrap_or(e.stop_epoch),
        })
    }
}

/// Which question a run answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// The cohort's classes (the label column).
    #[default]
    Classification,
    /// Time to event from the cohort file's `[survival]` section.
    Survival,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Survival => "survival",
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "classification" => Ok(TaskKind::Classification),
            "survival" => Ok(TaskKind::Survival),
            other => Err(format!(
                "unknown task '{other}', expected classification or survival"
            )),
        }
    }
}

/// The `[task]` of a run file (and `--task`, `--loss`, `--alpha`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    #[serde(default)]
    pub kind: TaskKind,
    /// Survival only: `nll` (MCAT's discrete-time likelihood, the default) or `cox`.
    #[serde(default)]
    pub loss: SurvivalLoss,
    /// Survival NLL only: the weight of the uncensored-only term (MCAT's `alpha_surv`; 0 as
    /// both references' scripts default it).
    #[serde(default = "reference_alpha")]
    pub alpha: f64,
}

fn reference_alpha() -> f64 {
    REFERENCE_ALPHA
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            kind: TaskKind::Classification,
            loss: SurvivalLoss::Nll,
            alpha: REFERENCE_ALPHA,
        }
    }
}

impl TaskConfig {
    /// A survival task with `loss` and the references' alpha.
    pub fn survival(loss: SurvivalLoss) -> Self {
        Self {
            kind: TaskKind::Survival,
            loss,
            ..Self::default()
        }
    }

    /// `self` with what a command line or a caller asked for; `None` when nothing was asked.
    /// A survival loss or alpha asks for survival.
    pub fn overridden(
        self,
        kind: Option<TaskKind>,
        loss: Option<SurvivalLoss>,
        alpha: Option<f64>,
    ) -> Option<Self> {
        if kind.is_none() && loss.is_none() && alpha.is_none() {
            return None;
        }
        let mut t = self;
        t.kind = kind.unwrap_or(TaskKind::Survival);
        t.loss = loss.unwrap_or(t.loss);
        t.alpha = alpha.unwrap_or(t.alpha);
        Some(t)
    }

    /// Whether the gene-only logistic regression is a row of this task's tables (a classifier:
    /// a survival table's linear counterpart is `gimp-rs baseline cox`).
    pub fn has_logistic_baseline(&self) -> bool {
        self.kind == TaskKind::Classification
    }

    pub fn is_cox(&self) -> bool {
        self.kind == TaskKind::Survival && self.loss == SurvivalLoss::Cox
    }

    /// What a table or report says the task is: `classification`, `survival (nll, alpha 0)`.
    pub fn describe(&self) -> String {
        match (self.kind, self.loss) {
            (TaskKind::Classification, _) => "classification".into(),
            (TaskKind::Survival, SurvivalLoss::Nll) => {
                format!("survival (discrete-time NLL, alpha {})", self.alpha)
            }
            (TaskKind::Survival, SurvivalLoss::Cox) => {
                "survival (Cox partial likelihood, Breslow ties)".into()
            }
        }
    }

    /// The patients of one optimiser step where the run asks for `patients`: the Cox loss
    /// compares the patients of a step, so a step of one patient becomes MCAT's
    /// [`COX_UNIT`] (a number set afterwards overrides it); otherwise `patients`.
    pub fn patients_per_step(&self, patients: usize) -> usize {
        match self.is_cox() && patients < 2 {
            true => COX_UNIT,
            false => patients,
        }
    }

    /// How a step of `accumulate` patients is taken: `(patients per unit of the loop, units
    /// accumulated per step)`. One unit holds the whole step where the loss compares the
    /// step's patients (Cox) or the model runs them as one batch (`batched`); otherwise one
    /// patient a unit, their gradients accumulated.
    pub fn units(&self, accumulate: usize, batched: bool) -> (usize, usize) {
        match batched || self.is_cox() {
            true if accumulate > 1 => (accumulate, 1),
            _ => (1, accumulate),
        }
    }

    /// Checks the patients per optimiser step a run gives the loss: Cox's partial likelihood
    /// compares the patients of one step (§34), so it needs two at least; `field` names the
    /// setting in errors.
    pub fn check_unit(&self, unit: usize, field: &str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(TrainError::Msg(format!(
                "task.alpha: {} is not in [0, 1]",
                self.alpha
            )));
        }
        if self.is_cox() && unit < 2 {
            return Err(TrainError::Msg(format!(
                "{field}: {unit} patient(s) per optimiser step, but the Cox loss compares the \
                 patients of a step and needs at least 2 (MCAT's survival scripts use {COX_UNIT})"
            )));
        }
        Ok(())
    }
}

/// Patients per optimiser step a Cox run takes when the model's own default is one patient:
/// MCAT's and PORPOISE's gradient accumulation over 32 patients.
pub const COX_UNIT: usize = 32;

/// Which genes a model reads (`docs/DESIGN.md` §38).
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GeneSelection {
    /// Every gene of the expression matrix.
    #[default]
    All,
    /// The `k` genes of largest variance over the training split (after the transform, before
    /// z-scoring); all genes when the cohort has `k` or fewer.
    TopVariance(usize),
    /// The genes named in a text file, one per line (`#` starts a comment; a CSV line's first
    /// field; a first line naming no gene is a header), in the file's order.
    List(PathBuf),
}

impl GeneSelection {
    /// Positions (in `p.genes`) of the genes kept.
    pub(crate) fn pick(&self, p: &Preprocessing) -> Result<Vec<usize>> {
        match self {
            GeneSelection::All => Ok((0..p.genes.len()).collect()),
            GeneSelection::TopVariance(k) => {
                if *k == 0 {
                    return Err(TrainError::Msg(
                        "gene selection: keep at least one gene (top-variance 0)".into(),
                    ));
                }
                let mut order: Vec<usize> = (0..p.genes.len()).collect();
                // Ties (e.g. constant genes) broken by position, so the choice is deterministic.
                order.sort_by(|&a, &b| p.std[b].total_cmp(&p.std[a]).then(a.cmp(&b)));
                order.truncate(*k);
                order.sort_unstable();
                Ok(order)
            }
            GeneSelection::List(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| gimp_io::DataError::io(path, e))?;
                let strip = |g: &str| gimp_io::expression::strip_version(g).to_string();
                let pos: std::collections::HashMap<String, usize> = p
                    .genes
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (strip(g), i))
                    .collect();
                let mut keep = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut header_allowed = true;
                for (line_no, line) in text.lines().enumerate() {
                    let line = line.split('#').next().unwrap_or("");
                    let name = line.split([',', '\t']).next().unwrap_or("").trim();
                    let name = name.trim_matches('"');
                    if name.is_empty() {
                        continue;
                    }
                    let first = std::mem::replace(&mut header_allowed, false);
                    let Some(&i) = pos.get(&strip(name)) else {
                        // A first line that names no gene is a column header.
                        if first {
                            continue;
                        }
                        return Err(TrainError::Msg(format!(
                            "{}:{}: gene '{name}' is not in the cohort's expression matrix",
                            path.display(),
                            line_no + 1
                        )));
                    };
                    if seen.insert(i) {
                        keep.push(i);
                    }
                }
                if keep.is_empty() {
                    return Err(TrainError::Msg(format!(
                        "{}: the gene list names no gene",
                        path.display()
                    )));
                }
                Ok(keep)
            }
        }
    }
}

/// `all`, a number `K` (the `K` most variable genes of the training split) or a gene-list file.
impl std::str::FromStr for GeneSelection {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s == "all" {
            return Ok(GeneSelection::All);
        }
        if let Ok(k) = s.parse::<usize>() {
            return match k {
                0 => Err("keep at least one gene".into()),
                k => Ok(GeneSelection::TopVariance(k)),
            };
        }
        let path = PathBuf::from(s);
        if path.is_file() {
            Ok(GeneSelection::List(path))
        } else {
            Err(format!(
                "'{s}' is neither 'all', a number of genes, nor a gene-list file"
            ))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisedConfig {
    pub arch: String,
    pub seed: u64,
    pub fold: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// `adam_l2` (Adam with L2, as CLAM, PORPOISE and MCAT) or `adamw`.
    pub optimizer: Kind,
    /// Cosine decay over the run (else a constant rate, as the reference code).
    pub cosine: bool,
    /// Random cap on patches per training bag.
    pub max_patches: Option<usize>,
    /// Refuse, before training, a bag whose step would need more gigabytes than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_gb: Option<f64>,
    /// Adam's (β₁, β₂).
    pub betas: (f64, f64),
    /// Patients whose gradients are averaged into one optimiser step. A last, smaller group
    /// steps at the end of the epoch.
    pub accumulate: usize,
    /// MCAT: its `signatures.csv` (one column of gene symbols per group); the groups are the
    /// expression's genes found in each column. Without it, six equal contiguous chunks.
    #[serde(default)]
    pub signatures: Option<PathBuf>,
    /// The genes an expression-reading model trains on, chosen on the training split.
    #[serde(default)]
    pub genes: GeneSelection,
    /// CLAM's early stopping by default; `None` trains every epoch.
    #[serde(default = "clam_early_stopping")]
    pub early_stopping: Option<EarlyStopping>,
    /// The image–omic adaptations' (MGCA, BioViL, REFERS) self-supervised stage before
    /// fine-tuning; ignored by the other models.
    #[serde(default)]
    pub self_supervised: SelfSupervisedStage,
    /// Classification (default) or survival, with its loss (`docs/DESIGN.md` §34).
    #[serde(default)]
    pub task: TaskConfig,
    /// Model selection by cross-validation inside the training part (`docs/DESIGN.md` §41):
    /// on by default for the gene-only models off the paper recipe; `None` trains once with the
    /// settings above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selection: Option<Selection>,
    /// What the selection chose (the settings above are then the chosen ones): written by the
    /// selection, recorded in the checkpoint with the rest of these settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chosen: Option<Chosen>,
    /// A gene model starts as the task's linear model of the genes, fitted on its training
    /// patients and kept frozen under its logits (`docs/DESIGN.md` §43): on by default for the
    /// gene-only models off the paper recipe; ignored by models without one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub linear_start: bool,
}

/// Model selection inside the training part (`docs/DESIGN.md` §41): the split's training and
/// validation patients are dealt into `folds` inner folds (stratified by the task's stratum,
/// seeded by the run's seed); every candidate of the grid (each learning rate × weight decay ×
/// gene count; an empty list keeps the run's own value) is trained through the one loop on each
/// inner training part and scored after every epoch on its inner validation fold with the
/// task's validation figure; the candidate and epoch count of the best mean figure (ties: the
/// lower mean loss, then the earlier candidate) are then trained on all the training and
/// validation patients. The test part is never read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    pub folds: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lr: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weight_decay: Vec<f64>,
    /// Candidate numbers of most variable genes (`GeneSelection::TopVariance`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub genes: Vec<usize>,
}

impl Selection {
    /// The default selection of the gene-only models (`docs/DESIGN.md` §41).
    pub const INNER_FOLDS: usize = 3;

    pub fn default_for_gene_models() -> Self {
        Self {
            folds: Self::INNER_FOLDS,
            lr: Vec::new(),
            weight_decay: Vec::new(),
            genes: Vec::new(),
        }
    }
}

/// One candidate's inner cross-validation: its settings, the epoch count of its best mean
/// inner-validation figure, that figure and the mean loss there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub lr: f64,
    pub weight_decay: f64,
    pub genes: GeneSelection,
    pub epochs: usize,
    pub figure: f64,
    pub loss: f64,
}

/// What a run's selection chose, and on what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chosen {
    /// Inner folds, and the training + validation patients dealt into them (the refit's).
    pub folds: usize,
    pub patients: usize,
    /// `val_accuracy` or `val_cindex`: the figure compared.
    pub figure_name: String,
    /// The chosen settings (also the run's own `epochs`, `lr`, `weight_decay`, `genes`).
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub genes: GeneSelection,
    /// The chosen candidate's mean inner-validation figure at `epochs`.
    pub figure: f64,
    /// The epochs the inner fits ran, over which their rate schedule decayed: the refit follows
    /// the same schedule and stops after `epochs`, so its chosen epoch sees the rates the inner
    /// fits' did (a cosine squeezed into `epochs` would decay far sooner). 0 in records written
    /// before this field: the schedule spans `epochs`.
    #[serde(default)]
    pub schedule_epochs: usize,
    /// Every candidate, in grid order.
    pub candidates: Vec<CandidateScore>,
}

impl Chosen {
    /// The epochs a run's rate schedule spans: its own, or a selection's inner fits'.
    pub fn schedule(chosen: Option<&Chosen>, epochs: usize) -> usize {
        chosen.map_or(epochs, |c| c.schedule_epochs.max(epochs))
    }
}

/// The self-supervised stage of a model that has one (the image–omic adaptations, TANGLE):
/// AdamW, a linear warm-up over the first `warmup_percent` % of the steps, then cosine decay;
/// the model's own recipe ([`Pretraining`]) unless overridden.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfSupervisedStage {
    pub epochs: usize,
    /// Patients per batch (the contrastive losses need several).
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Run files written before TANGLE's recipe have none: MGCA's 40 %.
    #[serde(default = "mgca_warmup_percent")]
    pub warmup_percent: usize,
}

fn mgca_warmup_percent() -> usize {
    Pretraining::MGCA.warmup_percent
}

impl From<Pretraining> for SelfSupervisedStage {
    fn from(p: Pretraining) -> Self {
        Self {
            epochs: p.epochs,
            batch: p.batch,
            lr: p.lr,
            weight_decay: p.weight_decay,
            warmup_percent: p.warmup_percent,
        }
    }
}

impl Default for SelfSupervisedStage {
    fn default() -> Self {
        Pretraining::MGCA.into()
    }
}

fn clam_early_stopping() -> Option<EarlyStopping> {
    Some(EarlyStopping::CLAM)
}

impl SupervisedConfig {
    /// The model's own training defaults (its [`TrainingDefaults`]), CLAM's early stopping.
    pub fn defaults(arch: &ArchInfo) -> Result<Self> {
        let d: TrainingDefaults = arch.supervised_defaults()?;
        Ok(Self {
            arch: arch.name.into(),
            seed: 0,
            fold: 0,
            epochs: d.epochs,
            lr: d.lr,
            weight_decay: d.weight_decay,
            optimizer: d.optimizer,
            cosine: d.cosine,
            max_patches: None,
            memory_limit_gb: None,
            betas: d.betas,
            accumulate: d.accumulate,
            signatures: None,
            genes: d
                .top_variance_genes
                .map_or(GeneSelection::All, GeneSelection::TopVariance),
            early_stopping: clam_early_stopping(),
            self_supervised: d.pretraining.map(Into::into).unwrap_or_default(),
            task: TaskConfig::default(),
            selection: None,
            chosen: None,
            linear_start: false,
        })
    }

    /// Sets the task, and the optimiser step's patients as it needs them
    /// ([`TaskConfig::patients_per_step`]).
    pub fn set_task(&mut self, task: TaskConfig) {
        self.task = task;
        self.accumulate = task.patients_per_step(self.accumulate);
    }

    /// The one way a compared system's run is configured (`gimp-rs train`, `experiment`,
    /// Python's `train`): the model's defaults, the recipe, the task, then what was asked for.
    pub fn build(
        arch: &ArchInfo,
        seed: u64,
        fold: usize,
        recipe: TrainingRecipe,
        task: TaskConfig,
        o: &SupervisedOverrides,
    ) -> Result<Self> {
        let mut c = Self::defaults(arch)?;
        c.seed = seed;
        c.fold = fold;
        // The gene-only models choose their settings inside the training part (§41); the paper
        // recipe turns it off.
        if arch.input == gimp_models::InputKind::Expression {
            c.selection = Some(Selection::default_for_gene_models());
            c.linear_start = true;
        }
        recipe.apply(&mut c);
        c.set_task(task);
        if let Some(v) = o.pretrain_epochs {
            c.self_supervised.epochs = v;
        }
        if let Some(v) = o.pretrain_lr {
            c.self_supervised.lr = v;
        }
        if let Some(v) = o.pretrain_batch {
            c.self_supervised.batch = v;
        }
        if let Some(v) = o.accumulate {
            c.accumulate = v.max(1);
        }
        c.signatures = o.signatures.clone();
        if let Some(g) = &o.genes {
            c.genes = g.clone();
        }
        if let Some(v) = o.epochs {
            c.epochs = v;
        }
        if let Some(v) = o.lr {
            c.lr = v;
        }
        if let Some(v) = o.weight_decay {
            c.weight_decay = v;
        }
        if let Some(v) = o.optimizer {
            c.optimizer = v;
        }
        // Asking for a cosine turns one on; it never turns off DSMIL's own.
        c.cosine |= o.cosine;
        c.early_stopping =
            EarlyStopping::with_overrides(c.early_stopping, o.patience, o.stop_epoch);
        c.max_patches = o.max_patches;
        c.memory_limit_gb = o.memory_limit_gb;
        o.select.apply(&mut c.selection)?;
        if let Some(on) = o.linear_start {
            c.linear_start = on;
        }
        Ok(c)
    }
}

/// `--select` and its grid: what a command asks of the selection (`docs/DESIGN.md` §41).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SelectOverrides {
    /// `Some(false)`: train once with the settings given (`--select off`); `Some(true)`: select
    /// even where the default does not (any model, the paper recipe).
    pub on: Option<bool>,
    pub folds: Option<usize>,
    pub lr: Option<Vec<f64>>,
    pub weight_decay: Option<Vec<f64>>,
    pub genes: Option<Vec<usize>>,
}

impl SelectOverrides {
    fn asks_for_grid(&self) -> bool {
        self.folds.is_some()
            || self.lr.is_some()
            || self.weight_decay.is_some()
            || self.genes.is_some()
    }

    /// `selection` as asked: off, on, or with its grid changed (a grid given turns it on).
    pub fn apply(&self, selection: &mut Option<Selection>) -> Result<()> {
        if self.on == Some(false) {
            if self.asks_for_grid() {
                return Err(TrainError::Msg(
                    "--select off: no selection grid (--select-folds, --select-lr, \
                     --select-weight-decay, --select-genes) can be given with it"
                        .into(),
                ));
            }
            *selection = None;
            return Ok(());
        }
        if self.on == Some(true) || self.asks_for_grid() {
            let s = selection.get_or_insert_with(Selection::default_for_gene_models);
            if let Some(k) = self.folds {
                s.folds = k;
            }
            if let Some(v) = &self.lr {
                s.lr = v.clone();
            }
            if let Some(v) = &self.weight_decay {
                s.weight_decay = v.clone();
            }
            if let Some(v) = &self.genes {
                s.genes = v.clone();
            }
        }
        if let Some(s) = selection {
            s.check()?;
        }
        Ok(())
    }
}

impl Selection {
    /// Refuses a grid that cannot run: fewer than 2 inner folds, a rate or decay that is not a
    /// finite number (> 0 for a rate, ≥ 0 for a decay), a gene count of 0.
    pub fn check(&self) -> Result<()> {
        let bad = |what: &str, v: String| Err(TrainError::Msg(format!("selection: {what} {v}")));
        if self.folds < 2 {
            return bad(
                "inner folds",
                format!("{}: at least 2 are needed (or --select off)", self.folds),
            );
        }
        if let Some(v) = self.lr.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return bad("learning rate", format!("{v} is not a number > 0"));
        }
        if let Some(v) = self
            .weight_decay
            .iter()
            .find(|v| !(v.is_finite() && **v >= 0.0))
        {
            return bad("weight decay", format!("{v} is not a number ≥ 0"));
        }
        if self.genes.contains(&0) {
            return bad("gene count", "0: keep at least one gene".into());
        }
        Ok(())
    }
}

/// What a command asks of a compared system's run beyond its defaults; `None` keeps the
/// default ([`SupervisedConfig::build`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SupervisedOverrides {
    pub epochs: Option<usize>,
    pub lr: Option<f64>,
    pub weight_decay: Option<f64>,
    pub optimizer: Option<Kind>,
    /// Cosine decay (turns it on; a model whose default is cosine keeps it).
    pub cosine: bool,
    /// Early stopping's patience (0: off) and stop epoch.
    pub patience: Option<usize>,
    pub stop_epoch: Option<usize>,
    /// Random cap on patches per training bag (`None`: whole bags).
    pub max_patches: Option<usize>,
    pub memory_limit_gb: Option<f64>,
    /// The image–omic adaptations' self-supervised stage.
    pub pretrain_epochs: Option<usize>,
    pub pretrain_lr: Option<f64>,
    pub pretrain_batch: Option<usize>,
    /// Patients per optimiser step.
    pub accumulate: Option<usize>,
    /// MCAT's signatures.csv.
    pub signatures: Option<PathBuf>,
    pub genes: Option<GeneSelection>,
    /// Model selection inside the training part (`docs/DESIGN.md` §41).
    pub select: SelectOverrides,
    /// `--linear-start on|off` (`docs/DESIGN.md` §43).
    pub linear_start: Option<bool>,
}

/// How the compared systems are trained in an experiment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingRecipe {
    /// Each system as its reference code trains it (its `TrainingDefaults`, CLAM's early
    /// stopping).
    #[default]
    Reference,
    /// As the paper says it trained every row ("training configurations are consistent
    /// throughout the fine-tuning process"): AdamW, lr 1e-4, weight decay 1e-4, cosine decay,
    /// at most 70 epochs, one patient a step, the best validation epoch, no early stopping,
    /// every gene.
    Paper,
}

impl TrainingRecipe {
    pub fn name(self) -> &'static str {
        match self {
            TrainingRecipe::Reference => "reference",
            TrainingRecipe::Paper => "paper",
        }
    }

    /// The recipe applied to a compared system's reference defaults.
    pub fn apply(self, c: &mut SupervisedConfig) {
        if self == TrainingRecipe::Paper {
            c.optimizer = Kind::AdamW;
            c.lr = 1e-4;
            c.weight_decay = 1e-4;
            c.betas = (0.9, 0.999);
            c.cosine = true;
            c.epochs = 70;
            c.accumulate = 1;
            c.early_stopping = None;
            // The paper's rows all read the cohort's every gene.
            c.genes = GeneSelection::All;
            // The paper trains each row once, with these settings, from its own initialisation.
            c.selection = None;
            c.linear_start = false;
        }
    }
}

impl std::str::FromStr for TrainingRecipe {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "reference" => Ok(TrainingRecipe::Reference),
            "paper" => Ok(TrainingRecipe::Paper),
            other => Err(format!(
                "unknown recipe '{other}', expected reference or paper"
            )),
        }
    }
}
