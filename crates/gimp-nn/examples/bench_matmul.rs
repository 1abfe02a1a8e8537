//! GFLOP/s of candle's CPU matmul on the shapes of the Nyström step.
//! `cargo run --release -p gimp-nn --example bench_matmul`
use candle_core::{Device, Tensor};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    for &(b, m, k, n) in &[
        (1usize, 6144usize, 512usize, 1536usize),
        (1, 6144, 1024, 512),
        (8, 6144, 64, 256),
        (8, 256, 6144, 64),
        (8, 256, 256, 256),
    ] {
        let x = Tensor::rand(0f32, 1f32, (b, m, k), &dev)?;
        let y = Tensor::rand(0f32, 1f32, (b, k, n), &dev)?;
        x.matmul(&y)?;
        let reps = 10;
        let s = Instant::now();
        for _ in 0..reps {
            x.matmul(&y)?;
        }
        let t = s.elapsed().as_secs_f64() / reps as f64;
        let gf = 2.0 * (b * m * k * n) as f64 / 1e9;
        println!(
            "[{b}] {m}x{k} @ {k}x{n}: {:.2} ms, {:.0} GFLOP/s",
            t * 1e3,
            gf / t
        );
    }
    Ok(())
}
