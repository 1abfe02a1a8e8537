//! What a run learns (`docs/DESIGN.md` §34): the cohort's classes (cross-entropy, accuracy) or
//! its survival outcomes (MCAT's discrete-time NLL or Cox's partial likelihood, Harrell's
//! c-index). The one training loop and every stage ask an [`Objective`] for the model's output
//! width, the loss of a unit of patients, the class an auxiliary loss or a triplet sees, the
//! predictions validation compares, and what the checkpoint records; nothing else in the
//! trainer depends on the task.

use crate::config::CensoredInTriplets;
use crate::data::{DataErr, Prepared, Result};
use crate::trainer::{probabilities, scalar, Predictions, StageResult, Trained};
use candle_core::Tensor;
use gimp_cohort::survival::{Outcome, TimeBins};
use gimp_metrics::survival::{self as metrics, Outcomes};
use gimp_models::SurvivalHead;
use gimp_nn::survival::{cox_partial_likelihood, nll_survival, SurvivalLoss, REFERENCE_ALPHA};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which question a run answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// The cohort's classes (the label column).
    #[default]
    Classification,
    /// Time to event from the cohort file's `[survival]` section.
    Survival,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Classification => "classification",
            TaskKind::Survival => "survival",
        }
    }
}

impl std::str::FromStr for TaskKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "classification" => Ok(TaskKind::Classification),
            "survival" => Ok(TaskKind::Survival),
            other => Err(format!(
                "unknown task '{other}', expected classification or survival"
            )),
        }
    }
}

/// The `[task]` of a run file (and `--task`, `--loss`, `--alpha`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskConfig {
    #[serde(default)]
    pub kind: TaskKind,
    /// Survival only: `nll` (MCAT's discrete-time likelihood, the default) or `cox`.
    #[serde(default)]
    pub loss: SurvivalLoss,
    /// Survival NLL only: the weight of the uncensored-only term (MCAT's `alpha_surv`; 0 as
    /// both references' scripts default it).
    #[serde(default = "reference_alpha")]
    pub alpha: f64,
}

fn reference_alpha() -> f64 {
    REFERENCE_ALPHA
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            kind: TaskKind::Classification,
            loss: SurvivalLoss::Nll,
            alpha: REFERENCE_ALPHA,
        }
    }
}

impl TaskConfig {
    /// A survival task with `loss` and the references' alpha.
    pub fn survival(loss: SurvivalLoss) -> Self {
        Self {
            kind: TaskKind::Survival,
            loss,
            ..Self::default()
        }
    }

    pub fn is_cox(&self) -> bool {
        self.kind == TaskKind::Survival && self.loss == SurvivalLoss::Cox
    }

    /// What a table or report says the task is: `classification`, `survival (nll, alpha 0)`.
    pub fn describe(&self) -> String {
        match (self.kind, self.loss) {
            (TaskKind::Classification, _) => "classification".into(),
            (TaskKind::Survival, SurvivalLoss::Nll) => {
                format!("survival (discrete-time NLL, alpha {})", self.alpha)
            }
            (TaskKind::Survival, SurvivalLoss::Cox) => {
                "survival (Cox partial likelihood, Breslow ties)".into()
            }
        }
    }

    /// Checks the patients per optimiser step a run gives the loss: Cox's partial likelihood
    /// compares the patients of one step (§34), so it needs two at least; `field` names the
    /// setting in errors.
    pub fn check_unit(&self, unit: usize, field: &str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(DataErr::Msg(format!(
                "task.alpha: {} is not in [0, 1]",
                self.alpha
            )));
        }
        if self.is_cox() && unit < 2 {
            return Err(DataErr::Msg(format!(
                "{field}: {unit} patient(s) per optimiser step, but the Cox loss compares the \
                 patients of a step and needs at least 2 (MCAT's survival scripts use {COX_UNIT})"
            )));
        }
        Ok(())
    }
}

/// Patients per optimiser step a Cox run takes when the model's own default is one patient:
/// MCAT's and PORPOISE's gradient accumulation over 32 patients.
pub const COX_UNIT: usize = 32;

/// A survival run: the head, the loss settings and every patient's outcome and time bin (bins
/// fitted on the training part of the split).
#[derive(Debug, Clone)]
pub struct Survival {
    pub head: SurvivalHead,
    pub alpha: f64,
    outcomes: Vec<Outcome>,
    bins: Vec<usize>,
    train: Vec<usize>,
}

