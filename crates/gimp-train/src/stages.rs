//! The three training stages of GiMP, each a [`Task`] for the one training loop, and
//! [`train_gimp`], the one function that chains them.

use crate::config::{GeneEncoderKind, Modalities, RunConfig, Triplet};
use crate::data::{DataErr, Prepared, Result};
use crate::objective::Objective;
use crate::trainer::{
    provenance, save_checkpoint, Control, Loop, OnProgress, Predictions, Rate, StageResult, Task,
    Trained, UnitLoss,
};
use candle_core::{Device, Tensor};
use gimp_models::aggregator::AggregatorConfig;
use gimp_models::gimp::{ExpressionAlone, GeneEncoder, GeneEncoderConfig, Gimp, GimpConfig};
use gimp_models::group_msa::GroupMsaConfig;
use gimp_models::snn::SnnConfig;
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::nystrom::NystromConfig;
use gimp_nn::optim::{Adam, AdamConfig, Cosine};
use gimp_nn::{loss, Mode, ParamStore};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::path::Path;

use crate::trainer::scalar;

/// The cross-entropy of logits `[B, C]` (the classification loss of every GiMP stage).
fn cross_entropy(logits: &Tensor, labels: &[usize]) -> candle_core::Result<Tensor> {
    loss::cross_entropy(logits, labels)
}

/// Cosine decay from `lr` over `steps_per_epoch × epochs` steps, no warm-up (docs/DESIGN.md §9).
fn cosine(lr: f64, steps_per_epoch: usize, epochs: usize) -> Rate {
    Rate::Cosine(Cosine {
        base: lr,
        warmup: 0,
        total: steps_per_epoch * epochs.max(1),
    })
}

/// A random subset of `cap` rows of a bag, kept in slide order (the optional training cap).
pub(crate) fn cap_bag(
    bag: Option<Tensor>,
    cap: Option<usize>,
    rng: &mut ChaCha8Rng,
) -> Result<Option<Tensor>> {
    let (Some(b), Some(cap)) = (&bag, cap) else {
        return Ok(bag);
    };
    let n = b.dim(0)?;
    if n <= cap {
        return Ok(bag);
    }
    let mut rows = rand::seq::index::sample(rng, n, cap).into_vec();
    rows.sort_unstable();
    let rows: Vec<u32> = rows.into_iter().map(|r| r as u32).collect();
    Ok(Some(b.index_select(
        &Tensor::from_vec(rows, cap, &Device::Cpu)?,
        0,
    )?))
}

pub fn gene_config(cfg: &RunConfig, n_genes: usize, n_classes: usize) -> GeneEncoderConfig {
    match cfg.model.gene_encoder {
        GeneEncoderKind::GroupMsa => GeneEncoderConfig::GroupMsa(GroupMsaConfig {
            n_genes,
            fragment: cfg.model.fragment,
            dim: cfg.model.dim,
            groups: cfg.model.groups,
            heads: cfg.model.heads,
            mlp_ratio: 4,
            dropout: cfg.model.gene_dropout,
            n_classes,
            tokenizer: cfg.model.gene_tokenizer,
        }),
        GeneEncoderKind::Snn => GeneEncoderConfig::Snn(SnnConfig::small(n_genes, n_classes)),
    }
}

pub fn gimp_config(cfg: &RunConfig, d_in: usize, n_genes: usize, n_classes: usize) -> GimpConfig {
    let mut agg = AggregatorConfig::gimp(d_in);
    agg.dim = cfg.model.dim;
    agg.attention = NystromConfig {
        dim: cfg.model.dim,
        heads: cfg.model.heads,
        dim_head: cfg.model.dim / cfg.model.heads.max(1),
        landmarks: cfg.model.landmarks,
        ..NystromConfig::transmil(cfg.model.dim)
    };
    GimpConfig {
        aggregator: agg,
        genes: gene_config(cfg, n_genes.max(1), n_classes),
        n_classes,
        head_dropout: cfg.model.head_dropout,
        expression_alone: ExpressionAlone::FusionHead,
    }
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
                .ok_or_else(|| DataErr::Msg(format!("patient {} has no expression", i)))
        })
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// Stage 1 (docs/DESIGN.md §4): supervised GroupMSA (or SNN) on expression alone, in batches.
struct GenesTask<'a> {
    enc: &'a GeneEncoder,
    objective: &'a Objective,
    data: &'a Prepared,
    train: Vec<usize>,
    batch: usize,
}

