//! The run configuration: one TOML file, named presets, every field overridable. The `paper`
//! preset is the paper's protocol exactly (docs/DESIGN.md §4–§9, §11); `demo` is small enough to run the
//! whole pipeline in minutes on two cores. Every choice is a type, checked when the file is
//! read: a bad value is an error naming the field, the value and the allowed values. The
//! preset only chooses starting values; no behaviour depends on its name.

use crate::trainer::EarlyStopping;
use gimp_io::expression::ExpressionTransform;
use gimp_models::group_msa::Tokenizer;
use gimp_nn::loss::Mining;
use serde::{Deserialize, Serialize};

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

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown preset '{s}', expected one of: paper, demo"))
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
    fn from_str(s: &str) -> Result<Self, String> {
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
    pub task: crate::objective::TaskConfig,
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
            task: crate::objective::TaskConfig::default(),
        }
    }

    /// Sets the task. The Cox loss compares the patients of one fine-tuning step, so a
    /// fine-tuning step of one patient becomes MCAT's 32 (`objective::COX_UNIT`).
    pub fn set_task(&mut self, task: crate::objective::TaskConfig) {
        self.task = task;
        if task.is_cox() && self.finetune.accumulate < 2 {
            self.finetune.accumulate = crate::objective::COX_UNIT;
        }
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
    pub fn from_toml(text: &str) -> Result<Self, String> {
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
