//! The computations of the speed comparison (`bench/compare.sh`), timed in Rust:
//!
//! * `pretrain_step`: one GiMP pre-training step of the patch aggregator on a 6,000-patch window
//!   (1024 → 512, two Nyström layers, decoder 512 → 1024, L1 on 50% masked, backward, AdamW);
//! * `forward_6000`, `forward_150000`: inference of the aggregator on whole bags;
//! * `groupmsa_step`: one GroupMSA training step on 60,480 genes (batch 8);
//! * `finetune_step_N`: one GiMP fine-tuning step on a whole bag of `N` patches × 1024 (the
//!   aggregator, the frozen GroupMSA gene encoder on 60,480 genes, the head; cross-entropy,
//!   backward, AdamW), as `gimp-rs train` stage 3 runs it;
//! * `transmil_step_N`, `clam_sb_step_N`, `abmil_step_N`: one supervised training step of
//!   TransMIL, CLAM-SB (with its instance-clustering loss) and ABMIL on such a bag, as the
//!   trainer runs it; `transmil_forward_N`: TransMIL's forward pass at inference on such a bag;
//!
//! for `N` in 6,000, 24,000 and 150,000 (or any `N` named by `--only`); and GiMP's successors on a bag of `N` patches × 1024
//! with an expression vector of 4,999 genes (AdamW at the models' training defaults;
//! cross-entropy on the logits):
//!
//! * `tangle_step_N`: one TANGLE fine-tuning step (slide encoder on every patch, linear head);
//! * `tangle_pretrain_step_B`: one TANGLE contrastive pre-training step on a batch of `B`
//!   patients (64: `train_tangle.py`'s batch), 2048 patches drawn with replacement from each of
//!   `B` bags of 2048, expression MLP 4,999 → 4,999 → 4,999 → 1024, symmetric InfoNCE, AdamW (decay 0.01);
//! * `survpath_step_N`: one SurvPath training step as the reference trains it (4096 patches
//!   drawn without replacement from the bag), 331 pathway tokens (the count of its `combine`
//!   table) as equal contiguous chunks of the genes; `survpath_whole_step_N`: the same on every
//!   patch of the bag (as it evaluates);
//! * `mmp_step_N`: one MMP training step: PANTHER's EM step on every patch (16 prototypes, no
//!   gradient), 50 pathway tokens (Hallmarks' count), the fused attention layer;
//!
//! for `N` in 6,000 and 150,000. These run only when named by `--only`. Each whole-bag step is
//! timed over at most 3 runs (one at 150,000). `bench/compare.sh` runs every computation in its
//! own process (`--only NAME`) under `/usr/bin/time -v` for its peak memory.
//!
//! Prints one JSON object of median seconds over `--repeat` runs (after one warm-up).
//! `cargo run --release -p gimp-train --example bench_steps -- [--repeat 3] [--skip-150k] [--only NAME]`
use candle_core::{Device, Tensor};
use gimp_models::abmil::{Abmil, AbmilConfig};
use gimp_models::aggregator::AggregatorConfig;
use gimp_models::clam::{Branches, Clam, ClamConfig};
use gimp_models::gimp::{ExpressionAlone, GeneEncoder, GeneEncoderConfig, Gimp, GimpConfig};
use gimp_models::group_msa::GroupMsaConfig;
use gimp_models::mmp::{Mmp, MmpConfig};
use gimp_models::model::{Input, Model};
use gimp_models::survpath::{SurvPath, SurvPathConfig};
use gimp_models::tangle::{Tangle, TangleConfig};
use gimp_models::transmil::{Transmil, TransmilConfig};
use gimp_nn::optim::{Adam, AdamConfig};
use gimp_nn::{loss, Mode, ParamStore};
use rand::SeedableRng;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(repeat: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?; // warm-up
    let mut t = Vec::new();
    for _ in 0..repeat {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    Ok(median(t))
}

/// Large freed tensors are reused instead of re-faulted from the kernel (see `gimp_nn::cpu::alloc`).
#[global_allocator]
static ALLOC: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();

fn optional(
    run: bool,
    f: impl FnOnce() -> candle_core::Result<f64>,
) -> candle_core::Result<Option<f64>> {
    if run {
        f().map(Some)
    } else {
        Ok(None)
    }
}

/// Sizes of the whole-bag training steps.
const BAG_SIZES: [usize; 3] = [6_000, 24_000, 150_000];

/// A bag of `n` patches × 1024 (uniform features, as the other computations).
fn bag(n: usize) -> candle_core::Result<Tensor> {
    Tensor::rand(0f32, 1f32, (n, 1024), &Device::Cpu)
}

/// One GiMP fine-tuning step on a whole bag of `n` patches, timed.
fn finetune_step(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let cfg = GimpConfig {
        aggregator: AggregatorConfig::gimp(1024),
        genes: GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(60_480, 2)),
        n_classes: 2,
        head_dropout: 0.25,
        expression_alone: ExpressionAlone::FusionHead,
    };
    let store = ParamStore::new(0);
    let model = Gimp::new(&store.root(), cfg)?;
    store.set_trainable("genes.", false);
    store.set_trainable("mpm.", false);
    let mut opt = Adam::new(&store, AdamConfig::adamw(1e-4, 1e-5));
    // As fine-tuning trains bags of this size (`Prepared::whole_bag_mode`).
    let _whole_bag = gimp_nn::memory::WholeBag::enter();
    let x = bag(n)?;
    let expr = Tensor::rand(0f32, 1f32, 60_480, &Device::Cpu)?;
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    time(repeat, || {
        let cls = Tensor::cat(
            &[
                model.cls_img(Some((&x).into()), &mode)?,
                model.cls_ge(Some(&expr), false, &mode)?,
            ],
            0,
        )?;
        let logits = model.head(&cls, &mode)?;
        let l = loss::cross_entropy(&logits.unsqueeze(0)?, &[1])?;
        let grads = opt.collect(&l.backward()?);
        opt.step_with(&grads, 1e-4)
    })
}

