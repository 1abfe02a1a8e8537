//! One supervised trainer for every registered single-modality model (ABMIL, CLAM-SB/MB,
//! TransMIL, SNN, GroupMSA): the same data, splits, validation rule, checkpoints and metrics as
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
use gimp_nn::{loss, ops, Mode, ParamStore};
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
}

impl SupervisedConfig {
    /// The reference code's defaults. TransMIL's Lookahead-RAdam is not implemented: it trains
    /// with AdamW at its learning rate and decay instead (recorded in the checkpoint's config).
    pub fn defaults(arch: &str) -> Self {
        let (epochs, lr, wd, optimizer) = match arch {
            "abmil" | "clam_sb" | "clam_mb" => (50, 2e-4, 1e-5, Kind::AdamL2),
            "transmil" => (50, 2e-4, 1e-5, Kind::AdamW),
            "snn" => (20, 2e-4, 1e-5, Kind::AdamL2),
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
            cosine: false,
            max_patches: None,
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
    if info.input == InputKind::Multimodal {
        return Err(DataErr::Msg(format!(
            "{} is trained with pretrain-genes / pretrain / finetune",
            cfg.arch
        )));
    }
    let nc = data.classes.len();
    let in_dim = match info.input {
        InputKind::Slide => data
            .d_in
            .ok_or_else(|| DataErr::Msg("the cohort has no slide features".into()))?,
        _ => data.n_genes(),
    };
    let has = |i: &usize| match info.input {
        InputKind::Slide => !data.patients[*i].slides.is_empty(),
        _ => data.patients[*i].expression.is_some(),
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
    let model_cfg = (info.default_config)(in_dim, nc);
    let store = ParamStore::new(cfg.seed);
    let model = (info.build)(&store.root(), &model_cfg)?;
    let mut opt = Adam::new(
        &store,
        AdamConfig {
            kind: cfg.optimizer,
            lr: cfg.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    );
    let sched = Cosine {
        base: cfg.lr,
        warmup: 0,
        total: train.len() * cfg.epochs.max(1),
    };
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
            total += loss::cross_entropy(&out.logits.unsqueeze(0)?, &[label])?.to_scalar::<f32>()?
                as f64;
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
        for (k, &i) in order.iter().enumerate() {
            let bag = crate::stages::cap_bag(data.bag(i)?, cfg.max_patches, rng)?;
            let expr = data.expression(i)?;
            let Some(input) = input_for(info.input, &bag, &expr) else {
                continue;
            };
            let label = data.patients[i].label;
            let (out, aux) = model.training_forward(&input, label, &mode)?;
            let ce = loss::cross_entropy(&out.logits.unsqueeze(0)?, &[label])?;
            let l = match aux {
                Some(a) => (ce.affine(model.bag_weight(), 0.0)? + a)?,
                None => ce,
            };
            let lr = if cfg.cosine {
                sched.lr(st.step)
            } else {
                cfg.lr
            };
            let lv = crate::stages::optimise(&mut opt, &l, lr, &mut st.step)?;
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
