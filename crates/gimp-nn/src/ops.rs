//! Differentiable versions of the operations candle ships only as fused forward kernels
//! (candle-nn's `softmax_last_dim` and `LayerNorm` have no backward), plus seeded dropout.

use candle_core::{DType, Result, Tensor, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;

/// Softmax over the last dimension: one op with a hand-written backward (`kernels::SoftmaxLast`).
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return softmax_last_graph(x);
    }
    x.contiguous()?.apply_op1(crate::cpu::kernels::SoftmaxLast)
}

/// Softmax built from candle's ordinary ops (the formulation the fused op is checked against).
/// The max is subtracted for stability from a detached copy: softmax is invariant to it, so no
/// gradient needs to flow through it.
pub fn softmax_last_graph(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&m)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// log-softmax over the last dimension.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    let m = x.detach().max_keepdim(D::Minus1)?;
    let s = x.broadcast_sub(&m)?;
    s.broadcast_sub(&s.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// LayerNorm over the last dimension (biased variance, as PyTorch): one op with a hand-written
/// backward (`kernels::LayerNormLast`).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return layer_norm_graph(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        crate::cpu::kernels::LayerNormLast { eps: eps as f32 },
    )
}

/// LayerNorm built from candle's ordinary ops (the formulation the fused op is checked against).
pub fn layer_norm_graph(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
    let xn = xc.broadcast_div(&(var + eps)?.sqrt()?)?;
    xn.broadcast_mul(weight)?.broadcast_add(bias)
}

pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// GELU with the exact erf form (PyTorch's `nn.GELU()` default).
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

/// Training or evaluation, and the stream dropout masks are drawn from.
pub struct Mode {
    pub train: bool,
    /// No gradient will be asked for: layers may take memory-saving paths that record nothing
    /// for backpropagation (chunked, streaming attention).
    pub no_grad: bool,
    rng: RefCell<ChaCha8Rng>,
}

impl Mode {
    /// Evaluation behaviour (no dropout), gradients still available.
    pub fn eval() -> Self {
        Self {
            train: false,
            no_grad: false,
            rng: RefCell::new(rand::SeedableRng::seed_from_u64(0)),
        }
    }

    /// Evaluation without gradients: prediction, validation, heatmaps.
    pub fn inference() -> Self {
        Self {
            no_grad: true,
            ..Self::eval()
        }
    }

    pub fn train(rng: ChaCha8Rng) -> Self {
        Self {
            train: true,
            no_grad: false,
            rng: RefCell::new(rng),
        }
    }

    /// The RNG state, to checkpoint and resume.
    pub fn rng_state(&self) -> ChaCha8Rng {
        self.rng.borrow().clone()
    }

    /// A Bernoulli(keep) mask of this shape, as f32 0/1.
    pub fn keep_mask(
        &self,
        shape: &[usize],
        keep: f64,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        Tensor::from_vec(self.mask_values(n, keep, 1.0), shape, device)
    }

    /// An inverted-dropout mask of `n` values: 0 with probability `p`, else `1/(1−p)` (the
    /// same draws as [`Self::keep_mask`]).
    pub fn scaled_keep_mask(&self, n: usize, p: f64) -> Vec<f32> {
        let keep = 1.0 - p;
        self.mask_values(n, keep, (1.0 / keep) as f32)
    }

    /// [`Self::scaled_keep_mask`]'s draws (the same random stream) packed one bit each.
    pub fn keep_bits(&self, n: usize, p: f64) -> KeepBits {
        let keep = 1.0 - p;
        let mut bits = vec![0u64; n.div_ceil(64)];
        let mut rng = self.rng.borrow_mut();
        for i in 0..n {
            if rng.gen::<f64>() < keep {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        KeepBits {
            bits,
            len: n,
            scale: (1.0 / keep) as f32,
        }
    }

    /// `n` draws: `kept` with probability `keep`, else 0.
    fn mask_values(&self, n: usize, keep: f64, kept: f32) -> Vec<f32> {
        let mut rng = self.rng.borrow_mut();
        (0..n)
            .map(|_| if rng.gen::<f64>() < keep { kept } else { 0.0 })
            .collect()
    }

    /// Uniform integers in `0..n`, for sampling inside models (masking, mining).
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut ChaCha8Rng) -> T) -> T {
        f(&mut self.rng.borrow_mut())
    }
}

/// An inverted-dropout mask kept as one bit per value: what a fused op holds for its backward
/// pass (a Nyström layer's mask on a 150,000-token output is 9.6 MB instead of 0.3 GB of
/// floats).
#[derive(Debug, Clone)]
pub struct KeepBits {
    bits: Vec<u64>,
    len: usize,
    /// The value of a kept position, 1/(1−p).
    scale: f32,
}

impl KeepBits {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Position `i`'s factor: 1/(1−p) if kept, else 0.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        if self.bits[i / 64] >> (i % 64) & 1 == 1 {
            self.scale
        } else {
            0.0
        }
    }
}

/// Inverted dropout: zero with probability `p`, scale the rest by 1/(1−p). Identity in eval.
pub fn dropout(x: &Tensor, p: f64, mode: &Mode) -> Result<Tensor> {
    if !mode.train || p <= 0.0 {
        return Ok(x.clone());
    }
    if x.dtype() == DType::F32 && x.device().is_cpu() {
        // The same draws as below, with the scale folded into the mask: one op (`MaskOp`).
        let mask = mode.scaled_keep_mask(x.elem_count(), p);
        return x
            .contiguous()?
            .apply_op1(crate::cpu::kernels::MaskOp { mask });
    }
    let mask = mode
        .keep_mask(x.dims(), 1.0 - p, x.device())?
        .to_dtype(x.dtype())?;
    x.mul(&mask)?.affine(1.0 / (1.0 - p), 0.0)
}

/// `x` (`[..., L, d]`) with rows `rows` replaced by `token` (`d` values) — masked patch
/// modelling's mask-token substitution — as one op with its backward pass.
pub fn replace_rows(x: &Tensor, token: &Tensor, rows: &[usize]) -> Result<Tensor> {
    let mut rows = rows.to_vec();
    rows.sort_unstable();
    rows.dedup();
    x.contiguous()?.apply_op2(
        &token.contiguous()?,
        crate::cpu::kernels::ReplaceRows { rows },
    )
}

/// SELU's constants (Klambauer et al. 2017).
const SELU_ALPHA: f64 = 1.673_263_242_354_377_3;
const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

/// AlphaDropout (PyTorch `nn.AlphaDropout`): dropped units are set to SELU's negative
/// saturation −λα, then an affine map a·x + b keeps mean 0 and variance 1.
pub fn alpha_dropout(x: &Tensor, p: f64, mode: &Mode) -> Result<Tensor> {
    if !mode.train || p <= 0.0 {
        return Ok(x.clone());
    }
    let alpha_p = -SELU_ALPHA * SELU_SCALE;
    let keep = 1.0 - p;
    let a = 1.0 / (keep * (1.0 + p * alpha_p * alpha_p)).sqrt();
    let b = -a * alpha_p * p;
    let mask = mode
        .keep_mask(x.dims(), keep, x.device())?
        .to_dtype(DType::F32)?;
    // x·mask + α'·(1 − mask), then a·(·) + b.
    let kept = x.mul(&mask)?;
    let dropped = mask.affine(-alpha_p, alpha_p)?;
    (kept + dropped)?.affine(a, b)
}
