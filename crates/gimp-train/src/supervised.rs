//! Every registered model that the supervised trainer trains (all but GiMP) as [`Task`]s for the
//! one training loop: the same data, splits, validation rule, checkpoints and metrics as GiMP, so
//! their numbers are comparable (docs/DESIGN.md §27). Each model's defaults are its own
//! ([`TrainingDefaults`], in its file); the image–omic adaptations first run their self-supervised
//! stage.

use crate::config::{Chosen, GeneSelection};
pub use crate::config::{SupervisedConfig, SupervisedOverrides};
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use crate::predictions::Predictions;
use crate::run_record;
use crate::selection::{self, Curve};
use crate::stages::training_bag;
use crate::task::{ClassLoss, StageResult, Task, Validation};
use crate::trainer::{
    keep, restore, save, shuffled_units, Control, Kept, Loop, OnProgress, Rate, Stage, UnitLoss,
};
use candle_core::{Device, Tensor};
use gimp_models::linear_start::DeepGenes;
use gimp_models::{registry, BagInput, InputKind, Model};
use gimp_nn::optim::{Adam, AdamConfig, Cosine};
use gimp_nn::{Mode, ParamStore};
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::path::Path;

/// A registered model trained on one patient a step.
struct SupervisedTask<'a> {
    model: &'a dyn Model,
    task: &'a Task,
    input: InputKind,
    data: &'a Prepared,
    train: Vec<usize>,
    val: Vec<usize>,
    max_patches: Option<usize>,
    /// Patients per unit: the optimiser step's whole group, as one batch for the expression-only
    /// models that run batches (the same mean gradient as one patient a unit, accumulated, at a
    /// fraction of the cost) and for the Cox loss (whose partial likelihood compares the
    /// patients of a step); 1 otherwise.
    batch: usize,
    /// The expression-only model runs each unit as one batch.
    batched: bool,
    /// Every validation of the run, in epoch order: what model selection compares (§41).
    history: RefCell<Vec<(f64, f64)>>,
}

impl SupervisedTask<'_> {
    fn predict(&self, idx: &[usize]) -> Result<Predictions> {
        let mode = Mode::inference();
        let (mut patients, mut logits) = (Vec::new(), Vec::new());
        if self.batched {
            // The expression-only model answers many patients in one product, as it trains
            // (one patient a call was a sixth of a gene model's inner fits on a 4,000-gene
            // cohort); rows are independent at inference.
            let mut expressions = Vec::with_capacity(idx.len());
            for &i in idx {
                if let Some(e) = self.data.expression(i)? {
                    expressions.push(e);
                    patients.push(i);
                }
            }
            for rows in expressions.chunks(512) {
                let batch = self
                    .model
                    .expression_batch_logits(&Tensor::stack(rows, 0)?, &mode)?
                    .ok_or_else(|| {
                        TrainError::Msg("the model does not run expression batches".into())
                    })?;
                for t in batch.chunk(rows.len(), 0)? {
                    logits.push(t.squeeze(0)?);
                }
            }
            return self.task.predictions(
                self.data,
                patients,
                logits,
                ClassLoss::OfModel(self.model),
            );
        }
        for &i in idx {
            let (bag, expr) = (self.data.bag_reader(i)?, self.data.expression(i)?);
            let bag = bag.as_ref().map(|b| BagInput::Rows(b));
            let Ok(input) = self.input.select(bag, expr.as_ref()) else {
                continue;
            };
            logits.push(self.model.forward(&input, &mode)?.logits);
            patients.push(i);
        }
        self.task
            .predictions(self.data, patients, logits, ClassLoss::OfModel(self.model))
    }
}

impl SupervisedTask<'_> {
    /// Mean loss of a batch of expression-only patients (those without expression are left
    /// out, as one patient a unit leaves them out).
    fn batch_loss(&self, unit: &[usize], mode: &Mode) -> Result<Option<UnitLoss<'_>>> {
        let mut rows = Vec::with_capacity(unit.len());
        let mut kept = Vec::with_capacity(unit.len());
        for &i in unit {
            if let Some(e) = self.data.expression(i)? {
                rows.push(e);
                kept.push(i);
            }
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let x = Tensor::stack(&rows, 0)?;
        let logits = self
            .model
            .expression_batch_logits(&x, mode)?
            .ok_or_else(|| TrainError::Msg("the model does not run expression batches".into()))?;
        let loss = self
            .task
            .unit_loss(self.data, &logits, &kept, ClassLoss::CrossEntropy)?;
        Ok(loss.map(UnitLoss::from))
    }
}

