//! The paper's experiments as runs of this pipeline: every row of Table 1 (the compared systems
//! that exist in the registry, and GiMP) and Table 2 (GiMP's ablations) on the same split files
//! and seeds; finished runs are skipped, so an interrupted experiment resumes; results as a
//! Markdown table and CSV with mean ± std and the pooled confusion matrix.

use crate::config::{GeneEncoderKind, Modalities, RunConfig, Triplet};
use crate::data::{DataErr, Prepared, Result};
use crate::objective::{SurvivalScores, TaskConfig, TaskKind};
use crate::stages;
use crate::supervised::{self, SupervisedConfig};
use crate::trainer::{Control, OnProgress, Predictions, StageResult};
use gimp_metrics::Report;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// How a row is trained.
#[derive(Debug, Clone)]
pub enum Recipe {
    /// `gimp-rs train --arch …`.
    Supervised(&'static str),
    /// The GiMP pipeline with changes to the run configuration.
    Gimp(fn(&mut RunConfig)),
    /// The gene-only logistic regression (`gimp-rs baseline logreg`'s, C = 0.1) on the patients
    /// with expression.
    LogisticRegression,
    /// Every test patient gets the training split's class frequencies: the floor any model must
    /// beat.
    MajorityClass,
}

/// What one run of a row leaves in its `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// The trained model's checkpoint (the two baselines without one have none).
    pub checkpoint: Option<PathBuf>,
    pub best_epoch: Option<usize>,
    pub val: Option<Report>,
    pub test: Option<Report>,
    /// A survival run's metrics (`val` and `test` are then `None`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_survival: Option<SurvivalScores>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_survival: Option<SurvivalScores>,
    /// Every test patient's prediction, pooled over folds by [`summarise`].
    pub test_predictions: Option<Predictions>,
}

impl From<StageResult> for RunResult {
    fn from(r: StageResult) -> Self {
        Self {
            checkpoint: Some(r.checkpoint),
            best_epoch: Some(r.best_epoch),
            val: r.val,
            test: r.test,
            val_survival: r.val_survival,
            test_survival: r.test_survival,
            test_predictions: r.test_predictions,
        }
    }
}

/// Test (and validation) metrics of the logistic regression fitted on the training split.
fn logistic_regression(data: &Prepared, seed: u64) -> Result<RunResult> {
    let with_expression = |idx: &[usize]| -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|&i| data.transformed_expression(i).is_some())
            .collect()
    };
    let (train, val, test) = (
        with_expression(&data.train),
        with_expression(&data.val),
        with_expression(&data.test),
    );
    if train.is_empty() || test.is_empty() {
        return Err(DataErr::Msg(
            "no training or test patient has expression".into(),
        ));
    }
    let rows = |idx: &[usize]| -> Vec<&[f32]> {
        idx.iter()
            .filter_map(|&i| data.transformed_expression(i))
            .collect()
    };
    let labels =
        |idx: &[usize]| -> Vec<usize> { idx.iter().map(|&i| data.patients[i].label).collect() };
    let nc = data.classes.len();
    // Validation and test in one pass, then split apart.
    let eval: Vec<usize> = val.iter().chain(&test).copied().collect();
    let cfg = gimp_linear::LogisticConfig::default();
    let (_, _, probs) =
        gimp_linear::fit_predict(&rows(&train), &labels(&train), &rows(&eval), nc, cfg);
    let (pv, pt) = probs.split_at(val.len());
    Ok(RunResult {
        checkpoint: None,
        best_epoch: None,
        val: (!val.is_empty()).then(|| Report::new(&labels(&val), pv, nc, seed)),
        test: Some(Report::new(&labels(&test), pt, nc, seed)),
        val_survival: None,
        test_survival: None,
        test_predictions: Some(Predictions {
            labels: labels(&test),
            probs: pt.to_vec(),
            patients: test,
            loss: f64::NAN,
            ..Default::default()
        }),
    })
}

/// Test metrics when every patient is given the training split's class frequencies; in a
/// survival run, the same risk for every patient (Harrell's c-index ½: every pair tied).
fn majority_class(data: &Prepared, task: &TaskConfig, seed: u64) -> Result<RunResult> {
    if task.kind == TaskKind::Survival {
        let objective = crate::objective::Objective::new(task, data)?;
        let s = objective
            .survival()
            .ok_or_else(|| DataErr::Msg("no survival outcomes".into()))?;
        let predict = |idx: &[usize]| Predictions {
            patients: idx.to_vec(),
            labels: idx.iter().map(|&i| s.bin(i)).collect(),
            probs: vec![Vec::new(); idx.len()],
            risk: vec![0.0; idx.len()],
            time: idx.iter().map(|&i| s.outcome(i).time).collect(),
            event: idx.iter().map(|&i| s.outcome(i).event).collect(),
            loss: f64::NAN,
        };
        let (val, test) = (predict(&data.val), predict(&data.test));
        return Ok(RunResult {
            checkpoint: None,
            best_epoch: None,
            val: None,
            test: None,
            val_survival: (!val.risk.is_empty()).then(|| s.score(&val, seed)),
            test_survival: Some(s.score(&test, seed)),
            test_predictions: Some(test),
        });
    }
    Ok(majority_classes(data, seed))
}

