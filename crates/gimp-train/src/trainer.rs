//! The one training loop (in the spirit of burn's `Learner`). It owns the epochs, the optimiser
//! steps (with gradient accumulation and the learning-rate schedule), validation and the choice of
//! the best epoch, early stopping, the resumable state (random stream, optimiser moments, step,
//! best-so-far), `log.jsonl`, the progress callback and checkpoint provenance. A stage — each of
//! GiMP's three, every compared system, the image–omic adaptations' self-supervised stage —
//! supplies only a [`Stage`]: the units of an epoch, the loss of one unit, and its validation
//! (which the run's [`Task`] scores). The loop never asks which task a run answers.

use crate::config::EarlyStopping;
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use crate::predictions::Predictions;
use crate::resume::{self, LoopState};
use crate::run_record::CHECKPOINT;
use crate::task::{scalar, StageResult, Task, Validation};
use candle_core::Tensor;
use gimp_nn::optim::{Adam, Cosine, GradAccumulator};
use gimp_nn::{Mode, ParamStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// What a stage reports while it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub stage: &'static str,
    pub epoch: usize,
    pub epochs: usize,
    pub step: usize,
    pub steps: usize,
    pub loss: f64,
}

pub type OnProgress<'a> = &'a dyn Fn(&Progress);

/// How a stage runs beyond its configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct Control {
    /// Continue from `{dir}/state.safetensors` when present.
    pub resume: bool,
    /// Stop (with [`TrainError::Stopped`]) after this many epochs, as an interruption would.
    pub stop_after: Option<usize>,
    /// The run's folder is removed once it has run (model selection's inner fits): no
    /// resumable state is written. Writing it after every epoch (the parameters, the optimiser's
    /// moments and the best epoch's copy) was a quarter of a small gene model's inner fit.
    pub ephemeral: bool,
}

impl Control {
    /// An inner fit of model selection: no resume, nothing kept ([`Self::ephemeral`]).
    pub fn inner() -> Self {
        Self {
            ephemeral: true,
            ..Self::default()
        }
    }
}

/// The learning rate at each optimiser step.
#[derive(Debug, Clone, Copy)]
pub enum Rate {
    Constant(f64),
    Cosine(Cosine),
}

impl Rate {
    fn at(&self, step: usize) -> f64 {
        match self {
            Rate::Constant(lr) => *lr,
            Rate::Cosine(c) => c.lr(step),
        }
    }
}

/// The loss of one unit of work, with any named parts to log (means over the epoch).
pub struct UnitLoss<'a> {
    /// The unit's loss; its gradient is the step's, unless `pieces` is set.
    pub total: Tensor,
    pub parts: Vec<(&'static str, f64)>,
    /// When set, `total` is only the value to log (it carries no graph) and the unit's gradient
    /// is the sum of the gradients of the tensors these pieces hand, one at a time, to the
    /// sink: each piece's graph is built, backpropagated and dropped before the next is built
    /// (GiMP pre-training's windows, `docs/DESIGN.md` §42).
    pub pieces: Option<Pieces<'a>>,
}

/// Builds a unit's gradient pieces in turn, handing each to the sink that backpropagates it.
pub type Pieces<'a> = Box<dyn FnOnce(&mut dyn FnMut(Tensor) -> Result<()>) -> Result<()> + 'a>;

impl From<Tensor> for UnitLoss<'_> {
    fn from(total: Tensor) -> Self {
        Self {
            total,
            parts: Vec::new(),
            pieces: None,
        }
    }
}

impl UnitLoss<'_> {
    /// The gradients of the trainable parameters, by name.
    fn gradients(self, opt: &Adam) -> Result<BTreeMap<String, Tensor>> {
        let Some(pieces) = self.pieces else {
            return Ok(opt.collect(&self.total.backward()?));
        };
        let mut sum = GradAccumulator::default();
        pieces(&mut |piece: Tensor| {
            sum.add(opt.collect(&piece.backward()?))?;
            Ok(())
        })?;
        Ok(sum.grads)
    }
}

/// What a stage supplies to the loop.
pub trait Stage {
    /// The units of one epoch (patient indices: one patient, or a batch), drawn from the stage's
    /// random stream.
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>>;

