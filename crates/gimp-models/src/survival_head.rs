//! The survival head every registered model gets (`docs/DESIGN.md` §34). No model file changes
//! for survival: a model is built with its `n_classes` set to [`SurvivalHead::width`], and this
//! file is the one place that reads a survival answer from its logits — the risk that ranks
//! patients and, for the discrete-time loss, the survival curve over the time bins — and that
//! writes and reads what a survival checkpoint records (task, loss, bin edges, time unit).

use candle_core::{DType, Result, Tensor};
use gimp_nn::survival::{discrete_risk, discrete_survival, SurvivalLoss};
use std::collections::BTreeMap;

/// The checkpoint info keys of a survival model.
pub const TASK_KEY: &str = "task";
pub const LOSS_KEY: &str = "survival_loss";
pub const BINS_KEY: &str = "time_bins";
pub const UNIT_KEY: &str = "time_unit";
/// The value of [`TASK_KEY`] for a survival model (a checkpoint without it is a classifier).
pub const SURVIVAL_TASK: &str = "survival";

/// How a model's outputs answer a survival question.
#[derive(Debug, Clone, PartialEq)]
pub struct SurvivalHead {
    pub loss: SurvivalLoss,
    /// Edges of the discrete time bins fitted on the training patients (`K + 1` for `K` bins),
    /// recorded for the NLL head's curve and kept for the Cox head too (what the run was split
    /// into, the triplet bins of GiMP's pre-training).
    pub edges: Vec<f64>,
    /// The unit of the times (days, months, years).
    pub unit: String,
}

impl SurvivalHead {
    pub fn n_bins(&self) -> usize {
        self.edges.len().saturating_sub(1)
    }

    /// The model's output width: one hazard logit per time bin (NLL) or one log-risk (Cox).
    pub fn width(&self) -> usize {
        match self.loss {
            SurvivalLoss::Nll => self.n_bins(),
            SurvivalLoss::Cox => 1,
        }
    }

    /// Risk scores (higher: earlier event) of logits `[K]` or `[B, K]`, one per row: MCAT's
    /// `−Σ_k S_k` for the NLL head, the log-risk itself for Cox.
    pub fn risk(&self, logits: &Tensor) -> Result<Vec<f64>> {
        let rows = as_rows(logits)?;
        let r = match self.loss {
            SurvivalLoss::Nll => discrete_risk(&rows)?,
            SurvivalLoss::Cox => rows.flatten_all()?,
        };
        r.to_dtype(DType::F64)?.to_vec1()
    }

    /// The survival curve `S_k` (no event by the end of bin `k`) of logits `[K]`; `None` for the
    /// Cox head, whose one output has no time scale.
    pub fn survival_curve(&self, logits: &Tensor) -> Result<Option<Vec<f64>>> {
        match self.loss {
            SurvivalLoss::Nll => Ok(Some(
                discrete_survival(&as_rows(logits)?)?
                    .flatten_all()?
                    .to_dtype(DType::F64)?
                    .to_vec1()?,
            )),
            SurvivalLoss::Cox => Ok(None),
        }
    }

    /// `P(T > t)` from a survival curve: the curve is a step function that drops at the end of
    /// each bin (`1` in the first bin, `S_{k−1}` in bin `k`, `S_{K−1}` beyond the last edge).
    pub fn survival_at(&self, curve: &[f64], t: f64) -> f64 {
        let k = self.edges.partition_point(|&e| e <= t);
        match k {
            0 | 1 => 1.0,
            k => curve.get(k - 2).or(curve.last()).copied().unwrap_or(1.0),
        }
    }

    /// Names of the outputs, stored as a checkpoint's class names: `[a, b) unit` per bin, or
    /// `log-risk`.
    pub fn output_names(&self) -> Vec<String> {
        match self.loss {
            SurvivalLoss::Nll => self
                .edges
                .windows(2)
                .map(|w| format!("[{:.4}, {:.4}) {}", w[0], w[1], self.unit))
                .collect(),
            SurvivalLoss::Cox => vec!["log-risk".to_string()],
        }
    }

