use anyhow::{Context, Result};
use clap::builder::PossibleValuesParser;
use gimp_cohort::LoadOptions;
use gimp_io::expression::ExpressionTransform;
use gimp_train::config::{Preset, SupervisedOverrides, TaskConfig, TaskKind};
use gimp_train::evaluate::{CheckpointEvaluation, SurvivalEvaluation};
use gimp_train::progress::Bars;
use gimp_train::run_record::StageDir;
use gimp_train::stages;
use gimp_train::trainer::Control;
use gimp_train::{run_record, Prepared, RunConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// What a run learns (docs/TRAINING.md, "Survival").
#[derive(clap::Args, Clone, Copy, Default)]
pub struct TaskArgs {
    /// classification (the label column) or survival (the cohort file's [survival] section);
    /// default: classification, or the run file's [task].
    #[arg(long)]
    pub task: Option<TaskKind>,
    /// Survival loss: nll (MCAT's discrete-time likelihood over time bins; default) or cox
    /// (partial likelihood over the patients of an optimiser step).
    #[arg(long)]
    pub loss: Option<gimp_nn::survival::SurvivalLoss>,
    /// Survival NLL: weight of the uncensored-only term (MCAT's alpha_surv; default 0).
    #[arg(long)]
    pub alpha: Option<f64>,
}

impl TaskArgs {
    /// `base` with the flags given on the command line; `None` when none was given.
    pub fn apply(&self, base: TaskConfig) -> Option<TaskConfig> {
        base.overridden(self.task, self.loss, self.alpha)
    }
}

/// How a compared system trains, beyond its reference defaults (`gimp-rs train`, and every
/// compared system of `gimp-rs experiment`).
#[derive(clap::Args, Clone, Default)]
pub struct SupervisedFlags {
    /// Training epochs (default: the model's reference default, docs/TRAINING.md).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Learning rate (default: the model's reference default).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Weight decay (default: the model's reference default).
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// adam_l2 (Adam with L2, as CLAM/PORPOISE) or adamw.
    #[arg(long)]
    pub optimizer: Option<gimp_nn::optim::Kind>,
    /// Cosine decay of the learning rate (default: the model's own — constant as the reference
    /// code, DSMIL cosine).
    #[arg(long)]
    pub cosine: bool,
    /// Early stopping (CLAM's rule): epochs without a lower validation loss before training
    /// ends (default 20; 0 turns early stopping off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Early stopping never ends training before the epoch after this 0-based one (default 50).
    #[arg(long)]
    pub stop_epoch: Option<usize>,
    /// Random cap on patches per training bag (`experiment`: default the preset's fine-tuning
    /// cap, so every row sees bags capped alike).
    #[arg(long)]
    pub max_patches: Option<usize>,
    /// Refuse to start when the largest training bag's step would need more than this many
    /// gigabytes (the model's estimate, docs/PERFORMANCE.md), instead of being killed midway.
    #[arg(long, value_name = "GB")]
    pub memory_limit: Option<f64>,
    /// MGCA, BioViL, REFERS: epochs of the self-supervised stage before fine-tuning (default 50).
    #[arg(long)]
    pub pretrain_epochs: Option<usize>,
    /// MGCA, BioViL, REFERS: its learning rate (default MGCA's 2e-5).
    #[arg(long)]
    pub pretrain_lr: Option<f64>,
    /// MGCA, BioViL, REFERS: patients per pre-training batch (default 16).
    #[arg(long)]
    pub pretrain_batch: Option<usize>,
    /// Patients per optimiser step (gradient accumulation; default: the reference's — 32 for
    /// SNN, PORPOISE, Pathomic Fusion and MCAT, 2 for TransMIL, else 1; 32 for a Cox loss).
    #[arg(long)]
    pub accumulate: Option<usize>,
    /// MCAT, SurvPath, MMP: gene groups from a pathway table (expression named by gene symbol):
    /// one column of gene symbols per group (MCAT's signatures.csv, SurvPath's and MMP's
    /// *_signatures.csv) or a row per gene with one 0/1 column per pathway (SurvPath's
    /// *_comps.csv); default: equal chunks of the genes (six for MCAT, fifty for the others).
    #[arg(long, visible_alias = "pathways")]
    pub signatures: Option<PathBuf>,
    /// Genes an expression model reads, chosen on the training split: `all`, a number K (the K
    /// most variable genes) or a gene-list file (one per line). Default: the model's own (2,000
    /// most variable for SNN and GroupMSA, docs/DESIGN.md §38; all for the others).
    #[arg(long, value_name = "all|K|FILE")]
    pub genes: Option<gimp_train::config::GeneSelection>,
    /// Model selection inside the training part (docs/DESIGN.md §41): the split's training and
    /// validation patients are dealt into inner folds, each candidate of the grid is trained on
    /// them and the best (and its epoch count) is trained on all of them. Default: on for SNN
    /// and GroupMSA (epochs chosen by 3 inner folds), off for the other models and the paper
    /// recipe; `on` selects for any model.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub select: Option<bool>,
    /// Inner folds of the selection (default 3).
    #[arg(long, value_name = "K")]
    pub select_folds: Option<usize>,
    /// Learning rates the selection compares, comma-separated (default: the model's own only).
    #[arg(long, value_delimiter = ',', value_name = "LR,…")]
    pub select_lr: Option<Vec<f64>>,
    /// Weight decays the selection compares, comma-separated (default: the model's own only).
    #[arg(long, value_delimiter = ',', value_name = "WD,…")]
    pub select_weight_decay: Option<Vec<f64>>,
    /// Numbers of most variable genes the selection compares, comma-separated (default: --genes).
    #[arg(long, value_delimiter = ',', value_name = "K,…")]
    pub select_genes: Option<Vec<usize>>,
    /// Start a gene model as the task's linear model (logistic regression, or ridge Cox with
    /// its penalty chosen by inner folds) fitted on its training patients and kept frozen
    /// under its logits; its own head starts at zero, so the selection can keep the linear
    /// model alone (0 epochs) when training does not beat it on the inner folds
    /// (docs/DESIGN.md §43). Default: on for SNN and GroupMSA, off for the paper recipe.
    #[arg(long, value_name = "on|off", value_parser = on_off)]
    pub linear_start: Option<bool>,
}

/// `on` or `off`.
fn on_off(s: &str) -> std::result::Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}': expected on or off")),
    }
}

