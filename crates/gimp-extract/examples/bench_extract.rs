//! Times ResNet50-trunc on a batch of 32 patches of 256 × 256 (random weights and pixels), the
//! unit of work of `gimp-rs extract`; prints JSON for bench/compare.sh.
//!
//! `cargo run --release -p gimp-extract --example bench_extract -- [--repeat 3]`

use candle_core::{Device, Tensor};
use gimp_extract::resnet::{random_weights, ResNet50Trunc};
use std::time::Instant;

/// As in the `gimp-rs` binary: large freed tensors are reused (see `gimp_nn::cpu::alloc`).
#[global_allocator]
static ALLOC: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();

fn main() -> candle_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let repeat = args
        .iter()
        .position(|a| a == "--repeat")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(3usize);
    let net = ResNet50Trunc::new(random_weights(0)?)?;
    let x = Tensor::rand(0f32, 1f32, (32, 3, 256, 256), &Device::Cpu)?;
    net.forward(&x)?;
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        net.forward(&x)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({"implementation": "gimp-rs", "extract_32": times[times.len() / 2]})
    );
    Ok(())
}
