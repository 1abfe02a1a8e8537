//! The Cox baseline over a cohort: the logistic-regression baseline's patients, gene
//! preprocessing and splits ([`crate::baseline`]), with survival outcomes in place of classes —
//! per split an L2-penalised Cox model on standardised genes, its penalty chosen (when several
//! are given) by k-fold cross-validation inside the training and validation parts and the model
//! refitted on all of them (as scikit-survival's ridge Cox is tuned in `bench/`; docs/DESIGN.md
//! §41), or fitted on the training part and chosen on the validation part; Harrell's c-index on
//! the test part.

use crate::baseline::{parts, transformed_rows, BaselineError, Split};
use crate::cox::{Problem, Rows};
use crate::{CoxConfig, CoxError, CoxModel, Standardiser};
use gimp_cohort::split::{make_splits, Scheme};
use gimp_cohort::survival::Outcome;
use gimp_cohort::Cohort;
use gimp_io::expression::ExpressionTransform;
use gimp_metrics::survival::{
    concordance_bootstrap, concordance_index_censored, Concordance, Outcomes, TIED_TOL,
};
use gimp_metrics::Estimate;
use nalgebra::DMatrix;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

/// How a split's penalty is chosen among several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PenaltyChoice {
    /// Mean Harrell c-index over `folds` inner folds of the training and validation patients
    /// (dealt by event, seeded), then the chosen penalty refitted on all of them (the default).
    InnerCv { folds: usize },
    /// Fitted on the training part, the best validation c-index (the validation part is then
    /// not trained on).
    Validation,
}

impl Default for PenaltyChoice {
    fn default() -> Self {
        PenaltyChoice::InnerCv { folds: 5 }
    }
}

/// Seed offset of the inner folds (the run's seed XOR this).
const INNER_SEED: u64 = 0xc0c5;

/// `k` folds of `ids`, dealt within events and censored patients in a seeded random order.
fn inner_folds(ids: &[usize], outcomes: &[Outcome], k: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ INNER_SEED);
    let mut folds = vec![Vec::new(); k];
    let mut next = 0;
    for event in [false, true] {
        let mut members: Vec<usize> = ids
            .iter()
            .copied()
            .filter(|&i| outcomes[i].event == event)
            .collect();
        members.shuffle(&mut rng);
        for i in members {
            folds[next % k].push(i);
            next += 1;
        }
    }
    folds
}

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
    /// Patients with expression the model was fitted on (training, and validation under inner
    /// cross-validation), and their events.
    pub train: usize,
    pub train_events: usize,
    /// The penalty used (the chosen one when several were given).
    pub penalty: f64,
    /// How it was chosen: `inner_cv` or `validation` (`fixed` for one penalty).
    pub chosen_by: String,
    /// Validation c-index of every candidate penalty, in the order given (`validation`).
    pub val_cindex: Vec<f64>,
    /// Mean inner-fold c-index of every candidate penalty, in the order given (`inner_cv`).
    pub inner_cindex: Vec<f64>,
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
    pub choice: PenaltyChoice,
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

/// One inner fold of a penalty choice, prepared once for all the penalties: the problem of
/// fitting its rows (their decomposition and risk sets), and the map from a fit to the held-out
/// rows' risks, with their times and events.
struct InnerFold {
    problem: Problem,
    hold_risk: DMatrix<f64>,
    hold_time: Vec<f64>,
    hold_event: Vec<bool>,
}

impl InnerFold {
    /// Fitted on rows `fit` of `rows`, scored on rows `hold`; `time` and `event` are `rows`'.
    fn new(
        rows: &Rows,
        fit: &[usize],
        hold: &[usize],
        time: &[f64],
        event: &[bool],
    ) -> Result<Self, CoxError> {
        let problem = rows.problem(fit)?;
        Ok(Self {
            hold_risk: rows.risk_map(&problem, hold),
            problem,
            hold_time: hold.iter().map(|&i| time[i]).collect(),
            hold_event: hold.iter().map(|&i| event[i]).collect(),
        })
    }
}