impl Survival {
    pub fn outcome(&self, i: usize) -> Outcome {
        self.outcomes[i]
    }

    /// Patient `i`'s time bin.
    pub fn bin(&self, i: usize) -> usize {
        self.bins[i]
    }

    /// The loss of logits `[B, K]` of `patients`; `None` for a Cox unit without an event (its
    /// partial likelihood is empty).
    fn loss(&self, logits: &Tensor, patients: &[usize]) -> Result<Option<Tensor>> {
        let outcome: Vec<Outcome> = patients.iter().map(|&i| self.outcomes[i]).collect();
        Ok(match self.head.loss {
            SurvivalLoss::Nll => {
                let bins: Vec<usize> = patients.iter().map(|&i| self.bins[i]).collect();
                let censored: Vec<bool> = outcome.iter().map(|o| !o.event).collect();
                Some(nll_survival(logits, &bins, &censored, self.alpha)?)
            }
            SurvivalLoss::Cox => {
                if !outcome.iter().any(|o| o.event) {
                    return Ok(None);
                }
                let time: Vec<f64> = outcome.iter().map(|o| o.time).collect();
                let event: Vec<bool> = outcome.iter().map(|o| o.event).collect();
                Some(cox_partial_likelihood(logits, &time, &event)?)
            }
        })
    }

    /// The training part's outcomes (the censoring distribution of the IPCW metrics).
    pub fn train_outcomes(&self) -> (Vec<f64>, Vec<bool>) {
        (
            self.train.iter().map(|&i| self.outcomes[i].time).collect(),
            self.train.iter().map(|&i| self.outcomes[i].event).collect(),
        )
    }
}

/// What a run learns; see the module documentation.
#[derive(Debug, Clone)]
pub struct Objective {
    pub task: TaskConfig,
    survival: Option<Survival>,
}

impl Objective {
    /// The objective of `task` on a prepared split: for survival, the cohort must have a
    /// `[survival]` section and the training part enough distinct event times for its bins.
    pub fn new(task: &TaskConfig, data: &Prepared) -> Result<Self> {
        let survival = match task.kind {
            TaskKind::Classification => None,
            TaskKind::Survival => {
                let s = data.survival.as_ref().ok_or_else(|| {
                    DataErr::Msg(
                        "task survival: the cohort file has no [survival] section (time and \
                         event columns of the label table; docs/COHORTS.md)"
                            .into(),
                    )
                })?;
                let bins = TimeBins::fit(&s.outcomes, &data.train, s.n_bins)
                    .map_err(|e| DataErr::Msg(format!("[survival] bins: {e}")))?;
                Some(Survival {
                    bins: s.outcomes.iter().map(|o| bins.bin(o.time)).collect(),
                    head: SurvivalHead {
                        loss: task.loss,
                        edges: bins.edges,
                        unit: s.unit.name().to_string(),
                    },
                    alpha: task.alpha,
                    outcomes: s.outcomes.clone(),
                    train: data.train.clone(),
                })
            }
        };
        Ok(Self {
            task: *task,
            survival,
        })
    }

    pub fn survival(&self) -> Option<&Survival> {
        self.survival.as_ref()
    }

    /// The model's output width: the number of classes, of time bins (NLL) or 1 (Cox).
    pub fn width(&self, data: &Prepared) -> usize {
        match &self.survival {
            None => data.classes.len(),
            Some(s) => s.head.width(),
        }
    }

    /// The class a model's auxiliary loss sees for patient `i` (CLAM's instance clustering,
    /// DSMIL's max-instance BCE): its label; in a survival run its time bin under the NLL head
    /// (one output per bin), 0 under the Cox head (one output).
    pub fn class_of(&self, data: &Prepared, i: usize) -> usize {
        match &self.survival {
            None => data.patients[i].label,
            Some(s) => match s.head.loss {
                SurvivalLoss::Nll => s.bins[i],
                SurvivalLoss::Cox => 0,
            },
        }
    }