    /// The loss of one unit; `None` when the unit gives nothing to learn from (no step).
    fn loss(
        &self,
        unit: &[usize],
        rng: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Option<UnitLoss<'_>>>;

    /// Whether the stage validates after each epoch and keeps its best epoch; self-supervised
    /// stages do not, and keep their last.
    fn validates(&self) -> bool;

    /// Validation after an epoch (only asked when [`validates`]): the run's task turns the
    /// validation patients' predictions into it ([`crate::task::Task::validation`]).
    ///
    /// [`validates`]: Stage::validates
    fn validate(&self) -> Result<Validation>;
}

/// The units of an epoch of a stage that shuffles its patients: `patients` in a random order, in
/// units of `unit` (the last may be smaller).
pub fn shuffled_units(patients: &[usize], unit: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
    let mut order = patients.to_vec();
    order.shuffle(rng);
    order.chunks(unit.max(1)).map(<[usize]>::to_vec).collect()
}

/// One stage's loop settings.
pub struct Loop<'a> {
    pub stage: &'static str,
    /// Where `state.safetensors` and `log.jsonl` go.
    pub dir: &'a Path,
    pub epochs: usize,
    /// Seed of the stage's random stream (each stage has its own).
    pub seed: u64,
    pub rate: Rate,
    /// Units whose gradients are averaged into one step (1: a step per unit).
    pub accumulate: usize,
    pub early_stopping: Option<EarlyStopping>,
    pub control: Control,
    pub on: OnProgress<'a>,
}

/// What the loop leaves behind; the store holds the kept epoch's weights.
#[derive(Debug, Clone, Copy)]
pub struct Trained {
    pub best_epoch: usize,
    pub epochs_run: usize,
}

/// Deep copies of every parameter (a `Var` is updated in place, so plain clones would follow it).
fn snapshot(store: &ParamStore) -> Result<BTreeMap<String, Tensor>> {
    store
        .tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, t.detach().copy()?)))
        .collect()
}

/// Sets the store's parameters to saved values (those not saved keep theirs).
pub fn restore(store: &ParamStore, saved: &BTreeMap<String, Tensor>) -> Result<()> {
    for (name, p) in store.params() {
        if let Some(t) = saved.get(&name) {
            p.var.set(t)?;
        }
    }
    Ok(())
}

/// The selection rule (docs/DESIGN.md §9): highest validation accuracy (c-index in a survival
/// run, §34), ties broken by the lower validation loss.
fn better(acc: f64, loss: f64, best: Option<(f64, f64)>) -> bool {
    match best {
        None => true,
        Some((ba, bl)) => acc > ba || (acc == ba && loss < bl),
    }
}

/// One line per epoch in `{dir}/log.jsonl` (appended to when a run resumes).
struct Log(std::fs::File);

impl Log {
    /// Opens the log for a run that has completed `epochs_done` epochs: lines of later epochs (an
    /// epoch a kill interrupted after it was logged but before its state was saved) and a
    /// half-written last line are dropped, so the resumed log has each epoch once.
    fn open(dir: &Path, epochs_done: usize) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| gimp_io::DataError::io(dir, e))?;
        let p = dir.join("log.jsonl");
        let kept: String = if epochs_done > 0 {
            std::fs::read_to_string(&p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| {
                    v.get("epoch")
                        .and_then(|e| e.as_u64())
                        .is_some_and(|e| (e as usize) < epochs_done)
                })
                .map(|v| format!("{v}\n"))
                .collect()
        } else {
            String::new()
        };
        gimp_io::atomic::write_bytes_atomic(&p, kept.as_bytes())?;
        let f = std::fs::OpenOptions::new().append(true).open(&p);
        Ok(Self(f.map_err(|e| gimp_io::DataError::io(&p, e))?))
    }

    fn write(&mut self, v: serde_json::Value) {
        // The log is a record for people and plots; training does not depend on it.
        let _ = writeln!(self.0, "{v}");
        let _ = self.0.flush();
    }
}

