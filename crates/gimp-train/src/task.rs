//! The task a run answers (`docs/DESIGN.md` §34): the cohort's classes (cross-entropy, accuracy)
//! or its survival outcomes (MCAT's discrete-time NLL or Cox's partial likelihood, Harrell's
//! c-index). [`Task`] is the one type that knows which: the model's output width, the loss of a
//! unit of patients, the class an auxiliary loss or a triplet sees, the predictions validation
//! compares, the figure validation selects on and its name in the log, the scores a run
//! reports, what a checkpoint records, and the floor every table starts from (the majority
//! class, or one risk for all). The training loop, the stages, experiments, the CLI and Python
//! ask it; none of them asks which task it is.

use crate::compat;
use crate::config::{CensoredInTriplets, TaskConfig, TaskKind};
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use crate::predictions::Predictions;
use candle_core::Tensor;
use gimp_cohort::survival::{Outcome, TimeBins};
use gimp_metrics::survival::{self as metrics, Outcomes};
use gimp_metrics::Report;
use gimp_models::{Model, SurvivalHead};
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::survival::{cox_partial_likelihood, nll_survival, SurvivalLoss};
use gimp_nn::{ops, ParamStore};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The classification loss of a model's logits: the cross-entropy (GiMP's stages, expression
/// models run in batches), or the model's own (DSMIL's is not the cross-entropy).
#[derive(Clone, Copy)]
pub enum ClassLoss<'a> {
    CrossEntropy,
    OfModel(&'a dyn Model),
}

impl ClassLoss<'_> {
    /// The mean loss of logits `[B, C]` with `labels`.
    fn mean(self, logits: &Tensor, labels: &[usize]) -> candle_core::Result<Tensor> {
        match self {
            ClassLoss::CrossEntropy => gimp_nn::loss::cross_entropy(logits, labels),
            ClassLoss::OfModel(model) => {
                let per: Vec<Tensor> = labels
                    .iter()
                    .enumerate()
                    .map(|(r, &y)| model.classification_loss(&logits.get(r)?, y))
                    .collect::<candle_core::Result<_>>()?;
                Tensor::stack(&per, 0)?.mean_all()
            }
        }
    }
}

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

/// What validation tells the training loop after an epoch: the mean loss, the figure the best
/// epoch is chosen on (accuracy, or Harrell's c-index) and its name in `log.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Validation {
    pub loss: f64,
    pub figure: f64,
    pub figure_name: &'static str,
    /// Validation patients scored (0: nothing to select or stop on).
    pub patients: usize,
}

/// A run's figures on one part of the split, in the terms of its task.
#[derive(Debug, Clone)]
pub enum Scores {
    Classification(Report),
    Survival(SurvivalScores),
}

impl Scores {
    /// The figure runs are compared on: accuracy, or Harrell's c-index.
    pub fn figure(&self) -> f64 {
        match self {
            Scores::Classification(r) => r.accuracy.value,
            Scores::Survival(s) => s.cindex.value,
        }
    }

    /// The name of [`Scores::figure`].
    pub fn metric(&self) -> &'static str {
        match self {
            Scores::Classification(_) => "accuracy",
            Scores::Survival(_) => "c-index",
        }
    }

    pub fn report(&self) -> Option<&Report> {
        match self {
            Scores::Classification(r) => Some(r),
            Scores::Survival(_) => None,
        }
    }

    pub fn survival(&self) -> Option<&SurvivalScores> {
        match self {
            Scores::Classification(_) => None,
            Scores::Survival(s) => Some(s),
        }
    }
}

/// A run's validation and test figures and its test predictions (which experiments pool over
/// folds). Written as `metrics.json` with the classification report under `val`/`test` and the
/// survival scores under `val_survival`/`test_survival` ([`FiguresFile`]).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "FiguresFile", into = "FiguresFile")]
pub struct Figures {
    pub val: Option<Scores>,
    pub test: Option<Scores>,
    pub test_predictions: Option<Predictions>,
}

impl Figures {
    /// The test part's classification report (none in a survival run).
    pub fn test_report(&self) -> Option<&Report> {
        self.test.as_ref().and_then(Scores::report)
    }

    /// The test part's survival scores (none in a classification run).
    pub fn test_survival(&self) -> Option<&SurvivalScores> {
        self.test.as_ref().and_then(Scores::survival)
    }
}