    /// The group of patient `i` for GiMP's gene-induced triplets (`docs/DESIGN.md` §34): its
    /// class; in a survival run the time bin of a patient with an event, and of a censored
    /// patient as `censored` says — by default only where the bin is certain (censored in the
    /// last bin, whose event can only be later) — else `None` (left out of the triplet batches).
    pub fn triplet_group(
        &self,
        data: &Prepared,
        i: usize,
        censored: CensoredInTriplets,
    ) -> Option<usize> {
        match &self.survival {
            None => Some(data.patients[i].label),
            Some(s) => {
                let last = s.head.n_bins().saturating_sub(1);
                let joins = s.outcomes[i].event
                    || match censored {
                        CensoredInTriplets::CertainBin => s.bins[i] == last,
                        CensoredInTriplets::LeaveOut => false,
                        CensoredInTriplets::ObservedBin => true,
                    };
                joins.then_some(s.bins[i])
            }
        }
    }

    /// How many triplet groups there are.
    pub fn triplet_groups(&self, data: &Prepared) -> usize {
        match &self.survival {
            None => data.classes.len(),
            Some(s) => s.head.n_bins(),
        }
    }

    /// The loss of logits `[B, K]` of `patients` (one unit of work): the cross-entropy that
    /// `classification` computes from the logits and the labels, or the survival loss. `None`
    /// where the unit gives nothing to learn from (a Cox unit without an event).
    pub fn unit_loss(
        &self,
        data: &Prepared,
        logits: &Tensor,
        patients: &[usize],
        classification: &dyn Fn(&Tensor, &[usize]) -> candle_core::Result<Tensor>,
    ) -> Result<Option<Tensor>> {
        match &self.survival {
            None => {
                let labels: Vec<usize> = patients.iter().map(|&i| data.patients[i].label).collect();
                Ok(Some(classification(logits, &labels)?))
            }
            Some(s) => s.loss(logits, patients),
        }
    }

    /// Predictions of `patients` from their logits (`[K]` each): labels and class probabilities,
    /// or time bins, survival curves (NLL; empty under Cox), risks and outcomes; the mean loss
    /// of the whole set (NaN where it has none).
    pub fn predictions(
        &self,
        data: &Prepared,
        patients: Vec<usize>,
        logits: Vec<Tensor>,
        classification: &dyn Fn(&Tensor, &[usize]) -> candle_core::Result<Tensor>,
    ) -> Result<Predictions> {
        if patients.is_empty() {
            return Ok(Predictions {
                loss: f64::NAN,
                ..Default::default()
            });
        }
        let rows = Tensor::stack(&logits, 0)?;
        let loss = match &self.survival {
            // The mean of each patient's loss, in float64, as validation always averaged it.
            None => {
                let mut sum = 0.0;
                for (l, &i) in logits.iter().zip(&patients) {
                    sum += scalar(&classification(
                        &l.unsqueeze(0)?,
                        &[data.patients[i].label],
                    )?)?;
                }
                sum / patients.len() as f64
            }
            Some(s) => match s.loss(&rows, &patients)? {
                Some(l) => scalar(&l)?,
                None => f64::NAN,
            },
        };
        let mut p = Predictions {
            labels: patients.iter().map(|&i| self.class_of(data, i)).collect(),
            loss,
            ..Default::default()
        };
        match &self.survival {
            None => {
                p.labels = patients.iter().map(|&i| data.patients[i].label).collect();
                p.probs = logits.iter().map(probabilities).collect::<Result<_>>()?;
            }
            Some(s) => {
                p.risk = s.head.risk(&rows)?;
                p.probs = logits
                    .iter()
                    .map(|l| Ok(s.head.survival_curve(l)?.unwrap_or_default()))
                    .collect::<Result<_>>()?;
                p.time = patients.iter().map(|&i| s.outcomes[i].time).collect();
                p.event = patients.iter().map(|&i| s.outcomes[i].event).collect();
            }
        }
        p.patients = patients;
        Ok(p)
    }

    /// A checkpoint's class names: the cohort's classes, or the survival head's outputs.
    pub fn output_names(&self, data: &Prepared) -> Vec<String> {
        match &self.survival {
            None => data.classes.clone(),
            Some(s) => s.head.output_names(),
        }
    }

    /// What the checkpoint records of the task (nothing for classification).
    pub fn info(&self) -> BTreeMap<String, String> {
        match &self.survival {
            None => BTreeMap::new(),
            Some(s) => s.head.info(),
        }
    }

