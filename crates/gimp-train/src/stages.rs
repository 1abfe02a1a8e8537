//! The three training stages of GiMP, each a [`Stage`] for the one training loop, and
//! [`train_gimp`], the one function that chains them. What GiMP computes — its configuration,
//! its answers in training and in evaluation — is `gimp_models::gimp`'s; a stage only chooses
//! patients, windows and masks, and hands logits to the run's [`Task`].

use crate::config::{Chosen, Modalities, RunConfig, Triplet};
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use crate::predictions::Predictions;
use crate::run_record::StageDir;
use crate::selection;
use crate::task::{scalar, ClassLoss, Figures, StageResult, Task, Validation};
use crate::trainer::{
    keep, save, shuffled_units, Control, Kept, Loop, OnProgress, Pieces, Rate, Stage, UnitLoss,
};
use candle_core::{Tensor, Var};
use gimp_io::bag::{BagRows, SelectedRows, SharedRows};
use gimp_models::gimp::{ExpressionAlone, GeneEncoder, Gimp};
use gimp_models::BagInput;
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::optim::{Adam, AdamConfig, Cosine};
use gimp_nn::{loss, Mode, ParamStore};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Cosine decay from `lr` over `steps_per_epoch × epochs` steps, no warm-up (docs/DESIGN.md §9).
fn cosine(lr: f64, steps_per_epoch: usize, epochs: usize) -> Rate {
    Rate::Cosine(Cosine {
        base: lr,
        warmup: 0,
        total: steps_per_epoch * epochs.max(1),
    })
}

/// Patient `i`'s bag as a reader of the memory-mapped feature cache, or a random subset of `cap`
/// of its rows kept in slide order (the optional training cap): a training step reads the bag
/// by windows instead of holding a copy (`docs/DESIGN.md` §42).
pub(crate) fn training_bag(
    data: &Prepared,
    i: usize,
    cap: Option<usize>,
    rng: &mut ChaCha8Rng,
) -> Result<Option<SharedRows>> {
    let Some(reader) = data.bag_reader(i)? else {
        return Ok(None);
    };
    let n = reader.dims().0;
    let whole: SharedRows = Arc::new(reader);
    let Some(cap) = cap.filter(|&c| n > c) else {
        return Ok(Some(whole));
    };
    let mut rows = rand::seq::index::sample(rng, n, cap).into_vec();
    rows.sort_unstable();
    Ok(Some(Arc::new(SelectedRows::new(whole, rows)?)))
}

fn with_expression(data: &Prepared, idx: &[usize]) -> Vec<usize> {
    idx.iter()
        .copied()
        .filter(|&i| data.patients[i].expression.is_some())
        .collect()
}

fn stack_expression(data: &Prepared, idx: &[usize]) -> Result<Tensor> {
    let rows: Vec<Tensor> = idx
        .iter()
        .map(|&i| {
            data.expression(i)?
                .ok_or_else(|| TrainError::Msg(format!("patient {} has no expression", i)))
        })
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// Stage 1 (docs/DESIGN.md §4): supervised GroupMSA (or SNN) on expression alone, in batches.
struct GenesTask<'a> {
    enc: &'a GeneEncoder,
    task: &'a Task,
    data: &'a Prepared,
    train: Vec<usize>,
    batch: usize,
    /// Every validation of the run, in epoch order (model selection, §41).
    history: std::cell::RefCell<Vec<(f64, f64)>>,
}

impl GenesTask<'_> {
    /// Labels, probabilities and mean loss of the gene encoder's head on `idx` (those with
    /// expression).
    fn predict(&self, idx: &[usize]) -> Result<Predictions> {
        let idx = with_expression(self.data, idx);
        if idx.is_empty() {
            return Ok(Predictions::none());
        }
        let (_, logits) = self
            .enc
            .forward(&stack_expression(self.data, &idx)?, &Mode::inference())?;
        // The whole part is one batch: its loss is the stage's training loss on it.
        self.task.batch_predictions(self.data, idx, &logits)
    }
}