impl SupervisedFlags {
    pub fn overrides(&self) -> SupervisedOverrides {
        SupervisedOverrides {
            epochs: self.epochs,
            lr: self.lr,
            weight_decay: self.weight_decay,
            optimizer: self.optimizer,
            cosine: self.cosine,
            patience: self.patience,
            stop_epoch: self.stop_epoch,
            max_patches: self.max_patches,
            memory_limit_gb: self.memory_limit,
            pretrain_epochs: self.pretrain_epochs,
            pretrain_lr: self.pretrain_lr,
            pretrain_batch: self.pretrain_batch,
            accumulate: self.accumulate,
            signatures: self.signatures.clone(),
            genes: self.genes.clone(),
            select: gimp_train::config::SelectOverrides {
                on: self.select,
                folds: self.select_folds,
                lr: self.select_lr.clone(),
                weight_decay: self.select_weight_decay.clone(),
                genes: self.select_genes.clone(),
            },
            linear_start: self.linear_start,
        }
    }
}

/// What every training stage reads.
#[derive(clap::Args, Clone)]
pub struct Common {
    /// The cohort file (cohort.toml, docs/FORMATS.md).
    pub cohort: PathBuf,
    /// Run directory: the stage writes `{out}/{stage}/model.safetensors`, `log.jsonl`,
    /// `metrics.json`; `{out}/config.toml` records the full configuration.
    #[arg(long)]
    pub out: PathBuf,
    /// Named preset: paper (the paper's hyper-parameters) or demo (minutes on a laptop).
    #[arg(long, default_value = "paper", conflicts_with = "config")]
    pub preset: Preset,
    /// A run file (TOML): `preset = "…"` plus any field to override.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Seed of every random choice of the run (default: the run file's, 0 in both presets);
    /// the same seed and thread count give the same weights.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Which split file of the cohort.
    #[arg(long)]
    pub fold: Option<usize>,
    /// Continue an interrupted stage from its last completed epoch (OUT/STAGE/state.safetensors);
    /// the final weights are those of an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    /// Fine-tuning (whole bags): refuse to start when the largest training bag's step would need
    /// more than this many gigabytes (docs/PERFORMANCE.md), instead of being killed midway.
    #[arg(long, value_name = "GB")]
    pub memory_limit: Option<f64>,
    #[command(flatten)]
    pub task: TaskArgs,
}

