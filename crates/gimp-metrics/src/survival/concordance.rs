//! Harrell's concordance index and Uno's inverse-probability-of-censoring-weighted one, counted
//! exactly as scikit-survival counts them (`concordance_index_censored`,
//! `concordance_index_ipcw`).

use super::{per_patient, CensoringDistribution, Outcomes, SurvivalError};
use serde::Serialize;

/// A concordance index with the pair counts behind it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Concordance {
    pub cindex: f64,
    /// Comparable pairs where the patient with the event first has the higher risk.
    pub concordant: usize,
    /// Comparable pairs ordered the other way.
    pub discordant: usize,
    /// Comparable pairs whose risks are within the tie tolerance (each counts ½).
    pub tied_risk: usize,
    /// Comparable pairs with equal times: an event and a censoring at the same time.
    pub tied_time: usize,
}

/// Harrell's c-index: over comparable pairs — the earlier time is an event; at equal times, an
/// event against a censoring (a censored patient was still at risk then); never two events at
/// the same time — the share where the earlier patient has the higher `risk`, tied risks
/// (`|a − b| ≤ tied_tol`) counting ½.
pub fn concordance_index_censored(
    outcomes: Outcomes,
    risk: &[f64],
    tied_tol: f64,
) -> Result<Concordance, SurvivalError> {
    const WHAT: &str = "Harrell's c-index";
    per_patient("risk", &outcomes, risk)?;
    if outcomes.len() < 2 {
        return Err(SurvivalError::TooFew(WHAT));
    }
    if !outcomes.event.iter().any(|&e| e) {
        return Err(SurvivalError::AllCensored(WHAT));
    }
    let weights = vec![1.0; outcomes.len()];
    weighted_concordance(WHAT, outcomes, risk, &weights, tied_tol)
}

/// Uno's c-index: Harrell's with each comparable pair weighted by `1 / Ĝ(tᵢ)²`, where `Ĝ` is the
/// Kaplan–Meier estimate of the censoring distribution on `train` and `tᵢ` the earlier
/// (event) time; with `tau`, only events before `tau` count (their pairs keep every later
/// patient). Test times must lie within the training follow-up unless `tau` truncates them.
pub fn concordance_index_ipcw(
    train: Outcomes,
    test: Outcomes,
    risk: &[f64],
    tau: Option<f64>,
    tied_tol: f64,
) -> Result<Concordance, SurvivalError> {
    const WHAT: &str = "Uno's c-index";
    per_patient("risk", &test, risk)?;
    let kept: Vec<bool> = test
        .time
        .iter()
        .map(|&t| tau.is_none_or(|tau| t < tau))
        .collect();
    if !test.event.iter().zip(&kept).any(|(&e, &k)| e && k) {
        return Err(SurvivalError::AllCensored(WHAT));
    }
    let censoring = CensoringDistribution::fit(train)?;
    let mut weights = vec![0.0; test.len()];
    for i in 0..test.len() {
        if kept[i] && test.event[i] {
            weights[i] = censoring.ipcw(test.time[i])?.powi(2);
        }
    }
    weighted_concordance(WHAT, test, risk, &weights, tied_tol)
}

/// The weighted count both indices share; `weights[i]` multiplies every pair whose earlier
/// patient is `i`.
fn weighted_concordance(
    what: &'static str,
    outcomes: Outcomes,
    risk: &[f64],
    weights: &[f64],
    tied_tol: f64,
) -> Result<Concordance, SurvivalError> {
    let n = outcomes.len();
    let (time, event) = (outcomes.time, outcomes.event);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| time[a].total_cmp(&time[b]));
    let (mut numerator, mut denominator) = (0.0f64, 0.0f64);
    let (mut concordant, mut discordant, mut tied_risk, mut tied_time) = (0, 0, 0, 0);
    let mut any_event = false;
    let mut start = 0;
    // The last patient alone at the largest time has no later patient to compare with.
    while start + 1 < n {
        let t = time[order[start]];
        let mut end = start + 1;
        while end < n && time[order[end]] == t {
            end += 1;
        }
        let group = &order[start..end];
        let censored_here: Vec<usize> = group.iter().copied().filter(|&k| !event[k]).collect();
        for &i in group.iter().filter(|&&k| event[k]) {
            any_event = true;
            tied_time += censored_here.len();
            let (mut n_con, mut n_ties, mut n_pairs) = (0usize, 0usize, 0usize);
            for &k in order[end..].iter().chain(&censored_here) {
                n_pairs += 1;
                if (risk[k] - risk[i]).abs() <= tied_tol {
                    n_ties += 1;
                } else if risk[k] < risk[i] {
                    n_con += 1;
                }
            }
            let w = weights[i];
            numerator += w * n_con as f64 + 0.5 * w * n_ties as f64;
            denominator += w * n_pairs as f64;
            tied_risk += n_ties;
            concordant += n_con;
            discordant += n_pairs - n_con - n_ties;
        }
        start = end;
    }
    // scikit-survival raises when no event was reached and answers NaN (0/0) when the events
    // reached have no later patient or zero weight; both are no value here.
    if !any_event || denominator == 0.0 {
        return Err(SurvivalError::NoComparablePairs(what));
    }
    Ok(Concordance {
        cindex: numerator / denominator,
        concordant,
        discordant,
        tied_risk,
        tied_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: times 1(event) 2(event) 2(censored) 3(censored) 4(event) with risks
    /// 5, 3, 4, 3, 1. Comparable pairs: (1,·) four pairs, all concordant; (2e, 2c) tied time,
    /// risk 3 < 4 discordant; (2e, 3c) risk tie ½; (2e, 4e) concordant. 5.5 / 7.
    #[test]
    fn harrell_by_hand() {
        let time = [1.0, 2.0, 2.0, 3.0, 4.0];
        let event = [true, true, false, false, true];
        let risk = [5.0, 3.0, 4.0, 3.0, 1.0];
        let c =
            concordance_index_censored(Outcomes::new(&time, &event).unwrap(), &risk, 1e-8).unwrap();
        assert_eq!(
            (c.concordant, c.discordant, c.tied_risk, c.tied_time),
            (5, 1, 1, 1)
        );
        assert!((c.cindex - 5.5 / 7.0).abs() < 1e-15);
    }

    #[test]
    fn harrell_refuses_what_has_no_value() {
        let o = Outcomes::new(&[1.0, 2.0], &[false, false]).unwrap();
        assert_eq!(
            concordance_index_censored(o, &[0.0, 1.0], 1e-8),
            Err(SurvivalError::AllCensored("Harrell's c-index"))
        );
        // Two events at the same time are not comparable.
        let o = Outcomes::new(&[2.0, 2.0], &[true, true]).unwrap();
        assert!(matches!(
            concordance_index_censored(o, &[0.0, 1.0], 1e-8),
            Err(SurvivalError::NoComparablePairs(_))
        ));
        let o = Outcomes::new(&[1.0, 2.0], &[true, false]).unwrap();
        assert!(matches!(
            concordance_index_censored(o, &[0.0], 1e-8),
            Err(SurvivalError::LengthMismatch { .. })
        ));
        assert!(matches!(
            concordance_index_censored(o, &[0.0, f64::NAN], 1e-8),
            Err(SurvivalError::NotFinite { index: 1, .. })
        ));
    }
}