impl Stage for GenesTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        shuffled_units(&self.train, self.batch, rng)
    }

    fn loss(
        &self,
        unit: &[usize],
        _: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Option<UnitLoss<'_>>> {
        let (_, logits) = self
            .enc
            .forward(&stack_expression(self.data, unit)?, mode)?;
        let l = self
            .task
            .unit_loss(self.data, &logits, unit, ClassLoss::CrossEntropy)?;
        Ok(l.map(UnitLoss::from))
    }

    fn validates(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<Validation> {
        let v = self.task.validation(&self.predict(&self.data.val)?);
        self.history.borrow_mut().push((v.figure, v.loss));
        Ok(v)
    }
}

/// Stage 1: trains the gene encoder; the best epoch on validation is kept and saved as a
/// checkpoint `model run` can use.
///
/// With `genes.selection` (§41) the epoch count (and any rate grid) is first chosen by inner
/// folds of the training patients (in `dir/selection`, removed afterwards), then the encoder is
/// trained on all of them for that many epochs and the last epoch kept; the validation part,
/// which the later stages select on, is not trained on. The choice is recorded in the
/// checkpoint's settings (`genes.chosen`), `dir/selection.json` and the end of `dir/log.jsonl`.
pub fn pretrain_genes(
    data: &Prepared,
    cfg: &RunConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    // `folds = 0` in a run file turns the preset's selection off.
    let Some(sel) = cfg.genes.selection.as_ref().filter(|s| s.folds > 0) else {
        return final_genes(train_genes(data, cfg, dir, ctl, on, Some(&data.val))?);
    };
    sel.check()?;
    let task = Task::new(&cfg.task, data)?;
    let pool = with_expression(data, &data.train);
    let cands: Vec<(f64, f64, crate::config::GeneSelection)> =
        selection::rate_candidates(sel, cfg.genes.lr, cfg.genes.weight_decay)
            .into_iter()
            .map(|(lr, wd)| (lr, wd, crate::config::GeneSelection::All))
            .collect();
    let settings = |c: usize| {
        let mut inner = cfg.clone();
        inner.genes.lr = cands[c].0;
        inner.genes.weight_decay = cands[c].1;
        inner.genes.selection = None;
        inner
    };
    let inner_dir = dir.join("selection");
    let (scores, pick, figure_name) = selection::cross_validate(
        data,
        &task,
        &pool,
        sel.folds,
        cfg.seed,
        cands.len(),
        &|part, c, k| {
            let d = inner_dir.join(format!("fold{k}"));
            train_genes(part, &settings(c), &d, Control::inner(), on, None).map(|(_, v)| v)
        },
    )?;
    let _ = std::fs::remove_dir_all(&inner_dir);
    let chosen = selection::record(
        sel,
        pool.len(),
        figure_name,
        &cands,
        &scores,
        pick,
        cfg.genes.epochs,
    );
    let mut refit = settings(pick);
    refit.genes.selection = cfg.genes.selection.clone();
    refit.genes.epochs = chosen.epochs;
    refit.genes.early_stopping = None;
    refit.genes.chosen = Some(chosen.clone());
    // The training patients alone, no validation during the fit (the last epoch is kept); the
    // validation part is still scored for the report.
    let mut whole = data.clone();
    whole.val = Vec::new();
    let r = final_genes(train_genes(&whole, &refit, dir, ctl, on, Some(&data.val))?)?;
    crate::run_record::write_selection(dir, &chosen)?;
    Ok(r)
}

fn final_genes((r, _): (Option<StageResult>, selection::Curve)) -> Result<StageResult> {
    r.ok_or_else(|| TrainError::Msg("the gene stage gave no result".into()))
}

