//! Summaries of an experiment's finished runs, read back from the typed `metrics.json` each run
//! wrote ([`RunResult`]): each row's test figures as mean ± std over its runs and on the test
//! predictions pooled over them (each patient once), as Markdown and CSV; and the paired
//! comparison of two rows.

use crate::config::{TaskConfig, TaskKind, TrainingRecipe};
use crate::error::{Result, TrainError};
use crate::predictions::Predictions;
use crate::task::{Figures, Scores, StageResult, RESAMPLES};
use gimp_metrics::Report;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

/// What one run of a row leaves in its `metrics.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    /// The trained model's checkpoint (the two baselines without one have none).
    pub checkpoint: Option<PathBuf>,
    pub best_epoch: Option<usize>,
    #[serde(flatten)]
    pub figures: Figures,
}

impl From<StageResult> for RunResult {
    fn from(r: StageResult) -> Self {
        Self {
            checkpoint: Some(r.checkpoint),
            best_epoch: Some(r.best_epoch),
            figures: r.figures,
        }
    }
}

impl RunResult {
    /// Reads a run's `metrics.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| gimp_io::DataError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| TrainError::Msg(format!("{}: {e}", path.display())))
    }
}

/// One row's finished runs in an experiment folder: `(fold, seed)` → its `metrics.json`.
fn finished_runs(out: &Path, key: &str) -> Result<BTreeMap<(usize, usize), RunResult>> {
    let mut found = BTreeMap::new();
    let number = |name: &std::ffi::OsStr, prefix: &str| -> Option<usize> {
        name.to_str()?.strip_prefix(prefix)?.parse().ok()
    };
    let row = out.join(key);
    if !row.is_dir() {
        return Err(TrainError::Msg(format!(
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
            if p.is_file() {
                found.insert((fold, seed), RunResult::read(&p)?);
            }
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
    // The figure of a run's task: accuracy, or Harrell's c-index (DeLong's test is then left
    // out).
    let test = |r: &RunResult| r.figures.test.clone();
    let runs: Vec<(usize, usize, f64, f64)> = ra
        .iter()
        .filter_map(|(k, va)| {
            let vb = rb.get(k)?;
            Some((k.0, k.1, test(va)?.figure(), test(vb)?.figure()))
        })
        .collect();
    let metric = ra
        .values()
        .find_map(|r| r.figures.test.as_ref().map(Scores::metric))
        .unwrap_or("accuracy");
    let classification = ra
        .values()
        .chain(rb.values())
        .all(|r| r.figures.test.as_ref().is_none_or(|s| s.report().is_some()));
    if runs.is_empty() {
        return Err(TrainError::Msg(format!(
            "{}: rows '{a}' and '{b}' have no finished run on the same fold and seed",
            out.display()
        )));
    }
    let diffs: Vec<f64> = runs.iter().map(|r| r.2 - r.3).collect();
    let (mean_difference, std_difference) = mean_std(&diffs);
    let pooled = |runs: &BTreeMap<(usize, usize), RunResult>| {
        let predictions: Vec<Predictions> = runs
            .values()
            .filter_map(|r| r.figures.test_predictions.clone())
            .collect();
        by_patient(&predictions)
    };
    let (pa, pb) = (pooled(&ra), pooled(&rb));
    let shared: Vec<usize> = pa.keys().copied().filter(|i| pb.contains_key(i)).collect();
    let binary = classification
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
        metric,
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
    for p in predictions.iter().filter(|p| !p.risk.is_empty()) {
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
    gimp_metrics::survival::concordance_bootstrap(outcomes, &risk, RESAMPLES, 0).ok()
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
pub fn summarise(rows: &[(&str, &str)], runs: &[(String, PathBuf)]) -> Result<Vec<RowSummary>> {
    let mut out = Vec::new();
    for &(key, name) in rows {
        let mut reports: Vec<Report> = Vec::new();
        let mut predictions: Vec<Predictions> = Vec::new();
        let (mut cindex, mut uno) = (Vec::new(), Vec::new());
        for (_, dir) in runs.iter().filter(|(row, _)| row == key) {
            let p = dir.join("metrics.json");
            if !p.is_file() {
                continue;
            }
            let r = RunResult::read(&p)?;
            predictions.extend(r.figures.test_predictions);
            match r.figures.test {
                Some(Scores::Classification(report)) => reports.push(report),
                Some(Scores::Survival(s)) => {
                    cindex.push(s.cindex.value);
                    uno.push(s.uno.unwrap_or(f64::NAN));
                }
                None => {}
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
            row: key.to_string(),
            name: name.to_string(),
            runs: reports.len().max(cindex.len()),
            cindex: mean_std(&cindex),
            uno: mean_std(&uno),
            pooled_cindex: pool_cindex(&predictions),
            accuracy: col(&|x| x.accuracy.value),
            roc_auc: col(&|x| x.roc_auc.map_or(f64::NAN, |a| a.value)),
            macro_f1: col(&|x| x.macro_f1),
            confusion,
            // Survival predictions' probabilities are survival curves, not classes.
            pooled: pool(
                &predictions
                    .iter()
                    .filter(|p| p.risk.is_empty())
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
        });
    }
    Ok(out)
}

/// The summary as the task's table: classification figures, or c-indices.
pub fn table(
    s: &[RowSummary],
    classes: &[String],
    recipe: TrainingRecipe,
    task: &TaskConfig,
) -> String {
    match task.kind {
        TaskKind::Classification => markdown(s, classes, recipe),
        TaskKind::Survival => survival_markdown(s, recipe, task),
    }
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
