//! Every survival metric of one scored set of patients, as `gimp-rs survival metrics` prints
//! them: Harrell's c-index with its pair counts and a bootstrap interval; with training outcomes
//! for the censoring distribution, Uno's c-index and the cumulative/dynamic AUC; the log-rank test
//! between the low- and high-risk halves.

use super::{
    concordance_bootstrap, concordance_index_censored, concordance_index_ipcw,
    cumulative_dynamic_auc, logrank, Concordance, DynamicAuc, LogRank, Outcomes, SurvivalError,
    TIED_TOL,
};
use crate::Estimate;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SurvivalReport {
    pub patients: usize,
    pub events: usize,
    pub harrell: Concordance,
    /// Harrell's c-index with a 95% bootstrap interval over patients.
    pub harrell_interval: Estimate,
    /// Uno's c-index (needs training outcomes); the reason when it has no value.
    pub uno: Result<f64, String>,
    pub tau: Option<f64>,
    /// Cumulative/dynamic AUC at the evaluation times (needs training outcomes).
    pub dynamic_auc: Result<DynamicAuc, String>,
    /// Log-rank test between the patients below and above the median risk rank.
    pub logrank_halves: LogRank,
}

/// The report of `risk` on `test`; `train` gives the censoring distribution (IPCW metrics are
/// reported as unavailable without it); `times` default to the 25th, 50th and 75th percentiles
/// of the test event times.
pub fn report(
    train: Option<Outcomes>,
    test: Outcomes,
    risk: &[f64],
    tau: Option<f64>,
    times: Option<&[f64]>,
    resamples: usize,
    seed: u64,
) -> Result<SurvivalReport, SurvivalError> {
    let harrell = concordance_index_censored(test, risk, TIED_TOL)?;
    let harrell_interval = concordance_bootstrap(test, risk, resamples, seed)?;
    let no_train = || "no training outcomes (--train) for the censoring distribution".to_string();
    let uno = match train {
        Some(train) => concordance_index_ipcw(train, test, risk, tau, TIED_TOL)
            .map(|c| c.cindex)
            .map_err(|e| e.to_string()),
        None => Err(no_train()),
    };
    let default_times = event_quartiles(test);
    let times = times.unwrap_or(&default_times);
    let dynamic_auc = match train {
        Some(train) => {
            cumulative_dynamic_auc(train, test, risk, times, TIED_TOL).map_err(|e| e.to_string())
        }
        None => Err(no_train()),
    };
    let mut order: Vec<usize> = (0..test.len()).collect();
    order.sort_by(|&a, &b| risk[a].total_cmp(&risk[b]));
    let mut halves = vec![0usize; test.len()];
    for (rank, &i) in order.iter().enumerate() {
        halves[i] = (rank * 2 / test.len().max(1)).min(1);
    }
    Ok(SurvivalReport {
        patients: test.len(),
        events: test.event.iter().filter(|&&e| e).count(),
        harrell,
        harrell_interval,
        uno,
        tau,
        dynamic_auc,
        logrank_halves: logrank(test, &halves)?,
    })
}

/// The 25th, 50th and 75th percentiles (linear interpolation) of the event times, distinct.
fn event_quartiles(outcomes: Outcomes) -> Vec<f64> {
    let mut t: Vec<f64> = (0..outcomes.len())
        .filter(|&i| outcomes.event[i])
        .map(|i| outcomes.time[i])
        .collect();
    if t.is_empty() {
        return Vec::new();
    }
    t.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let pos = p * (t.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(t.len() - 1);
        t[lo] + (t[hi] - t[lo]) * (pos - lo as f64)
    };
    let mut out = vec![q(0.25), q(0.5), q(0.75)];
    out.dedup();
    out
}