/// One training of the gene encoder. `report`: the validation patients the result reports
/// (`None`: an inner fit of the selection — no test part, no checkpoint; its validation curve
/// is what counts).
fn train_genes(
    data: &Prepared,
    cfg: &RunConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
    report: Option<&[usize]>,
) -> Result<(Option<StageResult>, selection::Curve)> {
    // The gene stage's batches are its units (and the Cox loss's patients of a step).
    cfg.task.check_unit(cfg.genes.batch, "genes.batch")?;
    let task = Task::new(&cfg.task, data)?;
    let gcfg = cfg
        .model
        .gimp()
        .gene_encoder(data.n_genes(), task.width(data));
    let train = with_expression(data, &data.train);
    if train.is_empty() {
        return Err(TrainError::Msg("no training patient has expression".into()));
    }
    let store = ParamStore::new(cfg.seed);
    let enc = GeneEncoder::new(&store.root(), &gcfg)?;
    let mut opt = Adam::new(
        &store,
        AdamConfig::adamw(cfg.genes.lr, cfg.genes.weight_decay),
    );
    let batch = cfg.genes.batch.max(1);
    let stage = GenesTask {
        enc: &enc,
        task: &task,
        data,
        batch,
        train,
        history: Default::default(),
    };
    let trained = Loop {
        stage: match report {
            Some(_) => "genes",
            None => "select",
        },
        dir,
        epochs: cfg.genes.epochs,
        seed: cfg.seed ^ 0x6E6E,
        rate: cosine(
            cfg.genes.lr,
            stage.train.len().div_ceil(batch),
            Chosen::schedule(cfg.genes.chosen.as_ref(), cfg.genes.epochs),
        ),
        accumulate: 1,
        early_stopping: cfg.genes.early_stopping,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &stage)?;
    let curve = selection::Curve {
        start: None,
        epochs: stage.history.take(),
        figure_name: task.validation(&Predictions::none()).figure_name,
    };
    let Some(report) = report else {
        return Ok((None, curve));
    };
    let (val, test) = (stage.predict(report)?, stage.predict(&data.test)?);
    let (arch, config) = gcfg.checkpoint_arch();
    let kept = Kept {
        stage: "pretrain-genes",
        arch: arch.name,
        config,
        settings: cfg,
        seed: cfg.seed,
        fold: cfg.fold,
    };
    let r = keep(&task, data, &store, dir, trained, &kept, val, test)?;
    Ok((Some(r), curve))
}

/// Class-balanced batches (docs/DESIGN.md §8): every batch takes `⌈B/C⌉` (at least 2) patients
/// of each class, cycling a class's shuffled list when it runs out; `⌈n/B⌉` batches an epoch.
pub fn balanced_batches(
    idx: &[usize],
    labels: &[usize],
    batch: usize,
    n_classes: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<Vec<usize>> {
    let mut queues: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for &i in idx {
        queues[labels[i]].push(i);
    }
    queues.retain(|q| !q.is_empty());
    for q in queues.iter_mut() {
        q.shuffle(rng);
    }
    let per = batch.div_ceil(queues.len().max(1)).max(2);
    let mut pos = vec![0usize; queues.len()];
    (0..idx.len().div_ceil(batch.max(1)))
        .map(|_| {
            let mut b = Vec::new();
            for (q, p) in queues.iter_mut().zip(pos.iter_mut()) {
                for _ in 0..per.min(q.len()) {
                    if *p == q.len() {
                        q.shuffle(rng);
                        *p = 0;
                    }
                    b.push(q[*p]);
                    *p += 1;
                }
            }
            b
        })
        .collect()
}

/// Rows of a window of `l` patches (docs/DESIGN.md §7): a shorter bag is repeated end to end,
/// then a uniform start is drawn.
pub fn window_rows(n: usize, l: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let reps = l.div_ceil(n.max(1));
    let len = reps * n;
    let start = rng.gen_range(0..=len - l);
    (start..start + l).map(|i| (i % n) as u32).collect()
}

fn build_gimp(
    data: &Prepared,
    cfg: &RunConfig,
    task: &Task,
    preset: BTreeMap<String, Tensor>,
) -> Result<(ParamStore, Gimp)> {
    let d_in = data
        .d_in
        .ok_or_else(|| TrainError::Msg("the cohort has no slide features".into()))?;
    let gcfg = cfg
        .model
        .gimp()
        .config(d_in, data.n_genes(), task.width(data));
    let store = ParamStore::with_preset(cfg.seed ^ 0xA66, preset);
    let model = Gimp::new(&store.root(), gcfg)?;
    Ok((store, model))
}

fn gene_preset(gene_ckpt: Option<&Path>) -> Result<BTreeMap<String, Tensor>> {
    Ok(match gene_ckpt {
        Some(p) => Checkpoint::load(p)?
            .weights
            .into_iter()
            .map(|(k, v)| (format!("genes.{k}"), v))
            .collect(),
        None => BTreeMap::new(),
    })
}

/// What a GiMP stage's checkpoint is: the model's config and the run's settings.
fn gimp_kept<'a>(model: &Gimp, cfg: &'a RunConfig, stage: &'static str) -> Kept<'a, RunConfig> {
    Kept {
        stage,
        arch: gimp_models::gimp::ARCH.name,
        config: serde_json::to_value(&model.cfg).unwrap_or_default(),
        settings: cfg,
        seed: cfg.seed,
        fold: cfg.fold,
    }
}

/// Stage 2 (docs/DESIGN.md §7–§8): masked patch modelling on windows of `L` patches and the
/// gene-induced triplet loss on `CLS_pat`, on class-balanced batches.
struct PretrainTask<'a> {
    model: &'a Gimp,
    data: &'a Prepared,
    cfg: &'a RunConfig,
    /// Each patient's triplet group (`Task::triplet_group`: its class, or its time bin).
    labels: Vec<usize>,
    /// The training patients with a group (all of them, unless censored patients are left out).
    train: Vec<usize>,
    groups: usize,
}