    /// A stage's result from its validation and test predictions at the kept epoch.
    pub fn stage_result(
        &self,
        data: &Prepared,
        checkpoint: PathBuf,
        trained: Trained,
        val: &Predictions,
        test: Predictions,
        seed: u64,
    ) -> StageResult {
        let nc = data.classes.len();
        match &self.survival {
            None => StageResult {
                checkpoint,
                best_epoch: trained.best_epoch,
                val: val.report(nc, seed),
                test: test.report(nc, seed),
                val_survival: None,
                test_survival: None,
                test_predictions: Some(test),
            },
            Some(s) => StageResult {
                checkpoint,
                best_epoch: trained.best_epoch,
                val: None,
                test: None,
                val_survival: (!val.risk.is_empty()).then(|| s.score(val, seed)),
                test_survival: Some(s.score(&test, seed)),
                test_predictions: Some(test),
            },
        }
    }
}

impl Survival {
    /// The survival metrics of predictions ([`score`]) with this run's training outcomes and
    /// head.
    pub fn score(&self, p: &Predictions, seed: u64) -> SurvivalScores {
        let (time, event) = self.train_outcomes();
        score(
            Outcomes {
                time: &time,
                event: &event,
            },
            p,
            &self.head,
            seed,
        )
    }
}

/// Bootstrap resamples of the c-index interval.
pub const RESAMPLES: usize = 1000;

/// Survival metrics of one scored set of patients; a metric the data cannot give is `None`
/// (NaN for Harrell's c-index) with the reason in `notes`.
#[derive(Debug, Clone, Serialize)]
pub struct SurvivalScores {
    pub patients: usize,
    pub events: usize,
    /// Harrell's c-index with its 95% bootstrap interval over patients.
    pub cindex: gimp_metrics::Estimate,
    /// Uno's IPCW c-index (censoring distribution of the training part).
    pub uno: Option<f64>,
    /// Cumulative/dynamic AUC at the quartiles of the test event times, and their mean.
    pub auc_times: Vec<f64>,
    pub auc: Vec<f64>,
    pub mean_auc: Option<f64>,
    /// Integrated Brier score of the NLL head's survival curves over the test follow-up.
    pub integrated_brier: Option<f64>,
    /// Log-rank p between the patients below and above the median risk.
    pub logrank_p: Option<f64>,
    pub notes: Vec<String>,
}

/// Harrell's and Uno's c-index, time-dependent AUC, the integrated Brier score (NLL head) and
/// the log-rank test of the risk halves of survival predictions `p`; `train` gives the
/// censoring distribution.
pub fn score(train: Outcomes, p: &Predictions, head: &SurvivalHead, seed: u64) -> SurvivalScores {
    let test = Outcomes {
        time: &p.time,
        event: &p.event,
    };
    let mut notes = Vec::new();
    let nan = gimp_metrics::Estimate {
        value: f64::NAN,
        low: f64::NAN,
        high: f64::NAN,
    };
    let cindex =
        metrics::concordance_bootstrap(test, &p.risk, RESAMPLES, seed).unwrap_or_else(|e| {
            notes.push(e.to_string());
            nan
        });
    let mut note = |r: std::result::Result<f64, String>| match r {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(e);
            None
        }
    };
    // The bootstrap interval is above; the report's own is not drawn (0 resamples).
    let (uno, auc, logrank_p) =
        match metrics::report(Some(train), test, &p.risk, None, None, 0, seed) {
            Ok(r) => (
                note(r.uno.clone()),
                note(r.dynamic_auc.clone().map(|a| a.mean)).and(r.dynamic_auc.ok()),
                Some(r.logrank_halves.p),
            ),
            Err(e) => (note(Err(e.to_string())), None, None),
        };
    let integrated_brier = match head.loss {
        SurvivalLoss::Cox => note(Err(
            "integrated Brier score: the Cox head gives a risk, not a survival curve".into(),
        )),
        SurvivalLoss::Nll => note(integrated_brier(train, test, p, head)),
    };
    SurvivalScores {
        patients: p.risk.len(),
        events: p.event.iter().filter(|&&e| e).count(),
        cindex,
        uno,
        auc_times: auc.as_ref().map(|a| a.times.clone()).unwrap_or_default(),
        mean_auc: auc.as_ref().map(|a| a.mean),
        auc: auc.map(|a| a.auc).unwrap_or_default(),
        integrated_brier,
        logrank_p,
        notes,
    }
}

