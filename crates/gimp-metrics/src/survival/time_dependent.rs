//! Metrics at chosen times: the cumulative/dynamic AUC (Uno et al. 2007; Hung & Chiang 2010) and
//! the Brier score with its integral (Graf et al. 1999), both weighted by the inverse probability
//! of censoring estimated on training outcomes, as scikit-survival's `cumulative_dynamic_auc`,
//! `brier_score` and `integrated_brier_score` compute them.

use super::{finite, per_patient, CensoringDistribution, KaplanMeier, Outcomes, SurvivalError};
use serde::Serialize;

/// AUC at each evaluation time and their mean weighted by the drop of the test Kaplan–Meier
/// curve over the times.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DynamicAuc {
    pub times: Vec<f64>,
    pub auc: Vec<f64>,
    pub mean: f64,
}

/// Evaluation times must increase strictly and lie within the test follow-up `[min, max)`.
fn check_times(what: &'static str, test: &Outcomes, times: &[f64]) -> Result<(), SurvivalError> {
    finite("evaluation time", times)?;
    let min = test.time.iter().copied().fold(f64::INFINITY, f64::min);
    let max = test.time.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let increasing = times.windows(2).all(|w| w[0] < w[1]);
    if times.is_empty() || !increasing || times[0] < min || times[times.len() - 1] >= max {
        return Err(SurvivalError::BadTimes {
            what,
            times: times.to_vec(),
            min,
            max,
        });
    }
    Ok(())
}

/// Cumulative/dynamic AUC of one risk score per patient: at time `t`, cases are the events at or
/// before `t` (each weighted `1/Ĝ(tᵢ)`), controls everyone with a time after `t`; the AUC is the
/// weighted share of case–control pairs ordered by risk, tied risks (`≤ tied_tol` apart, chained)
/// counting ½.
pub fn cumulative_dynamic_auc(
    train: Outcomes,
    test: Outcomes,
    risk: &[f64],
    times: &[f64],
    tied_tol: f64,
) -> Result<DynamicAuc, SurvivalError> {
    per_patient("risk", &test, risk)?;
    let by_time: Vec<Vec<f64>> = risk.iter().map(|&r| vec![r; times.len()]).collect();
    cumulative_dynamic_auc_by_time(train, test, &by_time, times, tied_tol)
}

/// [`cumulative_dynamic_auc`] with a risk per patient and time: `risk[i][j]` at `times[j]`.
pub fn cumulative_dynamic_auc_by_time(
    train: Outcomes,
    test: Outcomes,
    risk: &[Vec<f64>],
    times: &[f64],
    tied_tol: f64,
) -> Result<DynamicAuc, SurvivalError> {
    const WHAT: &str = "cumulative/dynamic AUC";
    check_times(WHAT, &test, times)?;
    check_rows("risk", &test, risk, times.len())?;
    let censoring = CensoringDistribution::fit(train)?;
    let ipcw: Vec<f64> = (0..test.len())
        .map(|i| {
            if test.event[i] {
                censoring.ipcw(test.time[i])
            } else {
                Ok(0.0)
            }
        })
        .collect::<Result<_, _>>()?;
    let n = test.len();
    let mut auc = Vec::with_capacity(times.len());
    for (j, &t) in times.iter().enumerate() {
        let score = |i: usize| risk[i][j];
        // Highest risk first: lowering the threshold admits patients in this order.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        let n_controls = test.time.iter().filter(|&&u| u > t).count();
        let total_cases: f64 = (0..n)
            .filter(|&i| test.time[i] <= t && test.event[i])
            .map(|i| ipcw[i])
            .sum();
        if n_controls == 0 || total_cases == 0.0 {
            return Err(SurvivalError::NoCasesOrControls(WHAT));
        }
        // ROC points after each patient, keeping only the last of a run of tied risks.
        let (mut tp, mut fp) = (vec![0.0], vec![0.0]);
        let (mut cum_tp, mut cum_fp) = (0.0, 0usize);
        for (k, &i) in order.iter().enumerate() {
            if test.time[i] <= t && test.event[i] {
                cum_tp += ipcw[i];
            }
            if test.time[i] > t {
                cum_fp += 1;
            }
            let next_tied = order
                .get(k + 1)
                .is_some_and(|&next| (score(next) - score(i)).abs() <= tied_tol);
            if !next_tied {
                tp.push(cum_tp / total_cases);
                fp.push(cum_fp as f64 / n_controls as f64);
            }
        }
        let area: f64 = (1..tp.len())
            .map(|k| (fp[k] - fp[k - 1]) * (tp[k] + tp[k - 1]) / 2.0)
            .sum();
        auc.push(area);
    }
    let mean = if times.len() == 1 {
        auc[0]
    } else {
        // Weighted by the drop of the test Kaplan–Meier curve between the times.
        let km = KaplanMeier::fit(test);
        let s: Vec<f64> = times.iter().map(|&t| km.at(t).unwrap_or(0.0)).collect();
        let mut previous = 1.0;
        let mut integral = 0.0;
        for (a, &st) in auc.iter().zip(&s) {
            integral += a * -(st - previous);
            previous = st;
        }
        integral / (1.0 - s[s.len() - 1])
    };
    Ok(DynamicAuc {
        times: times.to_vec(),
        auc,
        mean,
    })
}