/// A pre-training window drawn for a patient: its rows of the bag and its masked positions.
struct WindowDraw {
    rows: Vec<u32>,
    masked: Vec<usize>,
}

impl PretrainTask<'_> {
    /// Draws patient `i`'s window (`None` without slides): its rows, then, with MPM, the
    /// positions to mask.
    fn draw_window(&self, i: usize, rng: &mut ChaCha8Rng) -> Result<Option<WindowDraw>> {
        let pc = &self.cfg.pretrain;
        let n = self.data.bag_patches(i)?;
        if n == 0 {
            return Ok(None);
        }
        let rows = window_rows(n, pc.window, rng);
        let masked = match pc.mpm {
            true => {
                let k = ((pc.mask_ratio * pc.window as f64).floor() as usize).min(pc.window);
                rand::seq::index::sample(rng, pc.window, k).into_vec()
            }
            false => Vec::new(),
        };
        Ok(Some(WindowDraw { rows, masked }))
    }

    /// `CLS_img` of patient `i`'s drawn window (masked when MPM is on) and, with MPM, its
    /// reconstruction loss.
    fn encode_window(
        &self,
        i: usize,
        draw: Option<&WindowDraw>,
        mode: &Mode,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let Some(d) = draw else {
            return Ok((self.model.cls_img(None, mode)?, None));
        };
        let w = self
            .data
            .bag_rows(i, &d.rows)?
            .ok_or_else(|| TrainError::Msg("a bag with patches has no rows".into()))?;
        if !self.cfg.pretrain.mpm {
            return Ok((self.model.aggregator.cls(&w, mode)?, None));
        }
        let m = self.model.masked_patch_modelling(&w, &d.masked, mode)?;
        Ok((m.cls_img, Some(m.reconstruction)))
    }
}

