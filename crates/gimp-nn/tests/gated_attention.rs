//! The fused gated-attention pooling op against the same function built from candle's ordinary
//! ops (forward, scores, chosen extremes and every gradient, the bag's included) and against
//! central finite differences with its dropout masks on.

use candle_core::{DType, Device, Tensor, Var};
use gimp_nn::gated_attention::{extreme_rows, gated_attention_pool, GatedLayers, Pooled, BLOCK};
use gimp_nn::nystrom::with_keep_attention_limit;
use gimp_nn::{ops, Linear, Mode, ParamStore};
use rand::{Rng, SeedableRng};

const D_IN: usize = 24;
const HIDDEN: usize = 16;
const ATT: usize = 8;

struct Layers {
    fc: Linear,
    a: Linear,
    b: Linear,
    c: Linear,
}

impl Layers {
    fn new(store: &ParamStore, branches: usize) -> Self {
        let s = store.root();
        Self {
            fc: Linear::new(&s.pp("fc"), D_IN, HIDDEN, true).unwrap(),
            a: Linear::new(&s.pp("a"), HIDDEN, ATT, true).unwrap(),
            b: Linear::new(&s.pp("b"), HIDDEN, ATT, true).unwrap(),
            c: Linear::new(&s.pp("c"), ATT, branches, true).unwrap(),
        }
    }

    fn gated(&self) -> GatedLayers<'_> {
        GatedLayers {
            fc: &self.fc,
            a: &self.a,
            b: &self.b,
            c: &self.c,
        }
    }

    fn all(&self) -> Vec<&Tensor> {
        [&self.fc, &self.a, &self.b, &self.c]
            .iter()
            .flat_map(|l| [&l.weight, l.bias.as_ref().unwrap()])
            .collect()
    }

    /// The same pooling from candle's ops with autograd (no dropout).
    fn graph(&self, x: &Tensor, k: usize) -> Pooled {
        let act = |l: &Linear, x: &Tensor| {
            x.matmul(&l.weight.t().unwrap())
                .unwrap()
                .broadcast_add(l.bias.as_ref().unwrap())
                .unwrap()
        };
        let h = act(&self.fc, x).relu().unwrap();
        let a = act(&self.a, &h).tanh().unwrap();
        let b = ops::sigmoid(&act(&self.b, &h)).unwrap();
        let s = act(&self.c, &a.mul(&b).unwrap())
            .t()
            .unwrap()
            .contiguous()
            .unwrap();
        let alpha = ops::softmax_last_graph(&s).unwrap();
        let pooled = alpha.matmul(&h).unwrap();
        let scores: Vec<Vec<f32>> = s.to_vec2().unwrap();
        let rows: Vec<u32> = scores
            .iter()
            .flat_map(|r| extreme_rows(r, k))
            .map(|i| i as u32)
            .collect();
        let idx = Tensor::new(rows.as_slice(), x.device()).unwrap();
        Pooled {
            pooled,
            scores: s.detach(),
            extremes: Some(h.index_select(&idx, 0).unwrap()),
        }
    }
}

/// Uniform in `[-scale, scale)`: no two patches alike, so no ties among the scores.
fn values(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n)
        .map(|_| (rng.gen::<f32>() * 2.0 - 1.0) * scale)
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / s.to_scalar::<f32>().unwrap().max(1e-12)
}

/// A loss reading every output: weighted sums of the pooled rows and of the extremes.
fn loss(p: &Pooled, branches: usize, k: usize) -> Tensor {
    let wp = values(&[branches, HIDDEN], 7, 1.0);
    let we = values(&[branches * 2 * k, HIDDEN], 8, 1.0);
    let lp = (&p.pooled * &wp).unwrap().sum_all().unwrap();
    let le = (p.extremes.as_ref().unwrap() * &we)
        .unwrap()
        .sum_all()
        .unwrap();
    (lp + le).unwrap()
}

/// Runs `f` with the embeddings kept for the backward pass, then recomputed there.
fn both_paths(f: impl Fn()) {
    with_keep_attention_limit(usize::MAX, &f);
    with_keep_attention_limit(0, &f);
}

#[test]
fn fused_pooling_matches_the_graph_and_its_gradients() {
    both_paths(pooling_matches_the_graph);
}

#[test]
fn dropout_masks_are_redrawn_in_the_backward_pass() {
    both_paths(dropout_gradient_matches_finite_differences);
}