    /// What a checkpoint records of the head.
    pub fn info(&self) -> BTreeMap<String, String> {
        [
            (TASK_KEY, SURVIVAL_TASK.to_string()),
            (LOSS_KEY, self.loss.name().to_string()),
            (
                BINS_KEY,
                serde_json::to_string(&self.edges).unwrap_or_default(),
            ),
            (UNIT_KEY, self.unit.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The head a checkpoint's info records; `None` for a classifier (no `task` or another).
    /// Errors name the key and what was expected.
    pub fn from_info(info: &BTreeMap<String, String>) -> Result<Option<Self>> {
        if info.get(TASK_KEY).map(String::as_str) != Some(SURVIVAL_TASK) {
            return Ok(None);
        }
        let get = |k: &str| {
            info.get(k).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "a survival checkpoint's info has no '{k}' (re-train it with this version)"
                ))
            })
        };
        let loss: SurvivalLoss = get(LOSS_KEY)?
            .parse()
            .map_err(|e| candle_core::Error::Msg(format!("checkpoint info '{LOSS_KEY}': {e}")))?;
        let edges: Vec<f64> = serde_json::from_str(get(BINS_KEY)?)
            .ok()
            .filter(|e: &Vec<f64>| e.len() >= 2 && e.windows(2).all(|w| w[0] < w[1]))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "checkpoint info '{BINS_KEY}' is not a JSON list of increasing time-bin edges"
                ))
            })?;
        Ok(Some(Self {
            loss,
            edges,
            unit: get(UNIT_KEY)?.clone(),
        }))
    }
}

/// Logits `[K]` as one row `[1, K]`; `[B, K]` as they are.
fn as_rows(logits: &Tensor) -> Result<Tensor> {
    match logits.rank() {
        1 => logits.unsqueeze(0),
        _ => Ok(logits.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn head(loss: SurvivalLoss) -> SurvivalHead {
        SurvivalHead {
            loss,
            edges: vec![0.0, 1.0, 2.0, 5.0],
            unit: "months".into(),
        }
    }

    #[test]
    fn risk_and_curve_by_hand() {
        let h = head(SurvivalLoss::Nll);
        assert_eq!(h.width(), 3);
        let logits = Tensor::new(&[0.0f32, 0.0, 0.0], &Device::Cpu).unwrap();
        let s = h.survival_curve(&logits).unwrap().unwrap();
        for (a, b) in s.iter().zip([0.5, 0.25, 0.125]) {
            assert!((a - b).abs() < 1e-6);
        }
        assert!((h.risk(&logits).unwrap()[0] + 0.875).abs() < 1e-6);
        assert_eq!(h.survival_at(&s, 0.5), 1.0);
        assert_eq!(h.survival_at(&s, 1.5), s[0]);
        assert_eq!(h.survival_at(&s, 9.0), s[2]);
        let cox = head(SurvivalLoss::Cox);
        assert_eq!(cox.width(), 1);
        let l = Tensor::new(&[[0.3f32], [-1.0]], &Device::Cpu).unwrap();
        let r = cox.risk(&l).unwrap();
        assert!((r[0] - 0.3).abs() < 1e-6 && (r[1] + 1.0).abs() < 1e-6);
        assert!(cox.survival_curve(&l.get(0).unwrap()).unwrap().is_none());
    }

    #[test]
    fn checkpoint_info_round_trip() {
        let h = head(SurvivalLoss::Cox);
        assert_eq!(SurvivalHead::from_info(&h.info()).unwrap(), Some(h.clone()));
        assert_eq!(SurvivalHead::from_info(&BTreeMap::new()).unwrap(), None);
        let mut bad = h.info();
        bad.insert(BINS_KEY.into(), "[2, 1]".into());
        assert!(SurvivalHead::from_info(&bad)
            .unwrap_err()
            .to_string()
            .contains(BINS_KEY));
    }
}