fn majority_classes(data: &Prepared, seed: u64) -> RunResult {
    let nc = data.classes.len();
    let mut freq = vec![0.0f64; nc];
    for &i in &data.train {
        freq[data.patients[i].label] += 1.0;
    }
    let n = data.train.len().max(1) as f64;
    freq.iter_mut().for_each(|f| *f /= n);
    let predict = |idx: &[usize]| Predictions {
        patients: idx.to_vec(),
        labels: idx.iter().map(|&i| data.patients[i].label).collect(),
        probs: vec![freq.clone(); idx.len()],
        loss: f64::NAN,
        ..Default::default()
    };
    let (val, test) = (predict(&data.val), predict(&data.test));
    RunResult {
        checkpoint: None,
        best_epoch: None,
        val: val.report(nc, seed),
        test: test.report(nc, seed),
        val_survival: None,
        test_survival: None,
        test_predictions: Some(test),
    }
}

#[derive(Debug, Clone)]
pub struct Row {
    pub table: &'static str,
    pub name: &'static str,
    /// Folder name of its runs.
    pub key: &'static str,
    pub recipe: Recipe,
}

fn no_pretrain(c: &mut RunConfig) {
    c.pretrain.epochs = 0;
}
fn mpm_only(c: &mut RunConfig) {
    c.pretrain.triplet = Triplet::Off;
}
fn image_triplet(c: &mut RunConfig) {
    c.pretrain.triplet = Triplet::ImageOnly;
    c.pretrain.mpm = false;
}
fn gene_triplet(c: &mut RunConfig) {
    c.pretrain.mpm = false;
}
fn full(_: &mut RunConfig) {}
/// The aggregator alone: expression hidden, no pre-training ("GiMP (w/o GroupMSA)").
fn image_only(c: &mut RunConfig) {
    c.finetune.modalities = Modalities::Image;
    c.pretrain.epochs = 0;
}
fn snn_no_pretrain(c: &mut RunConfig) {
    snn(c);
    no_pretrain(c);
}
fn snn(c: &mut RunConfig) {
    c.model.gene_encoder = GeneEncoderKind::Snn;
}

/// Every row the runner knows, in the paper's order (rows the paper does not have: SNN and
/// GroupMSA alone in Table 1, SNN with full pre-training at the end of Table 2).
pub const ROWS: &[Row] = &[
    Row {
        table: "table1",
        name: "Majority class",
        key: "majority",
        recipe: Recipe::MajorityClass,
    },
    Row {
        table: "table1",
        name: "Logistic regression (expression)",
        key: "logreg",
        recipe: Recipe::LogisticRegression,
    },
    Row {
        table: "table1",
        name: "ABMIL",
        key: "abmil",
        recipe: Recipe::Supervised("abmil"),
    },
    Row {
        table: "table1",
        name: "DSMIL",
        key: "dsmil",
        recipe: Recipe::Supervised("dsmil"),
    },
    Row {
        table: "table1",
        name: "CLAM-SB",
        key: "clam_sb",
        recipe: Recipe::Supervised("clam_sb"),
    },
    Row {
        table: "table1",
        name: "CLAM-MB",
        key: "clam_mb",
        recipe: Recipe::Supervised("clam_mb"),
    },
    Row {
        table: "table1",
        name: "TransMIL",
        key: "transmil",
        recipe: Recipe::Supervised("transmil"),
    },
    Row {
        table: "table1",
        name: "GiMP (w/o GroupMSA)",
        key: "gimp_image_only",
        recipe: Recipe::Gimp(image_only),
    },
    Row {
        table: "table1",
        name: "SNN",
        key: "snn",
        recipe: Recipe::Supervised("snn"),
    },
    Row {
        table: "table1",
        name: "GroupMSA",
        key: "group_msa",
        recipe: Recipe::Supervised("group_msa"),
    },
    Row {
        table: "table1",
        name: "PORPOISE",
        key: "porpoise",
        recipe: Recipe::Supervised("porpoise"),
    },
    Row {
        table: "table1",
        name: "Pathomic Fusion",
        key: "pathomic",
        recipe: Recipe::Supervised("pathomic"),
    },
    Row {
        table: "table1",
        name: "MCAT",
        key: "mcat",
        recipe: Recipe::Supervised("mcat"),
    },
    Row {
        table: "table1",
        name: "GiMP (w/o pre-train)",
        // The same run as Table 2's second row, as in the paper (0.9737 in both tables).
        key: "agg_groupmsa",
        recipe: Recipe::Gimp(no_pretrain),
    },
    Row {
        table: "table1",
        name: "MGCA",
        key: "mgca",
        recipe: Recipe::Supervised("mgca"),
    },
    Row {
        table: "table1",
        name: "BioViL",
        key: "biovil",
        recipe: Recipe::Supervised("biovil"),
    },
    Row {
        table: "table1",
        name: "REFERS",
        key: "refers",
        recipe: Recipe::Supervised("refers"),
    },
    Row {
        table: "table1",
        name: "GiMP",
        key: "gimp",
        recipe: Recipe::Gimp(full),
    },
    Row {
        table: "table2",
        name: "Aggregator + SNN (no pre-training)",
        key: "agg_snn",
        recipe: Recipe::Gimp(snn_no_pretrain),
    },
    Row {
        table: "table2",
        name: "Aggregator + GroupMSA (no pre-training)",
        key: "agg_groupmsa",
        recipe: Recipe::Gimp(no_pretrain),
    },
    Row {
        table: "table2",
        name: "Aggregator + MPM",
        key: "agg_mpm",
        recipe: Recipe::Gimp(mpm_only),
    },
    Row {
        table: "table2",
        name: "Aggregator + Triplet (image only)",
        key: "agg_triplet",
        recipe: Recipe::Gimp(image_triplet),
    },
    Row {
        table: "table2",
        name: "Aggregator + GroupMSA + Triplet",
        key: "agg_groupmsa_triplet",
        recipe: Recipe::Gimp(gene_triplet),
    },
    Row {
        table: "table2",
        name: "GiMP (Aggregator + GroupMSA + Triplet + MPM)",
        key: "gimp",
        recipe: Recipe::Gimp(full),
    },
    // Not in the paper: SNN with GiMP's whole pre-training, after the paper's six rows.
    Row {
        table: "table2",
        name: "Aggregator + SNN + Triplet + MPM",
        key: "agg_snn_full",
        recipe: Recipe::Gimp(snn),
    },
];

