//! Survival outcomes of a cohort (`docs/DESIGN.md` §34): which columns of the label table hold
//! each patient's time and event, the discrete time bins of MCAT and PORPOISE, and what
//! `cohort check` reports about events and follow-up.
//!
//! ```toml
//! [survival]                        # every key optional: MCAT/PORPOISE's layout by default
//! time_column = "survival_months"
//! censorship_column = "censorship"  # 1 = censored (MCAT/PORPOISE) ...
//! # event_column = "event"          # ... or 1 = event (death); exactly one of the two
//! unit = "months"                   # days | months | years
//! bins = 4                          # discrete-time bins (MCAT's n_bins)
//! ```

use gimp_io::dataset::DatasetTable;
use gimp_io::{DataError, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The `[survival]` section of a cohort file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SurvivalConfig {
    #[serde(default = "default_time_column")]
    pub time_column: String,
    /// Column where 1 means the patient was censored (alive at last follow-up), 0 an event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub censorship_column: Option<String>,
    /// Column where 1 means the event (death) was observed, 0 censoring.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_column: Option<String>,
    #[serde(default)]
    pub unit: TimeUnit,
    /// Number of discrete time bins (quantiles of the uncensored training times).
    #[serde(default = "default_bins")]
    pub bins: usize,
}

impl Default for SurvivalConfig {
    fn default() -> Self {
        Self {
            time_column: default_time_column(),
            censorship_column: None,
            event_column: None,
            unit: TimeUnit::default(),
            bins: default_bins(),
        }
    }
}

fn default_time_column() -> String {
    "survival_months".into()
}

fn default_bins() -> usize {
    4
}

/// The unit of the time column, carried into reports and plots.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    Days,
    #[default]
    Months,
    Years,
}

impl TimeUnit {
    pub fn name(self) -> &'static str {
        match self {
            TimeUnit::Days => "days",
            TimeUnit::Months => "months",
            TimeUnit::Years => "years",
        }
    }
}

/// Which way the indicator column reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Indicator {
    Censorship(String),
    Event(String),
}

impl SurvivalConfig {
    /// The indicator column: exactly one of `censorship_column` / `event_column`, MCAT's
    /// `censorship` when neither is given.
    fn indicator(&self, cohort_file: &Path) -> Result<Indicator> {
        match (&self.censorship_column, &self.event_column) {
            (Some(_), Some(_)) => Err(DataError::new(
                ErrorKind::Value,
                cohort_file,
                "[survival] names both censorship_column and event_column; give one",
            )
            .at("survival")),
            (Some(c), None) => Ok(Indicator::Censorship(c.clone())),
            (None, Some(e)) => Ok(Indicator::Event(e.clone())),
            (None, None) => Ok(Indicator::Censorship("censorship".into())),
        }
    }
}

/// One patient's observed outcome.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Outcome {
    pub time: f64,
    /// `true`: the event happened at `time`; `false`: censored then.
    pub event: bool,
}

/// Reads every patient's outcome from the label table's columns, in the order of `case_ids`.
/// Errors name the file, the line and the column: a missing column, an empty, unparsable,
/// negative or non-finite time, an indicator other than 0/1, or two slides of a patient that
/// disagree.
pub fn read_outcomes(
    csv: &Path,
    cohort_file: &Path,
    table: &DatasetTable,
    config: &SurvivalConfig,
    case_ids: &[String],
) -> Result<Vec<Outcome>> {
    let indicator = config.indicator(cohort_file)?;
    let (indicator_column, censorship) = match &indicator {
        Indicator::Censorship(c) => (c.as_str(), true),
        Indicator::Event(e) => (e.as_str(), false),
    };
    for column in [config.time_column.as_str(), indicator_column] {
        if !table.extra_columns.iter().any(|c| c == column) {
            return Err(DataError::new(
                ErrorKind::Missing,
                csv,
                format!(
                    "no '{column}' column for [survival] (columns besides case, slide and label: {})",
                    table.extra_columns.join(",")
                ),
            )
            .at("line 1"));
        }
    }
    if config.bins == 0 {
        return Err(DataError::new(
            ErrorKind::Value,
            cohort_file,
            "[survival] bins must be at least 1",
        )
        .at("survival.bins"));
    }
    let mut found: HashMap<&str, (Outcome, u64)> = HashMap::new();
    for row in &table.rows {
        let at = format!("line {}", row.line);
        let value = |column: &str| row.extra.get(column).map(String::as_str).unwrap_or("");
        let raw_time = value(&config.time_column);
        let time: f64 = raw_time.parse().map_err(|_| {
            DataError::new(
                ErrorKind::Value,
                csv,
                format!(
                    "column '{}': '{raw_time}' is not a time (a number of {} ≥ 0)",
                    config.time_column,
                    config.unit.name()
                ),
            )
            .at(at.clone())
        })?;
        if !time.is_finite() || time < 0.0 {
            return Err(DataError::new(
                ErrorKind::Value,
                csv,
                format!(
                    "column '{}': time {raw_time} is not a number of {} ≥ 0",
                    config.time_column,
                    config.unit.name()
                ),
            )
            .at(at));
        }
        let raw_flag = value(indicator_column);
        let flag = match raw_flag.parse::<f64>() {
            Ok(0.0) => false,
            Ok(1.0) => true,
            _ => {
                let meaning = if censorship {
                    "1 = censored, 0 = event"
                } else {
                    "1 = event, 0 = censored"
                };
                return Err(DataError::new(
                    ErrorKind::Value,
                    csv,
                    format!("column '{indicator_column}': '{raw_flag}' is not 0 or 1 ({meaning})"),
                )
                .at(at));
            }
        };
        let outcome = Outcome {
            time,
            event: flag != censorship,
        };
        match found.get(row.case_id.as_str()) {
            Some((earlier, line)) if *earlier != outcome => {
                return Err(DataError::new(
                    ErrorKind::Mismatch,
                    csv,
                    format!(
                        "case '{}' has time {} and event {} here but time {} and event {} on line {line}",
                        row.case_id, outcome.time, outcome.event, earlier.time, earlier.event
                    ),
                )
                .at(at));
            }
            Some(_) => {}
            None => {
                found.insert(row.case_id.as_str(), (outcome, row.line));
            }
        }
    }
    case_ids
        .iter()
        .map(|c| {
            found.get(c.as_str()).map(|(o, _)| *o).ok_or_else(|| {
                DataError::new(
                    ErrorKind::Missing,
                    csv,
                    format!("case '{c}' has no row with survival columns"),
                )
            })
        })
        .collect()
}

