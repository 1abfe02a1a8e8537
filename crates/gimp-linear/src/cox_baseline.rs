//! The Cox baseline over a cohort: the logistic-regression baseline's patients, gene
//! preprocessing and splits ([`crate::baseline`]), with survival outcomes in place of classes —
//! per split an L2-penalised Cox model on the training part's standardised genes, its penalty
//! chosen on the validation part when several are given, and Harrell's c-index on the test part.

use crate::baseline::{parts, transformed_rows, BaselineError, Split};
use crate::{CoxConfig, CoxModel, Standardiser};
use gimp_cohort::split::{make_splits, Scheme};
use gimp_cohort::survival::Outcome;
use gimp_cohort::Cohort;
use gimp_io::expression::ExpressionTransform;
use gimp_metrics::survival::{
    concordance_bootstrap, concordance_index_censored, Concordance, Outcomes, TIED_TOL,
};
use gimp_metrics::Estimate;
use serde::Serialize;

/// Why the Cox baseline cannot run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoxBaselineError {
    #[error(transparent)]
    Baseline(#[from] BaselineError),
    #[error("the cohort file has no [survival] section naming the time and event columns")]
    NoSurvival,
    #[error("split {fold}: {message}")]
    Fold { fold: usize, message: String },
    #[error("--penalty: {0}")]
    Penalty(String),
}