impl Stage for PretrainTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        let pc = &self.cfg.pretrain;
        balanced_batches(&self.train, &self.labels, pc.batch, self.groups, rng)
    }

    /// The batch's triplet loss on `CLS_pat` and mean reconstruction loss. With
    /// `window_gradients` one at a time (docs/DESIGN.md §42), every window is first encoded
    /// without keeping its graph, the triplet loss's gradient with respect to the embeddings is
    /// taken, and then each window is encoded again — the same draws, the same dropout — and
    /// backpropagated alone with that gradient: the same gradient, one window's graph in memory
    /// instead of the batch's.
    fn loss(
        &self,
        unit: &[usize],
        rng: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Option<UnitLoss<'_>>> {
        let pc = &self.cfg.pretrain;
        let one_at_a_time = pc.window_gradients.one_at_a_time(unit.len(), pc.window);
        let mut embs = Vec::new();
        let mut recs = Vec::new();
        let mut windows = Vec::new();
        // One at a time, each `CLS_img` is a variable: the triplet loss's gradient reaches it
        // and stops there (the gene half keeps its graph: its learned "missing" embedding
        // takes its gradient from the triplet loss directly).
        let mut cls_vars = Vec::new();
        for &i in unit {
            let draw = self.draw_window(i, rng)?;
            let dropout = mode.rng_state();
            let (mut cls_img, mut rec) = self.encode_window(i, draw.as_ref(), mode)?;
            if one_at_a_time {
                let var = Var::from_tensor(&cls_img.detach())?;
                cls_img = var.as_tensor().clone();
                cls_vars.push(var);
                rec = rec.map(|r| r.detach());
            }
            recs.extend(rec);
            windows.push((i, draw, dropout));
            let emb = match pc.triplet {
                Triplet::ImageOnly => cls_img,
                _ => {
                    let expr = self.data.expression(i)?;
                    let cls_ge = self.model.cls_ge(expr.as_ref(), false, mode)?;
                    Tensor::cat(&[cls_img, cls_ge], 0)?
                }
            };
            embs.push(emb);
        }
        let labels: Vec<usize> = unit.iter().map(|&i| self.labels[i]).collect();
        let tri = match pc.triplet {
            Triplet::Off => None,
            _ => loss::triplet(
                &Tensor::stack(&embs, 0)?,
                &labels,
                pc.margin,
                pc.mining,
                mode,
            )?,
        };
        let rec = match recs.is_empty() {
            true => None,
            false => Some(Tensor::stack(&recs, 0)?.mean_all()?),
        };
        let total = match (&tri, &rec) {
            (Some(t), Some(r)) => {
                (t.affine(pc.triplet_weight, 0.0)? + r.affine(pc.reconstruction_weight, 0.0)?)?
            }
            (Some(t), None) => t.affine(pc.triplet_weight, 0.0)?,
            (None, Some(r)) => r.affine(pc.reconstruction_weight, 0.0)?,
            (None, None) => return Ok(None),
        };
        let value =
            |t: &Option<Tensor>| t.as_ref().map(scalar).transpose().map(|v| v.unwrap_or(0.0));
        let parts = vec![
            ("triplet_loss", value(&tri)?),
            ("reconstruction_loss", value(&rec)?),
        ];
        let pieces: Option<Pieces<'_>> = match one_at_a_time {
            false => None,
            true => {
                // Each window's `CLS_img` gradient, and the triplet loss itself as the first
                // piece (its graph is the gene halves' and the variables').
                let (cls_grads, triplet_piece) = match &tri {
                    Some(t) => {
                        let g = t.backward()?;
                        let grads: Vec<Option<Tensor>> = cls_vars
                            .iter()
                            .map(|v| g.get(v.as_tensor()).cloned())
                            .collect();
                        (grads, Some(t.affine(pc.triplet_weight, 0.0)?))
                    }
                    None => (vec![None; cls_vars.len()], None),
                };
                let rec_weight = pc.reconstruction_weight / recs.len().max(1) as f64;
                let triplet_weight = pc.triplet_weight;
                Some(Box::new(
                    move |sink: &mut dyn FnMut(Tensor) -> Result<()>| {
                        if let Some(t) = triplet_piece {
                            sink(t)?;
                        }
                        for ((i, draw, dropout), g) in windows.into_iter().zip(cls_grads) {
                            let replay = Mode::train(dropout);
                            let (cls_img, rec) = self.encode_window(i, draw.as_ref(), &replay)?;
                            let mut piece = None;
                            if let Some(g) = g {
                                piece =
                                    Some((cls_img * g)?.sum_all()?.affine(triplet_weight, 0.0)?);
                            }
                            if let Some(r) = rec {
                                let r = r.affine(rec_weight, 0.0)?;
                                piece = Some(match piece {
                                    Some(p) => (p + r)?,
                                    None => r,
                                });
                            }
                            if let Some(p) = piece {
                                sink(p)?;
                            }
                        }
                        Ok(())
                    },
                ))
            }
        };
        Ok(Some(UnitLoss {
            total,
            parts,
            pieces,
        }))
    }

    fn validates(&self) -> bool {
        false
    }

    fn validate(&self) -> Result<Validation> {
        Err(TrainError::Msg(
            "GiMP pre-training keeps its last epoch; it has no validation".into(),
        ))
    }
}