/// One supervised training step of `model` (its parameters in `store`) on a whole bag of `n`
/// patches, as `gimp-train`'s supervised task computes the loss, timed.
fn supervised_step(
    store: &ParamStore,
    model: &dyn Model,
    n: usize,
    repeat: usize,
) -> candle_core::Result<f64> {
    let mut opt = Adam::new(store, AdamConfig::adamw(2e-4, 1e-5));
    // As the supervised trainer trains bags of this size (`Prepared::whole_bag_mode`).
    let _whole_bag = gimp_nn::memory::WholeBag::enter();
    let x = bag(n)?;
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    time(repeat, || {
        let (out, aux) = model.training_forward(&Input::bag(&x), 1, &mode)?;
        let ce = model.classification_loss(&out.logits, 1)?;
        let l = match aux {
            Some(a) => (ce.affine(model.bag_weight(), 0.0)? + a)?,
            None => ce,
        };
        let grads = opt.collect(&l.backward()?);
        opt.step_with(&grads, 2e-4)
    })
}

fn transmil_step(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let model = Transmil::new(&store.root(), TransmilConfig::new(1024, 2))?;
    supervised_step(&store, &model, n, repeat)
}

/// TransMIL's forward pass at inference on a whole bag of `n` patches (what `evaluate`, `predict`,
/// `heatmap`, `embed` and validation run per patient), timed.
fn transmil_forward(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let model = Transmil::new(&store.root(), TransmilConfig::new(1024, 2))?;
    let x = bag(n)?;
    time(repeat, || {
        model.forward(&Input::bag(&x), &Mode::inference()).map(drop)
    })
}

fn abmil_step(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let model = Abmil::new(&store.root(), AbmilConfig::small(1024, 2))?;
    supervised_step(&store, &model, n, repeat)
}

fn clam_sb_step(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let model = Clam::new(&store.root(), ClamConfig::small(Branches::Single, 1024, 2))?;
    supervised_step(&store, &model, n, repeat)
}

/// Genes of the successors' expression vectors (TANGLE's BRCA vectors; `tangle.rs`'s
/// `top_variance_genes`).
const SUCCESSOR_GENES: usize = 4_999;

/// Sizes of the successors' whole-bag training steps.
const SUCCESSOR_SIZES: [usize; 2] = [6_000, 150_000];

/// `k` equal contiguous chunks of the gene indices (pathway tokens without a composition table).
fn chunks(genes: usize, k: usize) -> Vec<Vec<u32>> {
    (0..k)
        .map(|i| ((i * genes / k) as u32..((i + 1) * genes / k) as u32).collect())
        .collect()
}

