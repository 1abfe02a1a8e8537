//! Times the fused Nyström layer core (forward, backward) on the GiMP pre-training shape:
//! 6,144 padded rows, 8 heads × 64, 256 landmarks, kernel 33.
//! `cargo run --release -p gimp-nn --example bench_nystrom_core`
use candle_core::{Device, Tensor, Var};
use gimp_nn::nystrom::core_op::{nystrom_core, CoreShape};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let shape = CoreShape {
        heads: 8,
        dim_head: 64,
        landmarks: 256,
        pinv_iterations: 6,
        kernel: 33,
    };
    let qkv = Var::from_tensor(&Tensor::randn(0f32, 1f32, (1, 6144, 1536), &Device::Cpu)?)?;
    let conv = Var::from_tensor(&Tensor::randn(0f32, 0.1f32, (8, 33), &Device::Cpu)?)?;
    let g = Tensor::randn(0f32, 1f32, (1, 6144, 512), &Device::Cpu)?;
    for _ in 0..4 {
        let t = Instant::now();
        let o = nystrom_core(qkv.as_tensor(), conv.as_tensor(), shape)?;
        let fwd = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let grads = (o * &g)?.sum_all()?.backward()?;
        let bwd = t.elapsed().as_secs_f64();
        drop(grads);
        println!("forward {:.1} ms, backward {:.1} ms", fwd * 1e3, bwd * 1e3);
    }
    Ok(())
}