/// The rows of `table` (all, or those of `only`) for a task: a survival table has every row but
/// the logistic regression (a classifier; its survival counterpart is the Cox baseline,
/// `gimp-rs baseline cox`).
pub fn rows(table: &str, only: &[String], task: TaskKind) -> Result<Vec<&'static Row>> {
    let all: Vec<&Row> = ROWS
        .iter()
        .filter(|r| r.table == table)
        .filter(|r| {
            task == TaskKind::Classification || !matches!(r.recipe, Recipe::LogisticRegression)
        })
        .collect();
    if all.is_empty() {
        return Err(DataErr::Msg(format!(
            "unknown table '{table}' (table1, table2)"
        )));
    }
    if only.is_empty() {
        return Ok(all);
    }
    only.iter()
        .map(|k| {
            all.iter().copied().find(|r| r.key == k).ok_or_else(|| {
                DataErr::Msg(format!(
                    "no row '{k}' in {table}; rows: {}",
                    all.iter().map(|r| r.key).collect::<Vec<_>>().join(", ")
                ))
            })
        })
        .collect()
}

/// One run: a row on one split with one seed.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub row: String,
    pub fold: usize,
    pub seed: u64,
    pub dir: PathBuf,
    pub done: bool,
}

pub fn plan(out: &Path, rows: &[&Row], folds: usize, seeds: usize) -> Vec<Run> {
    let mut v = Vec::new();
    for r in rows {
        for fold in 0..folds {
            for seed in 0..seeds as u64 {
                let dir = out
                    .join(r.key)
                    .join(format!("fold{fold}"))
                    .join(format!("seed{seed}"));
                let done = dir.join("metrics.json").is_file();
                v.push(Run {
                    row: r.key.to_string(),
                    fold,
                    seed,
                    dir,
                    done,
                });
            }
        }
    }
    v
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
    fn apply(self, c: &mut SupervisedConfig) {
        if self == TrainingRecipe::Paper {
            c.optimizer = gimp_nn::optim::Kind::AdamW;
            c.lr = 1e-4;
            c.weight_decay = 1e-4;
            c.betas = (0.9, 0.999);
            c.cosine = true;
            c.epochs = 70;
            c.accumulate = 1;
            c.early_stopping = None;
            // The paper's rows all read the cohort's every gene.
            c.genes = crate::data::GeneSelection::All;
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

/// Records the recipe and the task of the experiment in `out` (`out/experiment.json`) and
/// refuses to mix runs of two recipes or two tasks (or survival losses) in one folder.
pub fn claim_recipe(out: &Path, recipe: TrainingRecipe, task: &TaskConfig) -> Result<()> {
    let path = out.join("experiment.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| DataErr::Msg(format!("{}: {e}", path.display())))?;
        let had: TrainingRecipe = serde_json::from_value(v["recipe"].clone())
            .map_err(|e| DataErr::Msg(format!("{}: recipe: {e}", path.display())))?;
        if had != recipe {
            return Err(DataErr::Msg(format!(
                "{} holds runs of the {} recipe; run the {} recipe into another --out",
                out.display(),
                had.name(),
                recipe.name()
            )));
        }
        // Folders from before survival hold classification runs.
        let had_task: TaskConfig = match v.get("task") {
            None => TaskConfig::default(),
            Some(t) => serde_json::from_value(t.clone())
                .map_err(|e| DataErr::Msg(format!("{}: task: {e}", path.display())))?,
        };
        if had_task.describe() != task.describe() {
            return Err(DataErr::Msg(format!(
                "{} holds runs of the task {}; run {} into another --out",
                out.display(),
                had_task.describe(),
                task.describe()
            )));
        }
        return Ok(());
    }
    std::fs::create_dir_all(out).map_err(|e| gimp_io::DataError::io(out, e))?;
    let text = serde_json::json!({ "recipe": recipe, "task": task }).to_string();
    gimp_io::atomic::write_bytes_atomic(&path, text.as_bytes())?;
    Ok(())
}

/// Changes to the compared systems' reference training defaults for a whole experiment.
#[derive(Debug, Clone, Copy, Default)]
pub struct BaselineOverrides<'a> {
    /// The training recipe, applied before the changes below.
    pub recipe: TrainingRecipe,
    /// Training (fine-tuning) epochs.
    pub epochs: Option<usize>,
    /// Epochs of the self-supervised stage of MGCA, BioViL and REFERS.
    pub pretrain_epochs: Option<usize>,
    /// Its learning rate.
    pub pretrain_lr: Option<f64>,
    /// Patients per optimiser step (gradient accumulation).
    pub accumulate: Option<usize>,
    /// MCAT's signatures.csv.
    pub signatures: Option<&'a std::path::Path>,
    /// The genes of the expression models (default: each model's own).
    pub genes: Option<&'a crate::data::GeneSelection>,
    /// Early stopping's patience (0: off) and stop epoch (default: CLAM's 20 and 50).
    pub patience: Option<usize>,
    pub stop_epoch: Option<usize>,
}

/// Epochs a row's run trains (all stages), for the cost estimate of a dry run.
pub fn planned_epochs(
    row: &Row,
    base: &RunConfig,
    overrides: BaselineOverrides<'_>,
) -> Result<usize> {
    Ok(match &row.recipe {
        Recipe::Supervised(arch) => {
            let arch = gimp_models::registry::lookup(arch)?;
            let mut d = SupervisedConfig::defaults(arch)?;
            d.set_task(base.task);
            overrides.recipe.apply(&mut d);
            let self_supervised = match arch.self_supervised() {
                true => overrides
                    .pretrain_epochs
                    .unwrap_or(d.self_supervised.epochs),
                false => 0,
            };
            overrides.epochs.unwrap_or(d.epochs) + self_supervised
        }
        Recipe::Gimp(change) => {
            let mut c = base.clone();
            change(&mut c);
            let (genes, _) = stages::stages_run(&c);
            usize::from(genes) * c.genes.epochs + c.pretrain.epochs + c.finetune.epochs
        }
        // Fitted in seconds, no epochs.
        Recipe::LogisticRegression | Recipe::MajorityClass => 0,
    })
}

/// Runs one row on one prepared split.
pub fn execute(
    row: &Row,
    data: &Prepared,
    base: &RunConfig,
    overrides: BaselineOverrides<'_>,
    run: &Run,
    on: OnProgress,
) -> Result<RunResult> {
    let ctl = Control {
        resume: true,
        stop_after: None,
    };
    let r: RunResult = match &row.recipe {
        Recipe::Supervised(arch) => {
            let mut c = SupervisedConfig::defaults(gimp_models::registry::lookup(arch)?)?;
            c.seed = run.seed;
            c.fold = run.fold;
            overrides.recipe.apply(&mut c);
            // Every row trains for the experiment's task (a Cox step of one patient becomes
            // 32, as the paper recipe's one patient a step would leave Cox nothing to compare).
            c.set_task(base.task);
            if let Some(e) = overrides.epochs {
                c.epochs = e;
            }
            if let Some(e) = overrides.pretrain_epochs {
                c.self_supervised.epochs = e;
            }
            if let Some(lr) = overrides.pretrain_lr {
                c.self_supervised.lr = lr;
            }
            if let Some(k) = overrides.accumulate {
                c.accumulate = k.max(1);
            }
            c.signatures = overrides.signatures.map(|p| p.to_path_buf());
            if let Some(g) = overrides.genes {
                c.genes = g.clone();
            }
            c.early_stopping = crate::trainer::EarlyStopping::with_overrides(
                c.early_stopping,
                overrides.patience,
                overrides.stop_epoch,
            );
            // Every row of a table sees bags capped as the preset's fine-tuning caps them.
            c.max_patches = base.finetune.max_patches;
            supervised::train(data, &c, &run.dir, ctl, on)?.into()
        }
        Recipe::Gimp(change) => {
            let mut c = base.clone();
            c.seed = run.seed;
            c.fold = run.fold;
            change(&mut c);
            stages::train_gimp(data, &c, &run.dir, ctl, on)?
                .finetune
                .into()
        }
        Recipe::LogisticRegression => logistic_regression(data, run.seed)?,
        Recipe::MajorityClass => majority_class(data, &base.task, run.seed)?,
    };
    std::fs::create_dir_all(&run.dir).map_err(|e| gimp_io::DataError::io(&run.dir, e))?;
    gimp_io::atomic::write_bytes_atomic(
        &run.dir.join("metrics.json"),
        serde_json::to_string_pretty(&r)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    Ok(r)
}

/// The row a planned run belongs to.
pub fn row_of<'a>(rows: &[&'a Row], run: &Run) -> Result<&'a Row> {
    rows.iter()
        .copied()
        .find(|r| r.key == run.row)
        .ok_or_else(|| {
            DataErr::Msg(format!(
                "run {} is of no row of the table",
                run.dir.display()
            ))
        })
}