impl Stage for SupervisedTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        shuffled_units(&self.train, self.batch, rng)
    }

    fn loss(
        &self,
        unit: &[usize],
        rng: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Option<UnitLoss<'_>>> {
        if self.batched {
            return self.batch_loss(unit, mode);
        }
        // One patient a unit, or a Cox step's patients: each through the model, the loss over
        // all of them, the auxiliary losses averaged.
        let (mut kept, mut logits, mut aux) = (Vec::new(), Vec::new(), Vec::new());
        for &i in unit {
            let bag = training_bag(self.data, i, self.max_patches, rng)?;
            let expr = self.data.expression(i)?;
            let Ok(input) = self
                .input
                .select(bag.as_deref().map(|b| BagInput::Rows(b)), expr.as_ref())
            else {
                continue;
            };
            let class = self.task.class_of(self.data, i);
            let (out, a) = self.model.training_forward(&input, class, mode)?;
            logits.push(out.logits);
            aux.extend(a);
            kept.push(i);
        }
        if kept.is_empty() {
            return Ok(None);
        }
        let rows = Tensor::stack(&logits, 0)?;
        let Some(main) =
            self.task
                .unit_loss(self.data, &rows, &kept, ClassLoss::OfModel(self.model))?
        else {
            return Ok(None);
        };
        let total = match aux.is_empty() {
            true => main,
            false => {
                let aux = Tensor::stack(&aux, 0)?.mean_all()?;
                (main.affine(self.model.bag_weight(), 0.0)? + aux)?
            }
        };
        Ok(Some(total.into()))
    }

    fn validates(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<Validation> {
        let v = self.task.validation(&self.predict(&self.val)?);
        self.history.borrow_mut().push((v.figure, v.loss));
        Ok(v)
    }
}

/// Trains `cfg.arch` on the split's training patients that have its input; validates every
/// epoch; keeps the best epoch (accuracy, ties → loss); reports val and test there.
///
/// With a selection (`cfg.selection`, `docs/DESIGN.md` §41) the settings are first chosen by
/// cross-validation inside the split's training and validation patients (in `dir/selection`,
/// removed afterwards), then the chosen settings are trained on all of them for the chosen
/// epoch count; the choice is recorded in the checkpoint (its settings' `chosen`), in
/// `dir/selection.json` and as the last line of `dir/log.jsonl`.
pub fn train(
    data: &Prepared,
    cfg: &SupervisedConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    let Some(sel) = &cfg.selection else {
        return final_result(fit(data, cfg, dir, ctl, on, Purpose::Final)?);
    };
    let inner_dir = dir.join("selection");
    let inner = |part: &Prepared, c: &SupervisedConfig, k: usize| -> Result<Curve> {
        let d = inner_dir.join(format!("fold{k}"));
        fit(part, c, &d, Control::inner(), on, Purpose::Inner).map(|(_, curve)| curve)
    };
    let chosen = selection::choose(data, cfg, sel, &inner)?;
    let _ = std::fs::remove_dir_all(&inner_dir);
    let whole = selection::refit_part(data)?;
    let r = final_result(fit(&whole, &chosen, dir, ctl, on, Purpose::Final)?)?;
    if let Some(c) = &chosen.chosen {
        run_record::write_selection(dir, c)?;
    }
    Ok(r)
}

fn final_result((r, _): (Option<StageResult>, Curve)) -> Result<StageResult> {
    r.ok_or_else(|| TrainError::Msg("the final fit gave no result".into()))
}

/// Why a model is trained: the run's result, or one inner fit of model selection (no test part,
/// no checkpoint; its validation curve is what counts).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Final,
    Inner,
}