/// Rows of per-time values: one per patient, one value per time, each finite.
fn check_rows(
    what: &'static str,
    test: &Outcomes,
    rows: &[Vec<f64>],
    n_times: usize,
) -> Result<(), SurvivalError> {
    if rows.len() != test.len() {
        return Err(SurvivalError::LengthMismatch {
            what,
            expected: test.len(),
            got: rows.len(),
        });
    }
    for row in rows {
        if row.len() != n_times {
            return Err(SurvivalError::LengthMismatch {
                what,
                expected: n_times,
                got: row.len(),
            });
        }
        finite(what, row)?;
    }
    Ok(())
}

/// The Brier score at each time of predicted survival probabilities `survival[i][j]` =
/// `P(Tᵢ > times[j])`: events by `t` weigh `1/Ĝ(tᵢ)` with target 0, patients alive after `t`
/// weigh `1/Ĝ(t)` with target 1, patients censored before `t` weigh nothing; mean over patients.
pub fn brier_score(
    train: Outcomes,
    test: Outcomes,
    survival: &[Vec<f64>],
    times: &[f64],
) -> Result<Vec<f64>, SurvivalError> {
    check_times("Brier score", &test, times)?;
    check_rows("survival probability", &test, survival, times.len())?;
    let censoring = CensoringDistribution::fit(train)?;
    // A zero censoring probability makes the weight 0 (scikit-survival divides by infinity).
    let inverse = |g: f64| if g == 0.0 { 0.0 } else { 1.0 / g };
    let at_time: Vec<f64> = times
        .iter()
        .map(|&t| censoring.at(t).map(inverse))
        .collect::<Result<_, _>>()?;
    let at_own: Vec<f64> = test
        .time
        .iter()
        .map(|&t| censoring.at(t).map(inverse))
        .collect::<Result<_, _>>()?;
    let n = test.len();
    Ok(times
        .iter()
        .enumerate()
        .map(|(j, &t)| {
            let total: f64 = (0..n)
                .map(|i| {
                    let p = survival[i][j];
                    let case = (test.time[i] <= t && test.event[i]) as u8 as f64;
                    let control = (test.time[i] > t) as u8 as f64;
                    p * p * case * at_own[i] + (1.0 - p) * (1.0 - p) * control * at_time[j]
                })
                .sum();
            total / n as f64
        })
        .collect())
}

/// The integrated Brier score: the trapezoidal integral of [`brier_score`] over `times`, divided
/// by their span (at least two times).
pub fn integrated_brier_score(
    train: Outcomes,
    test: Outcomes,
    survival: &[Vec<f64>],
    times: &[f64],
) -> Result<f64, SurvivalError> {
    let scores = brier_score(train, test, survival, times)?;
    if times.len() < 2 {
        return Err(SurvivalError::BadTimes {
            what: "integrated Brier score (needs two times)",
            times: times.to_vec(),
            min: f64::NAN,
            max: f64::NAN,
        });
    }
    let area: f64 = (1..times.len())
        .map(|k| (times[k] - times[k - 1]) * (scores[k] + scores[k - 1]) / 2.0)
        .sum();
    Ok(area / (times[times.len() - 1] - times[0]))
}
