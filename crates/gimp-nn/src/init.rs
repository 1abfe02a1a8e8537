//! Parameter initialisation as PyTorch does it, from a seeded stream.

use candle_core::{Device, Result, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// U(−b, b): PyTorch's default for Linear/Conv weights and biases is b = 1/√fan_in
    /// (kaiming-uniform with a = √5).
    Uniform(f64),
    /// N(0, σ²).
    Normal(f64),
    /// xavier_normal: N(0, 2/(fan_in + fan_out)).
    XavierNormal {
        fan_in: usize,
        fan_out: usize,
    },
    Constant(f64),
}

impl Init {
    /// PyTorch's default for a layer with this fan-in.
    pub fn torch_default(fan_in: usize) -> Self {
        Init::Uniform(1.0 / (fan_in.max(1) as f64).sqrt())
    }

    pub fn sample(self, shape: &[usize], rng: &mut ChaCha8Rng, device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match self {
            Init::Uniform(b) => (0..n).map(|_| rng.gen_range(-b..=b) as f32).collect(),
            Init::Normal(s) => (0..n)
                .map(|_| (s * rng.sample::<f64, _>(StandardNormal)) as f32)
                .collect(),
            Init::XavierNormal { fan_in, fan_out } => {
                let s = (2.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n)
                    .map(|_| (s * rng.sample::<f64, _>(StandardNormal)) as f32)
                    .collect()
            }
            Init::Constant(c) => vec![c as f32; n],
        };
        Tensor::from_vec(data, shape, device)
    }
}