impl GenesTask<'_> {
    /// Labels, probabilities and mean loss of the gene encoder's head on `idx` (those with
    /// expression).
    fn predict(&self, idx: &[usize]) -> Result<Predictions> {
        let idx = with_expression(self.data, idx);
        if idx.is_empty() {
            return Ok(Predictions {
                loss: f64::NAN,
                ..Default::default()
            });
        }
        let (_, logits) = self
            .enc
            .forward(&stack_expression(self.data, &idx)?, &Mode::inference())?;
        let rows = (0..idx.len())
            .map(|r| logits.get(r))
            .collect::<candle_core::Result<_>>()?;
        let mut p = self
            .objective
            .predictions(self.data, idx, rows, &cross_entropy)?;
        if self.objective.survival().is_none() {
            // The stage's validation loss is its training loss on the whole part: the batch's
            // cross-entropy.
            let labels: Vec<usize> = p
                .patients
                .iter()
                .map(|&i| self.data.patients[i].label)
                .collect();
            p.loss = scalar(&cross_entropy(&logits, &labels)?)?;
        }
        Ok(p)
    }
}

impl Task for GenesTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        let mut order = self.train.clone();
        order.shuffle(rng);
        order.chunks(self.batch).map(<[usize]>::to_vec).collect()
    }

    fn loss(&self, unit: &[usize], _: &mut ChaCha8Rng, mode: &Mode) -> Result<Option<UnitLoss>> {
        let (_, logits) = self
            .enc
            .forward(&stack_expression(self.data, unit)?, mode)?;
        let l = self
            .objective
            .unit_loss(self.data, &logits, unit, &cross_entropy)?;
        Ok(l.map(UnitLoss::from))
    }

    fn validates(&self) -> bool {
        true
    }

    fn validate(&self) -> Result<Predictions> {
        self.predict(&self.data.val)
    }
}

/// Stage 1: trains the gene encoder; the best epoch on validation is kept and saved as a
/// checkpoint `model run` can use.
pub fn pretrain_genes(
    data: &Prepared,
    cfg: &RunConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    // The gene stage's batches are its units (and the Cox loss's patients of a step).
    cfg.task.check_unit(cfg.genes.batch, "genes.batch")?;
    let objective = Objective::new(&cfg.task, data)?;
    let gcfg = gene_config(cfg, data.n_genes(), objective.width(data));
    let train = with_expression(data, &data.train);
    if train.is_empty() {
        return Err(DataErr::Msg("no training patient has expression".into()));
    }
    let store = ParamStore::new(cfg.seed);
    let enc = GeneEncoder::new(&store.root(), &gcfg)?;
    let mut opt = Adam::new(
        &store,
        AdamConfig::adamw(cfg.genes.lr, cfg.genes.weight_decay),
    );
    let batch = cfg.genes.batch.max(1);
    let task = GenesTask {
        enc: &enc,
        objective: &objective,
        data,
        batch,
        train,
    };
    let trained = Loop {
        stage: "genes",
        dir,
        epochs: cfg.genes.epochs,
        seed: cfg.seed ^ 0x6E6E,
        rate: cosine(
            cfg.genes.lr,
            task.train.len().div_ceil(batch),
            cfg.genes.epochs,
        ),
        accumulate: 1,
        early_stopping: cfg.genes.early_stopping,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &task)?;
    let (val, test) = (task.predict(&data.val)?, task.predict(&data.test)?);
    let (arch, config) = gcfg.checkpoint_arch();
    let path = dir.join("model.safetensors");
    let info = provenance("pretrain-genes", trained, cfg.seed, cfg.fold, cfg);
    save_checkpoint(&path, arch.name, config, &store, data, &objective, info)?;
    Ok(objective.stage_result(data, path, trained, &val, test, cfg.seed))
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
    objective: &Objective,
    preset: BTreeMap<String, Tensor>,
) -> Result<(ParamStore, Gimp)> {
    let d_in = data
        .d_in
        .ok_or_else(|| DataErr::Msg("the cohort has no slide features".into()))?;
    let gcfg = gimp_config(cfg, d_in, data.n_genes(), objective.width(data));
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

/// Saves a GiMP stage's weights as `dir/model.safetensors`; returns the path.
#[allow(clippy::too_many_arguments)]
fn save_gimp(
    model: &Gimp,
    store: &ParamStore,
    data: &Prepared,
    objective: &Objective,
    cfg: &RunConfig,
    stage: &str,
    trained: Trained,
    dir: &Path,
) -> Result<std::path::PathBuf> {
    let path = dir.join("model.safetensors");
    let config = serde_json::to_value(&model.cfg).unwrap_or_default();
    let info = provenance(stage, trained, cfg.seed, cfg.fold, cfg);
    let arch = gimp_models::gimp::ARCH.name;
    save_checkpoint(&path, arch, config, store, data, objective, info)?;
    Ok(path)
}

/// Stage 2 (docs/DESIGN.md §7–§8): masked patch modelling on windows of `L` patches and the
/// gene-induced triplet loss on `CLS_pat`, on class-balanced batches.
struct PretrainTask<'a> {
    model: &'a Gimp,
    data: &'a Prepared,
    cfg: &'a RunConfig,
    /// Each patient's triplet group (`Objective::triplet_group`: its class, or its time bin).
    labels: Vec<usize>,
    /// The training patients with a group (all of them, unless censored patients are left out).
    train: Vec<usize>,
    groups: usize,
}