/// Runs the unfinished runs among `runs` (all of a plan, or one machine's shard of it), preparing
/// each fold's data once; `started` and `finished` are told of each run. Returns how many ran.
#[allow(clippy::too_many_arguments)]
pub fn execute_pending(
    cohort: &gimp_cohort::Cohort,
    rows: &[&Row],
    runs: &[Run],
    base: &RunConfig,
    overrides: BaselineOverrides<'_>,
    started: &dyn Fn(&Row, &Run),
    finished: &dyn Fn(&RunResult),
    on: OnProgress,
) -> Result<usize> {
    let mut folds: Vec<usize> = runs.iter().filter(|r| !r.done).map(|r| r.fold).collect();
    folds.sort_unstable();
    folds.dedup();
    let mut n = 0;
    for fold in folds {
        let data = Prepared::new(cohort, fold, base.model.transform)?;
        for run in runs.iter().filter(|r| r.fold == fold && !r.done) {
            let row = row_of(rows, run)?;
            started(row, run);
            finished(&execute(row, &data, base, overrides, run, on)?);
            n += 1;
        }
    }
    Ok(n)
}

/// Summarises the finished runs of the whole plan into `{out}/{table}.md` and `.csv`; returns the
/// Markdown table.
pub fn write_summary(
    out: &Path,
    table: &str,
    rows: &[&Row],
    runs: &[Run],
    classes: &[String],
    recipe: TrainingRecipe,
    task: &TaskConfig,
) -> Result<String> {
    let summary = summarise(rows, runs)?;
    let md = match task.kind {
        TaskKind::Classification => markdown(&summary, classes, recipe),
        TaskKind::Survival => survival_markdown(&summary, recipe, task),
    };
    gimp_io::atomic::write_bytes_atomic(&out.join(format!("{table}.md")), md.as_bytes())?;
    gimp_io::atomic::write_bytes_atomic(
        &out.join(format!("{table}.csv")),
        csv(&summary).as_bytes(),
    )?;
    Ok(md)
}

