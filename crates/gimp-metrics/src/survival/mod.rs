//! Survival metrics, defined as scikit-survival and lifelines define them (`docs/DESIGN.md` §34):
//! Harrell's and Uno's concordance, the Kaplan–Meier estimator and the censoring distribution it
//! gives, time-dependent AUC and Brier scores, the log-rank test, and bootstrap intervals.
//!
//! Times are in whatever unit the cohort file names; an event is `true` when the patient died
//! (or had the event) at `time`, `false` when they were censored then.

mod concordance;
mod kaplan_meier;
mod logrank;
mod report;
mod time_dependent;

pub use concordance::{concordance_index_censored, concordance_index_ipcw, Concordance};
pub use kaplan_meier::{CensoringDistribution, KaplanMeier};
pub use logrank::{chi_square_sf, logrank, LogRank};
pub use report::{report, SurvivalReport};
pub use time_dependent::{
    brier_score, cumulative_dynamic_auc, cumulative_dynamic_auc_by_time, integrated_brier_score,
    DynamicAuc,
};

use crate::Estimate;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Risk scores closer than this count as tied (scikit-survival's default `tied_tol`).
pub const TIED_TOL: f64 = 1e-8;

/// Why a survival metric has no value on the data it was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SurvivalError {
    #[error("{what}: {got} values where {expected} were expected (one per patient)")]
    LengthMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0}: need at least two patients")]
    TooFew(&'static str),
    #[error("{0}: every patient is censored")]
    AllCensored(&'static str),
    #[error("{0}: no comparable pair of patients (no event before another patient's time)")]
    NoComparablePairs(&'static str),
    #[error("{what}: value {value} of patient {index} is not a finite number")]
    NotFinite {
        what: &'static str,
        index: usize,
        value: f64,
    },
    #[error(
        "time {time} is beyond the last time of the data the censoring distribution was \
         estimated from ({last}), where it is still positive; truncate (tau) or choose earlier times"
    )]
    BeyondFollowUp { time: f64, last: f64 },
    #[error("the censoring distribution is zero at time {0}: no inverse-probability weight")]
    CensoringZero(f64),
    #[error(
        "{what}: evaluation times must increase strictly and lie in [{min}, {max}) (the test \
         follow-up); got {times:?}"
    )]
    BadTimes {
        what: &'static str,
        times: Vec<f64>,
        min: f64,
        max: f64,
    },
    #[error("{0}: no case (event by the evaluation time) or no control (alive after it)")]
    NoCasesOrControls(&'static str),
}

/// Observed outcomes of a set of patients: `time[i]` with `event[i]` (`true`: the event happened
/// at that time, `false`: censored then).
#[derive(Debug, Clone, Copy)]
pub struct Outcomes<'a> {
    pub time: &'a [f64],
    pub event: &'a [bool],
}

impl<'a> Outcomes<'a> {
    /// Outcomes with as many times as events, every time finite.
    pub fn new(time: &'a [f64], event: &'a [bool]) -> Result<Self, SurvivalError> {
        if time.len() != event.len() {
            return Err(SurvivalError::LengthMismatch {
                what: "events",
                expected: time.len(),
                got: event.len(),
            });
        }
        finite("time", time)?;
        Ok(Self { time, event })
    }

    pub fn len(&self) -> usize {
        self.time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }
}

/// The first non-finite value as an error.
fn finite(what: &'static str, values: &[f64]) -> Result<(), SurvivalError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(SurvivalError::NotFinite {
            what,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

/// Checks that `values` has one entry per patient of `outcomes`.
fn per_patient(
    what: &'static str,
    outcomes: &Outcomes,
    values: &[f64],
) -> Result<(), SurvivalError> {
    if values.len() != outcomes.len() {
        return Err(SurvivalError::LengthMismatch {
            what,
            expected: outcomes.len(),
            got: values.len(),
        });
    }
    finite(what, values)
}

/// Percentile bootstrap 95% interval of a statistic of patients: `statistic` gets the indices of
/// a resample (patients drawn with replacement) and returns `None` where it has no value (a
/// resample without events, say), in which case another is drawn, at most `20 × resamples` in
/// all. The same rule as [`crate::roc_auc_bootstrap`]; deterministic for a seed. `value` is the
/// statistic on all patients; the interval is NaN when no resample had a value.
pub fn bootstrap(
    n: usize,
    value: f64,
    resamples: usize,
    seed: u64,
    statistic: impl Fn(&[usize]) -> Option<f64>,
) -> Estimate {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats = Vec::with_capacity(resamples);
    let mut attempts = 0;
    while n > 0 && stats.len() < resamples && attempts < resamples * 20 {
        attempts += 1;
        let idx: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
        if let Some(s) = statistic(&idx).filter(|s| s.is_finite()) {
            stats.push(s);
        }
    }
    if stats.is_empty() {
        return Estimate {
            value,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((stats.len() - 1) as f64 * p).round() as usize];
    Estimate {
        value,
        low: q(0.025),
        high: q(0.975),
    }
}

/// Harrell's c-index of `risk` with a bootstrap 95% interval over patients.
pub fn concordance_bootstrap(
    outcomes: Outcomes,
    risk: &[f64],
    resamples: usize,
    seed: u64,
) -> Result<Estimate, SurvivalError> {
    let value = concordance_index_censored(outcomes, risk, TIED_TOL)?.cindex;
    Ok(bootstrap(outcomes.len(), value, resamples, seed, |idx| {
        let time: Vec<f64> = idx.iter().map(|&i| outcomes.time[i]).collect();
        let event: Vec<bool> = idx.iter().map(|&i| outcomes.event[i]).collect();
        let r: Vec<f64> = idx.iter().map(|&i| risk[i]).collect();
        concordance_index_censored(
            Outcomes {
                time: &time,
                event: &event,
            },
            &r,
            TIED_TOL,
        )
        .ok()
        .map(|c| c.cindex)
    }))
}