impl PretrainTask<'_> {
    /// `CLS_img` of patient `i` from a window of its bag (masked when MPM is on; its
    /// reconstruction loss pushed to `recs`).
    fn cls_img(
        &self,
        i: usize,
        rng: &mut ChaCha8Rng,
        mode: &Mode,
        recs: &mut Vec<Tensor>,
    ) -> Result<Tensor> {
        let pc = &self.cfg.pretrain;
        let Some(bag) = self.data.bag(i)? else {
            return Ok(self.model.cls_img(None, mode)?);
        };
        let rows = window_rows(bag.dim(0)?, pc.window, rng);
        let w = bag.index_select(&Tensor::from_vec(rows, pc.window, &Device::Cpu)?, 0)?;
        if !pc.mpm {
            return Ok(self.model.aggregator.cls(&w, mode)?);
        }
        let k = ((pc.mask_ratio * pc.window as f64).floor() as usize).min(pc.window);
        let masked = rand::seq::index::sample(rng, pc.window, k).into_vec();
        let m = self.model.masked_patch_modelling(&w, &masked, mode)?;
        recs.push(m.reconstruction);
        Ok(m.cls_img)
    }
}

impl Task for PretrainTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        let pc = &self.cfg.pretrain;
        balanced_batches(&self.train, &self.labels, pc.batch, self.groups, rng)
    }

    fn loss(&self, unit: &[usize], rng: &mut ChaCha8Rng, mode: &Mode) -> Result<Option<UnitLoss>> {
        let pc = &self.cfg.pretrain;
        let mut embs = Vec::new();
        let mut recs = Vec::new();
        for &i in unit {
            let cls_img = self.cls_img(i, rng, mode, &mut recs)?;
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
        Ok(Some(UnitLoss {
            total,
            parts: vec![
                ("triplet_loss", value(&tri)?),
                ("reconstruction_loss", value(&rec)?),
            ],
        }))
    }

    fn validates(&self) -> bool {
        false
    }

    fn validate(&self) -> Result<Predictions> {
        Ok(Predictions::default())
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
    let objective = Objective::new(&cfg.task, data)?;
    let (store, model) = build_gimp(data, cfg, &objective, gene_preset(gene_ckpt)?)?;
    store.set_trainable("genes.", false);
    let mut opt = Adam::new(&store, AdamConfig::adamw(pc.lr, pc.weight_decay));
    let group = |i: usize| objective.triplet_group(data, i, pc.censored);
    let train: Vec<usize> = data
        .train
        .iter()
        .copied()
        .filter(|&i| group(i).is_some())
        .collect();
    if train.len() < 2 {
        return Err(DataErr::Msg(format!(
            "GiMP pre-training: {} training patient(s) have a triplet group (a class, or a time \
             bin that is certain: an event, or censoring in the last bin)",
            train.len()
        )));
    }
    let task = PretrainTask {
        model: &model,
        data,
        cfg,
        labels: (0..data.patients.len())
            .map(|i| group(i).unwrap_or(usize::MAX))
            .collect(),
        groups: objective.triplet_groups(data),
        train,
    };
    let trained = Loop {
        stage: "pretrain",
        dir,
        epochs: pc.epochs,
        seed: cfg.seed ^ 0x9E7,
        rate: cosine(pc.lr, task.train.len().div_ceil(pc.batch.max(1)), pc.epochs),
        accumulate: 1,
        early_stopping: None,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &task)?;
    let path = save_gimp(
        &model, &store, data, &objective, cfg, "pretrain", trained, dir,
    )?;
    Ok(StageResult {
        checkpoint: path,
        best_epoch: trained.best_epoch,
        val: None,
        test: None,
        val_survival: None,
        test_survival: None,
        test_predictions: None,
    })
}

/// Predictions and mean loss of the fine-tuned model on `idx`, seeing `modalities`.
pub fn evaluate_gimp(
    model: &Gimp,
    objective: &Objective,
    data: &Prepared,
    idx: &[usize],
    modalities: Modalities,
) -> Result<Predictions> {
    let mode = Mode::inference();
    let mut all = Vec::with_capacity(idx.len());
    for &i in idx {
        let bag = if modalities.slides() {
            data.bag(i)?
        } else {
            None
        };
        let expr = if modalities.expression() {
            data.expression(i)?
        } else {
            None
        };
        let alone = match (&bag, &expr) {
            (None, Some(e)) => model.expression_alone_logits(e)?,
            _ => None,
        };
        let logits = match alone {
            Some(l) => l,
            None => model.head(
                &Tensor::cat(
                    &[
                        model.cls_img(bag.as_ref(), &mode)?,
                        model.cls_ge(expr.as_ref(), false, &mode)?,
                    ],
                    0,
                )?,
                &mode,
            )?,
        };
        all.push(logits);
    }
    objective.predictions(data, idx.to_vec(), all, &cross_entropy)
}

/// Stage 3 (docs/DESIGN.md §9): the pre-trained aggregator, the frozen gene encoder and an MLP
/// head on `CLS_pat`; whole bags (or a random cap), one patient a step.
struct FinetuneTask<'a> {
    model: &'a Gimp,
    objective: &'a Objective,
    data: &'a Prepared,
    cfg: &'a RunConfig,
    /// Patients per unit: 1, or a Cox step's patients (`finetune.accumulate`).
    unit: usize,
}