/// One training step of a model that reads a bag of `n` patches and an expression vector, with
/// `training_forward` and the classification loss as the supervised trainer runs them, AdamW.
fn paired_step(
    store: &ParamStore,
    model: &dyn Model,
    n: usize,
    lr: f64,
    weight_decay: f64,
    repeat: usize,
) -> candle_core::Result<f64> {
    let mut opt = Adam::new(store, AdamConfig::adamw(lr, weight_decay));
    let _whole_bag = gimp_nn::memory::WholeBag::enter();
    let x = bag(n)?;
    let expr = Tensor::rand(0f32, 1f32, SUCCESSOR_GENES, &Device::Cpu)?;
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let input = Input::Patient {
        bag: Some((&x).into()),
        expression: Some(&expr),
    };
    time(repeat, || {
        let (out, _) = model.training_forward(&input, 1, &mode)?;
        let l = model.classification_loss(&out.logits, 1)?;
        let grads = opt.collect(&l.backward()?);
        opt.step_with(&grads, lr)
    })
}

fn tangle_step(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let model = Tangle::new(&store.root(), TangleConfig::new(1024, SUCCESSOR_GENES, 2))?;
    // `TrainingDefaults::ADAMW`, TANGLE's supervised stage.
    paired_step(&store, &model, n, 1e-4, 1e-4, repeat)
}

fn survpath_step(n: usize, repeat: usize, num_patches: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let cfg = SurvPathConfig {
        groups: chunks(SUCCESSOR_GENES, 331),
        num_patches,
        ..SurvPathConfig::new(1024, SUCCESSOR_GENES, 4)
    };
    let model = SurvPath::new(&store.root(), cfg)?;
    paired_step(&store, &model, n, 1e-4, 1e-5, repeat)
}

fn mmp_step(n: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let cfg = MmpConfig {
        groups: chunks(SUCCESSOR_GENES, 50),
        ..MmpConfig::new(1024, SUCCESSOR_GENES, 4)
    };
    let model = Mmp::new(&store.root(), cfg)?;
    paired_step(&store, &model, n, 1e-4, 1e-5, repeat)
}

