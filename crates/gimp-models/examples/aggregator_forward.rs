//! Forward pass of GiMP's patch aggregator (1024 → 512, two Nyström layers, eval mode) on one bag
//! of N random patches; prints the time. Peak memory: run under `/usr/bin/time -v`.
//!
//! `cargo run --release -p gimp-models --example aggregator_forward -- 150000 [transmil]`
use candle_core::{Device, Tensor};
use gimp_models::aggregator::{AggregatorConfig, PatchAggregator};
use gimp_nn::{Mode, ParamStore};

/// As in the `gimp-rs` binary: large freed tensors are reused (see `gimp_nn::cpu::alloc`).
#[global_allocator]
static ALLOC: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();

fn main() -> candle_core::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(6000);
    let cfg = match std::env::args().nth(2).as_deref() {
        Some("transmil") => AggregatorConfig::transmil(1024),
        _ => AggregatorConfig::gimp(1024),
    };
    let store = ParamStore::new(0);
    let agg = PatchAggregator::new(&store.root_inference(), cfg)?;
    let x = Tensor::rand(0f32, 1f32, (n, 1024), &Device::Cpu)?;
    let t = std::time::Instant::now();
    let cls = agg.cls(&x, &Mode::inference())?;
    let v: f32 = cls.sum_all()?.to_scalar()?;
    println!(
        "{n} patches: forward {:.2} s (checksum {v:.4})",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
