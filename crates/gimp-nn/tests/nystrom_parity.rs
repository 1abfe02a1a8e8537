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

/// Gradients of `sum(o ⊙ w)` with respect to `x` ("input") and every parameter of `store`.
fn input_and_parameter_grads(
    o: &Tensor,
    w: &Tensor,
    x: &Var,
    store: &ParamStore,
) -> Vec<(String, Tensor)> {
    let g = (o * w).unwrap().sum_all().unwrap().backward().unwrap();
    let mut grads = vec![("input".to_string(), g.get(x.as_tensor()).unwrap().clone())];
    for (name, p) in store.params() {
        grads.push((name, g.get(p.var.as_tensor()).unwrap().clone()));
    }
    grads
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

/// The fused layer op (`nystrom::core_op`) against the same layer built from candle's ordinary ops:
/// forward and the gradients of the input and every parameter, batch 2, with and without the
/// residual convolution, both un-padding conventions, four heads and three.
#[test]
fn fused_op_matches_the_graph_formulation() {
    // Both ways of holding the attention matrices (kept, rebuilt in the backward pass).
    for limit in [usize::MAX, 0] {
        gimp_nn::nystrom::with_keep_attention_limit(
            limit,
            fused_op_matches_the_graph_formulation_once,
        );
    }
}

fn fused_op_matches_the_graph_formulation_once() {
    for (residual, legacy, n, heads) in [
        (true, false, 301, 4),
        (false, false, 64, 4),
        (true, true, 77, 4),
        (true, false, 301, 3),
    ] {
        let cfg = NystromConfig {
            residual,
            legacy_front_slice: legacy,
            ..config(32, heads, 8)
        };
        let store = ParamStore::new(5);
        let attn = NystromAttention::new(&store.root(), cfg).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap())
            .unwrap();
        let w = Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap();
        let run = |graph: bool| {
            let o = if graph {
                attn.forward_graph(x.as_tensor(), &Mode::eval())
            } else {
                attn.forward(x.as_tensor(), &Mode::eval())
            }
            .unwrap();
            let grads = input_and_parameter_grads(&o, &w, &x, &store);
            (o, grads)
        };
        let (of, gf) = run(false);
        let (og, gg) = run(true);
        let case = format!("residual {residual}, legacy {legacy}, n {n}, {heads} heads");
        assert!(
            rel_err(&of, &og) < 1e-5,
            "{case}: forward {}",
            rel_err(&of, &og)
        );
        for ((name, a), (_, b)) in gf.iter().zip(&gg) {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "{case}: gradient of {name}: relative error {e}");
        }
    }
}

/// The op's own backward against central differences of its forward, on raw `qkv` and kernels
/// (every input element of a small case), so the check does not depend on candle's autograd.
#[test]
fn fused_op_backward_matches_finite_differences() {
    use gimp_nn::nystrom::AttentionMemory;
    for memory in [AttentionMemory::Keep, AttentionMemory::Recompute] {
        core_backward_matches_finite_differences(memory);
    }
}