/// MCAT's discrete time bins: inner edges at the quantiles of the uncensored training patients'
/// times (pandas `qcut`, linear interpolation), the outer edges moved to the smallest and
/// largest time of the whole cohort ∓ `1e-6`, so every patient falls in a bin; bins are
/// `[edge_k, edge_{k+1})` (pandas `cut` with `right=False`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeBins {
    pub edges: Vec<f64>,
}

/// MCAT's margin around the cohort's smallest and largest time.
pub const BIN_EDGE_EPS: f64 = 1e-6;

impl TimeBins {
    /// Bins from the outcomes of every patient and the indices of the training patients. Errors
    /// (as a message) when the training part has too few distinct uncensored times for `n_bins`
    /// distinct edges (pandas `qcut` refuses duplicate edges too).
    pub fn fit(
        outcomes: &[Outcome],
        train: &[usize],
        n_bins: usize,
    ) -> std::result::Result<Self, String> {
        let mut times: Vec<f64> = train
            .iter()
            .filter_map(|&i| outcomes.get(i))
            .filter(|o| o.event)
            .map(|o| o.time)
            .collect();
        if times.is_empty() || n_bins == 0 {
            return Err(format!(
                "no time bins: {} uncensored training patients for {n_bins} bins",
                times.len()
            ));
        }
        times.sort_by(f64::total_cmp);
        let quantile = |q: f64| {
            let pos = q * (times.len() - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = (lo + 1).min(times.len() - 1);
            times[lo] + (times[hi] - times[lo]) * (pos - lo as f64)
        };
        let mut edges: Vec<f64> = (0..=n_bins)
            .map(|k| quantile(k as f64 / n_bins as f64))
            .collect();
        if edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "the {n_bins}-quantiles of the {} uncensored training times are not distinct \
                 ({edges:?}); use fewer bins",
                times.len()
            ));
        }
        let all = outcomes.iter().map(|o| o.time);
        let min = all.clone().fold(f64::INFINITY, f64::min);
        let max = all.fold(f64::NEG_INFINITY, f64::max);
        edges[0] = min - BIN_EDGE_EPS;
        edges[n_bins] = max + BIN_EDGE_EPS;
        if edges.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!("time bins {edges:?} are not increasing"));
        }
        Ok(Self { edges })
    }

    pub fn len(&self) -> usize {
        self.edges.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bin of a time: `k` with `edge_k ≤ t < edge_{k+1}`; a time outside the cohort's
    /// range (a new patient) goes to the first or last bin.
    pub fn bin(&self, t: f64) -> usize {
        let k = self.edges.partition_point(|&e| e <= t);
        k.clamp(1, self.len().max(1)) - 1
    }
}

/// The strata `split` balances on a survival cohort, MCAT's class labels: `2 × bin + event`,
/// with the time bins fitted on every patient (before any split exists, as MCAT fits them).
pub fn strata(outcomes: &[Outcome], n_bins: usize) -> std::result::Result<Vec<usize>, String> {
    let everyone: Vec<usize> = (0..outcomes.len()).collect();
    let bins = TimeBins::fit(outcomes, &everyone, n_bins)?;
    Ok(outcomes
        .iter()
        .map(|o| 2 * bins.bin(o.time) + o.event as usize)
        .collect())
}