/// Each penalty's mean Harrell c-index over the inner folds (NaN where no fold could be scored)
/// and the penalty with the best mean, ties to the larger (`None` when none could be scored).
fn score_penalties(
    folds: &[InnerFold],
    penalties: &[f64],
) -> Result<(Vec<f64>, Option<f64>), CoxError> {
    // Every (penalty, fold) fit is independent: fitted in parallel, then scanned in order, so
    // the first error and every score are those of fitting them one after another.
    let fits: Vec<Result<Vec<f64>, CoxError>> = (0..penalties.len() * folds.len())
        .into_par_iter()
        .map(|t| {
            let f = &folds[t % folds.len()];
            let cfg = CoxConfig {
                penalty: penalties[t / folds.len()],
                ..Default::default()
            };
            let gamma = f.problem.solve(cfg)?.gamma;
            Ok((&f.hold_risk * gamma).iter().copied().collect())
        })
        .collect();
    let mut fits = fits.into_iter();
    let mut means = Vec::with_capacity(penalties.len());
    let mut best: Option<(f64, f64)> = None;
    for &penalty in penalties {
        let mut scores = Vec::new();
        for f in folds {
            let risk = fits.next().expect("one fit per penalty and fold")?;
            if let Some(ci) = cindex(&f.hold_time, &f.hold_event, &risk) {
                scores.push(ci.cindex);
            }
        }
        let mean = match scores.is_empty() {
            true => f64::NAN,
            false => scores.iter().sum::<f64>() / scores.len() as f64,
        };
        means.push(mean);
        if mean.is_finite() && best.is_none_or(|(b, l)| mean > b || (mean == b && penalty > l)) {
            best = Some((mean, penalty));
        }
    }
    Ok((means, best.map(|(_, p)| p)))
}

/// The Cox baseline's default penalties (`gimp-rs baseline cox --penalty`).
pub const DEFAULT_PENALTIES: [f64; 5] = [0.1, 1.0, 10.0, 100.0, 1000.0];

/// A ridge Cox model on standardised rows `x`, its penalty chosen among `penalties` as the
/// baseline's `--choose cv` chooses it — the best mean Harrell c-index over `folds` inner folds
/// (dealt by event, seeded; folds without an event skipped; ties to the larger penalty) — then
/// refitted on every row; without an inner fold that can be scored, the largest penalty.
/// Returns the penalty and the model. Unlike the baseline, the rows are not re-standardised
/// within the inner folds: the caller's rows are already standardised on exactly these patients.
pub fn fit_choosing_penalty(
    x: &[Vec<f64>],
    time: &[f64],
    event: &[bool],
    penalties: &[f64],
    folds: usize,
    seed: u64,
) -> Result<(f64, CoxModel), CoxError> {
    // The inner folds fit subsets of these very rows, so one `Rows` — one Gram matrix when
    // genes outnumber patients — serves them all and the refit.
    let rows = Rows::new(x, time, event)?;
    let outcomes: Vec<Outcome> = time
        .iter()
        .zip(event)
        .map(|(&time, &event)| Outcome { time, event })
        .collect();
    let all: Vec<usize> = (0..x.len()).collect();
    let holds: Vec<Vec<usize>> = inner_folds(&all, &outcomes, folds.max(2), seed)
        .into_iter()
        .filter(|hold| hold.iter().any(|&i| event[i]))
        .collect();
    // Decomposed in parallel; the first error in fold order is the one reported.
    let inner: Vec<Result<InnerFold, CoxError>> = holds
        .par_iter()
        .map(|hold| {
            let fit: Vec<usize> = all.iter().copied().filter(|i| !hold.contains(i)).collect();
            InnerFold::new(&rows, &fit, hold, time, event)
        })
        .collect();
    let inner = inner.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (_, best) = score_penalties(&inner, penalties)?;
    let largest = penalties.iter().copied().fold(f64::NAN, f64::max);
    let penalty = best.unwrap_or(largest);
    let cfg = CoxConfig {
        penalty,
        ..Default::default()
    };
    let problem = rows.problem(&all)?;
    let solution = problem.solve(cfg)?;
    Ok((penalty, rows.model(&problem, &solution)))
}