/// Stage 2: GiMP pre-training with the gene encoder frozen. The options reproduce the paper's
/// ablations (no MPM, image-only triplet, no triplet). The last epoch is kept.
pub fn pretrain(
    data: &Prepared,
    cfg: &RunConfig,
    gene_ckpt: Option<&Path>,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    let pc = &cfg.pretrain;
    let task = Task::new(&cfg.task, data)?;
    let (store, model) = build_gimp(data, cfg, &task, gene_preset(gene_ckpt)?)?;
    store.set_trainable("genes.", false);
    let mut opt = Adam::new(&store, AdamConfig::adamw(pc.lr, pc.weight_decay));
    let group = |i: usize| task.triplet_group(data, i, pc.censored);
    let train: Vec<usize> = data
        .train
        .iter()
        .copied()
        .filter(|&i| group(i).is_some())
        .collect();
    if train.len() < 2 {
        return Err(TrainError::Msg(format!(
            "GiMP pre-training: {} training patient(s) have a triplet group (a class, or a time \
             bin that is certain: an event, or censoring in the last bin)",
            train.len()
        )));
    }
    let stage = PretrainTask {
        model: &model,
        data,
        cfg,
        labels: (0..data.patients.len())
            .map(|i| group(i).unwrap_or(usize::MAX))
            .collect(),
        groups: task.triplet_groups(data),
        train,
    };
    let trained = Loop {
        stage: "pretrain",
        dir,
        epochs: pc.epochs,
        seed: cfg.seed ^ 0x9E7,
        rate: cosine(
            pc.lr,
            stage.train.len().div_ceil(pc.batch.max(1)),
            pc.epochs,
        ),
        accumulate: 1,
        early_stopping: None,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &stage)?;
    let kept = gimp_kept(&model, cfg, "pretrain");
    Ok(StageResult {
        checkpoint: save(&task, data, &store, dir, trained, &kept)?,
        best_epoch: trained.best_epoch,
        figures: Figures::default(),
    })
}

/// Predictions and mean loss of the fine-tuned model on `idx`, seeing `modalities`.
pub fn evaluate_gimp(
    model: &Gimp,
    task: &Task,
    data: &Prepared,
    idx: &[usize],
    modalities: Modalities,
) -> Result<Predictions> {
    let mode = Mode::inference();
    let mut all = Vec::with_capacity(idx.len());
    for &i in idx {
        // Read by rows from the cache: inference embeds the bag as it reads (DESIGN.md §42).
        let bag = match modalities.slides() {
            true => data.bag_reader(i)?,
            false => None,
        };
        let expr = match modalities.expression() {
            true => data.expression(i)?,
            false => None,
        };
        let bag = bag.as_ref().map(|b| BagInput::Rows(b));
        all.push(model.logits(bag, expr.as_ref(), &mode)?);
    }
    task.predictions(data, idx.to_vec(), all, ClassLoss::CrossEntropy)
}

/// Stage 3 (docs/DESIGN.md §9): the pre-trained aggregator, the frozen gene encoder and an MLP
/// head on `CLS_pat`; whole bags (or a random cap), one patient a step.
struct FinetuneTask<'a> {
    model: &'a Gimp,
    task: &'a Task,
    data: &'a Prepared,
    cfg: &'a RunConfig,
    /// Patients per unit: 1, or a Cox step's patients (`finetune.accumulate`).
    unit: usize,
}