/// One scored patient of a test part.
#[derive(Debug, Clone, Serialize)]
pub struct ScoredPatient {
    pub case_id: String,
    pub time: f64,
    pub event: bool,
    /// The model's risk (log relative hazard; higher = earlier event).
    pub risk: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoxFold {
    pub fold: usize,
    /// Training patients with expression, and their events.
    pub train: usize,
    pub train_events: usize,
    /// The penalty used (the best on validation when several were given).
    pub penalty: f64,
    /// Validation c-index of every candidate penalty, in the order given.
    pub val_cindex: Vec<f64>,
    /// Harrell's c-index on the test part, with its pair counts.
    pub test: Concordance,
    /// Its bootstrap 95% interval over test patients.
    pub test_interval: Estimate,
    pub test_patients: usize,
    pub test_events: usize,
    pub iterations: usize,
    pub converged: bool,
    /// The test part's patients with their risks, for `gimp-rs survival metrics`.
    pub scores: Vec<ScoredPatient>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CoxResult {
    pub genes: usize,
    pub penalties: Vec<f64>,
    pub folds: Vec<CoxFold>,
    pub test_cindex_mean: f64,
    /// Sample standard deviation over the splits (0 for one split).
    pub test_cindex_std: f64,
}

impl CoxResult {
    /// Writes each fold's test scores as `DIR/split{k}_test.csv` (`case_id,time,event,risk`),
    /// the file `gimp-rs survival metrics` reads; each written atomically.
    pub fn write_scores(&self, dir: &std::path::Path) -> Result<(), gimp_io::DataError> {
        for f in &self.folds {
            let mut text = String::from("case_id,time,event,risk\n");
            for s in &f.scores {
                text.push_str(&format!(
                    "{},{},{},{}\n",
                    s.case_id,
                    s.time,
                    u8::from(s.event),
                    s.risk
                ));
            }
            gimp_io::atomic::write_bytes_atomic(
                &dir.join(format!("split{}_test.csv", f.fold)),
                text.as_bytes(),
            )?;
        }
        Ok(())
    }
}

/// The cohort's survival outcomes, one per patient.
pub fn outcomes(c: &Cohort) -> Result<&[Outcome], CoxBaselineError> {
    c.survival.as_deref().ok_or(CoxBaselineError::NoSurvival)
}

/// The splits to evaluate: `kfold` folds with disjoint test sets and the fraction `val` of each
/// training part kept for validation, dealt within each class by events and time bins as
/// `gimp-rs split` deals them; else the cohort's split files.
pub fn splits(
    c: &Cohort,
    kfold: Option<usize>,
    val: f64,
    seed: u64,
) -> Result<Vec<Split>, CoxBaselineError> {
    let Some(k) = kfold else {
        return Ok(crate::baseline::splits(c, None, seed)?);
    };
    outcomes(c)?;
    let scheme = Scheme::kfold(k, val).map_err(BaselineError::Scheme)?;
    let strata = c.split_strata(scheme).map_err(BaselineError::Scheme)?;
    Ok(make_splits(&strata, scheme, seed))
}

fn cindex(time: &[f64], event: &[bool], risk: &[f64]) -> Option<Concordance> {
    let o = Outcomes::new(time, event).ok()?;
    concordance_index_censored(o, risk, TIED_TOL).ok()
}

/// Runs the Cox baseline on every split: expression transformed with `transform`, z-scored with
/// training statistics, a Cox model per penalty in `penalties` (one: used as is; several: the
/// best validation c-index wins, ties to the larger penalty), Harrell's c-index with a bootstrap
/// interval (seeded by `seed`) on the test part. Patients without expression are left out.
pub fn cross_validate(
    c: &Cohort,
    splits: &[Split],
    penalties: &[f64],
    transform: ExpressionTransform,
    seed: u64,
) -> Result<CoxResult, CoxBaselineError> {
    let expr = c.expression.as_ref().ok_or(BaselineError::NoExpression)?;
    let outcomes = outcomes(c)?;
    if penalties.is_empty() {
        return Err(CoxBaselineError::Penalty("give at least one".into()));
    }
    if let Some(bad) = penalties.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
        return Err(CoxBaselineError::Penalty(format!(
            "{bad} is not a number > 0"
        )));
    }
    let rows = transformed_rows(c, transform);
    let mut folds = Vec::new();
    for (k, split) in splits.iter().enumerate() {
        let fold_error = |message: String| CoxBaselineError::Fold { fold: k, message };
        let [train, val, test] = parts(split, &rows, k)?;
        let train_rows: Vec<&[f32]> = train.iter().filter_map(|&i| rows[i].as_deref()).collect();
        let scaler = Standardiser::fit(&train_rows);
        let standardised = |ids: &[usize]| -> Vec<Vec<f64>> {
            ids.iter()
                .filter_map(|&i| rows[i].as_deref())
                .map(|r| scaler.apply(r).into_iter().map(f64::from).collect())
                .collect()
        };
        let time = |ids: &[usize]| -> Vec<f64> { ids.iter().map(|&i| outcomes[i].time).collect() };
        let event =
            |ids: &[usize]| -> Vec<bool> { ids.iter().map(|&i| outcomes[i].event).collect() };
        let x_train = standardised(&train);
        let (t_train, e_train) = (time(&train), event(&train));
        let fit = |penalty: f64| {
            let cfg = CoxConfig {
                penalty,
                ..Default::default()
            };
            CoxModel::fit(&x_train, &t_train, &e_train, cfg)
                .map_err(|e| fold_error(format!("training part: {e}")))
        };
        let mut val_cindex = Vec::new();
        let (penalty, model) = if penalties.len() == 1 {
            (penalties[0], fit(penalties[0])?)
        } else {
            if val.is_empty() {
                return Err(fold_error(
                    "choosing among several penalties needs a validation part (split with --val, or give one --penalty)".into(),
                ));
            }
            let x_val = standardised(&val);
            let (t_val, e_val) = (time(&val), event(&val));
            let mut best: Option<(f64, f64, CoxModel)> = None;
            for &penalty in penalties {
                let m = fit(penalty)?;
                let risk: Vec<f64> = x_val.iter().map(|r| m.risk(r)).collect();
                let ci = cindex(&t_val, &e_val, &risk)
                    .ok_or_else(|| {
                        fold_error(
                            "the validation part has no comparable pair of patients (no event)"
                                .into(),
                        )
                    })?
                    .cindex;
                val_cindex.push(ci);
                if best
                    .as_ref()
                    .is_none_or(|(b, l, _)| ci > *b || (ci == *b && penalty > *l))
                {
                    best = Some((ci, penalty, m));
                }
            }
            let (_, penalty, m) = best.expect("at least one penalty");
            (penalty, m)
        };
        let x_test = standardised(&test);
        let (t_test, e_test) = (time(&test), event(&test));
        let risk: Vec<f64> = x_test.iter().map(|r| model.risk(r)).collect();
        let no_pairs =
            || fold_error("the test part has no comparable pair of patients (no event)".into());
        let concordance = cindex(&t_test, &e_test, &risk).ok_or_else(no_pairs)?;
        let interval = Outcomes::new(&t_test, &e_test)
            .ok()
            .and_then(|o| concordance_bootstrap(o, &risk, 1000, seed).ok())
            .ok_or_else(no_pairs)?;
        folds.push(CoxFold {
            fold: k,
            train: train.len(),
            train_events: e_train.iter().filter(|&&e| e).count(),
            penalty,
            val_cindex,
            test: concordance,
            test_interval: interval,
            test_patients: test.len(),
            test_events: e_test.iter().filter(|&&e| e).count(),
            iterations: model.iterations,
            converged: model.converged,
            scores: test
                .iter()
                .zip(&risk)
                .map(|(&i, &r)| ScoredPatient {
                    case_id: c.patients[i].case_id.clone(),
                    time: outcomes[i].time,
                    event: outcomes[i].event,
                    risk: r,
                })
                .collect(),
        });
    }
    let values: Vec<f64> = folds.iter().map(|f| f.test.cindex).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let std = if values.len() > 1 {
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(CoxResult {
        genes: expr.n_genes(),
        penalties: penalties.to_vec(),
        folds,
        test_cindex_mean: mean,
        test_cindex_std: std,
    })
}