/// One TANGLE pre-training step on a batch of `patients` (bags of 2048 patches; the reference's
/// batch is 64).
fn tangle_pretrain_step(patients: usize, repeat: usize) -> candle_core::Result<f64> {
    let store = ParamStore::new(0);
    let model = Tangle::new(&store.root(), TangleConfig::new(1024, SUCCESSOR_GENES, 2))?;
    let mut opt = Adam::new(&store, AdamConfig::adamw(1e-4, 0.01));
    let _whole_bag = gimp_nn::memory::WholeBag::enter();
    let batch = (0..patients)
        .map(|_| {
            Ok((
                bag(2048)?,
                Tensor::rand(0f32, 1f32, SUCCESSOR_GENES, &Device::Cpu)?,
            ))
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    time(repeat, || {
        let l = model
            .pretrain_loss(&batch, &mode)?
            .expect("TANGLE has a pre-training loss");
        let grads = opt.collect(&l.backward()?);
        opt.step_with(&grads, 1e-4)
    })
}

fn main() -> candle_core::Result<()> {
    // As gimp-rs's `main` does.
    gimp_nn::cpu::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args().collect();
    let repeat = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let skip_150k = args.iter().any(|a| a == "--skip-150k");
    // `--only NAME` runs one computation (for profiling); the others print null.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let dev = Device::Cpu;
    let mut results = serde_json::Map::new();
    results.insert("implementation".into(), "gimp-rs".into());
    results.insert(
        "threads".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .into(),
    );
    let mut record = |name: &str, v: Option<f64>| {
        results.insert(name.to_string(), v.into());
    };
    let window = Tensor::rand(0f32, 1f32, (6000, 1024), &dev)?;
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let pretrain_step = optional(want("pretrain_step"), || {
        let cfg = GimpConfig {
            aggregator: AggregatorConfig::gimp(1024),
            genes: GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(60_480, 2)),
            n_classes: 2,
            head_dropout: 0.25,
            expression_alone: ExpressionAlone::FusionHead,
        };
        let store = ParamStore::new(0);
        let model = Gimp::new(&store.root(), cfg)?;
        store.set_trainable("genes.", false);
        let mut opt = Adam::new(&store, AdamConfig::gimp());
        let masked: Vec<usize> = (0..6000).step_by(2).collect();
        time(repeat, || {
            let m = model.masked_patch_modelling(&window, &masked, &mode)?;
            let grads = opt.collect(&m.reconstruction.backward()?);
            opt.step_with(&grads, 1e-4)
        })
    })?;
    record("pretrain_step", pretrain_step);
    let forward = want("forward_6000") || (!skip_150k && want("forward_150000"));
    let agg = match forward {
        true => Some(gimp_models::aggregator::PatchAggregator::new(
            &ParamStore::new(0).root_inference(),
            AggregatorConfig::gimp(1024),
        )?),
        false => None,
    };
    let forward_6000 = optional(want("forward_6000"), || {
        let agg = agg.as_ref().expect("built when wanted");
        time(repeat, || agg.cls(&window, &Mode::inference()).map(drop))
    })?;
    record("forward_6000", forward_6000);
    let forward_150000 = optional(!skip_150k && want("forward_150000"), || {
        let agg = agg.as_ref().expect("built when wanted");
        let big = Tensor::rand(0f32, 1f32, (150_000, 1024), &dev)?;
        time(1, || agg.cls(&big, &Mode::inference()).map(drop))
    })?;
    record("forward_150000", forward_150000);
    drop(agg);
    let groupmsa_step = optional(want("groupmsa_step"), || {
        let gstore = ParamStore::new(1);
        let enc = GeneEncoder::new(
            &gstore.root(),
            &GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(60_480, 2)),
        )?;
        let mut gopt = Adam::new(&gstore, AdamConfig::gimp());
        let genes = Tensor::rand(0f32, 1f32, (8, 60_480), &dev)?;
        time(repeat, || {
            let (_, logits) = enc.forward(&genes, &mode)?;
            let l = loss::cross_entropy(&logits, &[0, 1, 0, 1, 0, 1, 0, 1])?;
            let g = gopt.collect(&l.backward()?);
            gopt.step_with(&g, 1e-4)
        })
    })?;
    record("groupmsa_step", groupmsa_step);
    drop(window);
    type Step = fn(usize, usize) -> candle_core::Result<f64>;
    let steps: [(&str, Step); 5] = [
        ("transmil_forward", transmil_forward),
        ("finetune_step", finetune_step),
        ("transmil_step", transmil_step),
        ("clam_sb_step", clam_sb_step),
        ("abmil_step", abmil_step),
    ];
    // `--only NAME_N` also runs a bag size outside BAG_SIZES (`bench/user_commands.sh`).
    let named_size = only
        .as_deref()
        .and_then(|o| o.rsplit_once('_'))
        .and_then(|(_, n)| n.parse::<usize>().ok())
        .filter(|n| !BAG_SIZES.contains(n));
    for (name, step) in steps {
        for n in BAG_SIZES.into_iter().chain(named_size) {
            let key = format!("{name}_{n}");
            // Only when named: each runs in its own process for its peak memory.
            let run = only.as_deref() == Some(key.as_str()) && !(skip_150k && n == 150_000);
            let reps = if n >= 100_000 { 1 } else { repeat.min(3) };
            record(&key, optional(run, || step(n, reps))?);
        }
    }
    type Paired = fn(usize, usize) -> candle_core::Result<f64>;
    let successors: [(&str, Paired); 4] = [
        ("tangle_step", tangle_step),
        ("survpath_step", |n, r| survpath_step(n, r, 4096)),
        ("survpath_whole_step", |n, r| survpath_step(n, r, 0)),
        ("mmp_step", mmp_step),
    ];
    for (name, step) in successors {
        // `--only {name}_{N}` runs any size N (for profiling); the table's sizes print null
        // otherwise.
        let asked = only.as_deref().and_then(|o| {
            o.strip_prefix(name)?
                .strip_prefix('_')?
                .parse::<usize>()
                .ok()
        });
        let mut sizes = SUCCESSOR_SIZES.to_vec();
        sizes.extend(asked.filter(|n| !sizes.contains(n)));
        for n in sizes {
            let key = format!("{name}_{n}");
            let run = asked == Some(n) && !(skip_150k && n == 150_000);
            let reps = if n >= 100_000 { 1 } else { repeat.min(3) };
            record(&key, optional(run, || step(n, reps))?);
        }
    }
    // `tangle_pretrain_step_{B}`: a batch of B patients (64, the reference's, by default).
    let patients = only.as_deref().and_then(|o| {
        o.strip_prefix("tangle_pretrain_step_")?
            .parse::<usize>()
            .ok()
    });
    let mut batches = vec![64];
    batches.extend(patients.filter(|&b| b != 64));
    for b in batches {
        let run = patients == Some(b);
        record(
            &format!("tangle_pretrain_step_{b}"),
            optional(run, || tangle_pretrain_step(b, repeat.min(3)))?,
        );
    }
    println!("{}", serde_json::Value::Object(results));
    Ok(())
}