impl Task for FinetuneTask<'_> {
    fn plan_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<Vec<usize>> {
        let mut order = self.data.train.clone();
        order.shuffle(rng);
        order.chunks(self.unit).map(<[usize]>::to_vec).collect()
    }

    /// The unit's loss: each patient's answers (both halves; with `modality_subsets` also the
    /// slide alone and the expression alone), the objective's loss over the unit's patients for
    /// each kind of answer, averaged over the kinds.
    fn loss(&self, unit: &[usize], rng: &mut ChaCha8Rng, mode: &Mode) -> Result<Option<UnitLoss>> {
        let mut answers: [(Vec<usize>, Vec<Tensor>); 3] = Default::default();
        for &i in unit {
            for (kind, logits) in self.answers(i, rng, mode)? {
                answers[kind].0.push(i);
                answers[kind].1.push(logits);
            }
        }
        let mut losses = Vec::new();
        for (patients, logits) in answers.iter().filter(|a| !a.0.is_empty()) {
            let rows = Tensor::stack(logits, 0)?;
            if let Some(l) = self
                .objective
                .unit_loss(self.data, &rows, patients, &cross_entropy)?
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

    fn validate(&self) -> Result<Predictions> {
        let fc = &self.cfg.finetune;
        let eval = |idx: &[usize], m| evaluate_gimp(self.model, self.objective, self.data, idx, m);
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
        Ok(p)
    }
}

impl FinetuneTask<'_> {
    /// Patient `i`'s training answers, each `(kind, logits [K])`: kind 0 with both halves (or
    /// what the patient has), 1 the slide alone, 2 the expression alone.
    fn answers(&self, i: usize, rng: &mut ChaCha8Rng, mode: &Mode) -> Result<Vec<(usize, Tensor)>> {
        let fc = &self.cfg.finetune;
        let bag = match fc.modalities.slides() {
            true => self.data.bag(i)?,
            false => None,
        };
        let expr = match fc.modalities.expression() {
            true => self.data.expression(i)?,
            false => None,
        };
        let bag = cap_bag(bag, fc.max_patches, rng)?;
        let head = |img: &Tensor, ge: &Tensor| -> Result<Tensor> {
            Ok(self.model.head(&Tensor::cat(&[img, ge], 0)?, mode)?)
        };
        if fc.modality_subsets && bag.is_some() && expr.is_some() {
            // Both halves once; the head then answers with both, with the slide alone and with
            // the expression alone, equally weighted (docs/DESIGN.md §31). The last term is kept
            // even where the gene encoder's classifier answers expression alone: without it the
            // slide-alone answers were worse (demo seed 0: 26 → 22 of 32 right).
            let img = self.model.cls_img(bag.as_ref(), mode)?;
            let ge = self.model.cls_ge(expr.as_ref(), fc.train_genes, mode)?;
            let no_ge = self.model.cls_ge(None, false, mode)?;
            let no_img = self.model.cls_img(None, mode)?;
            return Ok(vec![
                (0, head(&img, &ge)?),
                (1, head(&img, &no_ge)?),
                (2, head(&no_img, &ge)?),
            ]);
        }
        // Modality dropout: only patients with both halves lose their expression, so no step
        // sees neither. No draw otherwise (off, or the image-only part), so those runs keep the
        // random stream they have without it.
        let hide = fc.modality_dropout > 0.0
            && bag.is_some()
            && expr.is_some()
            && rng.gen::<f64>() < fc.modality_dropout;
        let expr = if hide { None } else { expr };
        let img = self.model.cls_img(bag.as_ref(), mode)?;
        let ge = self.model.cls_ge(expr.as_ref(), fc.train_genes, mode)?;
        Ok(vec![(0, head(&img, &ge)?)])
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
    let objective = Objective::new(&cfg.task, data)?;
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
    let (store, mut model) = build_gimp(data, cfg, &objective, preset)?;
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
    // Cox compares the patients of a step, so a step's patients are one unit; otherwise one
    // patient a unit, their gradients accumulated.
    let unit = if cfg.task.is_cox() { fc.accumulate } else { 1 };
    let task = FinetuneTask {
        model: &model,
        objective: &objective,
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
        accumulate: if unit > 1 { 1 } else { fc.accumulate },
        early_stopping: fc.early_stopping,
        control: ctl,
        on,
    }
    .run(&store, &mut opt, &task)?;
    let val = evaluate_gimp(&model, &objective, data, &data.val, fc.modalities)?;
    let test = evaluate_gimp(&model, &objective, data, &data.test, fc.modalities)?;
    let path = save_gimp(
        &model, &store, data, &objective, cfg, "finetune", trained, dir,
    )?;
    Ok(objective.stage_result(data, path, trained, &val, test, cfg.seed))
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

/// GiMP's three stages in order, in `dir/genes`, `dir/pretrain` and `dir/finetune`: gene
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
        true => Some(pretrain_genes(data, cfg, &dir.join("genes"), ctl, on)?),
        false => None,
    };
    let gene_ckpt = genes.as_ref().map(|g| g.checkpoint.as_path());
    let pre = match pretraining {
        true => Some(pretrain(
            data,
            cfg,
            gene_ckpt,
            &dir.join("pretrain"),
            ctl,
            on,
        )?),
        false => None,
    };
    let init = pre.as_ref().map(|p| p.checkpoint.as_path());
    let finetune = finetune(data, cfg, init, gene_ckpt, &dir.join("finetune"), ctl, on)?;
    Ok(GimpRun {
        genes,
        pretrain: pre,
        finetune,
    })
}
