//! Times the fused Nyström layer core (forward, backward) on the GiMP pre-training shape:
//! 6,144 padded rows (or the first argument), 8 heads × 64, 256 landmarks, kernel 33, keeping
//! the attention matrices and rebuilding them.
//! `cargo run --release -p gimp-nn --example bench_nystrom_core [-- ROWS]`
use candle_core::{Device, Tensor, Var};
use gimp_nn::nystrom::core_op::{nystrom_core, CoreShape};
use gimp_nn::nystrom::AttentionMemory;
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let shape = CoreShape {
        heads: 8,
        dim_head: 64,
        landmarks: 256,
        pinv_iterations: 6,
        kernel: 33,
    };
    let rows: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .map_or(6144, |r: usize| r.div_ceil(256) * 256);
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1f32, (1, rows, 1536), &Device::Cpu)?)?;
    let conv = Var::from_tensor(&Tensor::randn(0f32, 0.1f32, (8, 33), &Device::Cpu)?)?;
    let g = Tensor::randn(0f32, 1f32, (1, rows, 512), &Device::Cpu)?;
    for run in 0..6 {
        let memory = if run % 2 == 0 {
            AttentionMemory::Keep
        } else {
            AttentionMemory::Recompute
        };
        let t = Instant::now();
        let o = nystrom_core(qkv.as_tensor(), conv.as_tensor(), shape, memory)?;
        let fwd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = (o * &g)?.sum_all()?.backward()?;
        let bwd = t.elapsed().as_secs_f64();
        drop(grads);
        println!(
            "{memory:?}: forward {:.1} ms, backward {:.1} ms",
            fwd * 1e3,
            bwd * 1e3
        );
    }
    Ok(())
}