/// One training of `cfg` on `data` in `dir`: the run's result (`Purpose::Final`) and the
/// validation after every epoch.
fn fit(
    data: &Prepared,
    cfg: &SupervisedConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
    purpose: Purpose,
) -> Result<(Option<StageResult>, Curve)> {
    let arch = registry::lookup(&cfg.arch)?;
    arch.supervised_defaults()?;
    cfg.task.check_unit(cfg.accumulate, "accumulate")?;
    let task = Task::new(&cfg.task, data)?;
    let nc = task.width(data);
    // The genes the model reads (`docs/DESIGN.md` §38), as positions among the cohort's.
    let positions = match (&cfg.genes, arch.input.reads_expression()) {
        (GeneSelection::All, _) | (_, false) => None,
        (genes, true) => data.gene_positions(genes)?,
    };
    let dims = gimp_models::Dims {
        features: data.d_in.unwrap_or(0),
        genes: positions.as_ref().map_or(data.n_genes(), Vec::len),
    };
    let mut model_cfg = (arch.default_config)(dims, nc);
    // A linear start (§43) is asked of every model and taken by those whose configuration has
    // one. Such a model is given every gene: its linear start reads them all, its deep part the
    // selected ones (§44). Other models — and those whose gene groups come from signatures,
    // built over the genes they are given — are given the selected genes alone.
    let linear_start = cfg.linear_start && model_cfg.get("linear_start").is_some();
    let selected;
    let data = match positions {
        Some(positions) if linear_start && cfg.signatures.is_none() => {
            let deep = DeepGenes {
                input: data.n_genes(),
                positions,
            };
            model_cfg["deep_genes"] =
                serde_json::to_value(deep).map_err(|e| TrainError::Msg(e.to_string()))?;
            data
        }
        Some(positions) => {
            selected = data.clone().with_gene_positions(&positions)?;
            &selected
        }
        None => data,
    };
    if arch.input.reads_slides() && dims.features == 0 {
        return Err(TrainError::Msg("the cohort has no slide features".into()));
    }
    if arch.input.reads_expression() && dims.genes == 0 {
        return Err(TrainError::Msg("the cohort has no expression".into()));
    }
    // The multimodal baselines need both modalities, as their reference code does (it joins
    // slides and omics and drops the rest); GiMP keeps patients with one.
    let has = |i: &usize| {
        let p = &data.patients[*i];
        arch.input
            .accepts(!p.slides.is_empty(), p.expression.is_some())
    };
    let train: Vec<usize> = data.train.iter().copied().filter(has).collect();
    let val: Vec<usize> = data.val.iter().copied().filter(has).collect();
    let test: Vec<usize> = data.test.iter().copied().filter(has).collect();
    if train.is_empty() || (test.is_empty() && purpose == Purpose::Final) {
        return Err(TrainError::Msg(format!(
            "no training or test patient has the input {} reads",
            cfg.arch
        )));
    }
    if linear_start {
        model_cfg["linear_start"] = serde_json::Value::Bool(true);
    }
    if let (Some(sig), Some(set_groups)) = (&cfg.signatures, arch.set_gene_groups) {
        set_groups(&mut model_cfg, &signature_groups(sig, data)?)?;
    }
    let store = ParamStore::new(cfg.seed);
    let model = (arch.build)(&store.root(), &model_cfg)?;
    // What a model fits to the training bags before training (MMP's prototypes).
    let training_bags = || -> candle_core::Result<Vec<Tensor>> {
        let bag = |i: &usize| {
            data.bag(*i)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        };
        Ok(train
            .iter()
            .map(bag)
            .collect::<candle_core::Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect())
    };
    let fitted = model.fit_to_training(&training_bags, cfg.seed)?;
    restore(&store, &fitted.into_iter().collect())?;
    if model.has_linear_start() {
        restore(&store, &task.linear_start(data, &train, cfg.seed)?)?;
        store.set_trainable(gimp_models::linear_start::PREFIX, false);
    }
    let _whole_bag = if arch.input.reads_slides() {
        data.check_memory(&train, cfg.max_patches, cfg.memory_limit_gb, |n| {
            model.training_step_bytes(n)
        })?;
        data.whole_bag_mode(&train, cfg.max_patches)?
    } else {
        None
    };
    if arch.self_supervised() {
        let stage = SelfSupervisedTask {
            model: model.as_ref(),
            data,
            train: &train,
            batch: cfg.self_supervised.batch.max(2),
        };
        let kept = Kept {
            stage: "pretrain",
            arch: arch.name,
            config: model_cfg.clone(),
            settings: cfg,
            seed: cfg.seed,
            fold: cfg.fold,
        };
        self_supervised(&stage, &kept, &task, &store, dir, ctl, on)?;
    }
    let mut opt = Adam::new(
        &store,
        AdamConfig {
            kind: cfg.optimizer,
            lr: cfg.lr,
            beta1: cfg.betas.0,
            beta2: cfg.betas.1,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    );
    let rate = match cfg.cosine {
        true => Rate::Cosine(Cosine {
            base: cfg.lr,
            warmup: 0,
            total: train.len().div_ceil(cfg.accumulate.max(1))
                * Chosen::schedule(cfg.chosen.as_ref(), cfg.epochs).max(1),
        }),
        false => Rate::Constant(cfg.lr),
    };
    // Expression-only models that run batches take each optimiser step's patients as one batch.
    let batched = arch.input == InputKind::Expression
        && cfg.accumulate > 1
        && model
            .expression_batch_logits(
                &Tensor::zeros((1, data.n_genes()), candle_core::DType::F32, &Device::Cpu)?,
                &Mode::inference(),
            )?
            .is_some();
    let (batch, accumulate) = cfg.task.units(cfg.accumulate, batched);
    let stage = SupervisedTask {
        model: model.as_ref(),
        task: &task,
        batched,
        input: arch.input,
        data,
        train,
        val,
        max_patches: cfg.max_patches,
        batch,
        history: RefCell::new(Vec::new()),
    };
    // With a linear start, no training at all (the linear model alone) is one of the choices
    // the selection compares: validated before the first step.
    let validated_start = purpose == Purpose::Inner && model.has_linear_start();
    if validated_start {
        stage.validate()?;
    }
    let trained = Loop {
        stage: match purpose {
            Purpose::Final => "train",
            Purpose::Inner => "select",
        },
        dir,
        epochs: cfg.epochs,
        seed: cfg.seed ^ 0x5B5,
        rate,
        accumulate,
        early_stopping: cfg.early_stopping,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &stage)?;
    let mut epochs = stage.history.take();
    let start = match validated_start && !epochs.is_empty() {
        true => Some(epochs.remove(0)),
        false => None,
    };
    let curve = Curve {
        start,
        epochs,
        figure_name: task.validation(&Predictions::none()).figure_name,
    };
    if purpose == Purpose::Inner {
        return Ok((None, curve));
    }
    let val = stage.predict(&stage.val)?;
    let test = stage.predict(&test)?;
    let kept = Kept {
        stage: "train",
        arch: arch.name,
        config: model_cfg,
        settings: cfg,
        seed: cfg.seed,
        fold: cfg.fold,
    };
    let r = keep(&task, data, &store, dir, trained, &kept, val, test)?;
    Ok((Some(r), curve))
}

/// The image–omic adaptations' own objective on batches of training patients with both
/// modalities.
struct SelfSupervisedTask<'a> {
    model: &'a dyn Model,
    data: &'a Prepared,
    train: &'a [usize],
    batch: usize,
}