/// Running sums of one epoch's losses.
#[derive(Default)]
struct EpochLosses {
    total: f64,
    steps: usize,
    parts: Vec<(&'static str, f64)>,
    /// Units whose loss was `None` (a Cox unit without an event): no step.
    skipped: usize,
}

impl EpochLosses {
    fn add(&mut self, total: f64, parts: &[(&'static str, f64)]) {
        self.total += total;
        self.steps += 1;
        for &(name, v) in parts {
            match self.parts.iter_mut().find(|(n, _)| *n == name) {
                Some((_, s)) => *s += v,
                None => self.parts.push((name, v)),
            }
        }
    }

    fn log_line(&self, epoch: usize) -> serde_json::Map<String, serde_json::Value> {
        let n = self.steps.max(1) as f64;
        let mut m = serde_json::Map::new();
        m.insert("epoch".into(), epoch.into());
        m.insert("train_loss".into(), (self.total / n).into());
        for (name, s) in &self.parts {
            m.insert((*name).into(), (s / n).into());
        }
        if self.skipped > 0 {
            m.insert("skipped_units".into(), self.skipped.into());
        }
        m
    }
}

impl Loop<'_> {
    /// The loop state to start from: the saved one when resuming, else a fresh one.
    fn start(&self, store: &ParamStore, opt: &mut Adam, validated: bool) -> Result<LoopState> {
        let saved = if self.control.resume {
            resume::load(&self.dir.join("state.safetensors"), store, opt)?
        } else {
            None
        };
        Ok(match saved {
            Some(s) => s,
            None => LoopState {
                rng: ChaCha8Rng::seed_from_u64(self.seed),
                epochs_done: 0,
                step: 0,
                best: None,
                best_epoch: 0,
                best_snap: if validated {
                    snapshot(store)?
                } else {
                    BTreeMap::new()
                },
                lowest_val_loss: None,
                epochs_since_lowest: 0,
            },
        })
    }

    /// Whether the last completed epoch (index `epochs_done − 1`) ends training.
    fn should_stop(&self, st: &LoopState) -> bool {
        self.early_stopping.is_some_and(|e| {
            st.epochs_done > e.stop_epoch + 1 && st.epochs_since_lowest >= e.patience.max(1)
        })
    }

    /// Trains `store`'s trainable parameters with `opt` on `task`, then leaves the kept epoch's
    /// weights in the store: the best validated epoch, or the last one without validation.
    pub fn run(&self, store: &ParamStore, opt: &mut Adam, task: &dyn Stage) -> Result<Trained> {
        let validated = task.validates();
        let mut st = self.start(store, opt, validated)?;
        let mut log = Log::open(self.dir, st.epochs_done)?;
        for epoch in st.epochs_done..self.epochs {
            if self.should_stop(&st) {
                break;
            }
            let plan = task.plan_epoch(&mut st.rng);
            let mode = Mode::train(ChaCha8Rng::seed_from_u64(st.rng.gen()));
            let mut losses = EpochLosses::default();
            let mut acc = GradAccumulator::default();
            for (k, unit) in plan.iter().enumerate() {
                let Some(mut l) = task.loss(unit, &mut st.rng, &mode)? else {
                    losses.skipped += 1;
                    // A group being accumulated still steps at the end of the epoch.
                    if acc.count > 0 && k + 1 == plan.len() {
                        opt.step_with(&acc.take_mean()?, self.rate.at(st.step))?;
                        st.step += 1;
                    }
                    continue;
                };
                let lr = self.rate.at(st.step);
                let value = scalar(&l.total)?;
                let parts = std::mem::take(&mut l.parts);
                let grads = l.gradients(opt)?;
                if self.accumulate <= 1 {
                    opt.step_with(&grads, lr)?;
                    st.step += 1;
                } else {
                    // The reference divides each loss by the group size and steps every group:
                    // the mean of the group's gradients. A last, smaller group steps at the end
                    // of the epoch.
                    acc.add(grads)?;
                    if acc.count == self.accumulate || k + 1 == plan.len() {
                        opt.step_with(&acc.take_mean()?, lr)?;
                        st.step += 1;
                    }
                }
                losses.add(value, &parts);
                (self.on)(&Progress {
                    stage: self.stage,
                    epoch,
                    epochs: self.epochs,
                    step: k + 1,
                    steps: plan.len(),
                    loss: value,
                });
            }
            let mut line = losses.log_line(epoch);
            if validated {
                self.record_validation(&mut st, store, epoch, &task.validate()?, &mut line)?;
            }
            log.write(serde_json::Value::Object(line));
            st.epochs_done = epoch + 1;
            if !self.control.ephemeral {
                resume::save(&self.dir.join("state.safetensors"), store, opt, &st)?;
            }
            if self.control.stop_after == Some(st.epochs_done) {
                return Err(TrainError::Stopped(st.epochs_done));
            }
        }
        let best_epoch = if validated {
            restore(store, &st.best_snap)?;
            st.best_epoch
        } else {
            st.epochs_done.saturating_sub(1)
        };
        Ok(Trained {
            best_epoch,
            epochs_run: st.epochs_done,
        })
    }

    /// Keeps the best weights (every epoch when there is no validation patient) and counts the
    /// epochs since the validation loss last improved.
    fn record_validation(
        &self,
        st: &mut LoopState,
        store: &ParamStore,
        epoch: usize,
        v: &Validation,
        line: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<()> {
        line.insert("val_loss".into(), v.loss.into());
        line.insert(v.figure_name.into(), v.figure.into());
        if v.patients == 0 || better(v.figure, v.loss, st.best) {
            st.best = Some((v.figure, v.loss));
            st.best_epoch = epoch;
            st.best_snap = snapshot(store)?;
        }
        if v.patients == 0 {
            // Nothing to stop on.
        } else if st.lowest_val_loss.is_none_or(|l| v.loss <= l) {
            st.lowest_val_loss = Some(v.loss);
            st.epochs_since_lowest = 0;
        } else {
            st.epochs_since_lowest += 1;
        }
        Ok(())
    }
}

/// Where a checkpoint came from: the stage, the kept epoch, seed, fold, the stage's full
/// settings (JSON) and the code version.
pub fn provenance(
    stage: &str,
    trained: Trained,
    seed: u64,
    fold: usize,
    settings: &impl Serialize,
) -> BTreeMap<String, String> {
    [
        ("stage", stage.to_string()),
        ("best_epoch", trained.best_epoch.to_string()),
        ("epochs_run", trained.epochs_run.to_string()),
        ("seed", seed.to_string()),
        ("fold", fold.to_string()),
        (
            "training",
            serde_json::to_string(settings).unwrap_or_default(),
        ),
        ("gimp_rs_version", env!("CARGO_PKG_VERSION").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// What a stage's checkpoint is: its stage name, architecture and model config, and the
/// settings and seed it was trained with (its provenance).
pub struct Kept<'a, S: Serialize> {
    pub stage: &'static str,
    pub arch: &'a str,
    pub config: serde_json::Value,
    pub settings: &'a S,
    pub seed: u64,
    pub fold: usize,
}

/// The end of a stage that validates: the kept epoch's weights saved as `dir/model.safetensors`
/// (with what the task records), and the figures of its validation and test predictions.
#[allow(clippy::too_many_arguments)]
pub fn keep<S: Serialize>(
    task: &Task,
    data: &Prepared,
    store: &ParamStore,
    dir: &Path,
    trained: Trained,
    kept: &Kept<S>,
    val: Predictions,
    test: Predictions,
) -> Result<StageResult> {
    Ok(StageResult {
        checkpoint: save(task, data, store, dir, trained, kept)?,
        best_epoch: trained.best_epoch,
        figures: task.figures(data, &val, test, kept.seed),
    })
}

/// Saves the store's weights as `dir/model.safetensors` with their provenance; returns the path.
pub fn save<S: Serialize>(
    task: &Task,
    data: &Prepared,
    store: &ParamStore,
    dir: &Path,
    trained: Trained,
    kept: &Kept<S>,
) -> Result<PathBuf> {
    let path = dir.join(CHECKPOINT);
    let info = provenance(kept.stage, trained, kept.seed, kept.fold, kept.settings);
    task.save_checkpoint(&path, kept.arch, kept.config.clone(), store, data, info)?;
    Ok(path)
}