/// Runs the Cox baseline on every split: expression transformed with `transform`, z-scored with
/// the statistics of the patients a model is fitted on, a Cox model per penalty in `penalties`
/// (one: fitted on the training part as is; several: chosen as `choice` says, the best mean
/// c-index winning, ties to the larger penalty), Harrell's c-index with a bootstrap interval
/// (seeded by `seed`) on the test part. Patients without expression are left out.
pub fn cross_validate(
    c: &Cohort,
    splits: &[Split],
    penalties: &[f64],
    transform: ExpressionTransform,
    choice: PenaltyChoice,
    seed: u64,
) -> Result<CoxResult, CoxBaselineError> {
    if let PenaltyChoice::InnerCv { folds } = choice {
        if folds < 2 {
            return Err(CoxBaselineError::Penalty(format!(
                "{folds} inner fold(s): at least 2 are needed"
            )));
        }
    }
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
        let choose_by_cv = penalties.len() > 1 && matches!(choice, PenaltyChoice::InnerCv { .. });
        // Under inner cross-validation the validation part is training data too.
        let train: Vec<usize> = match choose_by_cv {
            true => {
                let mut t: Vec<usize> = train.iter().chain(&val).copied().collect();
                t.sort_unstable();
                t
            }
            false => train,
        };
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
        let mut inner_cindex = Vec::new();
        let (penalty, model) = if penalties.len() == 1 {
            (penalties[0], fit(penalties[0])?)
        } else if let PenaltyChoice::InnerCv { folds } = choice {
            let inner = inner_folds(&train, outcomes, folds, seed);
            // Each inner fold's rows, standardised with its own statistics: its fitted rows,
            // then its held-out ones.
            let mut sets = Vec::new();
            for hold in &inner {
                if !hold.iter().any(|&i| outcomes[i].event) {
                    continue;
                }
                let fit_ids: Vec<usize> = train
                    .iter()
                    .copied()
                    .filter(|i| !hold.contains(i))
                    .collect();
                let fit_rows: Vec<&[f32]> =
                    fit_ids.iter().filter_map(|&i| rows[i].as_deref()).collect();
                let s = Standardiser::fit(&fit_rows);
                let ids: Vec<usize> = fit_ids.iter().chain(hold).copied().collect();
                let x: Vec<Vec<f64>> = ids
                    .iter()
                    .filter_map(|&i| rows[i].as_deref())
                    .map(|r| s.apply(r).into_iter().map(f64::from).collect())
                    .collect();
                let (t, e) = (time(&ids), event(&ids));
                let fitted: Vec<usize> = (0..fit_ids.len()).collect();
                let held: Vec<usize> = (fit_ids.len()..ids.len()).collect();
                let fold = Rows::new(&x, &t, &e)
                    .and_then(|fold_rows| InnerFold::new(&fold_rows, &fitted, &held, &t, &e));
                sets.push(fold.map_err(|e| fold_error(format!("inner fold: {e}")))?);
            }
            if sets.is_empty() {
                return Err(fold_error(
                    "no inner fold of the training part has an event".into(),
                ));
            }
            let (means, best) = score_penalties(&sets, penalties)
                .map_err(|e| fold_error(format!("inner fold: {e}")))?;
            inner_cindex = means;
            let penalty = best.ok_or_else(|| {
                fold_error("no inner fold has a comparable pair of patients".into())
            })?;
            (penalty, fit(penalty)?)
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
            chosen_by: match (penalties.len(), choose_by_cv) {
                (1, _) => "fixed",
                (_, true) => "inner_cv",
                (_, false) => "validation",
            }
            .into(),
            val_cindex,
            inner_cindex,
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
        choice,
        folds,
        test_cindex_mean: mean,
        test_cindex_std: std,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `fit_choosing_penalty` as it reads: every (penalty, inner fold) fitted from the fold's
    /// own rows, its held-out rows scored with the model's coefficients.
    fn choose_by_fitting_rows(
        x: &[Vec<f64>],
        time: &[f64],
        event: &[bool],
        penalties: &[f64],
        seed: u64,
    ) -> (f64, CoxModel) {
        let part = |ids: &[usize]| {
            (
                ids.iter().map(|&i| x[i].clone()).collect::<Vec<_>>(),
                ids.iter().map(|&i| time[i]).collect::<Vec<_>>(),
                ids.iter().map(|&i| event[i]).collect::<Vec<_>>(),
            )
        };
        let outcomes: Vec<Outcome> = time
            .iter()
            .zip(event)
            .map(|(&time, &event)| Outcome { time, event })
            .collect();
        let all: Vec<usize> = (0..x.len()).collect();
        let holds: Vec<Vec<usize>> = inner_folds(&all, &outcomes, 5, seed)
            .into_iter()
            .filter(|hold| hold.iter().any(|&i| event[i]))
            .collect();
        let mut best: Option<(f64, f64)> = None;
        for &penalty in penalties {
            let cfg = CoxConfig {
                penalty,
                ..Default::default()
            };
            let mut scores = Vec::new();
            for hold in &holds {
                let fit: Vec<usize> = all.iter().copied().filter(|i| !hold.contains(i)).collect();
                let (fx, ft, fe) = part(&fit);
                let (hx, ht, he) = part(hold);
                let m = CoxModel::fit(&fx, &ft, &fe, cfg).unwrap();
                let risk: Vec<f64> = hx.iter().map(|r| m.risk(r)).collect();
                if let Some(ci) = cindex(&ht, &he, &risk) {
                    scores.push(ci.cindex);
                }
            }
            let mean = scores.iter().sum::<f64>() / scores.len() as f64;
            if best.is_none_or(|(b, l)| mean > b || (mean == b && penalty > l)) {
                best = Some((mean, penalty));
            }
        }
        let penalty = best.unwrap().1;
        let cfg = CoxConfig {
            penalty,
            ..Default::default()
        };
        (penalty, CoxModel::fit(x, time, event, cfg).unwrap())
    }

    #[test]
    fn fit_choosing_penalty_equals_fitting_each_inner_fold_from_its_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        // Genes outnumbering every fit's patients; outnumbering the inner folds' (32) but not
        // all 40 (the refit in gene space); and fewer than any fold's.
        for p in [200, 36, 6] {
            let n = 40;
            let x: Vec<Vec<f64>> = (0..n)
                .map(|_| {
                    (0..p)
                        .map(|_| rand::Rng::gen_range(&mut rng, -1.5..1.5))
                        .collect()
                })
                .collect();
            // Times depending on the first genes, rounded so that some are tied.
            let time: Vec<f64> = x
                .iter()
                .map(|r| {
                    (10.0 * (-r[0] - 0.5 * r[1] + 2.0 * rand::Rng::gen::<f64>(&mut rng)).exp())
                        .round()
                })
                .collect();
            let event: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
            let penalties = [0.1, 1.0, 10.0, 100.0];
            let (penalty, model) =
                fit_choosing_penalty(&x, &time, &event, &penalties, 5, 9).unwrap();
            let (want_penalty, want) = choose_by_fitting_rows(&x, &time, &event, &penalties, 9);
            assert_eq!(penalty, want_penalty, "{p} genes");
            assert_eq!(model.iterations, want.iterations);
            let scale = want.coef.iter().fold(0.0, |m: f64, c| m.max(c.abs()));
            for (a, b) in model.coef.iter().zip(&want.coef) {
                assert!((a - b).abs() <= 1e-9 * scale, "{p} genes: {a} vs {b}");
            }
        }
    }
}
