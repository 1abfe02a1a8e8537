//! One supervised trainer for every registered model but GiMP (ABMIL, DSMIL, CLAM-SB/MB,
//! TransMIL, SNN, GroupMSA, PORPOISE, Pathomic Fusion, MCAT): the same data, splits, validation rule, checkpoints and metrics as
//! GiMP, so their numbers are comparable. Defaults per architecture follow the reference code's
//! training conventions (`spec/baselines.md`), as far as this trainer's optimisers reach.

use crate::data::{DataErr, Prepared, Result};
use crate::resume;
use crate::stages::{Control, OnProgress, Progress, StageResult};
use candle_core::Tensor;
use gimp_metrics::Report;
use gimp_models::registry::{self, InputKind};
use gimp_models::Input;
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::optim::{Adam, AdamConfig, Cosine, Kind};
use gimp_nn::{ops, Mode, ParamStore};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisedConfig {
    pub arch: String,
    pub seed: u64,
    pub fold: usize,
    pub epochs: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// `adam_l2` (Adam with L2, as CLAM, PORPOISE and MCAT) or `adamw`.
    pub optimizer: Kind,
    /// Cosine decay over the run (else a constant rate, as the reference code).
    pub cosine: bool,
    /// Random cap on patches per training bag.
    pub max_patches: Option<usize>,
    /// Adam's (β₁, β₂): (0.9, 0.999) except DSMIL's (0.5, 0.9).
    #[serde(default = "default_betas")]
    pub betas: (f64, f64),
    /// Patients whose gradients are averaged into one optimiser step (MCAT, PORPOISE and their
    /// SNN: 32; TransMIL: 2; the rest: 1). A last, smaller group steps at the end of the epoch.
    #[serde(default = "default_accumulate")]
    pub accumulate: usize,
    /// MCAT: its `signatures.csv` (one column of gene symbols per group); the groups are the
    /// expression's genes found in each column. Without it, six equal contiguous chunks.
    #[serde(default)]
    pub signatures: Option<std::path::PathBuf>,
    /// The image–omic adaptations' (MGCA, BioViL, REFERS) self-supervised stage before
    /// fine-tuning; ignored by the other models.
    #[serde(default)]
    pub pretrain: PretrainStage,
}

/// Self-supervised pre-training of an image–omic adaptation (MGCA's optimiser: AdamW,
/// lr 2e-5, weight decay 0.05, warm-up over the first 40% of steps then cosine).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainStage {
    pub epochs: usize,
    /// Patients per batch (the contrastive losses need several).
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

impl Default for PretrainStage {
    fn default() -> Self {
        Self {
            epochs: 50,
            batch: 16,
            lr: 2e-5,
            weight_decay: 0.05,
        }
    }
}

fn default_accumulate() -> usize {
    1
}

fn default_betas() -> (f64, f64) {
    (0.9, 0.999)
}

impl SupervisedConfig {
    /// The reference code's defaults. TransMIL's Lookahead-RAdam is not implemented: it trains
    /// with AdamW at its learning rate and decay instead (recorded in the checkpoint's config).
    pub fn defaults(arch: &str) -> Self {
        let (epochs, lr, wd, optimizer) = match arch {
            "abmil" | "clam_sb" | "clam_mb" => (50, 2e-4, 1e-5, Kind::AdamL2),
            "transmil" => (50, 2e-4, 1e-5, Kind::AdamW),
            "snn" | "porpoise" | "pathomic" | "mcat" => (20, 2e-4, 1e-5, Kind::AdamL2),
            "dsmil" => (50, 1e-4, 1e-3, Kind::AdamL2),
            _ => (50, 1e-4, 1e-4, Kind::AdamW),
        };
        Self {
            arch: arch.into(),
            seed: 0,
            fold: 0,
            epochs,
            lr,
            weight_decay: wd,
            optimizer,
            // DSMIL anneals its rate with a cosine over the run.
            cosine: arch == "dsmil",
            max_patches: None,
            betas: if arch == "dsmil" {
                (0.5, 0.9)
            } else {
                default_betas()
            },
            pretrain: PretrainStage::default(),
            signatures: None,
            accumulate: match arch {
                "snn" | "porpoise" | "pathomic" | "mcat" => 32,
                "transmil" => 2,
                _ => 1,
            },
        }
    }
}