impl Stage for SelfSupervisedTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        shuffled_units(self.train, self.batch, rng)
    }

    fn loss(
        &self,
        unit: &[usize],
        _: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Option<UnitLoss<'_>>> {
        // A contrastive batch needs two patients at least.
        if unit.len() < 2 {
            return Ok(None);
        }
        let mut pairs = Vec::with_capacity(unit.len());
        for &i in unit {
            if let (Some(b), Some(e)) = (self.data.bag(i)?, self.data.expression(i)?) {
                pairs.push((b, e));
            }
        }
        let l = self
            .model
            .pretrain_loss(&pairs, mode)?
            .ok_or_else(|| TrainError::Msg("the model has no self-supervised objective".into()))?;
        Ok(Some(l.into()))
    }

    fn validates(&self) -> bool {
        false
    }

    fn validate(&self) -> Result<Validation> {
        Err(TrainError::Msg(
            "the self-supervised stage keeps its last epoch; it has no validation".into(),
        ))
    }
}

/// The self-supervised stage (image–omic adaptations, TANGLE): AdamW with warm-up and cosine
/// decay, in `dir/pretrain`
/// (resumable like every stage); the weights are also saved there as a checkpoint.
fn self_supervised(
    stage: &SelfSupervisedTask,
    kept: &Kept<SupervisedConfig>,
    task: &Task,
    store: &ParamStore,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<()> {
    let sc = &kept.settings.self_supervised;
    let dir = dir.join("pretrain");
    let mut opt = Adam::new(store, AdamConfig::adamw(sc.lr, sc.weight_decay));
    let total = stage.train.len().div_ceil(stage.batch) * sc.epochs.max(1);
    let trained = Loop {
        stage: "pretrain",
        dir: &dir,
        epochs: sc.epochs,
        seed: kept.seed ^ 0x9e7,
        rate: Rate::Cosine(Cosine {
            base: sc.lr,
            warmup: total * sc.warmup_percent / 100,
            total,
        }),
        accumulate: 1,
        early_stopping: None,
        control: ctl,
        on,
    }
    .run(store, &mut opt, stage)?;
    save(task, stage.data, store, &dir, trained, kept)?;
    Ok(())
}

/// The gene groups of a pathway table (MCAT's `signatures.csv`, SurvPath's and MMP's signature
/// or composition tables: [`gimp_io::pathways`]): for each pathway, the positions of its
/// symbols among the cohort's genes (version suffixes ignored), ordered by symbol as the
/// reference code orders them (`sorted(series_intersection(...))`); empty pathways are dropped.
fn signature_groups(path: &Path, data: &Prepared) -> Result<Vec<Vec<u32>>> {
    let table = gimp_io::pathways::read_pathways(path)?;
    let genes: Vec<String> = data
        .preprocessing
        .as_ref()
        .map(|p| {
            p.genes
                .iter()
                .map(|g| gimp_io::expression::strip_version(g).to_string())
                .collect()
        })
        .unwrap_or_default();
    let (found, _empty) = table.groups(&genes);
    if found.is_empty() {
        return Err(TrainError::Msg(format!(
            "{}: none of its gene symbols is among the cohort's {} genes (e.g. '{}'); the \
             pathway table needs expression named by HUGO symbol — leave --signatures out for \
             equal chunks of the genes",
            path.display(),
            genes.len(),
            genes.first().map(String::as_str).unwrap_or("")
        )));
    }
    Ok(found.into_iter().map(|g| g.genes).collect())
}