/// One row's finished runs in an experiment folder: `(fold, seed)` → its `metrics.json`.
fn finished_runs(out: &Path, key: &str) -> Result<BTreeMap<(usize, usize), serde_json::Value>> {
    let mut found = BTreeMap::new();
    let number = |name: &std::ffi::OsStr, prefix: &str| -> Option<usize> {
        name.to_str()?.strip_prefix(prefix)?.parse().ok()
    };
    let row = out.join(key);
    if !row.is_dir() {
        return Err(DataErr::Msg(format!(
            "{}: no runs of row '{key}' (no folder {})",
            out.display(),
            row.display()
        )));
    }
    let folds = std::fs::read_dir(&row).map_err(|e| gimp_io::DataError::io(&row, e))?;
    for f in folds.flatten() {
        let Some(fold) = number(&f.file_name(), "fold") else {
            continue;
        };
        let Ok(seeds) = std::fs::read_dir(f.path()) else {
            continue;
        };
        for s in seeds.flatten() {
            let Some(seed) = number(&s.file_name(), "seed") else {
                continue;
            };
            let p = s.path().join("metrics.json");
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let v = serde_json::from_str(&text)
                .map_err(|e| DataErr::Msg(format!("{}: {e}", p.display())))?;
            found.insert((fold, seed), v);
        }
    }
    Ok(found)
}

/// Is row A better than row B? Their test accuracies on the runs both finished (same fold and
/// seed), compared by a paired sign-flip test; and their ROC-AUCs on the pooled test predictions
/// (each patient once, probabilities averaged over seeds) by DeLong's test (two classes).
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// What the runs are compared on: `accuracy`, or Harrell's `c-index` in a survival
    /// experiment.
    pub metric: &'static str,
    /// `(fold, seed, metric of A, metric of B)` for every run both finished.
    pub runs: Vec<(usize, usize, f64, f64)>,
    pub mean_difference: f64,
    pub std_difference: f64,
    /// Two-sided p-value of the paired accuracy differences (sign flips).
    pub p_paired: f64,
    /// Patients in both rows' pooled predictions.
    pub patients: usize,
    pub delong: Option<gimp_metrics::AucComparison>,
}