impl Stage for FinetuneTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        shuffled_units(&self.data.train, self.unit, rng)
    }

    /// The unit's loss: each patient's answers (both halves; with `modality_subsets` also the
    /// slide alone and the expression alone), the task's loss over the unit's patients for
    /// each kind of answer, averaged over the kinds.
    fn loss(
        &self,
        unit: &[usize],
        rng: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Option<UnitLoss<'_>>> {
        let mut answers: [(Vec<usize>, Vec<Tensor>); 3] = Default::default();
        for &i in unit {
            for (kind, logits) in self.answers(i, rng, mode)? {
                answers[kind as usize].0.push(i);
                answers[kind as usize].1.push(logits);
            }
        }
        let mut losses = Vec::new();
        for (patients, logits) in answers.iter().filter(|a| !a.0.is_empty()) {
            let rows = Tensor::stack(logits, 0)?;
            if let Some(l) =
                self.task
                    .unit_loss(self.data, &rows, patients, ClassLoss::CrossEntropy)?
            {
                losses.push(l);
            }
        }
        // Summed in order, as the three answers' cross-entropies always were.
        let n = losses.len() as f64;
        let mut losses = losses.into_iter();
        let Some(mut total) = losses.next() else {
            return Ok(None);
        };
        for l in losses {
            total = (total + l)?;
        }
        Ok(Some(total.affine(1.0 / n, 0.0)?.into()))
    }

    fn validates(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<Validation> {
        let fc = &self.cfg.finetune;
        let eval = |idx: &[usize], m| evaluate_gimp(self.model, self.task, self.data, idx, m);
        let mut p = eval(&self.data.val, fc.modalities)?;
        if fc.modality_subsets && fc.modalities == Modalities::Both {
            // The same three answers as the loss, each patient once per answer it can give.
            let both = |i: &&usize| {
                let q = &self.data.patients[**i];
                !q.slides.is_empty() && q.expression.is_some()
            };
            let val: Vec<usize> = self.data.val.iter().filter(both).copied().collect();
            p.extend(eval(&val, Modalities::Image)?);
            if self.model.cfg.expression_alone == ExpressionAlone::FusionHead {
                p.extend(eval(&val, Modalities::Genes)?);
            }
        }
        Ok(self.task.validation(&p))
    }
}

impl FinetuneTask<'_> {
    /// Patient `i`'s training answers ([`Gimp::training_answers`]) from the inputs the stage
    /// shows it: its bag (capped), its expression, hidden now and then by modality dropout.
    fn answers(
        &self,
        i: usize,
        rng: &mut ChaCha8Rng,
        mode: &Mode,
    ) -> Result<Vec<(gimp_models::gimp::Answer, Tensor)>> {
        let fc = &self.cfg.finetune;
        let bag = match fc.modalities.slides() {
            true => training_bag(self.data, i, fc.max_patches, rng)?,
            false => None,
        };
        let expr = match fc.modalities.expression() {
            true => self.data.expression(i)?,
            false => None,
        };
        // Modality dropout: only patients with both halves lose their expression, so no step
        // sees neither. No draw otherwise (off, the image-only part, or the answers of every
        // subset), so those runs keep the random stream they have without it.
        let hide = !fc.modality_subsets
            && fc.modality_dropout > 0.0
            && bag.is_some()
            && expr.is_some()
            && rng.gen::<f64>() < fc.modality_dropout;
        let expr = if hide { None } else { expr };
        Ok(self.model.training_answers(
            bag.as_deref().map(|b| BagInput::Rows(b)),
            expr.as_ref(),
            fc.modality_subsets,
            fc.train_genes,
            mode,
        )?)
    }
}