fn input_for<'a>(
    kind: InputKind,
    bag: &'a Option<Tensor>,
    expr: &'a Option<Tensor>,
) -> Option<Input<'a>> {
    match (kind, bag, expr) {
        (InputKind::Slide, Some(b), _) => Some(Input::Bag(b)),
        (InputKind::Expression, _, Some(e)) => Some(Input::Expression(e)),
        (InputKind::Paired, Some(b), Some(e)) => Some(Input::Patient {
            bag: Some(b),
            expression: Some(e),
        }),
        (InputKind::Multimodal, b, e) if b.is_some() || e.is_some() => Some(Input::Patient {
            bag: b.as_ref(),
            expression: e.as_ref(),
        }),
        _ => None,
    }
}

/// Trains `cfg.arch` on the split's training patients that have its input; validates every
/// epoch; keeps the best epoch (accuracy, ties → loss); reports val and test there.
pub fn train(
    data: &Prepared,
    cfg: &SupervisedConfig,
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<StageResult> {
    let info = registry::find(&cfg.arch).ok_or_else(|| {
        DataErr::Msg(format!(
            "unknown architecture '{}' (see `gimp-rs model list`)",
            cfg.arch
        ))
    })?;
    if cfg.arch == "gimp" {
        return Err(DataErr::Msg(
            "gimp is trained with pretrain-genes / pretrain / finetune".into(),
        ));
    }
    let nc = data.classes.len();
    let dims = gimp_models::Dims {
        features: data.d_in.unwrap_or(0),
        genes: data.n_genes(),
    };
    if info.input != InputKind::Expression && dims.features == 0 {
        return Err(DataErr::Msg("the cohort has no slide features".into()));
    }
    if info.input != InputKind::Slide && dims.genes == 0 {
        return Err(DataErr::Msg("the cohort has no expression".into()));
    }
    // The multimodal baselines need both modalities, as their reference code does (it joins
    // slides and omics and drops the rest); GiMP keeps patients with one.
    let has = |i: &usize| {
        let p = &data.patients[*i];
        match info.input {
            InputKind::Slide => !p.slides.is_empty(),
            InputKind::Expression => p.expression.is_some(),
            InputKind::Multimodal => !p.slides.is_empty() || p.expression.is_some(),
            InputKind::Paired => !p.slides.is_empty() && p.expression.is_some(),
        }
    };
    let train: Vec<usize> = data.train.iter().copied().filter(has).collect();
    let val: Vec<usize> = data.val.iter().copied().filter(has).collect();
    let test: Vec<usize> = data.test.iter().copied().filter(has).collect();
    if train.is_empty() || test.is_empty() {
        return Err(DataErr::Msg(format!(
            "no training or test patient has the input {} reads",
            cfg.arch
        )));
    }
    let mut model_cfg = (info.default_config)(dims, nc);
    if let (Some(sig), "mcat") = (&cfg.signatures, cfg.arch.as_str()) {
        model_cfg["groups"] = serde_json::to_value(signature_groups(sig, data)?)
            .map_err(|e| DataErr::Msg(e.to_string()))?;
    }
    let store = ParamStore::new(cfg.seed);
    let model = (info.build)(&store.root(), &model_cfg)?;
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
    let sched = Cosine {
        base: cfg.lr,
        warmup: 0,
        total: train.len().div_ceil(cfg.accumulate.max(1)) * cfg.epochs.max(1),
    };
    if info.pretraining {
        pretrain(
            data,
            cfg,
            model.as_ref(),
            &store,
            &model_cfg,
            &train,
            dir,
            ctl,
            on,
        )?;
    }
    let state_path = dir.join("state.safetensors");
    let saved = if ctl.resume {
        resume::load(&state_path, &store, &mut opt)?
    } else {
        None
    };
    let mut st = match saved {
        Some(s) => s,
        None => resume::LoopState {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5B5),
            epochs_done: 0,
            step: 0,
            best: None,
            best_epoch: 0,
            best_snap: crate::stages::snapshot(&store)?,
        },
    };
    std::fs::create_dir_all(dir).map_err(|e| gimp_io::DataError::io(dir, e))?;
    let mut log = crate::stages::Log::open(dir, st.epochs_done)?;
    let evaluate = |idx: &[usize]| -> Result<(Vec<usize>, Vec<Vec<f64>>, f64)> {
        let mode = Mode::inference();
        let (mut y, mut p, mut total) = (Vec::new(), Vec::new(), 0.0);
        for &i in idx {
            let (bag, expr) = (data.bag(i)?, data.expression(i)?);
            let Some(input) = input_for(info.input, &bag, &expr) else {
                continue;
            };
            let out = model.forward(&input, &mode)?;
            let label = data.patients[i].label;
            total += model
                .classification_loss(&out.logits, label)?
                .to_scalar::<f32>()? as f64;
            y.push(label);
            p.push(
                ops::softmax_last(&out.logits)?
                    .to_dtype(candle_core::DType::F64)?
                    .to_vec1()?,
            );
        }
        Ok((y, p, total / idx.len().max(1) as f64))
    };
    for epoch in st.epochs_done..cfg.epochs {
        let rng = &mut st.rng;
        let mut order = train.clone();
        order.shuffle(rng);
        let mode = Mode::train(ChaCha8Rng::seed_from_u64(rng.gen()));
        let mut total = 0.0;
        let mut acc = gimp_nn::optim::GradAccumulator::default();
        for (k, &i) in order.iter().enumerate() {
            let bag = crate::stages::cap_bag(data.bag(i)?, cfg.max_patches, rng)?;
            let expr = data.expression(i)?;
            let Some(input) = input_for(info.input, &bag, &expr) else {
                continue;
            };
            let label = data.patients[i].label;
            let (out, aux) = model.training_forward(&input, label, &mode)?;
            let ce = model.classification_loss(&out.logits, label)?;
            let l = match aux {
                Some(a) => (ce.affine(model.bag_weight(), 0.0)? + a)?,
                None => ce,
            };
            let lr = if cfg.cosine {
                sched.lr(st.step)
            } else {
                cfg.lr
            };
            let lv = if cfg.accumulate <= 1 {
                crate::stages::optimise(&mut opt, &l, lr, &mut st.step)?
            } else {
                // The reference divides each loss by the group size and steps every group:
                // the mean of the group's gradients.
                acc.add(opt.collect(&l.backward()?))?;
                if acc.count == cfg.accumulate || k + 1 == order.len() {
                    opt.step_with(&acc.take_mean()?, lr)?;
                    st.step += 1;
                }
                l.to_scalar::<f32>()? as f64
            };
            total += lv;
            on(&Progress {
                stage: "train",
                epoch,
                epochs: cfg.epochs,
                step: k + 1,
                steps: order.len(),
                loss: lv,
            });
        }
        let (yv, pv, lv) = evaluate(&val)?;
        crate::stages::record_validation(
            &mut log,
            &mut st,
            &store,
            epoch,
            total / order.len().max(1) as f64,
            &yv,
            &pv,
            lv,
        )?;
        crate::stages::end_epoch(dir, &store, &opt, &mut st, epoch, ctl)?;
    }
    let best_epoch = st.best_epoch;
    crate::stages::restore(&store, &st.best_snap)?;
    let (yv, pv, _) = evaluate(&val)?;
    let (yt, pt, _) = evaluate(&test)?;
    let path = dir.join("model.safetensors");
    let mut info_map = std::collections::BTreeMap::new();
    info_map.insert("stage".to_string(), "train".to_string());
    info_map.insert("best_epoch".to_string(), best_epoch.to_string());
    info_map.insert("seed".to_string(), cfg.seed.to_string());
    info_map.insert("fold".to_string(), cfg.fold.to_string());
    info_map.insert(
        "training".to_string(),
        serde_json::to_string(cfg).unwrap_or_default(),
    );
    info_map.insert(
        "gimp_rs_version".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    );
    Checkpoint {
        arch: cfg.arch.clone(),
        config: model_cfg,
        classes: data.classes.clone(),
        weights: store.tensors(),
        preprocessing: data.preprocessing.clone(),
        info: info_map,
    }
    .save(&path)?;
    Ok(StageResult {
        checkpoint: path,
        best_epoch,
        val: (!yv.is_empty()).then(|| Report::new(&yv, &pv, nc, cfg.seed)),
        test: Some(Report::new(&yt, &pt, nc, cfg.seed)),
    })
}

