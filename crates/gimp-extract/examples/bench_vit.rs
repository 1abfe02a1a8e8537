//! Times the shared ViT body's forward pass on 32 images of 224 × 224 (random weights and
//! pixels) at ViT-B/16 or ViT-L/16 size (timm's `vit_base_patch16_224` /
//! `vit_large_patch16_224`: GELU MLP ×4, class token output); prints JSON for bench/compare.sh,
//! which runs it under `/usr/bin/time -v` for the peak memory.
//!
//! `cargo run --release -p gimp-extract --example bench_vit -- --model vit_l16 [--repeat 3]`

use gimp_extract::vit::{Mlp, Pooling, PosResample, Vit, VitConfig};
use std::time::Instant;

#[global_allocator]
static ALLOC: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let repeat: usize = arg("--repeat").and_then(|v| v.parse().ok()).unwrap_or(3);
    let model = arg("--model").unwrap_or_else(|| "vit_b16".into());
    let (dim, depth) = match model.as_str() {
        "vit_b16" => (768, 12),
        "vit_l16" => (1024, 24),
        other => {
            eprintln!("unknown --model {other}; known: vit_b16, vit_l16");
            std::process::exit(2);
        }
    };
    let cfg = VitConfig {
        patch: 16,
        head_dim: 64,
        reg_tokens: 0,
        no_embed_class: false,
        layer_scale: false,
        mlp: Mlp::Gelu,
        pooling: Pooling::ClassToken,
        eps: 1e-6,
        pos_resample: PosResample::Antialiased,
    };
    let vit = Vit::random(cfg, dim, depth, 4 * dim, 14, 0);
    let (b, side) = (32, 224);
    let x: Vec<f32> = (0..b * 3 * side * side)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    vit.forward(&x, b, side).expect("forward");
    let mut times = Vec::new();
    for _ in 0..repeat.max(1) {
        let t = Instant::now();
        let out = vit.forward(&x, b, side).expect("forward");
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(out.len(), b * dim);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{}",
        serde_json::json!({
            "implementation": "gimp-rs",
            "threads": rayon::current_num_threads(),
            format!("{model}_32"): times[times.len() / 2],
        })
    );
}