impl Common {
    pub fn run_config(&self) -> Result<RunConfig> {
        let mut cfg = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?;
                RunConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            }
            None => RunConfig::preset(self.preset),
        };
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        if let Some(f) = self.fold {
            cfg.fold = f;
        }
        if let Some(gb) = self.memory_limit {
            cfg.finetune.memory_limit_gb = Some(gb);
        }
        if let Some(t) = self.task.apply(cfg.task) {
            cfg.set_task(t);
        }
        Ok(cfg)
    }
}

fn control(c: &Common) -> Control {
    Control {
        resume: c.resume,
        stop_after: None,
        ephemeral: false,
    }
}

pub fn prepare(c: &Common) -> Result<(RunConfig, Prepared)> {
    let cfg = c.run_config()?;
    let cohort = gimp_cohort::Cohort::open(&c.cohort, LoadOptions::default())?;
    let data = Prepared::new(&cohort, cfg.fold, cfg.model.transform)?;
    run_record::write(&c.out, &c.cohort, &cfg, &data)?;
    Ok((cfg, data))
}

pub fn genes(c: Common) -> Result<ExitCode> {
    let (cfg, data) = prepare(&c)?;
    let dir = StageDir::Genes.dir(&c.out);
    let bars = Bars::new();
    let r = stages::pretrain_genes(&data, &cfg, &dir, control(&c), &|p| bars.update(p))?;
    bars.finish();
    crate::output::report("gene pre-training", &r, &data.classes, &dir)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct PretrainArgs {
    #[command(flatten)]
    pub common: Common,
    /// Gene pre-training checkpoint (default: OUT/genes/model.safetensors when present).
    #[arg(long)]
    pub genes: Option<PathBuf>,
}

pub fn pretrain(a: PretrainArgs) -> Result<ExitCode> {
    let (cfg, data) = prepare(&a.common)?;
    let genes = a
        .genes
        .or_else(|| StageDir::Genes.finished_checkpoint(&a.common.out));
    if genes.is_none() && cfg.pretrain.triplet == gimp_train::config::Triplet::GeneInduced {
        eprintln!("warning: no gene pre-training checkpoint: CLS_ge comes from an untrained gene encoder (run `gimp-rs pretrain-genes` first)");
    }
    let dir = StageDir::Pretrain.dir(&a.common.out);
    let bars = Bars::new();
    let r = stages::pretrain(
        &data,
        &cfg,
        genes.as_deref(),
        &dir,
        control(&a.common),
        &|p| bars.update(p),
    )?;
    bars.finish();
    crate::output::report("GiMP pre-training", &r, &data.classes, &dir)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct FinetuneArgs {
    #[command(flatten)]
    pub common: Common,
    /// Pre-trained GiMP checkpoint (default: OUT/pretrain/model.safetensors when present).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Gene pre-training checkpoint, used when there is no pre-trained GiMP checkpoint.
    #[arg(long)]
    pub genes: Option<PathBuf>,
    /// Output sub-folder (default: finetune).
    #[arg(long, default_value = "finetune")]
    pub name: String,
}

pub fn finetune(a: FinetuneArgs) -> Result<ExitCode> {
    let (cfg, data) = prepare(&a.common)?;
    let init = a
        .init
        .or_else(|| StageDir::Pretrain.finished_checkpoint(&a.common.out));
    let genes = a
        .genes
        .or_else(|| StageDir::Genes.finished_checkpoint(&a.common.out));
    let dir = a.common.out.join(&a.name);
    let bars = Bars::new();
    let r = stages::finetune(
        &data,
        &cfg,
        init.as_deref(),
        genes.as_deref(),
        &dir,
        control(&a.common),
        &|p| bars.update(p),
    )?;
    bars.finish();
    crate::output::report("fine-tuning", &r, &data.classes, &dir)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The cohort file (cohort.toml) whose split is evaluated.
    pub cohort: PathBuf,
    /// A gimp-rs checkpoint (any architecture).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Which part of the split: test, val or train.
    #[arg(long, default_value = "test")]
    pub split: gimp_io::splits::Part,
    /// Which split file (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub fold: Option<usize>,
    /// Seed of the bootstrap intervals.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluate as if only these were available: `image` (slides alone), `genes` (expression
    /// alone) or `both`; patients left with neither are skipped.
    #[arg(long, default_value = "both")]
    pub modalities: gimp_train::config::Modalities,
    /// Where the reliability diagram goes (a survival checkpoint: the Kaplan–Meier curves by
    /// predicted risk group): STEM.png and STEM.svg (default: beside the checkpoint,
    /// reliability-{split} or kaplan-meier-{split}).
    #[arg(long)]
    pub reliability: Option<PathBuf>,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct CalibrateArgs {
    /// The cohort file (cohort.toml) whose validation part the temperature is fitted on.
    pub cohort: PathBuf,
    /// A gimp-rs checkpoint (any architecture).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Write the calibrated checkpoint here (default: replace the checkpoint, atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Which split file (default: the one the checkpoint was trained on).
    #[arg(long)]
    pub fold: Option<usize>,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn calibrate(a: CalibrateArgs) -> Result<ExitCode> {
    let mut ckpt = gimp_nn::checkpoint::Checkpoint::load(&a.checkpoint)?;
    let data = load_for(&a.cohort, &ckpt, a.fold)?;
    let m = gimp_train::evaluate::load_for_cohort(&ckpt, &a.checkpoint, &data)?;
    let fit = gimp_train::evaluate::fit_temperature(&m, &data)?;
    ckpt.info.insert(
        gimp_models::registry::TEMPERATURE_KEY.to_string(),
        fit.temperature.to_string(),
    );
    let out = a.out.as_deref().unwrap_or(&a.checkpoint);
    ckpt.save(out)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&fit)?);
    } else {
        println!(
            "temperature {:.4} fitted on {} validation patients\n  \
             negative log-likelihood {:.4} → {:.4}\n  \
             expected calibration error {:.4} → {:.4}\nwritten to {}",
            fit.temperature,
            fit.n,
            fit.nll_before,
            fit.nll_after,
            fit.ece_before,
            fit.ece_after,
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn load_for(
    cohort: &Path,
    ckpt: &gimp_nn::checkpoint::Checkpoint,
    fold: Option<usize>,
) -> Result<Prepared> {
    let c = gimp_cohort::Cohort::open(cohort, LoadOptions::default())?;
    Ok(Prepared::for_checkpoint(&c, fold, ckpt)?)
}

pub fn evaluate(a: EvalArgs) -> Result<ExitCode> {
    let part = a.split;
    let ckpt = gimp_nn::checkpoint::Checkpoint::load(&a.checkpoint)?;
    let data = load_for(&a.cohort, &ckpt, a.fold)?.only(a.modalities);
    let m = gimp_train::evaluate::load_for_cohort(&ckpt, &a.checkpoint, &data)?;
    let e = match gimp_train::evaluate::evaluate_checkpoint(&m, &data, part, a.seed)? {
        CheckpointEvaluation::Classification(e) => e,
        CheckpointEvaluation::Survival(e) => return print_survival(&a, &ckpt.arch, &e),
    };
    let stem = a.reliability.clone().unwrap_or_else(|| {
        a.checkpoint
            .with_file_name(format!("reliability-{}", e.split))
    });
    gimp_report::reliability::plot(
        &e.calibration,
        &format!(
            "{} ({} split, T = {:.3})",
            ckpt.arch, e.split, e.temperature
        ),
        &stem,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!(
            "{}",
            crate::table::report(
                &format!(
                    "{} ({}, {} split)",
                    a.checkpoint.display(),
                    ckpt.arch,
                    e.split
                ),
                &e.overall,
                &data.classes
            )
        );
        if e.by_modality.len() > 1 {
            for (k, r) in &e.by_modality {
                print!(
                    "{}",
                    crate::table::report(&format!("  patients with {k}"), r, &data.classes)
                );
            }
        }
        println!(
            "reliability diagram (temperature {:.3}): {}.png, .svg",
            e.temperature,
            stem.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `evaluate` of a survival checkpoint: its metrics and Kaplan–Meier curves of the patients
/// below and above the median predicted risk.
fn print_survival(a: &EvalArgs, arch: &str, e: &SurvivalEvaluation) -> Result<ExitCode> {
    let p = &e.predictions;
    let stem = a.reliability.clone().unwrap_or_else(|| {
        a.checkpoint
            .with_file_name(format!("kaplan-meier-{}", e.split))
    });
    let (group, names) = gimp_report::kaplan_meier::risk_groups(&p.risk, 2);
    let outcomes = gimp_metrics::survival::Outcomes::new(&p.time, &p.event)?;
    gimp_report::kaplan_meier::plot(
        outcomes,
        &group,
        &names,
        &e.unit,
        &format!("{arch} ({} split, by predicted risk)", e.split),
        &stem,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(e)?);
    } else {
        print!(
            "{}",
            crate::output::survival_scores(
                &format!(
                    "{} ({arch}, {} loss, {} split)",
                    a.checkpoint.display(),
                    e.loss,
                    e.split
                ),
                &e.scores,
            )
        );
        println!(
            "Kaplan–Meier curves by risk group: {}.png, .svg",
            stem.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct EmbedArgs {
    /// The cohort file (cohort.toml) whose patients are embedded.
    pub cohort: PathBuf,
    /// A gimp-rs checkpoint (any architecture).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output TSV: case_id, label, split, modalities, then the embedding (CLS_pat for GiMP).
    #[arg(long)]
    pub out: PathBuf,
    /// Which split file names each patient's part (default: the checkpoint's).
    #[arg(long)]
    pub fold: Option<usize>,
}

pub fn embed(a: EmbedArgs) -> Result<ExitCode> {
    let ckpt = gimp_nn::checkpoint::Checkpoint::load(&a.checkpoint)?;
    let data = load_for(&a.cohort, &ckpt, a.fold)?;
    let m = gimp_train::evaluate::load_for_cohort(&ckpt, &a.checkpoint, &data)?;
    let tsv = gimp_train::evaluate::embeddings_tsv(&m, &data)?;
    gimp_io::atomic::write_bytes_atomic(&a.out, tsv.as_bytes())?;
    println!(
        "{} embeddings written to {}",
        tsv.lines().count().saturating_sub(1),
        a.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// The cohort file (cohort.toml, docs/FORMATS.md).
    pub cohort: PathBuf,
    /// Architecture: any registered model of slides, of expression or of both (`gimp-rs model
    /// list` describes each); GiMP itself trains with `pretrain-genes`, `pretrain` and
    /// `finetune`.
    #[arg(long, value_parser = PossibleValuesParser::new(gimp_models::registry::supervised_names()))]
    pub arch: String,
    /// Run folder: OUT/model.safetensors, log.jsonl, metrics.json, learning_curves.png.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub flags: SupervisedFlags,
    /// Seed of every random choice (initial weights, order, dropout, patch caps); the same
    /// seed and thread count give the same weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which split file of the cohort.
    #[arg(long, default_value_t = 0)]
    pub fold: usize,
    /// Expression transform before z-scoring: log2p1 or none.
    #[arg(long, default_value = "log2p1")]
    pub transform: ExpressionTransform,
    /// Continue an interrupted run from its last completed epoch (OUT/state.safetensors); the
    /// final weights are those of an uninterrupted run.
    #[arg(long)]
    pub resume: bool,
    #[command(flatten)]
    pub task: TaskArgs,
}

pub fn train(a: TrainArgs) -> Result<ExitCode> {
    use gimp_train::config::{SupervisedConfig, TrainingRecipe};
    use gimp_train::supervised;
    let cfg = SupervisedConfig::build(
        gimp_models::registry::lookup(&a.arch)?,
        a.seed,
        a.fold,
        TrainingRecipe::Reference,
        a.task.apply(TaskConfig::default()).unwrap_or_default(),
        &a.flags.overrides(),
    )?;
    let c = gimp_cohort::Cohort::open(&a.cohort, LoadOptions::default())?;
    let data = Prepared::new(&c, a.fold, a.transform)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bars = Bars::new();
    let r = supervised::train(
        &data,
        &cfg,
        &a.out,
        Control {
            resume: a.resume,
            stop_after: None,
            ephemeral: false,
        },
        &|p| bars.update(p),
    )?;
    bars.finish();
    crate::output::report(&format!("{} training", a.arch), &r, &data.classes, &a.out)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct TsneArgs {
    /// The cohort file (cohort.toml) whose patients are embedded.
    pub cohort: PathBuf,
    /// One or more checkpoints; one figure each (Fig. 2 compares several models).
    #[arg(long, required = true)]
    pub checkpoint: Vec<PathBuf>,
    /// Output folder: {name}.png and {name}.svg per checkpoint.
    #[arg(long)]
    pub out: PathBuf,
    /// Seed of t-SNE's initial layout.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// t-SNE's perplexity (the effective number of neighbours; 5–50).
    #[arg(long, default_value_t = 30.0)]
    pub perplexity: f32,
    /// t-SNE's optimisation steps.
    #[arg(long, default_value_t = 1000)]
    pub epochs: usize,
    /// Which split file names each patient's part (default: the checkpoint's).
    #[arg(long)]
    pub fold: Option<usize>,
}

pub fn tsne(a: TsneArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    for ck_path in &a.checkpoint {
        let ckpt = gimp_nn::checkpoint::Checkpoint::load(ck_path)?;
        let data = load_for(&a.cohort, &ckpt, a.fold)?;
        let m = gimp_train::evaluate::load_for_cohort(&ckpt, ck_path, &data)?;
        let (mut rows, mut labels) = (Vec::new(), Vec::new());
        for i in 0..data.patients.len() {
            if let Some(o) = gimp_train::evaluate::run_patient(&m, &data, i)? {
                rows.push(o.embedding.to_vec1::<f32>()?);
                labels.push(data.patients[i].label);
            }
        }
        if rows.len() < 5 {
            anyhow::bail!(
                "{}: only {} patient(s) have this model's input; t-SNE needs more",
                ck_path.display(),
                rows.len()
            );
        }
        let points = gimp_report::tsne::tsne(&rows, a.perplexity, a.epochs, a.seed);
        let name = ck_path
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| ckpt.arch.clone());
        let stem = a.out.join(format!(
            "tsne_{name}_{}",
            ck_path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        gimp_report::tsne::plot(
            &points,
            &labels,
            &data.classes,
            &format!("{} ({}, {} patients)", ckpt.arch, name, rows.len()),
            &stem,
        )?;
        println!("{}.png and .svg", stem.display());
    }
    Ok(ExitCode::SUCCESS)
}