/// Stage 1 of the image–omic adaptations: the model's own objective on batches of training
/// patients (both modalities, bags capped by the model's patch sampling), AdamW with warm-up
/// and cosine decay; the weights go to `dir/pretrain/model.safetensors`, which a resumed run
/// reuses instead of pre-training again.
#[allow(clippy::too_many_arguments)]
fn pretrain(
    data: &Prepared,
    cfg: &SupervisedConfig,
    model: &dyn gimp_models::Model,
    store: &ParamStore,
    model_cfg: &serde_json::Value,
    train: &[usize],
    dir: &Path,
    ctl: Control,
    on: OnProgress,
) -> Result<()> {
    let pc = &cfg.pretrain;
    let pdir = dir.join("pretrain");
    let done = pdir.join("model.safetensors");
    if ctl.resume && done.is_file() {
        let c = Checkpoint::load(&done)?;
        return crate::stages::restore(store, &c.weights);
    }
    let mut opt = Adam::new(
        store,
        AdamConfig {
            kind: Kind::AdamW,
            lr: pc.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: pc.weight_decay,
        },
    );
    let batch = pc.batch.max(2);
    let steps_per_epoch = train.len().div_ceil(batch);
    let total = steps_per_epoch * pc.epochs.max(1);
    let sched = Cosine {
        base: pc.lr,
        warmup: total * 2 / 5,
        total,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x9e7);
    let mut log = crate::stages::Log::open(&pdir, 0)?;
    let mut step = 0;
    for epoch in 0..pc.epochs {
        let mut order = train.to_vec();
        order.shuffle(&mut rng);
        let mode = Mode::train(ChaCha8Rng::seed_from_u64(rng.gen()));
        let mut total_loss = 0.0;
        let mut n = 0;
        for (k, chunk) in order.chunks(batch).enumerate() {
            // A contrastive batch needs two patients at least.
            if chunk.len() < 2 {
                continue;
            }
            let mut pairs = Vec::with_capacity(chunk.len());
            for &i in chunk {
                if let (Some(b), Some(e)) = (data.bag(i)?, data.expression(i)?) {
                    pairs.push((b, e));
                }
            }
            let Some(l) = model.pretrain_loss(&pairs, &mode)? else {
                return Ok(());
            };
            let lv = crate::stages::optimise(&mut opt, &l, sched.lr(step), &mut step)?;
            total_loss += lv;
            n += 1;
            on(&Progress {
                stage: "pretrain",
                epoch,
                epochs: pc.epochs,
                step: k + 1,
                steps: steps_per_epoch,
                loss: lv,
            });
        }
        log.write(serde_json::json!({
            "epoch": epoch,
            "pretrain_loss": total_loss / n.max(1) as f64,
        }));
    }
    let mut info = std::collections::BTreeMap::new();
    info.insert("stage".to_string(), "pretrain".to_string());
    info.insert(
        "training".to_string(),
        serde_json::to_string(cfg).unwrap_or_default(),
    );
    Checkpoint {
        arch: cfg.arch.clone(),
        config: model_cfg.clone(),
        classes: data.classes.clone(),
        weights: store.tensors(),
        preprocessing: data.preprocessing.clone(),
        info,
    }
    .save(&done)?;
    Ok(())
}

