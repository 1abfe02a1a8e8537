//! The paper's experiments as runs of this pipeline: every row of Table 1 (the compared systems
//! that exist in the registry, and GiMP) and Table 2 (GiMP's ablations) on the same split files
//! and seeds; finished runs are skipped, so an interrupted experiment resumes; results as a
//! Markdown table and CSV with mean ± std and the pooled confusion matrix ([`crate::summary`]).

pub use crate::config::TrainingRecipe;
use crate::config::{
    GeneEncoderKind, Modalities, RunConfig, SupervisedConfig, SupervisedOverrides, TaskConfig,
    Triplet,
};
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use crate::predictions::Predictions;
pub use crate::summary::{compare, Comparison, RowSummary, RunResult};
use crate::task::{Figures, Task};
use crate::trainer::{Control, OnProgress};
use crate::{stages, summary, supervised};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// How a row is trained.
#[derive(Debug, Clone)]
pub enum Recipe {
    /// `gimp-rs train --arch …`.
    Supervised(&'static str),
    /// The GiMP pipeline with changes to the run configuration.
    Gimp(fn(&mut RunConfig)),
    /// The gene-only logistic regression (`gimp-rs baseline logreg`'s, C = 0.1) on the patients
    /// with expression; a classifier, so in no survival table (its counterpart there is the Cox
    /// baseline, `gimp-rs baseline cox`).
    LogisticRegression,
    /// The task's floor ([`Task::constant_predictions`]): every test patient gets the training
    /// split's class frequencies, or one risk for all.
    MajorityClass,
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
        return Err(TrainError::Msg(
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
    let predictions = |idx: Vec<usize>, probs: &[Vec<f64>]| Predictions {
        labels: labels(&idx),
        probs: probs.to_vec(),
        patients: idx,
        loss: f64::NAN,
        ..Default::default()
    };
    let task = Task::new(&TaskConfig::default(), data)?;
    Ok(baseline_result(task.figures(
        data,
        &predictions(val, pv),
        predictions(test, pt),
        seed,
    )))
}

/// A run without a model: no checkpoint, no epoch.
fn baseline_result(figures: Figures) -> RunResult {
    RunResult {
        checkpoint: None,
        best_epoch: None,
        figures,
    }
}

/// The task's floor: every patient given the same answer ([`Task::constant_predictions`]).
fn majority_class(data: &Prepared, task: &TaskConfig, seed: u64) -> Result<RunResult> {
    let task = Task::new(task, data)?;
    let (val, test) = (
        task.constant_predictions(data, &data.val),
        task.constant_predictions(data, &data.test),
    );
    Ok(baseline_result(task.figures(data, &val, test, seed)))
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
    // GiMP's successors (not in the paper): TANGLE's contrastive slide–expression pre-training
    // then its linear probe or fine-tuning, SurvPath, MMP.
    Row {
        table: "table1",
        name: "TANGLE (linear probe)",
        key: "tangle_probe",
        recipe: Recipe::Supervised("tangle_probe"),
    },
    Row {
        table: "table1",
        name: "TANGLE (fine-tuned)",
        key: "tangle",
        recipe: Recipe::Supervised("tangle"),
    },
    Row {
        table: "table1",
        name: "SurvPath",
        key: "survpath",
        recipe: Recipe::Supervised("survpath"),
    },
    Row {
        table: "table1",
        name: "MMP",
        key: "mmp",
        recipe: Recipe::Supervised("mmp"),
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
pub fn rows(table: &str, only: &[String], task: &TaskConfig) -> Result<Vec<&'static Row>> {
    let all: Vec<&Row> = ROWS
        .iter()
        .filter(|r| r.table == table)
        .filter(|r| task.has_logistic_baseline() || !matches!(r.recipe, Recipe::LogisticRegression))
        .collect();
    if all.is_empty() {
        return Err(TrainError::Msg(format!(
            "unknown table '{table}' (table1, table2)"
        )));
    }
    if only.is_empty() {
        return Ok(all);
    }
    only.iter()
        .map(|k| {
            all.iter().copied().find(|r| r.key == k).ok_or_else(|| {
                TrainError::Msg(format!(
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

/// Records the recipe and the task of the experiment in `out` (`out/experiment.json`) and
/// refuses to mix runs of two recipes or two tasks (or survival losses) in one folder.
pub fn claim_recipe(out: &Path, recipe: TrainingRecipe, task: &TaskConfig) -> Result<()> {
    let path = out.join("experiment.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| TrainError::Msg(format!("{}: {e}", path.display())))?;
        let had: TrainingRecipe = serde_json::from_value(v["recipe"].clone())
            .map_err(|e| TrainError::Msg(format!("{}: recipe: {e}", path.display())))?;
        if had != recipe {
            return Err(TrainError::Msg(format!(
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
                .map_err(|e| TrainError::Msg(format!("{}: task: {e}", path.display())))?,
        };
        if had_task.describe() != task.describe() {
            return Err(TrainError::Msg(format!(
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

/// How an experiment trains the compared systems: the recipe, then the changes asked for
/// (their `max_patches` default to the preset's fine-tuning cap, so every row of a table sees
/// bags capped alike).
#[derive(Debug, Clone, Default)]
pub struct Compared {
    pub recipe: TrainingRecipe,
    pub overrides: SupervisedOverrides,
}

impl Compared {
    /// A compared system's run of `arch` with `seed` on split `fold` of an experiment whose GiMP
    /// rows run `base` (its task, its patch cap).
    fn config(
        &self,
        arch: &str,
        base: &RunConfig,
        seed: u64,
        fold: usize,
    ) -> Result<SupervisedConfig> {
        let mut o = self.overrides.clone();
        o.max_patches = o.max_patches.or(base.finetune.max_patches);
        let arch = gimp_models::registry::lookup(arch)?;
        SupervisedConfig::build(arch, seed, fold, self.recipe, base.task, &o)
    }
}

/// Epochs a row's run trains (all stages), for the cost estimate of a dry run.
pub fn planned_epochs(row: &Row, base: &RunConfig, compared: &Compared) -> Result<usize> {
    Ok(match &row.recipe {
        Recipe::Supervised(arch) => {
            let c = compared.config(arch, base, 0, 0)?;
            let self_supervised = match gimp_models::registry::lookup(arch)?.self_supervised() {
                true => c.self_supervised.epochs,
                false => 0,
            };
            c.epochs * selection_fits(c.selection.as_ref()) + self_supervised
        }
        Recipe::Gimp(change) => {
            let mut c = base.clone();
            change(&mut c);
            let (genes, _) = stages::stages_run(&c);
            let gene_fits = selection_fits(c.genes.selection.as_ref().filter(|s| s.folds > 0));
            usize::from(genes) * c.genes.epochs * gene_fits + c.pretrain.epochs + c.finetune.epochs
        }
        // Fitted in seconds, no epochs.
        Recipe::LogisticRegression | Recipe::MajorityClass => 0,
    })
}

/// How many trainings a stage with `selection` (§41) runs: one per inner fold and candidate,
/// plus the final fit (the inner fits train on less data, so this errs on the safe side).
fn selection_fits(selection: Option<&crate::config::Selection>) -> usize {
    selection.map_or(1, |s| {
        let n = |k: usize| k.max(1);
        s.folds * n(s.lr.len()) * n(s.weight_decay.len()) * n(s.genes.len()) + 1
    })
}

/// Runs one row on one prepared split.
pub fn execute(
    row: &Row,
    data: &Prepared,
    base: &RunConfig,
    compared: &Compared,
    run: &Run,
    on: OnProgress,
) -> Result<RunResult> {
    let ctl = Control {
        resume: true,
        stop_after: None,
        ephemeral: false,
    };
    let r: RunResult = match &row.recipe {
        Recipe::Supervised(arch) => {
            let c = compared.config(arch, base, run.seed, run.fold)?;
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
            TrainError::Msg(format!(
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
    compared: &Compared,
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
            finished(&execute(row, &data, base, compared, run, on)?);
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
    let s = summarise(rows, runs)?;
    let md = summary::table(&s, classes, recipe, task);
    gimp_io::atomic::write_bytes_atomic(&out.join(format!("{table}.md")), md.as_bytes())?;
    gimp_io::atomic::write_bytes_atomic(
        &out.join(format!("{table}.csv")),
        summary::csv(&s).as_bytes(),
    )?;
    Ok(md)
}

/// Each row's summary of the runs of `runs` that finished ([`summary::summarise`]).
pub fn summarise(rows: &[&Row], runs: &[Run]) -> Result<Vec<RowSummary>> {
    let rows: Vec<(&str, &str)> = rows.iter().map(|r| (r.key, r.name)).collect();
    let runs: Vec<(String, PathBuf)> = runs
        .iter()
        .map(|r| (r.row.clone(), r.dir.clone()))
        .collect();
    summary::summarise(&rows, &runs)
}