fn core_backward_matches_finite_differences(memory: gimp_nn::nystrom::AttentionMemory) {
    use gimp_nn::nystrom::core_op::{nystrom_core, CoreShape};
    let shape = CoreShape {
        heads: 2,
        dim_head: 3,
        landmarks: 4,
        pinv_iterations: 6,
        kernel: 3,
    };
    let (b, n) = (1, 8);
    let qkv_data: Vec<f32> = (0..b * n * 18)
        .map(|i| ((i * 29 % 23) as f32 - 11.0) / 9.0)
        .collect();
    let conv_data: Vec<f32> = (0..6).map(|i| (i as f32 - 2.5) / 4.0).collect();
    let weights = Tensor::from_vec(
        (0..b * n * 6)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 6.0)
            .collect::<Vec<_>>(),
        (b, n, 6),
        &Device::Cpu,
    )
    .unwrap();
    let loss = |qkv: &[f32], conv: &[f32]| -> f64 {
        let q = Tensor::from_vec(qkv.to_vec(), (b, n, 18), &Device::Cpu).unwrap();
        let c = Tensor::from_vec(conv.to_vec(), (2, 3), &Device::Cpu).unwrap();
        let o = nystrom_core(&q, &c, shape, memory).unwrap();
        let o: Vec<f32> = (o * &weights)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        o.iter().map(|&v| v as f64).sum()
    };
    let qv = Var::from_vec(qkv_data.clone(), (b, n, 18), &Device::Cpu).unwrap();
    let cv = Var::from_vec(conv_data.clone(), (2, 3), &Device::Cpu).unwrap();
    let o = nystrom_core(qv.as_tensor(), cv.as_tensor(), shape, memory).unwrap();
    let g = (o * &weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gq: Vec<f32> = g
        .get(qv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let gc: Vec<f32> = g
        .get(cv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-2f32;
    let check = |analytic: f32, up: f64, down: f64, what: String| {
        let fd = (up - down) / (2.0 * h as f64);
        assert!(
            (fd - analytic as f64).abs() < 3e-2 * fd.abs().max(0.05),
            "{what}: finite difference {fd}, backward {analytic}"
        );
    };
    for i in 0..qkv_data.len() {
        let (mut up, mut down) = (qkv_data.clone(), qkv_data.clone());
        up[i] += h;
        down[i] -= h;
        check(
            gq[i],
            loss(&up, &conv_data),
            loss(&down, &conv_data),
            format!("qkv[{i}]"),
        );
    }
    for i in 0..conv_data.len() {
        let (mut up, mut down) = (conv_data.clone(), conv_data.clone());
        up[i] += h;
        down[i] -= h;
        check(
            gc[i],
            loss(&qkv_data, &up),
            loss(&qkv_data, &down),
            format!("conv[{i}]"),
        );
    }
}

/// The whole pre-norm residual layer as one op (`nystrom::layer_op`) against
/// `x + attention(LayerNorm(x))` composed from candle's ordinary ops: forward and the gradients
/// of the input, the LayerNorm and every attention parameter; batch 2, padding, both
/// un-padding conventions, with and without the residual convolution; four heads and three
/// (a whole-slide backward pass takes the heads in groups: the last one may be smaller).
#[test]
fn fused_layer_matches_the_composed_layer() {
    // Both ways of holding the attention matrices (kept, rebuilt in the backward pass).
    for limit in [usize::MAX, 0] {
        gimp_nn::nystrom::with_keep_attention_limit(
            limit,
            fused_layer_matches_the_composed_layer_once,
        );
    }
}

fn fused_layer_matches_the_composed_layer_once() {
    use gimp_nn::LayerNorm;
    for (residual, legacy, n, heads) in [
        (true, false, 301, 4),
        (false, false, 64, 4),
        (true, true, 77, 4),
        (true, false, 301, 3),
    ] {
        let cfg = NystromConfig {
            residual,
            legacy_front_slice: legacy,
            ..config(32, heads, 8)
        };
        let store = ParamStore::new(8);
        let root = store.root();
        let norm = LayerNorm::new(&root.pp("norm"), 32).unwrap();
        let attn = NystromAttention::new(&root.pp("attn"), cfg).unwrap();
        // Non-trivial LayerNorm parameters, so the forward uses them.
        for (name, p) in store.params() {
            if name.starts_with("norm.") {
                let v = Tensor::randn(0.5f32, 0.3f32, 32, &Device::Cpu).unwrap();
                p.var.set(&v).unwrap();
            }
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap())
            .unwrap();
        let w = Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap();
        let run = |fused: bool| {
            let o = if fused {
                attn.forward_prenorm_residual(&norm, x.as_tensor(), &Mode::eval())
            } else {
                let h =
                    gimp_nn::ops::layer_norm_graph(x.as_tensor(), &norm.weight, &norm.bias, 1e-5)
                        .unwrap();
                x.as_tensor() + attn.forward_graph(&h, &Mode::eval()).unwrap()
            }
            .unwrap();
            let grads = input_and_parameter_grads(&o, &w, &x, &store);
            (o, grads)
        };
        // A first pass on other data leaves stale values in the reused buffers: the checked
        // pass must not depend on them.
        gimp_nn::cpu::pool_every_size();
        let other = (x.as_tensor() * 3.0).unwrap().sin().unwrap();
        let polluted = attn
            .forward_prenorm_residual(&norm, &other, &Mode::eval())
            .unwrap();
        polluted.sum_all().unwrap().backward().unwrap();
        let (of, gf) = run(true);
        let (og, gg) = run(false);
        let case = format!("residual {residual}, legacy {legacy}, n {n}, {heads} heads");
        assert!(
            rel_err(&of, &og) < 1e-5,
            "{case}: forward {}",
            rel_err(&of, &og)
        );
        assert_eq!(gf.len(), gg.len());
        for ((name, a), (_, b)) in gf.iter().zip(&gg) {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "{case}: gradient of {name}: relative error {e}");
        }
    }
}

/// The fused layer computing selected output rows only equals the whole layer's rows
/// (forward, and every gradient for a loss on those rows).
#[test]
fn fused_layer_on_selected_rows_matches_the_whole_layer() {
    // Both ways of holding the attention matrices (kept, rebuilt in the backward pass).
    for limit in [usize::MAX, 0] {
        gimp_nn::nystrom::with_keep_attention_limit(
            limit,
            fused_layer_on_selected_rows_matches_the_whole_layer_once,
        );
    }
}

fn fused_layer_on_selected_rows_matches_the_whole_layer_once() {
    use gimp_nn::LayerNorm;
    for (legacy, n, rows) in [
        (false, 301usize, vec![0usize, 1, 5, 150, 299, 300]),
        (true, 77, vec![0, 3, 76]),
        (false, 64, (0..64).step_by(2).collect::<Vec<_>>()),
    ] {
        let cfg = NystromConfig {
            legacy_front_slice: legacy,
            ..config(32, 4, 8)
        };
        let store = ParamStore::new(12);
        let root = store.root();
        let norm = LayerNorm::new(&root.pp("norm"), 32).unwrap();
        let attn = NystromAttention::new(&root.pp("attn"), cfg).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap())
            .unwrap();
        let w = Tensor::randn(0f32, 1f32, (2, rows.len(), 32), &Device::Cpu).unwrap();
        let idx = Tensor::from_vec(
            rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
            rows.len(),
            &Device::Cpu,
        )
        .unwrap();
        let run = |selected: bool| {
            let o = if selected {
                attn.forward_prenorm_residual_rows(&norm, x.as_tensor(), &Mode::eval(), Some(&rows))
                    .unwrap()
            } else {
                attn.forward_prenorm_residual(&norm, x.as_tensor(), &Mode::eval())
                    .unwrap()
                    .index_select(&idx, 1)
                    .unwrap()
            };
            let grads = input_and_parameter_grads(&o, &w, &x, &store);
            (o, grads)
        };
        gimp_nn::cpu::pool_every_size();
        let other = (x.as_tensor() * 3.0).unwrap().sin().unwrap();
        let polluted = attn
            .forward_prenorm_residual_rows(&norm, &other, &Mode::eval(), Some(&rows))
            .unwrap();
        polluted.sum_all().unwrap().backward().unwrap();
        let (os, gs) = run(true);
        let (of, gf) = run(false);
        let case = format!("legacy {legacy}, n {n}");
        assert_eq!(os.dims(), &[2, rows.len(), 32]);
        assert!(
            rel_err(&os, &of) < 1e-5,
            "{case}: forward {}",
            rel_err(&os, &of)
        );
        for ((name, a), (_, b)) in gs.iter().zip(&gf) {
            let e = rel_err(a, b);
            assert!(e < 1e-4, "{case}: gradient of {name}: relative error {e}");
        }
    }
}