/// [`Figures`] as `metrics.json` holds them.
#[derive(Serialize, Deserialize)]
struct FiguresFile {
    #[serde(default)]
    val: Option<Report>,
    #[serde(default)]
    test: Option<Report>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    val_survival: Option<SurvivalScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test_survival: Option<SurvivalScores>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    test_predictions: Option<Predictions>,
}

impl From<Figures> for FiguresFile {
    fn from(f: Figures) -> Self {
        let report = |s: &Option<Scores>| s.as_ref().and_then(Scores::report).cloned();
        let survival = |s: &Option<Scores>| s.as_ref().and_then(Scores::survival).cloned();
        Self {
            val: report(&f.val),
            test: report(&f.test),
            val_survival: survival(&f.val),
            test_survival: survival(&f.test),
            test_predictions: f.test_predictions,
        }
    }
}

impl From<FiguresFile> for Figures {
    fn from(f: FiguresFile) -> Self {
        let pick = |r: Option<Report>, s: Option<SurvivalScores>| {
            r.map(Scores::Classification)
                .or_else(|| s.map(Scores::Survival))
        };
        Self {
            val: pick(f.val, f.val_survival),
            test: pick(f.test, f.test_survival),
            test_predictions: f.test_predictions,
        }
    }
}

/// Outcome of a stage: where its checkpoint is, the kept epoch, and its figures.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub checkpoint: PathBuf,
    pub best_epoch: usize,
    #[serde(flatten)]
    pub figures: Figures,
}

/// What a run learns; see the module documentation.
#[derive(Debug, Clone)]
pub struct Task {
    pub config: TaskConfig,
    survival: Option<Survival>,
}