/// The integrated Brier score of the NLL head's step survival curves at ten times evenly spaced
/// between the 10th and 80th percentiles of the test times (inside the follow-up, as
/// scikit-survival requires).
fn integrated_brier(
    train: Outcomes,
    test: Outcomes,
    p: &Predictions,
    head: &SurvivalHead,
) -> std::result::Result<f64, String> {
    if p.probs.iter().any(|c| c.len() != head.n_bins()) {
        return Err("integrated Brier score: no survival curve per patient".into());
    }
    let mut t: Vec<f64> = test.time.to_vec();
    t.sort_by(f64::total_cmp);
    if t.len() < 2 {
        return Err("integrated Brier score: fewer than two test patients".into());
    }
    let q = |f: f64| t[((t.len() - 1) as f64 * f).round() as usize];
    let (lo, hi) = (q(0.1), q(0.8));
    if hi <= lo {
        return Err("integrated Brier score: the test times span no interval".into());
    }
    let times: Vec<f64> = (0..10).map(|k| lo + (hi - lo) * k as f64 / 9.0).collect();
    let survival: Vec<Vec<f64>> = p
        .probs
        .iter()
        .map(|curve| times.iter().map(|&x| head.survival_at(curve, x)).collect())
        .collect();
    metrics::integrated_brier_score(train, test, &survival, &times)
        .map_err(|e| format!("integrated Brier score: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Five patients, two censored, in three bins.
    fn survival(loss: SurvivalLoss) -> Survival {
        let o = |time: f64, event: bool| Outcome { time, event };
        Survival {
            head: SurvivalHead {
                loss,
                edges: vec![0.0, 2.0, 4.0, 9.0],
                unit: "months".into(),
            },
            alpha: 0.3,
            outcomes: vec![
                o(1.0, true),
                o(3.0, false),
                o(3.5, true),
                o(5.0, true),
                o(8.0, false),
            ],
            bins: vec![0, 1, 1, 2, 2],
            train: (0..5).collect(),
        }
    }

    /// The gradient of the head path — a linear model's logits into the survival loss — against
    /// central finite differences in float64, for both losses.
    #[test]
    fn survival_losses_backpropagate_as_finite_differences_say() {
        let dev = Device::Cpu;
        let x = Tensor::new(
            &[
                [0.3f64, -1.2],
                [1.1, 0.4],
                [-0.7, 0.9],
                [0.2, 0.2],
                [-1.5, -0.3],
            ],
            &dev,
        )
        .unwrap();
        let patients: Vec<usize> = (0..5).collect();
        for (loss, k) in [(SurvivalLoss::Nll, 3), (SurvivalLoss::Cox, 1)] {
            let s = survival(loss);
            let w0: Vec<f64> = (0..2 * k).map(|i| 0.4 - 0.15 * i as f64).collect();
            let value = |w: &[f64]| -> f64 {
                let w = Tensor::from_vec(w.to_vec(), (2, k), &dev).unwrap();
                let l = s.loss(&x.matmul(&w).unwrap(), &patients).unwrap().unwrap();
                l.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
            };
            let w = Var::from_tensor(&Tensor::from_vec(w0.clone(), (2, k), &dev).unwrap()).unwrap();
            let l = s
                .loss(&x.matmul(w.as_tensor()).unwrap(), &patients)
                .unwrap()
                .unwrap();
            let grads = l.backward().unwrap();
            let g: Vec<f64> = grads
                .get(w.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let h = 1e-6;
            for j in 0..w0.len() {
                let (mut up, mut down) = (w0.clone(), w0.clone());
                up[j] += h;
                down[j] -= h;
                let fd = (value(&up) - value(&down)) / (2.0 * h);
                assert!(
                    (fd - g[j]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "{loss:?} weight {j}: autograd {} vs finite differences {fd}",
                    g[j]
                );
            }
            assert!(
                g.iter().any(|v| v.abs() > 1e-4),
                "{loss:?}: a gradient to check"
            );
        }
    }

    /// The risk of the head orders patients: a higher hazard everywhere is a higher risk.
    #[test]
    fn higher_hazards_are_higher_risks() {
        let s = survival(SurvivalLoss::Nll);
        let logits = Tensor::new(&[[-2.0f32, -2.0, -2.0], [1.0, 1.0, 1.0]], &Device::Cpu).unwrap();
        let r = s.head.risk(&logits).unwrap();
        assert!(r[1] > r[0]);
    }
}