/// With dropout in training, the fused layer (its mask kept as one bit per value) draws the
/// same mask as the composed layer's dropout from the same random stream: the same output and
/// gradients, in both memory modes. (A bag without padding: the composed layer draws its mask
/// over the padded rows too.)
#[test]
fn fused_layer_dropout_matches_the_composed_layer() {
    use gimp_nn::LayerNorm;
    use rand::SeedableRng;
    for limit in [usize::MAX, 0] {
        gimp_nn::nystrom::with_keep_attention_limit(limit, || {
            let cfg = NystromConfig {
                dropout: 0.25,
                ..config(32, 4, 8)
            };
            let store = ParamStore::new(21);
            let root = store.root();
            let norm = LayerNorm::new(&root.pp("norm"), 32).unwrap();
            let attn = NystromAttention::new(&root.pp("attn"), cfg).unwrap();
            let n = 304;
            let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap())
                .unwrap();
            let w = Tensor::randn(0f32, 1f32, (2, n, 32), &Device::Cpu).unwrap();
            let run = |fused: bool| {
                let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(7));
                let o = if fused {
                    attn.forward_prenorm_residual(&norm, x.as_tensor(), &mode)
                } else {
                    let h = gimp_nn::ops::layer_norm_graph(
                        x.as_tensor(),
                        &norm.weight,
                        &norm.bias,
                        1e-5,
                    )
                    .unwrap();
                    x.as_tensor() + attn.forward_graph(&h, &mode).unwrap()
                }
                .unwrap();
                let grads = input_and_parameter_grads(&o, &w, &x, &store);
                (o, grads)
            };
            let (of, gf) = run(true);
            let (og, gg) = run(false);
            // Dropout acted: the output differs from evaluation's.
            let eval = attn
                .forward_prenorm_residual(&norm, x.as_tensor(), &Mode::eval())
                .unwrap();
            assert!(rel_err(&of, &eval) > 1e-2, "limit {limit}: no dropout");
            let e = rel_err(&of, &og);
            assert!(e < 1e-5, "limit {limit}: forward {e}");
            for ((name, a), (_, b)) in gf.iter().zip(&gg) {
                let e = rel_err(a, b);
                assert!(
                    e < 1e-4,
                    "limit {limit}: gradient of {name}: relative error {e}"
                );
            }
        });
    }
}