/// Stage 3: fine-tunes from a GiMP pre-training checkpoint (`init`), else from a gene
/// pre-training checkpoint, else from scratch; validation after every epoch; the best epoch is
/// kept and the test split is reported at it.
pub fn finetune(
    data: &Prepared,
    cfg: &RunConfig,
    init: Option<&Path>,
    gene_ckpt: Option<&Path>,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    let fc = &cfg.finetune;
    cfg.task.check_unit(fc.accumulate, "finetune.accumulate")?;
    let task = Task::new(&cfg.task, data)?;
    let preset = match init {
        Some(p) => Checkpoint::load(p)?.weights,
        None => gene_preset(gene_ckpt)?,
    };
    // The gene encoder's classifier answers expression alone only where it was trained (gene
    // pre-training, carried by either checkpoint) and stays as trained (frozen).
    let trained_genes = preset.keys().any(|k| k.starts_with("genes."));
    let subsets = fc.modality_subsets && fc.modalities == Modalities::Both;
    let expression_alone = match subsets && !fc.train_genes && trained_genes {
        true => ExpressionAlone::GeneEncoder,
        false => ExpressionAlone::FusionHead,
    };
    let (store, mut model) = build_gimp(data, cfg, &task, preset)?;
    model.cfg.expression_alone = expression_alone;
    if !fc.train_genes {
        store.set_trainable("genes.", false);
    }
    store.set_trainable("mpm.", false);
    if fc.modalities.slides() {
        data.check_memory(&data.train, fc.max_patches, fc.memory_limit_gb, |n| {
            Some(model.finetune_step_bytes(n))
        })?;
    }
    let _whole_bag = match fc.modalities.slides() {
        true => data.whole_bag_mode(&data.train, fc.max_patches)?,
        false => None,
    };
    let mut opt = Adam::new(&store, AdamConfig::adamw(fc.lr, fc.weight_decay));
    let (unit, accumulate) = cfg.task.units(fc.accumulate, false);
    let stage = FinetuneTask {
        model: &model,
        task: &task,
        data,
        cfg,
        unit,
    };
    let trained = Loop {
        stage: "finetune",
        dir,
        epochs: fc.epochs,
        seed: cfg.seed ^ 0xF17E,
        rate: cosine(
            fc.lr,
            data.train.len().div_ceil(fc.accumulate.max(1)),
            fc.epochs,
        ),
        accumulate,
        early_stopping: fc.early_stopping,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &stage)?;
    let val = evaluate_gimp(&model, &task, data, &data.val, fc.modalities)?;
    let test = evaluate_gimp(&model, &task, data, &data.test, fc.modalities)?;
    let kept = gimp_kept(&model, cfg, "finetune");
    keep(&task, data, &store, dir, trained, &kept, val, test)
}

/// The stages of one GiMP run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct GimpRun {
    /// Gene pre-training; skipped when nothing reads the gene encoder (the image-only part
    /// without gene-induced triplets).
    pub genes: Option<StageResult>,
    /// GiMP pre-training; skipped when `pretrain.epochs` is 0.
    pub pretrain: Option<StageResult>,
    pub finetune: StageResult,
}

/// Which of the first two stages [`train_gimp`] runs for `cfg`: gene pre-training unless
/// nothing reads the gene encoder (the image-only part without gene-induced triplets), and
/// GiMP pre-training unless `pretrain.epochs` is 0.
pub fn stages_run(cfg: &RunConfig) -> (bool, bool) {
    let pretraining = cfg.pretrain.epochs > 0;
    let genes = cfg.finetune.modalities.expression()
        || (pretraining && cfg.pretrain.triplet == Triplet::GeneInduced);
    (genes, pretraining)
}

/// GiMP's three stages in order, in the run folder's [`StageDir`]s: gene
/// pre-training, then GiMP pre-training from its encoder, then fine-tuning from the pre-trained
/// model (or from the gene encoder when there is no pre-training).
pub fn train_gimp(
    data: &Prepared,
    cfg: &RunConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<GimpRun> {
    let (needs_genes, pretraining) = stages_run(cfg);
    let genes = match needs_genes {
        true => Some(pretrain_genes(
            data,
            cfg,
            &StageDir::Genes.dir(dir),
            ctl,
            on,
        )?),
        false => None,
    };
    let gene_ckpt = genes.as_ref().map(|g| g.checkpoint.as_path());
    let pre = match pretraining {
        true => Some(pretrain(
            data,
            cfg,
            gene_ckpt,
            &StageDir::Pretrain.dir(dir),
            ctl,
            on,
        )?),
        false => None,
    };
    let init = pre.as_ref().map(|p| p.checkpoint.as_path());
    let finetune_dir = StageDir::Finetune.dir(dir);
    let finetune = finetune(data, cfg, init, gene_ckpt, &finetune_dir, ctl, on)?;
    Ok(GimpRun {
        genes,
        pretrain: pre,
        finetune,
    })
}
