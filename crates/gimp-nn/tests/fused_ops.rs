//! The fused softmax and LayerNorm ops against the same functions built from candle's ordinary
//! ops (forward and every gradient) and against central finite differences.

use candle_core::{DType, Device, Tensor, Var};
use gimp_nn::ops;

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-12)
}

fn weights(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed * 97) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn softmax_matches_the_graph_version_and_finite_differences() {
    // 150 rows: more than one parallel task of 64 rows, and a ragged last one.
    let x = Var::from_tensor(&(weights(&[3, 50, 7], 1) * 4.0).unwrap()).unwrap();
    let w = weights(&[3, 50, 7], 2);
    let grad = |f: fn(&Tensor) -> candle_core::Result<Tensor>| {
        let y = f(x.as_tensor()).unwrap();
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(x.as_tensor()).unwrap().clone())
    };
    let (yf, gf) = grad(ops::softmax_last);
    let (yg, gg) = grad(ops::softmax_last_graph);
    assert!(max_rel(&yf, &yg) < 1e-6);
    assert!(max_rel(&gf, &gg) < 1e-5, "{}", max_rel(&gf, &gg));
    let base: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f32> = gf.flatten_all().unwrap().to_vec1().unwrap();
    let loss = |v: &[f32]| -> f64 {
        let t = Tensor::from_vec(v.to_vec(), (3, 50, 7), &Device::Cpu).unwrap();
        let y = ops::softmax_last(&t).unwrap();
        (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    for i in [0usize, 13, 349, 1049] {
        let h = 1e-2f32;
        let (mut up, mut down) = (base.clone(), base.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (loss(&up) - loss(&down)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() < 1e-2 * fd.abs().max(0.05),
            "{i}: {fd} vs {}",
            g[i]
        );
    }
}

#[test]
fn layer_norm_matches_the_graph_version_and_finite_differences() {
    let x = Var::from_tensor(&(weights(&[2, 70, 9], 3) * 3.0).unwrap()).unwrap();
    let gamma = Var::from_tensor(&(weights(&[9], 4) + 1.0).unwrap()).unwrap();
    let beta = Var::from_tensor(&weights(&[9], 5)).unwrap();
    let w = weights(&[2, 70, 9], 6);
    type Ln = fn(&Tensor, &Tensor, &Tensor, f64) -> candle_core::Result<Tensor>;
    let run = |f: Ln| {
        let y = f(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let grads: Vec<Tensor> = [&x, &gamma, &beta]
            .iter()
            .map(|v| g.get(v.as_tensor()).unwrap().clone())
            .collect();
        (y, grads)
    };
    let (yf, gf) = run(ops::layer_norm);
    let (yg, gg) = run(ops::layer_norm_graph);
    assert!(max_rel(&yf, &yg) < 1e-5, "{}", max_rel(&yf, &yg));
    for (name, (a, b)) in ["x", "weight", "bias"].iter().zip(gf.iter().zip(&gg)) {
        assert!(max_rel(a, b) < 1e-4, "{name}: {}", max_rel(a, b));
    }
    let base: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f32> = gf[0].flatten_all().unwrap().to_vec1().unwrap();
    let loss = |v: &[f32]| -> f64 {
        let t = Tensor::from_vec(v.to_vec(), (2, 70, 9), &Device::Cpu).unwrap();
        let y = ops::layer_norm(&t, gamma.as_tensor(), beta.as_tensor(), 1e-5).unwrap();
        (y * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    for i in [0usize, 8, 640, 1259] {
        let h = 1e-2f32;
        let (mut up, mut down) = (base.clone(), base.clone());
        up[i] += h;
        down[i] -= h;
        let fd = (loss(&up) - loss(&down)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() < 2e-2 * fd.abs().max(0.05),
            "{i}: {fd} vs {}",
            g[i]
        );
    }
}

#[test]
fn linear_matches_the_graph_version_for_every_activation() {
    use gimp_nn::cpu::fused_linear::{linear, Activation};
    let x = Var::from_tensor(&weights(&[2, 37, 11], 7)).unwrap();
    let w = Var::from_tensor(&weights(&[13, 11], 8)).unwrap();
    let b = Var::from_tensor(&weights(&[13], 9)).unwrap();
    let gw = weights(&[2, 37, 13], 10);
    for act in [Activation::Identity, Activation::Relu, Activation::Gelu] {
        for with_bias in [true, false] {
            let run = |fused: bool| {
                let y = if fused {
                    linear(
                        x.as_tensor(),
                        w.as_tensor(),
                        with_bias.then_some(b.as_tensor()),
                        act,
                    )
                    .unwrap()
                } else {
                    let z = x
                        .as_tensor()
                        .broadcast_matmul(&w.as_tensor().t().unwrap())
                        .unwrap();
                    let z = if with_bias {
                        z.broadcast_add(b.as_tensor()).unwrap()
                    } else {
                        z
                    };
                    match act {
                        Activation::Identity => z,
                        Activation::Relu => z.relu().unwrap(),
                        Activation::Gelu => z.gelu_erf().unwrap(),
                    }
                };
                let g = (&y * &gw).unwrap().sum_all().unwrap().backward().unwrap();
                let mut grads = vec![
                    g.get(x.as_tensor()).unwrap().clone(),
                    g.get(w.as_tensor()).unwrap().clone(),
                ];
                if with_bias {
                    grads.push(g.get(b.as_tensor()).unwrap().clone());
                }
                (y, grads)
            };
            let (yf, gf) = run(true);
            let (yg, gg) = run(false);
            let case = format!("{act:?}, bias {with_bias}");
            assert_eq!(yf.dims(), &[2, 37, 13]);
            assert!(max_rel(&yf, &yg) < 1e-5, "{case}: {}", max_rel(&yf, &yg));
            for (i, (a, b)) in gf.iter().zip(&gg).enumerate() {
                assert!(
                    max_rel(a, b) < 1e-4,
                    "{case}: gradient {i}: {}",
                    max_rel(a, b)
                );
            }
        }
    }
}

#[test]
fn dropout_keeps_its_draws_and_gradient() {
    use gimp_nn::Mode;
    use rand::SeedableRng;
    let x = Var::from_tensor(&(weights(&[40, 30], 11) + 2.0).unwrap()).unwrap();
    let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(4));
    let y = ops::dropout(x.as_tensor(), 0.25, &mode).unwrap();
    let (xs, ys): (Vec<f32>, Vec<f32>) = (
        x.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
        y.flatten_all().unwrap().to_vec1().unwrap(),
    );
    let dropped = ys.iter().filter(|&&v| v == 0.0).count() as f64 / ys.len() as f64;
    assert!((dropped - 0.25).abs() < 0.05, "{dropped}");
    for (a, b) in xs.iter().zip(&ys) {
        assert!(*b == 0.0 || (b - a / 0.75).abs() < 1e-5);
    }
    let g: Vec<f32> = y
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (gv, yv) in g.iter().zip(&ys) {
        assert_eq!(*gv == 0.0, *yv == 0.0);
    }
    // The same seed gives the same mask.
    let again = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(4));
    let y2: Vec<f32> = ops::dropout(x.as_tensor(), 0.25, &again)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(ys, y2);
}

#[test]
fn replace_rows_matches_the_blend_and_its_gradients() {
    use gimp_nn::ops::replace_rows;
    let x = Var::from_tensor(&weights(&[1, 20, 6], 12)).unwrap();
    let token = Var::from_tensor(&weights(&[1, 1, 6], 13)).unwrap();
    let rows = [3usize, 0, 19, 7];
    let w = weights(&[1, 20, 6], 14);
    let run = |fused: bool| {
        let y = if fused {
            replace_rows(x.as_tensor(), token.as_tensor(), &rows).unwrap()
        } else {
            let mut m = vec![0f32; 20];
            rows.iter().for_each(|&r| m[r] = 1.0);
            let mask = Tensor::from_vec(m, (1, 20, 1), &Device::Cpu).unwrap();
            let keep = mask.affine(-1.0, 1.0).unwrap();
            (x.as_tensor().broadcast_mul(&keep).unwrap()
                + mask.broadcast_mul(token.as_tensor()).unwrap())
            .unwrap()
        };
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (
            y,
            g.get(x.as_tensor()).unwrap().clone(),
            g.get(token.as_tensor()).unwrap().clone(),
        )
    };
    let (ya, xa, ta) = run(true);
    let (yb, xb, tb) = run(false);
    assert!(max_rel(&ya, &yb) < 1e-7);
    assert!(max_rel(&xa, &xb) < 1e-7);
    assert!(max_rel(&ta, &tb) < 1e-6);
}