/// Compares rows `a` and `b` (their keys) of the experiment in `out`.
pub fn compare(out: &Path, a: &str, b: &str) -> Result<Comparison> {
    let (ra, rb) = (finished_runs(out, a)?, finished_runs(out, b)?);
    // A survival run's test figure is its c-index (DeLong's test is then left out).
    let survival = ra.values().any(|v| !v["test_survival"].is_null());
    let accuracy = |v: &serde_json::Value| match survival {
        true => v["test_survival"]["cindex"]["value"].as_f64(),
        false => v["test"]["accuracy"]["value"].as_f64(),
    };
    let runs: Vec<(usize, usize, f64, f64)> = ra
        .iter()
        .filter_map(|(k, va)| {
            let vb = rb.get(k)?;
            Some((k.0, k.1, accuracy(va)?, accuracy(vb)?))
        })
        .collect();
    if runs.is_empty() {
        return Err(DataErr::Msg(format!(
            "{}: rows '{a}' and '{b}' have no finished run on the same fold and seed",
            out.display()
        )));
    }
    let diffs: Vec<f64> = runs.iter().map(|r| r.2 - r.3).collect();
    let (mean_difference, std_difference) = mean_std(&diffs);
    let pooled = |runs: &BTreeMap<(usize, usize), serde_json::Value>| -> Result<_> {
        let predictions = runs
            .values()
            .filter_map(|v| v.get("test_predictions").filter(|t| !t.is_null()))
            .map(|t| {
                serde_json::from_value::<Predictions>(t.clone())
                    .map_err(|e| DataErr::Msg(format!("test_predictions: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(by_patient(&predictions))
    };
    let (pa, pb) = (pooled(&ra)?, pooled(&rb)?);
    let shared: Vec<usize> = pa.keys().copied().filter(|i| pb.contains_key(i)).collect();
    let binary = !survival
        && shared
            .iter()
            .all(|i| pa[i].1.len() == 2 && pb[i].1.len() == 2);
    let delong = if binary {
        let positive: Vec<bool> = shared.iter().map(|i| pa[i].0 == 1).collect();
        let score = |p: &BTreeMap<usize, (usize, Vec<f64>)>| -> Vec<f64> {
            shared.iter().map(|i| p[i].1[1]).collect()
        };
        gimp_metrics::delong(&positive, &score(&pa), &score(&pb))
    } else {
        None
    };
    Ok(Comparison {
        a: a.to_string(),
        b: b.to_string(),
        metric: if survival { "c-index" } else { "accuracy" },
        p_paired: gimp_metrics::paired_sign_flip(&diffs, 0),
        runs,
        mean_difference,
        std_difference,
        patients: shared.len(),
        delong,
    })
}

/// Mean ± standard deviation of a row's test metrics over its runs, and the pooled confusion.
#[derive(Debug, Clone, Serialize)]
pub struct RowSummary {
    pub row: String,
    pub name: String,
    pub runs: usize,
    pub accuracy: (f64, f64),
    pub roc_auc: (f64, f64),
    pub macro_f1: (f64, f64),
    pub confusion: Vec<Vec<usize>>,
    /// Metrics of the test predictions pooled over the runs, each patient once (its
    /// probabilities averaged over seeds), with their 95% intervals.
    pub pooled: Option<Report>,
    /// Survival runs: Harrell's and Uno's test c-index, mean ± std over the runs.
    pub cindex: (f64, f64),
    pub uno: (f64, f64),
    /// Harrell's c-index of the test risks pooled over the runs (each patient once, its risk
    /// averaged over seeds) with its 95% bootstrap interval.
    pub pooled_cindex: Option<gimp_metrics::Estimate>,
}

/// Runs' test predictions with each patient once: its class probabilities averaged over the
/// runs that tested it (seeds; k-fold test sets are disjoint). Patient → (label, probabilities).
fn by_patient(predictions: &[Predictions]) -> BTreeMap<usize, (usize, Vec<f64>)> {
    let mut sums: BTreeMap<usize, (usize, Vec<f64>, f64)> = BTreeMap::new();
    for p in predictions {
        for ((&i, &label), probs) in p.patients.iter().zip(&p.labels).zip(&p.probs) {
            let e = sums
                .entry(i)
                .or_insert_with(|| (label, vec![0.0; probs.len()], 0.0));
            e.1.iter_mut().zip(probs).for_each(|(a, b)| *a += b);
            e.2 += 1.0;
        }
    }
    sums.into_iter()
        .map(|(i, (label, sum, n))| (i, (label, sum.into_iter().map(|v| v / n).collect())))
        .collect()
}

/// The metrics of runs' pooled test predictions ([`by_patient`]), so no patient is counted
/// twice in the intervals.
fn pool(predictions: &[Predictions]) -> Option<Report> {
    let pooled = by_patient(predictions);
    let n_classes = pooled.values().map(|e| e.1.len()).max()?;
    let (labels, probs): (Vec<usize>, Vec<Vec<f64>>) = pooled.into_values().unzip();
    Some(Report::new(&labels, &probs, n_classes, 0))
}

/// Harrell's c-index of runs' pooled test risks, each patient once (its risk averaged over the
/// seeds that tested it), with a bootstrap interval; `None` without survival predictions or
/// where it has no value. k-fold models' risks are on their own scales; pooling them assumes
/// comparable scales, as pooled classification probabilities do.
fn pool_cindex(predictions: &[Predictions]) -> Option<gimp_metrics::Estimate> {
    let mut sums: BTreeMap<usize, (f64, f64, bool, f64)> = BTreeMap::new();
    for p in predictions.iter().filter(|p| p.is_survival()) {
        for (k, &i) in p.patients.iter().enumerate() {
            let e = sums.entry(i).or_insert((0.0, p.time[k], p.event[k], 0.0));
            e.0 += p.risk[k];
            e.3 += 1.0;
        }
    }
    if sums.is_empty() {
        return None;
    }
    let risk: Vec<f64> = sums.values().map(|e| e.0 / e.3).collect();
    let time: Vec<f64> = sums.values().map(|e| e.1).collect();
    let event: Vec<bool> = sums.values().map(|e| e.2).collect();
    let outcomes = gimp_metrics::survival::Outcomes {
        time: &time,
        event: &event,
    };
    gimp_metrics::survival::concordance_bootstrap(outcomes, &risk, crate::objective::RESAMPLES, 0)
        .ok()
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

/// Reads the finished runs' `metrics.json` and summarises each row.
pub fn summarise(rows: &[&Row], runs: &[Run]) -> Result<Vec<RowSummary>> {
    let mut out = Vec::new();
    for r in rows {
        let mut reports: Vec<Report> = Vec::new();
        let mut predictions: Vec<Predictions> = Vec::new();
        let (mut cindex, mut uno) = (Vec::new(), Vec::new());
        for run in runs.iter().filter(|x| x.row == r.key) {
            let p = run.dir.join("metrics.json");
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| DataErr::Msg(format!("{}: {e}", p.display())))?;
            if let Some(t) = v.get("test_predictions").filter(|t| !t.is_null()) {
                let t = serde_json::from_value(t.clone())
                    .map_err(|e| DataErr::Msg(format!("{}: test_predictions: {e}", p.display())))?;
                predictions.push(t);
            }
            if let Some(t) = v.get("test_survival").filter(|t| !t.is_null()) {
                cindex.push(t["cindex"]["value"].as_f64().unwrap_or(f64::NAN));
                uno.push(t["uno"].as_f64().unwrap_or(f64::NAN));
            }
            if let Some(t) = v.get("test").filter(|t| !t.is_null()) {
                let acc = t["accuracy"]["value"].as_f64().unwrap_or(f64::NAN);
                let auc = t["roc_auc"]["value"].as_f64().unwrap_or(f64::NAN);
                let f1 = t["macro_f1"].as_f64().unwrap_or(f64::NAN);
                let conf: Vec<Vec<usize>> =
                    serde_json::from_value(t["confusion"].clone()).unwrap_or_default();
                reports.push(Report {
                    n: t["n"].as_u64().unwrap_or(0) as usize,
                    accuracy: gimp_metrics::Estimate {
                        value: acc,
                        low: f64::NAN,
                        high: f64::NAN,
                    },
                    balanced_accuracy: t["balanced_accuracy"].as_f64().unwrap_or(f64::NAN),
                    roc_auc: Some(gimp_metrics::Estimate {
                        value: auc,
                        low: f64::NAN,
                        high: f64::NAN,
                    }),
                    macro_f1: f1,
                    confusion: conf,
                    // Runs from before calibration was reported have none.
                    ece: t["ece"].as_f64().unwrap_or(f64::NAN),
                });
            }
        }
        let mut confusion: Vec<Vec<usize>> = Vec::new();
        for rep in &reports {
            if confusion.is_empty() {
                confusion = rep.confusion.clone();
            } else {
                for (a, b) in confusion.iter_mut().zip(&rep.confusion) {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                }
            }
        }
        let col = |f: &dyn Fn(&Report) -> f64| mean_std(&reports.iter().map(f).collect::<Vec<_>>());
        out.push(RowSummary {
            row: r.key.to_string(),
            name: r.name.to_string(),
            runs: reports.len().max(cindex.len()),
            cindex: mean_std(&cindex),
            uno: mean_std(&uno),
            pooled_cindex: pool_cindex(&predictions),
            accuracy: col(&|x| x.accuracy.value),
            roc_auc: col(&|x| x.roc_auc.map_or(f64::NAN, |a| a.value)),
            macro_f1: col(&|x| x.macro_f1),
            confusion,
            pooled: pool(
                &predictions
                    .iter()
                    .filter(|p| !p.is_survival())
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        });
    }
    Ok(out)
}

/// The summary as a Markdown table, headed by the compared systems' training recipe.
pub fn markdown(s: &[RowSummary], classes: &[String], recipe: TrainingRecipe) -> String {
    let mut t = format!(
        "Compared systems trained with the {} recipe ({}).\n\n",
        recipe.name(),
        match recipe {
            TrainingRecipe::Reference => "each as its reference code trains it",
            TrainingRecipe::Paper =>
                "every row AdamW 1e-4, cosine, at most 70 epochs, best validation epoch",
        }
    );
    t.push_str(
        "| method | runs | accuracy | ROC-AUC | macro F1 | pooled accuracy [95% CI] | pooled ROC-AUC [95% CI] | pooled confusion (rows true: ",
    );
    t.push_str(&classes.join(", "));
    t.push_str(") |\n|---|---|---|---|---|---|---|---|\n");
    for r in s {
        let pm = |(m, sd): (f64, f64)| {
            if r.runs == 0 {
                "–".to_string()
            } else {
                format!("{m:.3} ± {sd:.3}")
            }
        };
        let conf: Vec<String> = r
            .confusion
            .iter()
            .map(|row| {
                row.iter()
                    .map(|v| v.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        let ci = |e: Option<gimp_metrics::Estimate>| match e {
            Some(e) => format!("{:.3} [{:.3}–{:.3}]", e.value, e.low, e.high),
            None => "–".to_string(),
        };
        let pooled = r.pooled.as_ref();
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.name,
            r.runs,
            pm(r.accuracy),
            pm(r.roc_auc),
            pm(r.macro_f1),
            ci(pooled.map(|p| p.accuracy)),
            ci(pooled.and_then(|p| p.roc_auc)),
            conf.join(" / ")
        );
    }
    t
}

/// A survival experiment's summary as a Markdown table: the task and loss, then per row Harrell's
/// and Uno's test c-index (mean ± std over the runs) and the pooled c-index with its interval.
pub fn survival_markdown(s: &[RowSummary], recipe: TrainingRecipe, task: &TaskConfig) -> String {
    let mut t = format!(
        "Task: {}. Compared systems trained with the {} recipe; every row on the same split files.\n\n",
        task.describe(),
        recipe.name()
    );
    t.push_str(
        "| method | runs | c-index (Harrell) | c-index (Uno) | pooled c-index [95% CI] |\n|---|---|---|---|---|\n",
    );
    for r in s {
        let pm = |(m, sd): (f64, f64)| match r.runs {
            0 => "–".to_string(),
            _ if m.is_nan() => "–".to_string(),
            _ => format!("{m:.3} ± {sd:.3}"),
        };
        let pooled = match r.pooled_cindex {
            Some(e) => format!("{:.3} [{:.3}–{:.3}]", e.value, e.low, e.high),
            None => "–".to_string(),
        };
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} |",
            r.name,
            r.runs,
            pm(r.cindex),
            pm(r.uno),
            pooled
        );
    }
    t
}

pub fn csv(s: &[RowSummary]) -> String {
    let mut t = String::from("row,method,runs,accuracy_mean,accuracy_std,roc_auc_mean,roc_auc_std,macro_f1_mean,macro_f1_std,pooled_patients,pooled_accuracy,pooled_accuracy_low,pooled_accuracy_high,pooled_roc_auc,pooled_roc_auc_low,pooled_roc_auc_high,cindex_mean,cindex_std,uno_mean,uno_std,pooled_cindex,pooled_cindex_low,pooled_cindex_high\n");
    for r in s {
        let nan = gimp_metrics::Estimate {
            value: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        };
        let acc = r.pooled.as_ref().map_or(nan, |p| p.accuracy);
        let auc = r.pooled.as_ref().and_then(|p| p.roc_auc).unwrap_or(nan);
        let _ = writeln!(
            t,
            "{},\"{}\",{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4},{:.4}",
            r.row,
            r.name,
            r.runs,
            r.accuracy.0,
            r.accuracy.1,
            r.roc_auc.0,
            r.roc_auc.1,
            r.macro_f1.0,
            r.macro_f1.1,
            r.pooled.as_ref().map_or(0, |p| p.n),
            acc.value,
            acc.low,
            acc.high,
            auc.value,
            auc.low,
            auc.high,
            r.cindex.0,
            r.cindex.1,
            r.uno.0,
            r.uno.1,
            r.pooled_cindex.unwrap_or(nan).value,
            r.pooled_cindex.unwrap_or(nan).low,
            r.pooled_cindex.unwrap_or(nan).high
        );
    }
    t
}
