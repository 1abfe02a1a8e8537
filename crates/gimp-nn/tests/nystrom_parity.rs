//! Nyström attention against lucidrains' nystrom-attention 0.0.14 (the shared fixtures, copied
//! into tests/fixtures): forward to 1e-4 and gradients of the input and every parameter to 1e-3
//! (relative to the largest reference magnitude), for the loss `sum(output * grad_output)`; and
//! against finite differences on a tiny case.

use candle_core::{Device, Tensor, Var};
use gimp_nn::nystrom::{NystromAttention, NystromConfig};
use gimp_nn::{Mode, ParamStore};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

fn fixture(name: &str) -> HashMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    candle_core::safetensors::load(&p, &Device::Cpu).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let diff = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12);
    diff / scale
}

fn config(dim: usize, heads: usize, dim_head: usize) -> NystromConfig {
    NystromConfig {
        dim,
        heads,
        dim_head,
        landmarks: 16,
        pinv_iterations: 6,
        residual: true,
        residual_kernel: 33,
        dropout: 0.0,
        legacy_front_slice: false,
    }
}

fn check(name: &str, dim: usize, heads: usize, dim_head: usize) {
    let t = fixture(name);
    let preset: BTreeMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone())))
        .collect();
    let store = ParamStore::with_preset(0, preset);
    let attn = NystromAttention::new(&store.root(), config(dim, heads, dim_head)).unwrap();
    assert!(
        store.unused().is_empty(),
        "{name}: unused weights {:?}",
        store.unused()
    );
    let x = Var::from_tensor(&t["input"]).unwrap();
    let out = attn.forward(x.as_tensor(), &Mode::eval()).unwrap();
    let e = rel_err(&out, &t["output"]);
    assert!(e < 1e-4, "{name}: forward relative error {e}");
    let loss = (&out * &t["grad_output"]).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let gx = grads.get(x.as_tensor()).unwrap();
    let e = rel_err(gx, &t["grad.input"]);
    assert!(e < 1e-3, "{name}: input gradient relative error {e}");
    for (pname, p) in store.params() {
        let g = grads.get(p.var.as_tensor()).unwrap();
        let e = rel_err(g, &t[&format!("grad.param.{pname}")]);
        assert!(e < 1e-3, "{name}: gradient of {pname}: relative error {e}");
    }
}

#[test]
fn n10_shorter_than_landmarks() {
    check("nystrom_n10_short.safetensors", 64, 4, 16);
}

#[test]
fn n50_front_padded() {
    check("nystrom_n50_padded.safetensors", 64, 4, 16);
}

#[test]
fn n64_exact_multiple() {
    check("nystrom_n64_exact.safetensors", 64, 4, 16);
}

#[test]
fn n301_padded_two_rows_per_landmark() {
    check("nystrom_n301_padded.safetensors", 32, 2, 16);
}

#[test]
fn legacy_front_slice_returns_padded_positions() {
    let t = fixture("nystrom_n50_padded.safetensors");
    let preset: BTreeMap<String, Tensor> = t
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone())))
        .collect();
    let mut cfg = config(64, 4, 16);
    cfg.legacy_front_slice = true;
    let legacy =
        NystromAttention::new(&ParamStore::with_preset(0, preset.clone()).root(), cfg).unwrap();
    let fixed = NystromAttention::new(
        &ParamStore::with_preset(0, preset).root(),
        config(64, 4, 16),
    )
    .unwrap();
    let x = &t["input"];
    let a = legacy.forward(x, &Mode::eval()).unwrap();
    let b = fixed.forward(x, &Mode::eval()).unwrap();
    // 50 tokens padded to 64: the legacy row 14 + i is the fixed row i.
    let e = rel_err(&a.narrow(1, 14, 36).unwrap(), &b.narrow(1, 0, 36).unwrap());
    assert!(e < 1e-6, "{e}");
    assert!(rel_err(&a, &b) > 1e-2);
}

#[test]
fn gradients_match_finite_differences() {
    let cfg = NystromConfig {
        dim: 8,
        heads: 2,
        dim_head: 4,
        landmarks: 4,
        pinv_iterations: 6,
        residual: true,
        residual_kernel: 5,
        dropout: 0.0,
        legacy_front_slice: false,
    };
    let store = ParamStore::new(3);
    let attn = NystromAttention::new(&store.root(), cfg).unwrap();
    let data: Vec<f32> = (0..6 * 8)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let x = Var::from_tensor(&Tensor::from_vec(data.clone(), (1, 6, 8), &Device::Cpu).unwrap())
        .unwrap();
    let weights: Vec<f32> = (0..6 * 8)
        .map(|i| ((i * 11 % 7) as f32 - 3.0) / 3.0)
        .collect();
    let w = Tensor::from_vec(weights, (1, 6, 8), &Device::Cpu).unwrap();
    let loss_of = |x: &Tensor| -> f64 {
        let o = attn.forward(x, &Mode::eval()).unwrap();
        (o * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(candle_core::DType::F64)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    };
    let loss = (attn.forward(x.as_tensor(), &Mode::eval()).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    let g: Vec<f32> = loss
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-2f32;
    for i in [0usize, 5, 17, 30, 47] {
        let mut up = data.clone();
        up[i] += h;
        let mut down = data.clone();
        down[i] -= h;
        let tu = Tensor::from_vec(up, (1, 6, 8), &Device::Cpu).unwrap();
        let td = Tensor::from_vec(down, (1, 6, 8), &Device::Cpu).unwrap();
        let fd = (loss_of(&tu) - loss_of(&td)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() < 2e-2 * fd.abs().max(0.1),
            "input {i}: finite difference {fd}, backward {}",
            g[i]
        );
    }
}

#[test]
fn streaming_inference_matches_the_fixtures_and_the_graph_path() {
    for (name, dim, heads) in [
        ("nystrom_n10_short.safetensors", 64, 4),
        ("nystrom_n50_padded.safetensors", 64, 4),
        ("nystrom_n301_padded.safetensors", 32, 2),
    ] {
        let t = fixture(name);
        let preset: BTreeMap<String, Tensor> = t
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_string(), v.clone())))
            .collect();
        let attn = NystromAttention::new(
            &ParamStore::with_preset(0, preset).root_inference(),
            config(dim, heads, 16),
        )
        .unwrap();
        for chunk in [1, 7, 64, 4096] {
            let out = attn.forward_streaming(&t["input"], chunk).unwrap();
            let e = rel_err(&out, &t["output"]);
            assert!(e < 1e-4, "{name}, chunk {chunk}: relative error {e}");
        }
        assert!(
            rel_err(
                &attn.forward(&t["input"], &Mode::inference()).unwrap(),
                &t["output"]
            ) < 1e-4
        );
    }
    // A bigger bag at the real landmark count, chunked, against the autograd path; both
    // un-padding conventions.
    for legacy in [false, true] {
        let mut cfg = NystromConfig::transmil(64);
        cfg.dropout = 0.0;
        cfg.legacy_front_slice = legacy;
        let attn = NystromAttention::new(&ParamStore::new(9).root(), cfg).unwrap();
        let x = Tensor::rand(0f32, 1f32, (1, 3001, 64), &Device::Cpu).unwrap();
        let a = attn.forward(&x, &Mode::eval()).unwrap();
        let b = attn.forward_streaming(&x, 500).unwrap();
        assert!(
            rel_err(&b, &a) < 1e-4,
            "legacy {legacy}: {}",
            rel_err(&b, &a)
        );
    }
}
