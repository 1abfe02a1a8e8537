//! The computations of the speed comparison (`bench/compare.sh`), timed in Rust:
//!
//! * `pretrain_step`: one GiMP pre-training step of the patch aggregator on a 6,000-patch window
//!   (1024 → 512, two Nyström layers, decoder 512 → 1024, L1 on 50% masked, backward, AdamW);
//! * `forward_6000`, `forward_150000`: inference of the aggregator on whole bags;
//! * `groupmsa_step`: one GroupMSA training step on 60,480 genes (batch 8).
//!
//! Prints one JSON object of median seconds over `--repeat` runs (after one warm-up).
//! `cargo run --release -p gimp-train --example bench_steps -- [--repeat 3] [--skip-150k] [--only NAME]`
use candle_core::{Device, Tensor};
use gimp_models::aggregator::AggregatorConfig;
use gimp_models::gimp::{ExpressionAlone, GeneEncoder, GeneEncoderConfig, Gimp, GimpConfig};
use gimp_models::group_msa::GroupMsaConfig;
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

fn main() -> candle_core::Result<()> {
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
    let cfg = GimpConfig {
        aggregator: AggregatorConfig::gimp(1024),
        genes: GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(60_480, 2)),
        n_classes: 2,
        head_dropout: 0.25,
        expression_alone: ExpressionAlone::FusionHead,
    };
    let store = ParamStore::new(0);
    let model = Gimp::new(&store.root(), cfg.clone())?;
    store.set_trainable("genes.", false);
    let mut opt = Adam::new(&store, AdamConfig::gimp());
    let window = Tensor::rand(0f32, 1f32, (6000, 1024), &dev)?;
    let masked: Vec<usize> = (0..6000).step_by(2).collect();
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(0));
    let pretrain_step = optional(want("pretrain_step"), || {
        time(repeat, || {
            let m = model.masked_patch_modelling(&window, &masked, &mode)?;
            let grads = opt.collect(&m.reconstruction.backward()?);
            opt.step_with(&grads, 1e-4)
        })
    })?;
    let infer = ParamStore::new(0);
    let agg = gimp_models::aggregator::PatchAggregator::new(
        &infer.root_inference(),
        AggregatorConfig::gimp(1024),
    )?;
    let forward_6000 = optional(want("forward_6000"), || {
        time(repeat, || agg.cls(&window, &Mode::inference()).map(drop))
    })?;
    let forward_150000 = optional(!skip_150k && want("forward_150000"), || {
        let big = Tensor::rand(0f32, 1f32, (150_000, 1024), &dev)?;
        time(1, || agg.cls(&big, &Mode::inference()).map(drop))
    })?;
    let gstore = ParamStore::new(1);
    let enc = GeneEncoder::new(
        &gstore.root(),
        &GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(60_480, 2)),
    )?;
    let mut gopt = Adam::new(&gstore, AdamConfig::gimp());
    let genes = Tensor::rand(0f32, 1f32, (8, 60_480), &dev)?;
    let groupmsa_step = optional(want("groupmsa_step"), || {
        time(repeat, || {
            let (_, logits) = enc.forward(&genes, &mode)?;
            let l = loss::cross_entropy(&logits, &[0, 1, 0, 1, 0, 1, 0, 1])?;
            let g = gopt.collect(&l.backward()?);
            gopt.step_with(&g, 1e-4)
        })
    })?;
    println!(
        "{}",
        serde_json::json!({
            "implementation": "gimp-rs",
            "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            "pretrain_step": pretrain_step,
            "forward_6000": forward_6000,
            "forward_150000": forward_150000,
            "groupmsa_step": groupmsa_step,
        })
    );
    Ok(())
}