impl Task {
    /// The task of `config` on a prepared split: for survival, the cohort must have a
    /// `[survival]` section and the training part enough distinct event times for its bins.
    pub fn new(config: &TaskConfig, data: &Prepared) -> Result<Self> {
        let survival = match config.kind {
            TaskKind::Classification => None,
            TaskKind::Survival => {
                let s = data.survival.as_ref().ok_or_else(|| {
                    TrainError::Msg(
                        "task survival: the cohort file has no [survival] section (time and \
                         event columns of the label table; docs/COHORTS.md)"
                            .into(),
                    )
                })?;
                let bins = TimeBins::fit(&s.outcomes, &data.train, s.n_bins)
                    .map_err(|e| TrainError::Msg(format!("[survival] bins: {e}")))?;
                Some(Survival {
                    bins: s.outcomes.iter().map(|o| bins.bin(o.time)).collect(),
                    head: SurvivalHead {
                        loss: config.loss,
                        edges: bins.edges,
                        unit: s.unit.name().to_string(),
                    },
                    alpha: config.alpha,
                    outcomes: s.outcomes.clone(),
                    train: data.train.clone(),
                })
            }
        };
        Ok(Self {
            config: *config,
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

    /// The stratum inner folds are dealt by (model selection, `docs/DESIGN.md` §41): the class,
    /// or in a survival run whether the patient had an event.
    pub fn stratum(&self, data: &Prepared, i: usize) -> usize {
        match &self.survival {
            None => data.patients[i].label,
            Some(s) => usize::from(s.outcomes[i].event),
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

    /// The task's linear model of the genes, fitted on the standardised expression of the
    /// `train` patients, as the weights of a gene model's linear start
    /// (`gimp_models::linear_start`, `docs/DESIGN.md` §43): the logistic regression of the
    /// `baseline logreg` row (L2, C = 0.1) for classes; for survival the ridge Cox model of
    /// `baseline cox`, its penalty chosen among the baseline's by 5 inner folds of these
    /// patients, its risk `β·x` added to every output (each time bin's hazard logit under the
    /// NLL head, the one risk under Cox), so that the model's risks order patients as the Cox
    /// model does before training.
    pub fn linear_start(
        &self,
        data: &Prepared,
        train: &[usize],
        seed: u64,
    ) -> Result<BTreeMap<String, Tensor>> {
        let rows: Vec<(usize, &Vec<f32>)> = train
            .iter()
            .filter_map(|&i| data.patients[i].expression.as_ref().map(|e| (i, e)))
            .collect();
        let genes = rows.first().map_or(0, |(_, e)| e.len());
        if genes == 0 {
            return Err(TrainError::Msg(
                "linear start: no training patient has expression".into(),
            ));
        }
        let (weights, bias): (Vec<f32>, Vec<f32>) = match &self.survival {
            None => {
                let x: Vec<Vec<f32>> = rows.iter().map(|(_, e)| e.to_vec()).collect();
                let y: Vec<usize> = rows.iter().map(|&(i, _)| data.patients[i].label).collect();
                let m = gimp_linear::LogisticRegression::fit(
                    &x,
                    &y,
                    data.classes.len(),
                    gimp_linear::LogisticConfig::default(),
                );
                (
                    m.weights.iter().flatten().map(|&v| v as f32).collect(),
                    m.bias.iter().map(|&v| v as f32).collect(),
                )
            }
            Some(s) => {
                let x: Vec<Vec<f64>> = rows
                    .iter()
                    .map(|(_, e)| e.iter().map(|&v| f64::from(v)).collect())
                    .collect();
                let time: Vec<f64> = rows.iter().map(|&(i, _)| s.outcomes[i].time).collect();
                let event: Vec<bool> = rows.iter().map(|&(i, _)| s.outcomes[i].event).collect();
                let (_, m) = gimp_linear::cox_baseline::fit_choosing_penalty(
                    &x,
                    &time,
                    &event,
                    &gimp_linear::cox_baseline::DEFAULT_PENALTIES,
                    5,
                    seed,
                )
                .map_err(|e| TrainError::Msg(format!("linear start: ridge Cox: {e}")))?;
                let k = s.head.width();
                let coef: Vec<f32> = m.coef.iter().map(|&v| v as f32).collect();
                (coef.repeat(k), vec![0.0; k])
            }
        };
        let k = bias.len();
        let prefix = gimp_models::linear_start::PREFIX;
        Ok(BTreeMap::from([
            (
                format!("{prefix}.weight"),
                Tensor::from_vec(weights, (k, genes), &candle_core::Device::Cpu)?,
            ),
            (
                format!("{prefix}.bias"),
                Tensor::from_vec(bias, k, &candle_core::Device::Cpu)?,
            ),
        ]))
    }

    /// The loss of logits `[B, K]` of `patients` (one unit of work): the classification loss
    /// `class_loss`, or the survival loss. `None` where the unit gives nothing to learn from (a
    /// Cox unit without an event).
    pub fn unit_loss(
        &self,
        data: &Prepared,
        logits: &Tensor,
        patients: &[usize],
        class_loss: ClassLoss,
    ) -> Result<Option<Tensor>> {
        match &self.survival {
            None => {
                let labels: Vec<usize> = patients.iter().map(|&i| data.patients[i].label).collect();
                Ok(Some(class_loss.mean(logits, &labels)?))
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
        class_loss: ClassLoss,
    ) -> Result<Predictions> {
        if patients.is_empty() {
            return Ok(Predictions::none());
        }
        let rows = Tensor::stack(&logits, 0)?;
        let loss = match &self.survival {
            // The mean of each patient's loss, in float64, as validation always averaged it.
            None => {
                let mut sum = 0.0;
                for (l, &i) in logits.iter().zip(&patients) {
                    sum += scalar(&class_loss.mean(&l.unsqueeze(0)?, &[data.patients[i].label])?)?;
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

    /// Predictions of a batch's logits `[B, K]` (a model that answers a whole part at once);
    /// the mean loss of a classification batch is its cross-entropy, the loss it trains on.
    pub fn batch_predictions(
        &self,
        data: &Prepared,
        patients: Vec<usize>,
        logits: &Tensor,
    ) -> Result<Predictions> {
        let rows = (0..patients.len())
            .map(|r| logits.get(r))
            .collect::<candle_core::Result<_>>()?;
        let mut p = self.predictions(data, patients, rows, ClassLoss::CrossEntropy)?;
        if self.survival.is_none() && !p.patients.is_empty() {
            p.loss = scalar(&gimp_nn::loss::cross_entropy(logits, &p.labels)?)?;
        }
        Ok(p)
    }

    /// What validation tells the loop: the figure the best epoch is chosen on — accuracy, or
    /// Harrell's c-index (½ where it has no value, no comparable pair, so the loss decides) —
    /// with its name, and the mean loss.
    pub fn validation(&self, p: &Predictions) -> Validation {
        let (figure, figure_name) = match &self.survival {
            None => (p.accuracy(), "val_accuracy"),
            Some(_) => {
                let outcomes = Outcomes {
                    time: &p.time,
                    event: &p.event,
                };
                let c = metrics::concordance_index_censored(outcomes, &p.risk, metrics::TIED_TOL);
                (c.map_or(0.5, |c| c.cindex), "val_cindex")
            }
        };
        Validation {
            loss: p.loss,
            figure,
            figure_name,
            patients: p.labels.len(),
        }
    }

    /// The figures of validation and test predictions: the classification report (none
    /// without patients), or the survival scores (validation's none without patients).
    pub fn figures(
        &self,
        data: &Prepared,
        val: &Predictions,
        test: Predictions,
        seed: u64,
    ) -> Figures {
        let nc = data.classes.len();
        let (val, test_scores) = match &self.survival {
            None => (
                val.report(nc, seed).map(Scores::Classification),
                test.report(nc, seed).map(Scores::Classification),
            ),
            Some(s) => (
                (!val.risk.is_empty()).then(|| Scores::Survival(s.score(val, seed))),
                Some(Scores::Survival(s.score(&test, seed))),
            ),
        };
        Figures {
            val,
            test: test_scores,
            test_predictions: Some(test),
        }
    }

    /// The floor every table starts from: each patient of `idx` given the training part's
    /// class frequencies, or in a survival run one risk for all (Harrell's c-index ½: every
    /// pair tied).
    pub fn constant_predictions(&self, data: &Prepared, idx: &[usize]) -> Predictions {
        match &self.survival {
            None => {
                let mut freq = vec![0.0f64; data.classes.len()];
                for &i in &data.train {
                    freq[data.patients[i].label] += 1.0;
                }
                let n = data.train.len().max(1) as f64;
                freq.iter_mut().for_each(|f| *f /= n);
                Predictions {
                    patients: idx.to_vec(),
                    labels: idx.iter().map(|&i| data.patients[i].label).collect(),
                    probs: vec![freq; idx.len()],
                    loss: f64::NAN,
                    ..Default::default()
                }
            }
            Some(s) => Predictions {
                patients: idx.to_vec(),
                labels: idx.iter().map(|&i| s.bins[i]).collect(),
                probs: vec![Vec::new(); idx.len()],
                risk: vec![0.0; idx.len()],
                time: idx.iter().map(|&i| s.outcomes[i].time).collect(),
                event: idx.iter().map(|&i| s.outcomes[i].event).collect(),
                loss: f64::NAN,
            },
        }
    }

    /// Saves the store's weights as a checkpoint of `arch` with the task's outputs (the
    /// cohort's classes, or the survival head's), what it records of the task (the head's
    /// edges and loss), the features it was trained on (§36) and the cohort's expression
    /// preprocessing.
    pub fn save_checkpoint(
        &self,
        path: &Path,
        arch: &str,
        config: serde_json::Value,
        store: &ParamStore,
        data: &Prepared,
        mut info: BTreeMap<String, String>,
    ) -> Result<()> {
        info.extend(compat::provenance_entry(data)?);
        let classes = match &self.survival {
            None => data.classes.clone(),
            Some(s) => {
                info.extend(s.head.info());
                s.head.output_names()
            }
        };
        Checkpoint {
            arch: arch.into(),
            config,
            classes,
            weights: store.tensors(),
            preprocessing: data.preprocessing.clone(),
            info,
        }
        .save(path)?;
        Ok(())
    }
}

/// A tensor's one value as float64.
pub(crate) fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// Class probabilities of one patient's logits `[C]`.
pub fn probabilities(logits: &Tensor) -> Result<Vec<f64>> {
    Ok(ops::softmax_last(logits)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?)
}

/// Bootstrap resamples of the c-index interval.
pub const RESAMPLES: usize = 1000;

/// Survival metrics of one scored set of patients; a metric the data cannot give is `None`
/// (NaN for Harrell's c-index) with the reason in `notes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SurvivalScores {
    pub patients: usize,
    pub events: usize,
    /// Harrell's c-index with its 95% bootstrap interval over patients.
    pub cindex: gimp_metrics::Estimate,
    /// Uno's IPCW c-index (censoring distribution of the training part).
    pub uno: Option<f64>,
    /// Cumulative/dynamic AUC at the quartiles of the test event times, and their mean.
    #[serde(deserialize_with = "gimp_metrics::nans_as_nulls")]
    pub auc_times: Vec<f64>,
    #[serde(deserialize_with = "gimp_metrics::nans_as_nulls")]
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
