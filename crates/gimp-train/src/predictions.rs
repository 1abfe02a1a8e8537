//! A model's answers on some patients, in the terms of the run's task ([`crate::task::Task`]
//! fills them): class probabilities, or time bins, survival curves, risks and outcomes.

use gimp_metrics::{argmax, Report};
use serde::{Deserialize, Serialize};

/// Labels, class probabilities and mean loss of a model on some patients; in a survival run
/// (`docs/DESIGN.md` §34) the labels are time bins, `probs` the survival curves (empty under
/// Cox), with each patient's risk and outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Predictions {
    /// Which patients (indices into the prepared cohort), in the order of `labels` and `probs`.
    pub patients: Vec<usize>,
    pub labels: Vec<usize>,
    pub probs: Vec<Vec<f64>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub risk: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub time: Vec<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub event: Vec<bool>,
    #[serde(skip)]
    pub loss: f64,
}

impl Predictions {
    /// No patient: the mean loss is NaN.
    pub fn none() -> Self {
        Self {
            loss: f64::NAN,
            ..Default::default()
        }
    }

    /// The classification metrics of these predictions, or `None` when there are none.
    pub fn report(&self, n_classes: usize, seed: u64) -> Option<Report> {
        (!self.labels.is_empty()).then(|| Report::new(&self.labels, &self.probs, n_classes, seed))
    }

    /// Appends `other`'s predictions; the loss becomes the mean over all of them.
    pub fn extend(&mut self, other: Predictions) {
        let (n, m) = (self.labels.len() as f64, other.labels.len() as f64);
        if n + m > 0.0 {
            self.loss = (self.loss * n + other.loss * m) / (n + m);
        }
        self.patients.extend(other.patients);
        self.labels.extend(other.labels);
        self.probs.extend(other.probs);
        self.risk.extend(other.risk);
        self.time.extend(other.time);
        self.event.extend(other.event);
    }

    /// The share of patients whose most probable class is their label (NaN without patients).
    pub fn accuracy(&self) -> f64 {
        if self.labels.is_empty() {
            f64::NAN
        } else {
            gimp_metrics::accuracy(&self.labels, &argmax(&self.probs))
        }
    }
}