/// MCAT's gene groups from a `signatures.csv`: for each column, the positions of its symbols
/// among the cohort's genes (version suffixes ignored); empty groups are dropped.
fn signature_groups(path: &Path, data: &Prepared) -> Result<Vec<Vec<u32>>> {
    let groups = gimp_io::expression::read_signatures(path)?;
    let genes = data
        .preprocessing
        .as_ref()
        .map(|p| p.genes.clone())
        .unwrap_or_default();
    let pos: std::collections::HashMap<&str, u32> = genes
        .iter()
        .enumerate()
        .map(|(i, g)| (gimp_io::expression::strip_version(g), i as u32))
        .collect();
    let found: Vec<Vec<u32>> = groups
        .iter()
        .map(|(_, symbols)| {
            symbols
                .iter()
                .filter_map(|s| pos.get(s.as_str()).copied())
                .collect::<Vec<u32>>()
        })
        .filter(|g| !g.is_empty())
        .collect();
    if found.is_empty() {
        return Err(DataErr::Msg(format!(
            "{}: none of its gene symbols is among the cohort's {} genes (e.g. '{}'); MCAT's \
             signatures need expression named by HUGO symbol — leave --signatures out for six \
             equal chunks",
            path.display(),
            genes.len(),
            genes.first().map(String::as_str).unwrap_or("")
        )));
    }
    Ok(found)
}