fn pooling_matches_the_graph() {
    // Three blocks, the last one ragged; two branches (CLAM-MB's shape).
    let n = 2 * BLOCK + 37;
    let (branches, k) = (2, 3);
    let store = ParamStore::new(3);
    let layers = Layers::new(&store, branches);
    let x = Var::from_tensor(&values(&[n, D_IN], 1, 2.0)).unwrap();
    let mode = Mode::eval();
    let fused = gated_attention_pool(x.as_tensor(), layers.gated(), 0.25, k, &mode).unwrap();
    let graph = layers.graph(x.as_tensor(), k);
    assert!(max_rel(&fused.pooled, &graph.pooled) < 1e-5);
    assert!(max_rel(&fused.scores, &graph.scores) < 1e-5);
    let (fe, ge) = (
        fused.extremes.as_ref().unwrap(),
        graph.extremes.as_ref().unwrap(),
    );
    assert_eq!(fe.dims(), &[branches * 2 * k, HIDDEN]);
    assert!(max_rel(fe, ge) < 1e-5);
    let gf = loss(&fused, branches, k).backward().unwrap();
    let gg = loss(&graph, branches, k).backward().unwrap();
    let mut tensors = layers.all();
    tensors.push(x.as_tensor());
    for (i, t) in tensors.iter().enumerate() {
        let (a, b) = (gf.get(t).unwrap(), gg.get(t).unwrap());
        // The score bias's gradient is zero in exact arithmetic (softmax is shift-invariant):
        // compared against the scale of the weights' gradients instead of its own.
        let scale = gg
            .get(tensors[6])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let e = d.to_scalar::<f32>().unwrap()
            / b.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .max(scale.to_scalar::<f32>().unwrap());
        assert!(e < 1e-4, "gradient {i}: relative error {e}");
    }
}

#[test]
fn inference_mode_gives_the_same_pooling_without_a_graph() {
    let n = BLOCK + 5;
    let store = ParamStore::new(4);
    let layers = Layers::new(&store, 1);
    let x = values(&[n, D_IN], 2, 1.0);
    let a = gated_attention_pool(&x, layers.gated(), 0.0, 0, &Mode::inference()).unwrap();
    let b = gated_attention_pool(&x, layers.gated(), 0.0, 0, &Mode::eval()).unwrap();
    assert!(a.extremes.is_none());
    assert!(max_rel(&a.pooled, &b.pooled) == 0.0);
    assert!(max_rel(&a.scores, &b.scores) == 0.0);
    let graph = layers.graph(&x, 1);
    assert!(max_rel(&a.pooled, &graph.pooled) < 1e-5);
}

fn dropout_gradient_matches_finite_differences() {
    // With dropout on, the op is a fixed function of the parameters for a fixed seed; its
    // gradient must match central differences (the backward pass draws the masks again).
    let n = BLOCK + 40;
    let (branches, k) = (1, 4);
    let store = ParamStore::new(5);
    let layers = Layers::new(&store, branches);
    let x = values(&[n, D_IN], 3, 2.0);
    let run = || {
        let mode = Mode::train(rand_chacha::ChaCha8Rng::seed_from_u64(11));
        let p = gated_attention_pool(&x, layers.gated(), 0.25, k, &mode).unwrap();
        loss(&p, branches, k)
    };
    // Dropout is on: the same parameters in eval mode give another value.
    let eval = loss(
        &gated_attention_pool(&x, layers.gated(), 0.25, k, &Mode::eval()).unwrap(),
        branches,
        k,
    );
    let l0 = run();
    assert_ne!(
        l0.to_scalar::<f32>().unwrap(),
        eval.to_scalar::<f32>().unwrap()
    );
    let grads = l0.backward().unwrap();
    for (pi, t) in layers.all().into_iter().enumerate() {
        let var = store
            .params()
            .into_values()
            .find(|p| p.var.as_tensor().id() == t.id())
            .map(|p| p.var)
            .expect("a parameter of the store");
        let g: Vec<f32> = grads
            .get(t)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base = t.flatten_all().unwrap().copy().unwrap();
        let len = base.dim(0).unwrap();
        for i in [0, len / 2, len - 1] {
            let h = 2e-3f32;
            let eval_at = |delta: f32| -> f64 {
                let mut v: Vec<f32> = base.to_vec1().unwrap();
                v[i] += delta;
                var.set(&Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                let l = run()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap();
                var.set(&base.reshape(t.shape()).unwrap()).unwrap();
                l
            };
            let fd = (eval_at(h) - eval_at(-h)) / (2.0 * h as f64);
            assert!(
                (fd - g[i] as f64).abs() < 2e-2 * fd.abs().max(0.05),
                "parameter {pi}, entry {i}: {fd} by differences, {} by the op",
                g[i]
            );
        }
    }
}
