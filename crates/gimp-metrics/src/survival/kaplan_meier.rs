//! The Kaplan–Meier estimator of the survival function, and the same estimator turned round to
//! estimate the censoring distribution for inverse-probability weights (scikit-survival's
//! `kaplan_meier_estimator`, `SurvivalFunctionEstimator`, `CensoringDistributionEstimator`).

use super::{Outcomes, SurvivalError};
use serde::Serialize;

/// The Kaplan–Meier estimate: at each distinct time (censorings included), the patients still
/// at risk just before it, the events and censorings at it, and `S(t) = P(T > t)` just after it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KaplanMeier {
    pub time: Vec<f64>,
    pub at_risk: Vec<usize>,
    pub events: Vec<usize>,
    pub censored: Vec<usize>,
    pub survival: Vec<f64>,
}

impl KaplanMeier {
    /// The estimate from observed outcomes (`S` steps down by `1 − events/at_risk` at each time).
    pub fn fit(outcomes: Outcomes) -> Self {
        let counts = Counts::new(outcomes);
        let mut s = 1.0;
        let survival = counts
            .events
            .iter()
            .zip(&counts.at_risk)
            .map(|(&d, &n)| {
                if d != 0 {
                    s *= 1.0 - d as f64 / n as f64;
                }
                s
            })
            .collect();
        Self {
            time: counts.time,
            at_risk: counts.at_risk,
            events: counts.events,
            censored: counts.censored,
            survival,
        }
    }

    /// `S(t)`: 1 before the first time, the step's value from each time on. After the last time
    /// it is unknown unless the curve reached 0, so it is `None` there.
    pub fn at(&self, t: f64) -> Option<f64> {
        step_value(&self.time, &self.survival, t)
    }

    /// Patients still at risk at `t` (time ≥ `t`), as the numbers below a Kaplan–Meier plot.
    pub fn at_risk_at(&self, t: f64) -> usize {
        self.time
            .iter()
            .zip(self.at_risk.iter())
            .find(|(&u, _)| u >= t)
            .map_or(0, |(_, &n)| n)
    }
}

/// The step function with value 1 before `time[0]` and `value[i]` on `[time[i], time[i+1])`;
/// `None` after the last time unless the last value is 0. Times equal within machine epsilon
/// count as equal (scikit-survival's `predict_proba`).
fn step_value(time: &[f64], value: &[f64], t: f64) -> Option<f64> {
    let last = *time.last()?;
    if t > last {
        return (value.last() == Some(&0.0)).then_some(0.0);
    }
    // The last time at or before t.
    let idx = time.partition_point(|&u| u < t);
    let exact = idx < time.len() && (time[idx] - t).abs() < f64::EPSILON;
    if exact {
        Some(value[idx])
    } else if idx == 0 {
        Some(1.0)
    } else {
        Some(value[idx - 1])
    }
}

/// Distinct times in increasing order with the patients at risk just before each, the events
/// and the censorings at each.
struct Counts {
    time: Vec<f64>,
    at_risk: Vec<usize>,
    events: Vec<usize>,
    censored: Vec<usize>,
}

impl Counts {
    fn new(outcomes: Outcomes) -> Self {
        let n = outcomes.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| outcomes.time[a].total_cmp(&outcomes.time[b]));
        let mut c = Counts {
            time: Vec::new(),
            at_risk: Vec::new(),
            events: Vec::new(),
            censored: Vec::new(),
        };
        let mut i = 0;
        while i < n {
            let t = outcomes.time[order[i]];
            let (mut d, mut total) = (0, 0);
            while i < n && outcomes.time[order[i]] == t {
                d += outcomes.event[order[i]] as usize;
                total += 1;
                i += 1;
            }
            c.time.push(t);
            c.at_risk.push(n - (i - total));
            c.events.push(d);
            c.censored.push(total - d);
        }
        c
    }
}

/// The Kaplan–Meier estimate of the censoring distribution `Ĝ(t) = P(C > t)`: censorings are the
/// "events", and at a time with both, the events leave the risk set first. With no censoring at
/// all, `Ĝ = 1` at every time of the data.
#[derive(Debug, Clone, PartialEq)]
pub struct CensoringDistribution {
    time: Vec<f64>,
    prob: Vec<f64>,
}

impl CensoringDistribution {
    /// Fits `Ĝ` on (training) outcomes; at least one must be an event.
    pub fn fit(outcomes: Outcomes) -> Result<Self, SurvivalError> {
        if !outcomes.event.iter().any(|&e| e) {
            return Err(SurvivalError::AllCensored("censoring distribution"));
        }
        let counts = Counts::new(outcomes);
        if !outcomes.event.iter().all(|&e| e) {
            let mut g = 1.0;
            let prob = counts
                .censored
                .iter()
                .zip(counts.at_risk.iter().zip(&counts.events))
                .map(|(&c, (&n, &d))| {
                    if c != 0 {
                        g *= 1.0 - c as f64 / (n - d) as f64;
                    }
                    g
                })
                .collect();
            return Ok(Self {
                time: counts.time,
                prob,
            });
        }
        let prob = vec![1.0; counts.time.len()];
        Ok(Self {
            time: counts.time,
            prob,
        })
    }

    /// `Ĝ(t)`; an error after the last training time where `Ĝ` is still positive (unknown there).
    pub fn at(&self, t: f64) -> Result<f64, SurvivalError> {
        step_value(&self.time, &self.prob, t).ok_or(SurvivalError::BeyondFollowUp {
            time: t,
            last: self.time.last().copied().unwrap_or(f64::NAN),
        })
    }

    /// The inverse-probability-of-censoring weight `1 / Ĝ(t)` of an event at `t`.
    pub fn ipcw(&self, t: f64) -> Result<f64, SurvivalError> {
        let g = self.at(t)?;
        if g == 0.0 {
            return Err(SurvivalError::CensoringZero(t));
        }
        Ok(1.0 / g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: times 1e 2e 2c 3c 4e. At risk 5, 4, 2, 1; S = 4/5, 4/5·3/4 = 3/5, 3/5, 0.
    /// Censoring: at 2 one censoring of 4 − 1 (the event leaves first) = 2/3; at 3 one of 2 → 1/3.
    #[test]
    fn kaplan_meier_by_hand() {
        let time = [2.0, 1.0, 4.0, 3.0, 2.0];
        let event = [true, true, true, false, false];
        let o = Outcomes::new(&time, &event).unwrap();
        let km = KaplanMeier::fit(o);
        assert_eq!(km.time, vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(km.at_risk, vec![5, 4, 2, 1]);
        assert_eq!(km.survival, vec![0.8, 0.8 * 0.75, 0.8 * 0.75, 0.0]);
        assert_eq!(km.at(0.5), Some(1.0));
        assert_eq!(km.at(2.5), Some(0.6000000000000001));
        assert_eq!(km.at(9.0), Some(0.0));
        assert_eq!(km.at_risk_at(2.5), 2);
        assert_eq!(km.at_risk_at(5.0), 0);
        let g = CensoringDistribution::fit(o).unwrap();
        assert!((g.at(2.0).unwrap() - 2.0 / 3.0).abs() < 1e-15);
        assert!((g.at(3.5).unwrap() - 1.0 / 3.0).abs() < 1e-15);
        assert!(matches!(
            g.at(4.5),
            Err(SurvivalError::BeyondFollowUp { .. })
        ));
        assert!((g.ipcw(1.0).unwrap() - 1.0).abs() < 1e-15);
    }
}