/// The strata `split` deals from on a cohort with both classes and survival outcomes: each
/// class's patients by MCAT's survival strata ([`strata`]), so every part keeps the class
/// balance and the events and follow-up; with a single class these are [`strata`] itself.
pub fn class_and_survival_strata(
    labels: &[usize],
    outcomes: &[Outcome],
    n_bins: usize,
) -> std::result::Result<Vec<usize>, String> {
    let survival = strata(outcomes, n_bins)?;
    let per_class = 2 * n_bins;
    Ok(labels
        .iter()
        .zip(&survival)
        .map(|(&l, &s)| l * per_class + s)
        .collect())
}

/// Events, censoring and follow-up of a group of patients, as `cohort check` prints them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutcomeSummary {
    pub patients: usize,
    pub events: usize,
    pub censored: usize,
    /// Median observed time (event or censoring).
    pub median_time: f64,
    pub max_time: f64,
    /// Median follow-up by the reverse Kaplan–Meier method (censoring as the event); `None`
    /// when it does not reach ½.
    pub median_follow_up: Option<f64>,
}

impl OutcomeSummary {
    pub fn of(outcomes: &[Outcome]) -> Self {
        let events = outcomes.iter().filter(|o| o.event).count();
        let mut times: Vec<f64> = outcomes.iter().map(|o| o.time).collect();
        times.sort_by(f64::total_cmp);
        let n = times.len();
        let median_time = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => times[n / 2],
            _ => (times[n / 2 - 1] + times[n / 2]) / 2.0,
        };
        Self {
            patients: n,
            events,
            censored: n - events,
            median_time,
            max_time: times.last().copied().unwrap_or(f64::NAN),
            median_follow_up: reverse_km_median(outcomes),
        }
    }

    pub fn render(&self, unit: TimeUnit) -> String {
        let follow_up = self
            .median_follow_up
            .map_or("not reached".to_string(), |m| format!("{m:.1}"));
        format!(
            "{} patients, {} events, {} censored ({:.0}%); median time {:.1}, max {:.1}, median follow-up {} {}",
            self.patients,
            self.events,
            self.censored,
            100.0 * self.censored as f64 / self.patients.max(1) as f64,
            self.median_time,
            self.max_time,
            follow_up,
            unit.name()
        )
    }
}

/// The first time where the Kaplan–Meier curve of the censoring times drops to ½ or below.
fn reverse_km_median(outcomes: &[Outcome]) -> Option<f64> {
    let mut sorted: Vec<Outcome> = outcomes.to_vec();
    sorted.sort_by(|a, b| a.time.total_cmp(&b.time));
    let n = sorted.len();
    let mut s = 1.0;
    let mut i = 0;
    while i < n {
        let t = sorted[i].time;
        let at_risk = n - i;
        let mut censored = 0;
        while i < n && sorted[i].time == t {
            censored += !sorted[i].event as usize;
            i += 1;
        }
        s *= 1.0 - censored as f64 / at_risk as f64;
        if s <= 0.5 {
            return Some(t);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(time: f64, event: bool) -> Outcome {
        Outcome { time, event }
    }

    #[test]
    fn bins_by_hand() {
        // Uncensored training times 1..=5: quartiles 1, 2, 3, 4, 5; cohort range 0.5–9.
        let outcomes = vec![
            o(1.0, true),
            o(2.0, true),
            o(3.0, true),
            o(4.0, true),
            o(5.0, true),
            o(9.0, false),
            o(0.5, true),
        ];
        let bins = TimeBins::fit(&outcomes, &[0, 1, 2, 3, 4, 5], 4).unwrap();
        assert_eq!(bins.edges, vec![0.5 - 1e-6, 2.0, 3.0, 4.0, 9.0 + 1e-6]);
        assert_eq!(bins.bin(0.5), 0);
        assert_eq!(bins.bin(2.0), 1);
        assert_eq!(bins.bin(3.9), 2);
        assert_eq!(bins.bin(9.0), 3);
        assert_eq!(bins.bin(100.0), 3);
        assert_eq!(bins.bin(-1.0), 0);
        // Two distinct uncensored times cannot make four bins.
        let few = vec![o(1.0, true), o(1.0, true), o(2.0, true)];
        assert!(TimeBins::fit(&few, &[0, 1, 2], 4).is_err());
    }

    #[test]
    fn summary_by_hand() {
        let s = OutcomeSummary::of(&[o(1.0, true), o(2.0, false), o(3.0, false), o(4.0, true)]);
        assert_eq!((s.patients, s.events, s.censored), (4, 2, 2));
        assert_eq!((s.median_time, s.max_time), (2.5, 4.0));
        // Censoring KM: 1 at t=1 (an event), 2/3 at 2, 1/3 at 3.
        assert_eq!(s.median_follow_up, Some(3.0));
    }
}
