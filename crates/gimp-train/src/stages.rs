//! The three training stages of GiMP and the evaluation of a trained model.

use crate::config::{RunConfig, Triplet};
use crate::data::{DataErr, Prepared, Result};
use crate::resume::{self, LoopState};
use candle_core::{Device, Tensor};
use gimp_metrics::Report;
use gimp_models::aggregator::AggregatorConfig;
use gimp_models::gimp::{GeneEncoder, GeneEncoderConfig, Gimp, GimpConfig};
use gimp_models::group_msa::GroupMsaConfig;
use gimp_models::snn::SnnConfig;
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::nystrom::NystromConfig;
use gimp_nn::optim::{Adam, AdamConfig, Cosine, Kind};
use gimp_nn::{loss, ops, Mode, ParamStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

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
    /// Stop (with [`DataErr::Stopped`]) after this many epochs, as an interruption would.
    pub stop_after: Option<usize>,
}

/// One line per epoch in `{dir}/log.jsonl` (appended to when a run resumes).
pub(crate) struct Log(std::fs::File);

impl Log {
    /// Opens the log for a run that has completed `epochs_done` epochs: lines of later epochs (an
    /// epoch a kill interrupted after it was logged but before its state was saved) and a
    /// half-written last line are dropped, so the resumed log has each epoch once.
    pub(crate) fn open(dir: &Path, epochs_done: usize) -> Result<Self> {
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

    pub(crate) fn write(&mut self, v: serde_json::Value) {
        let _ = writeln!(self.0, "{v}");
        let _ = self.0.flush();
    }
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// Deep copies of every parameter (a `Var` is updated in place, so plain clones would follow it).
pub(crate) fn snapshot(store: &ParamStore) -> Result<BTreeMap<String, Tensor>> {
    store
        .tensors()
        .into_iter()
        .map(|(k, t)| Ok((k, t.detach().copy()?)))
        .collect()
}

pub(crate) fn restore(store: &ParamStore, snap: &BTreeMap<String, Tensor>) -> Result<()> {
    for (name, p) in store.params() {
        if let Some(t) = snap.get(&name) {
            p.var.set(t)?;
        }
    }
    Ok(())
}

/// The loop state to start from: the saved one when resuming, else a fresh one.
fn start(
    dir: &Path,
    store: &ParamStore,
    opt: &mut Adam,
    ctl: Control,
    seed: u64,
) -> Result<LoopState> {
    let saved = if ctl.resume {
        resume::load(&dir.join("state.safetensors"), store, opt)?
    } else {
        None
    };
    Ok(match saved {
        Some(s) => s,
        None => LoopState {
            rng: ChaCha8Rng::seed_from_u64(seed),
            epochs_done: 0,
            step: 0,
            best: None,
            best_epoch: 0,
            best_snap: snapshot(store)?,
        },
    })
}

/// Saves the loop at the end of an epoch and honours `stop_after`.
pub(crate) fn end_epoch(
    dir: &Path,
    store: &ParamStore,
    opt: &Adam,
    st: &mut LoopState,
    epoch: usize,
    ctl: Control,
) -> Result<()> {
    st.epochs_done = epoch + 1;
    resume::save(&dir.join("state.safetensors"), store, opt, st)?;
    if ctl.stop_after == Some(st.epochs_done) {
        return Err(DataErr::Stopped(st.epochs_done));
    }
    Ok(())
}

/// End-of-epoch validation bookkeeping shared by the supervised stages: log the epoch, keep the
/// best weights (highest validation accuracy, ties → lower loss; every epoch when there is no
/// validation set).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_validation(
    log: &mut Log,
    st: &mut LoopState,
    store: &ParamStore,
    epoch: usize,
    train_loss: f64,
    labels: &[usize],
    probs: &[Vec<f64>],
    val_loss: f64,
) -> Result<()> {
    let acc = if labels.is_empty() {
        f64::NAN
    } else {
        gimp_metrics::accuracy(labels, &argmax(probs))
    };
    log.write(serde_json::json!({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_accuracy": acc}));
    if labels.is_empty() || better(acc, val_loss, st.best) {
        st.best = Some((acc, val_loss));
        st.best_epoch = epoch;
        st.best_snap = snapshot(store)?;
    }
    Ok(())
}

/// One optimiser step on `loss` at the schedule's rate; returns the loss value.
pub(crate) fn optimise(opt: &mut Adam, loss: &Tensor, lr: f64, step: &mut usize) -> Result<f64> {
    let grads = opt.collect(&loss.backward()?);
    opt.step_with(&grads, lr)?;
    *step += 1;
    scalar(loss)
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

fn adamw(lr: f64, wd: f64) -> AdamConfig {
    AdamConfig {
        kind: Kind::AdamW,
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: wd,
    }
}

fn probs_of(logits: &Tensor) -> Result<Vec<f64>> {
    Ok(ops::softmax_last(logits)?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?)
}

/// Highest validation accuracy, ties broken by the lower validation loss (`gimp.md` §6).
fn better(acc: f64, loss: f64, best: Option<(f64, f64)>) -> bool {
    match best {
        None => true,
        Some((ba, bl)) => acc > ba || (acc == ba && loss < bl),
    }
}

pub fn gene_config(cfg: &RunConfig, n_genes: usize, n_classes: usize) -> Result<GeneEncoderConfig> {
    Ok(match cfg.model.gene_encoder.as_str() {
        "group_msa" => GeneEncoderConfig::GroupMsa(GroupMsaConfig {
            n_genes,
            fragment: cfg.model.fragment,
            dim: cfg.model.dim,
            groups: cfg.model.groups,
            heads: cfg.model.heads,
            mlp_ratio: 4,
            dropout: cfg.model.gene_dropout,
            n_classes,
            tokenizer: match cfg.model.gene_tokenizer.as_str() {
                "shared" => gimp_models::group_msa::Tokenizer::Shared,
                "per_fragment" => gimp_models::group_msa::Tokenizer::PerFragment,
                other => {
                    return Err(DataErr::Msg(format!(
                        "model.gene_tokenizer must be shared or per_fragment, not '{other}'"
                    )))
                }
            },
        }),
        "snn" => GeneEncoderConfig::Snn(SnnConfig::small(n_genes, n_classes)),
        other => {
            return Err(DataErr::Msg(format!(
                "gene_encoder must be group_msa or snn, not '{other}'"
            )))
        }
    })
}

pub fn gimp_config(
    cfg: &RunConfig,
    d_in: usize,
    n_genes: usize,
    n_classes: usize,
) -> Result<GimpConfig> {
    let mut agg = AggregatorConfig::gimp(d_in);
    agg.dim = cfg.model.dim;
    agg.attention = NystromConfig {
        dim: cfg.model.dim,
        heads: cfg.model.heads,
        dim_head: cfg.model.dim / cfg.model.heads.max(1),
        landmarks: cfg.model.landmarks,
        ..NystromConfig::transmil(cfg.model.dim)
    };
    Ok(GimpConfig {
        aggregator: agg,
        genes: gene_config(cfg, n_genes.max(1), n_classes)?,
        n_classes,
        head_dropout: cfg.model.head_dropout,
    })
}

/// Outcome of a stage: where its checkpoint is and its validation/test metrics.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    pub checkpoint: std::path::PathBuf,
    pub best_epoch: usize,
    pub val: Option<Report>,
    pub test: Option<Report>,
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
        .map(|&i| data.expression(i).map(|t| t.expect("filtered")))
        .collect::<Result<_>>()?;
    Ok(Tensor::stack(&rows, 0)?)
}

/// Evaluates the gene encoder's head on `idx` (patients with expression): labels, probabilities
/// and the mean loss.
fn eval_genes(
    enc: &GeneEncoder,
    data: &Prepared,
    idx: &[usize],
) -> Result<(Vec<usize>, Vec<Vec<f64>>, f64)> {
    let idx = with_expression(data, idx);
    if idx.is_empty() {
        return Ok((vec![], vec![], f64::NAN));
    }
    let mode = Mode::inference();
    let (_, logits) = enc.forward(&stack_expression(data, &idx)?, &mode)?;
    let labels: Vec<usize> = idx.iter().map(|&i| data.patients[i].label).collect();
    let l = scalar(&loss::cross_entropy(&logits, &labels)?)?;
    let probs = (0..idx.len())
        .map(|r| probs_of(&logits.get(r)?))
        .collect::<Result<_>>()?;
    Ok((labels, probs, l))
}

/// Stage 1 (`gimp.md` §2): supervised GroupMSA (or SNN) on expression alone; the best epoch on
/// validation is kept and saved as a checkpoint `model run` can use.
pub fn pretrain_genes(
    data: &Prepared,
    cfg: &RunConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    let nc = data.classes.len();
    let gcfg = gene_config(cfg, data.n_genes(), nc)?;
    let train = with_expression(data, &data.train);
    if train.is_empty() {
        return Err(DataErr::Msg("no training patient has expression".into()));
    }
    let store = ParamStore::new(cfg.seed);
    let enc = GeneEncoder::new(&store.root(), &gcfg)?;
    let mut opt = Adam::new(&store, adamw(cfg.genes.lr, cfg.genes.weight_decay));
    let batch = cfg.genes.batch.max(1);
    let per_epoch = train.len().div_ceil(batch);
    let sched = Cosine {
        base: cfg.genes.lr,
        warmup: 0,
        total: per_epoch * cfg.genes.epochs.max(1),
    };
    let mut st = start(dir, &store, &mut opt, ctl, cfg.seed ^ 0x6E6E)?;
    let mut log = Log::open(dir, st.epochs_done)?;
    for epoch in st.epochs_done..cfg.genes.epochs {
        let mut order = train.clone();
        order.shuffle(&mut st.rng);
        let mode = Mode::train(ChaCha8Rng::seed_from_u64(st.rng.gen()));
        let mut total = 0.0;
        for (b, idx) in order.chunks(batch).enumerate() {
            let (_, logits) = enc.forward(&stack_expression(data, idx)?, &mode)?;
            let labels: Vec<usize> = idx.iter().map(|&i| data.patients[i].label).collect();
            let l = loss::cross_entropy(&logits, &labels)?;
            let lv = optimise(&mut opt, &l, sched.lr(st.step), &mut st.step)?;
            total += lv;
            on(&Progress {
                stage: "genes",
                epoch,
                epochs: cfg.genes.epochs,
                step: b + 1,
                steps: per_epoch,
                loss: lv,
            });
        }
        let (yv, pv, lossv) = eval_genes(&enc, data, &data.val)?;
        record_validation(
            &mut log,
            &mut st,
            &store,
            epoch,
            total / per_epoch as f64,
            &yv,
            &pv,
            lossv,
        )?;
        end_epoch(dir, &store, &opt, &mut st, epoch, ctl)?;
    }
    let best_epoch = st.best_epoch;
    restore(&store, &st.best_snap)?;
    let (yv, pv, _) = eval_genes(&enc, data, &data.val)?;
    let (yt, pt, _) = eval_genes(&enc, data, &data.test)?;
    let (arch, config) = match &gcfg {
        GeneEncoderConfig::GroupMsa(c) => {
            ("group_msa", serde_json::to_value(c).unwrap_or_default())
        }
        GeneEncoderConfig::Snn(c) => ("snn", serde_json::to_value(c).unwrap_or_default()),
    };
    let path = dir.join("model.safetensors");
    Checkpoint {
        arch: arch.into(),
        config,
        classes: data.classes.clone(),
        weights: store.tensors(),
        preprocessing: data.preprocessing.clone(),
        info: provenance(cfg, "pretrain-genes", best_epoch),
    }
    .save(&path)?;
    Ok(StageResult {
        checkpoint: path,
        best_epoch,
        val: (!yv.is_empty()).then(|| Report::new(&yv, &pv, nc, cfg.seed)),
        test: (!yt.is_empty()).then(|| Report::new(&yt, &pt, nc, cfg.seed)),
    })
}

fn provenance(cfg: &RunConfig, stage: &str, epoch: usize) -> BTreeMap<String, String> {
    [
        ("stage", stage.to_string()),
        ("best_epoch", epoch.to_string()),
        ("seed", cfg.seed.to_string()),
        ("fold", cfg.fold.to_string()),
        ("preset", cfg.preset.clone()),
        ("gimp_rs_version", env!("CARGO_PKG_VERSION").to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

pub fn argmax(probs: &[Vec<f64>]) -> Vec<usize> {
    probs
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        })
        .collect()
}

/// Class-balanced batches (`gimp.md` §5): every batch takes `⌈B/C⌉` (at least 2) patients of
/// each class, cycling a class's shuffled list when it runs out; `⌈n/B⌉` batches an epoch.
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

/// Rows of a window of `l` patches (`gimp.md` §4): a shorter bag is repeated end to end, then a
/// uniform start is drawn.
pub fn window_rows(n: usize, l: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    let reps = l.div_ceil(n.max(1));
    let len = reps * n;
    let start = rng.gen_range(0..=len - l);
    (start..start + l).map(|i| (i % n) as u32).collect()
}

fn build_gimp(
    data: &Prepared,
    cfg: &RunConfig,
    preset: BTreeMap<String, Tensor>,
) -> Result<(ParamStore, Gimp)> {
    let d_in = data
        .d_in
        .ok_or_else(|| DataErr::Msg("the cohort has no slide features".into()))?;
    let gcfg = gimp_config(cfg, d_in, data.n_genes(), data.classes.len())?;
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

/// Stage 2 (`gimp.md` §4–§5): masked patch modelling on windows of `L` patches and the
/// gene-induced triplet loss on `CLS_pat`, with the gene encoder frozen and class-balanced
/// batches. The options reproduce the paper's ablations (no MPM, image-only triplet, no triplet).
pub fn pretrain(
    data: &Prepared,
    cfg: &RunConfig,
    gene_ckpt: Option<&Path>,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    let pc = &cfg.pretrain;
    let (store, model) = build_gimp(data, cfg, gene_preset(gene_ckpt)?)?;
    store.set_trainable("genes.", false);
    let mut opt = Adam::new(&store, adamw(pc.lr, pc.weight_decay));
    let labels: Vec<usize> = data.patients.iter().map(|p| p.label).collect();
    let per_epoch = data.train.len().div_ceil(pc.batch.max(1));
    let sched = Cosine {
        base: pc.lr,
        warmup: 0,
        total: per_epoch * pc.epochs.max(1),
    };
    let mut st = start(dir, &store, &mut opt, ctl, cfg.seed ^ 0x9E7)?;
    let mut log = Log::open(dir, st.epochs_done)?;
    for epoch in st.epochs_done..pc.epochs {
        let rng = &mut st.rng;
        let batches = balanced_batches(&data.train, &labels, pc.batch, data.classes.len(), rng);
        let mode = Mode::train(ChaCha8Rng::seed_from_u64(rng.gen()));
        let (mut tot_tri, mut tot_rec, mut n_b) = (0.0, 0.0, 0usize);
        for (b, idx) in batches.iter().enumerate() {
            let mut embs = Vec::new();
            let mut recs = Vec::new();
            for &i in idx {
                let cls_img = match data.bag(i)? {
                    Some(bag) => {
                        let n = bag.dim(0)?;
                        let rows = window_rows(n, pc.window, rng);
                        let w =
                            bag.index_select(&Tensor::from_vec(rows, pc.window, &Device::Cpu)?, 0)?;
                        if pc.mpm {
                            let k = ((pc.mask_ratio * pc.window as f64).floor() as usize)
                                .min(pc.window);
                            let masked = rand::seq::index::sample(rng, pc.window, k).into_vec();
                            let m = model.masked_patch_modelling(&w, &masked, &mode)?;
                            recs.push(m.reconstruction);
                            m.cls_img
                        } else {
                            model.aggregator.cls(&w, &mode)?
                        }
                    }
                    None => model.cls_img(None, &mode)?,
                };
                let emb = match pc.triplet {
                    Triplet::ImageOnly => cls_img,
                    _ => Tensor::cat(
                        &[
                            cls_img,
                            model.cls_ge(data.expression(i)?.as_ref(), false, &mode)?,
                        ],
                        0,
                    )?,
                };
                embs.push(emb);
            }
            let blabels: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            let tri = match pc.triplet {
                Triplet::Off => None,
                _ => loss::triplet(
                    &Tensor::stack(&embs, 0)?,
                    &blabels,
                    pc.margin,
                    pc.mining,
                    &mode,
                )?,
            };
            let rec = if recs.is_empty() {
                None
            } else {
                Some(Tensor::stack(&recs, 0)?.mean_all()?)
            };
            let total = match (&tri, &rec) {
                (Some(t), Some(r)) => {
                    (t.affine(pc.triplet_weight, 0.0)?
                        + r.affine(pc.reconstruction_weight, 0.0)?)?
                }
                (Some(t), None) => t.affine(pc.triplet_weight, 0.0)?,
                (None, Some(r)) => r.affine(pc.reconstruction_weight, 0.0)?,
                (None, None) => continue,
            };
            optimise(&mut opt, &total, sched.lr(st.step), &mut st.step)?;
            let (tv, rv) = (
                tri.as_ref().map(scalar).transpose()?.unwrap_or(0.0),
                rec.as_ref().map(scalar).transpose()?.unwrap_or(0.0),
            );
            tot_tri += tv;
            tot_rec += rv;
            n_b += 1;
            on(&Progress {
                stage: "pretrain",
                epoch,
                epochs: pc.epochs,
                step: b + 1,
                steps: batches.len(),
                loss: tv + rv,
            });
        }
        let nb = n_b.max(1) as f64;
        log.write(serde_json::json!({"epoch": epoch, "triplet_loss": tot_tri / nb, "reconstruction_loss": tot_rec / nb}));
        end_epoch(dir, &store, &opt, &mut st, epoch, ctl)?;
    }
    let path = dir.join("model.safetensors");
    save_gimp(
        &store,
        &model,
        data,
        cfg,
        "pretrain",
        pc.epochs.saturating_sub(1),
        &path,
    )?;
    Ok(StageResult {
        checkpoint: path,
        best_epoch: pc.epochs.saturating_sub(1),
        val: None,
        test: None,
    })
}

fn save_gimp(
    store: &ParamStore,
    model: &Gimp,
    data: &Prepared,
    cfg: &RunConfig,
    stage: &str,
    epoch: usize,
    path: &Path,
) -> Result<()> {
    Checkpoint {
        arch: "gimp".into(),
        config: serde_json::to_value(&model.cfg).unwrap_or_default(),
        classes: data.classes.clone(),
        weights: store.tensors(),
        preprocessing: data.preprocessing.clone(),
        info: provenance(cfg, stage, epoch),
    }
    .save(path)?;
    Ok(())
}

/// Which inputs the fine-tuned model sees.
fn inputs(data: &Prepared, i: usize, modalities: &str) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let bag = if modalities == "genes" {
        None
    } else {
        data.bag(i)?
    };
    let expr = if modalities == "image" {
        None
    } else {
        data.expression(i)?
    };
    Ok((bag, expr))
}

/// Labels, probabilities and mean loss of the fine-tuned model on `idx`.
pub fn evaluate_gimp(
    model: &Gimp,
    data: &Prepared,
    idx: &[usize],
    modalities: &str,
) -> Result<(Vec<usize>, Vec<Vec<f64>>, f64)> {
    let mode = Mode::inference();
    let (mut y, mut p, mut total) = (Vec::new(), Vec::new(), 0.0);
    for &i in idx {
        let (bag, expr) = inputs(data, i, modalities)?;
        let cls = Tensor::cat(
            &[
                model.cls_img(bag.as_ref(), &mode)?,
                model.cls_ge(expr.as_ref(), false, &mode)?,
            ],
            0,
        )?;
        let logits = model.head(&cls, &mode)?;
        let label = data.patients[i].label;
        total += scalar(&loss::cross_entropy(&logits.unsqueeze(0)?, &[label])?)?;
        y.push(label);
        p.push(probs_of(&logits)?);
    }
    Ok((y, p, total / idx.len().max(1) as f64))
}

/// Stage 3 (`gimp.md` §6): the pre-trained aggregator, the frozen gene encoder and an MLP head on
/// `CLS_pat`; whole bags, batch 1; validation after every epoch; the best epoch is kept and the
/// test split is reported at it.
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
    if !matches!(fc.modalities.as_str(), "both" | "image" | "genes") {
        return Err(DataErr::Msg(format!(
            "finetune.modalities must be both, image or genes, not '{}'",
            fc.modalities
        )));
    }
    let preset = match init {
        Some(p) => Checkpoint::load(p)?.weights,
        None => gene_preset(gene_ckpt)?,
    };
    let (store, model) = build_gimp(data, cfg, preset)?;
    if !fc.train_genes {
        store.set_trainable("genes.", false);
    }
    store.set_trainable("mpm.", false);
    let mut opt = Adam::new(&store, adamw(fc.lr, fc.weight_decay));
    let sched = Cosine {
        base: fc.lr,
        warmup: 0,
        total: data.train.len() * fc.epochs.max(1),
    };
    let mut st = start(dir, &store, &mut opt, ctl, cfg.seed ^ 0xF17E)?;
    let mut log = Log::open(dir, st.epochs_done)?;
    for epoch in st.epochs_done..fc.epochs {
        let rng = &mut st.rng;
        let mut order = data.train.clone();
        order.shuffle(rng);
        let mode = Mode::train(ChaCha8Rng::seed_from_u64(rng.gen()));
        let mut total = 0.0;
        for (k, &i) in order.iter().enumerate() {
            let (bag, expr) = inputs(data, i, &fc.modalities)?;
            let bag = cap_bag(bag, fc.max_patches, rng)?;
            // Modality dropout: only patients with both halves lose their expression, so no
            // step sees neither. No draw otherwise (off, or the image-only part), so those runs
            // keep the random stream they have without it.
            let hide = fc.modality_dropout > 0.0
                && bag.is_some()
                && expr.is_some()
                && rng.gen::<f64>() < fc.modality_dropout;
            let expr = if hide { None } else { expr };
            let cls = Tensor::cat(
                &[
                    model.cls_img(bag.as_ref(), &mode)?,
                    model.cls_ge(expr.as_ref(), fc.train_genes, &mode)?,
                ],
                0,
            )?;
            let logits = model.head(&cls, &mode)?;
            let l = loss::cross_entropy(&logits.unsqueeze(0)?, &[data.patients[i].label])?;
            let lv = optimise(&mut opt, &l, sched.lr(st.step), &mut st.step)?;
            total += lv;
            on(&Progress {
                stage: "finetune",
                epoch,
                epochs: fc.epochs,
                step: k + 1,
                steps: order.len(),
                loss: lv,
            });
        }
        let (yv, pv, lv) = evaluate_gimp(&model, data, &data.val, &fc.modalities)?;
        record_validation(
            &mut log,
            &mut st,
            &store,
            epoch,
            total / order.len().max(1) as f64,
            &yv,
            &pv,
            lv,
        )?;
        end_epoch(dir, &store, &opt, &mut st, epoch, ctl)?;
    }
    let best_epoch = st.best_epoch;
    restore(&store, &st.best_snap)?;
    let nc = data.classes.len();
    let (yv, pv, _) = evaluate_gimp(&model, data, &data.val, &fc.modalities)?;
    let (yt, pt, _) = evaluate_gimp(&model, data, &data.test, &fc.modalities)?;
    let path = dir.join("model.safetensors");
    save_gimp(&store, &model, data, cfg, "finetune", best_epoch, &path)?;
    Ok(StageResult {
        checkpoint: path,
        best_epoch,
        val: (!yv.is_empty()).then(|| Report::new(&yv, &pv, nc, cfg.seed)),
        test: Some(Report::new(&yt, &pt, nc, cfg.seed)),
    })
}
