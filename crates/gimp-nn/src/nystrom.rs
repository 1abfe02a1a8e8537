//! Nyström attention exactly as lucidrains' `nystrom-attention` 0.0.14 computes it
//! (`spec/baselines.md` §1): front zero-padding to a multiple of the landmark count,
//! segment-mean landmarks, a Moore–Penrose pseudo-inverse by 6 Newton–Schulz-style iterations
//! from a global-scalar initialisation, a depthwise residual convolution (kernel 33) on V, and
//! un-padding that keeps the **last** `n` rows. `legacy_front_slice` keeps the first `n` rows
//! instead, reproducing 0.0.9 (the version TransMIL pins) bug for bug.
//!
//! Nothing `n × n` is ever formed: the largest intermediates are `n × m`.

use crate::init::Init;
use crate::layers::{LayerNorm, Linear};
use crate::nystrom_infer::{self, LayerWeights, Update};
use crate::nystrom_layer_op::{LayerShape, NystromLayerOp};
use crate::nystrom_op::{nystrom_core, CoreShape};
use crate::ops::{self, Mode};
use crate::params::Scope;
use candle_core::{DType, Result, Tensor, D};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NystromConfig {
    pub dim: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub landmarks: usize,
    pub pinv_iterations: usize,
    /// Depthwise convolution of V added to the output (kernel `residual_kernel`), or none.
    pub residual: bool,
    pub residual_kernel: usize,
    /// Dropout on the output projection.
    pub dropout: f64,
    /// Keep the first `n` rows after padding (nystrom-attention ≤ 0.0.9) instead of the last.
    pub legacy_front_slice: bool,
}

impl NystromConfig {
    /// The aggregator's layers in GiMP and TransMIL: 8 heads × 64 = 512, 256 landmarks.
    pub fn transmil(dim: usize) -> Self {
        Self {
            dim,
            heads: 8,
            dim_head: dim / 8,
            landmarks: dim / 2,
            pinv_iterations: 6,
            residual: true,
            residual_kernel: 33,
            dropout: 0.1,
            legacy_front_slice: false,
        }
    }
}

/// Rows per chunk on the streaming path.
pub const STREAM_CHUNK: usize = 4096;

/// Parameters by the reference's names: `to_qkv.weight`, `to_out.0.weight`, `to_out.0.bias`,
/// `res_conv.weight` (`[heads, 1, kernel, 1]`).
pub struct NystromAttention {
    pub cfg: NystromConfig,
    to_qkv: Linear,
    to_out: Linear,
    res_conv: Option<Tensor>,
}

/// The three factors of the approximation `F1 · Z · F3` (per head).
pub struct AttentionParts {
    /// `softmax(Q K̃ᵀ)`, `[b, h, n', m]`.
    pub f1: Tensor,
    /// The pseudo-inverse of `softmax(Q̃ K̃ᵀ)`, `[b, h, m, m]`.
    pub z: Tensor,
    /// `softmax(Q̃ Kᵀ)`, `[b, h, m, n']`.
    pub f3: Tensor,
}

/// Moore–Penrose pseudo-inverse of each `[m, m]` matrix of `a` (`[b, h, m, m]`), as the reference
/// computes it: `Z₀ = Aᵀ / (max row-abs-sum · max column-abs-sum)` with both maxima over the
/// whole tensor, then `Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ)))`.
pub fn pinv_iterative(a: &Tensor, iterations: usize) -> Result<Tensor> {
    let m = a.dim(D::Minus1)?;
    let abs = a.abs()?;
    let row_max = abs.sum(D::Minus1)?.max_all()?;
    let col_max = abs.sum(D::Minus2)?.max_all()?;
    let mut z = a
        .transpose(D::Minus1, D::Minus2)?
        .contiguous()?
        .broadcast_div(&(row_max * col_max)?)?;
    let eye = Tensor::eye(m, DType::F32, a.device())?;
    for _ in 0..iterations {
        let az = a.matmul(&z)?;
        let t = az.matmul(&eye.affine(7.0, 0.0)?.broadcast_sub(&az)?)?;
        let t = az.matmul(&eye.affine(15.0, 0.0)?.broadcast_sub(&t)?)?;
        z = z
            .matmul(&eye.affine(13.0, 0.0)?.broadcast_sub(&t)?)?
            .affine(0.25, 0.0)?;
    }
    Ok(z)
}

impl NystromAttention {
    pub fn new(s: &Scope, cfg: NystromConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        let to_qkv = Linear::new(&s.pp("to_qkv"), cfg.dim, 3 * inner, false)?;
        let to_out = Linear::new(&s.pp("to_out.0"), inner, cfg.dim, true)?;
        let res_conv = if cfg.residual {
            Some(s.get(
                "res_conv.weight",
                &[cfg.heads, 1, cfg.residual_kernel, 1],
                Init::torch_default(cfg.residual_kernel),
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            to_qkv,
            to_out,
            res_conv,
        })
    }

    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (b, n, _) = t.dims3()?;
        t.reshape((b, n, self.cfg.heads, self.cfg.dim_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `to_qkv` of the input front-padded with zero rows to a multiple of the landmarks, and
    /// the padding.
    fn padded_qkv(&self, x: &Tensor) -> Result<(Tensor, usize)> {
        let (_, n, _) = x.dims3()?;
        let m = self.cfg.landmarks;
        let pad = if n % m == 0 { 0 } else { m - n % m };
        let xp = if pad > 0 {
            x.pad_with_zeros(1, pad, 0)?
        } else {
            x.clone()
        };
        Ok((self.to_qkv.forward(&xp)?, pad))
    }

    /// Q (scaled), K, V per head for the front-padded input, and the padding.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, usize)> {
        let (qkv, pad) = self.padded_qkv(x)?;
        let inner = self.cfg.heads * self.cfg.dim_head;
        let q = self.split_heads(&qkv.narrow(D::Minus1, 0, inner)?)?;
        let k = self.split_heads(&qkv.narrow(D::Minus1, inner, inner)?)?;
        let v = self.split_heads(&qkv.narrow(D::Minus1, 2 * inner, inner)?)?;
        let q = q.affine(1.0 / (self.cfg.dim_head as f64).sqrt(), 0.0)?;
        Ok((q, k, v, pad))
    }

    /// Landmarks: means of `l = ceil(n/m)` consecutive rows (divisor `l` even over padding).
    fn landmarks(&self, t: &Tensor, l: usize) -> Result<Tensor> {
        let (b, h, np, d) = t.dims4()?;
        t.reshape((b, h, np / l, l, d))?
            .sum(3)?
            .affine(1.0 / l as f64, 0.0)
    }

    fn parts(&self, q: &Tensor, k: &Tensor, n: usize) -> Result<AttentionParts> {
        let l = n.div_ceil(self.cfg.landmarks);
        let ql = self.landmarks(q, l)?;
        let kl = self.landmarks(k, l)?;
        let klt = kl.transpose(D::Minus1, D::Minus2)?.contiguous()?;
        let f1 = ops::softmax_last(&q.matmul(&klt)?)?;
        let a = ops::softmax_last(&ql.matmul(&klt)?)?;
        let f3 = ops::softmax_last(&ql.matmul(&k.transpose(D::Minus1, D::Minus2)?.contiguous()?)?)?;
        let z = pinv_iterative(&a, self.cfg.pinv_iterations)?;
        Ok(AttentionParts { f1, z, f3 })
    }

    /// `x`: `[b, n, dim]` → `[b, n, dim]`. Without gradients (`Mode::inference`) the streaming
    /// path runs: the same result in memory proportional to the bag, not to `n × m`. Otherwise
    /// everything between the two projections is one fused op with a hand-written backward pass
    /// (`nystrom_op`).
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        if mode.no_grad && !mode.train {
            let items: Vec<Tensor> = (0..x.dim(0)?)
                .map(|i| self.forward_streaming(&x.narrow(0, i, 1)?.detach(), STREAM_CHUNK))
                .collect::<Result<_>>()?;
            return Tensor::cat(&items, 0);
        }
        let (_, n, _) = x.dims3()?;
        let (qkv, pad) = self.padded_qkv(x)?;
        let shape = self.core_shape();
        let conv = match &self.res_conv {
            Some(w) => w.reshape((self.cfg.heads, self.cfg.residual_kernel))?,
            None => Tensor::zeros((self.cfg.heads, 1), DType::F32, x.device())?,
        };
        let out = nystrom_core(&qkv, &conv, shape)?;
        let out = ops::dropout(&self.to_out.forward(&out)?, self.cfg.dropout, mode)?;
        let start = if self.cfg.legacy_front_slice { 0 } else { pad };
        out.narrow(1, start, n)
    }

    /// The aggregator's pre-norm residual layer, `x + forward(norm(x))`. With gradients on the
    /// CPU the whole layer is one op with a hand-written backward pass
    /// (`nystrom_layer_op`); at inference or elsewhere, the composition of the parts.
    pub fn forward_prenorm_residual(
        &self,
        norm: &LayerNorm,
        x: &Tensor,
        mode: &Mode,
    ) -> Result<Tensor> {
        self.forward_prenorm_residual_rows(norm, x, mode, None)
    }

    /// [`Self::forward_prenorm_residual`] at the tokens `rows` only (increasing): `[b, |rows|,
    /// dim]`. All tokens still serve as keys and values; the fused op skips the queries, the
    /// output projection and the residual of the others (the last layer of masked patch
    /// modelling needs half of them).
    pub fn forward_prenorm_residual_rows(
        &self,
        norm: &LayerNorm,
        x: &Tensor,
        mode: &Mode,
        rows: Option<&[usize]>,
    ) -> Result<Tensor> {
        let inference = mode.no_grad && !mode.train;
        if inference || x.dtype() != DType::F32 || !x.device().is_cpu() {
            let out = (x + self.forward(&norm.forward(x)?, mode)?)?;
            return match rows {
                Some(r) => out.index_select(&crate::loss::index_tensor(r, x.device())?, 1),
                None => Ok(out),
            };
        }
        let (b, n, _) = x.dims3()?;
        let dim = self.cfg.dim;
        let mut parts = vec![
            norm.weight.flatten_all()?,
            norm.bias.flatten_all()?,
            self.to_qkv.weight.flatten_all()?,
            self.to_out.weight.flatten_all()?,
            match &self.to_out.bias {
                Some(b) => b.flatten_all()?,
                None => Tensor::zeros(dim, DType::F32, x.device())?,
            },
        ];
        if let Some(w) = &self.res_conv {
            parts.push(w.flatten_all()?);
        }
        let packed = Tensor::cat(&parts, 0)?;
        let out_rows = rows.map_or(n, |r| r.len());
        let mask = (mode.train && self.cfg.dropout > 0.0)
            .then(|| mode.scaled_keep_mask(b * out_rows * dim, self.cfg.dropout));
        let shape = LayerShape {
            core: self.core_shape(),
            dim,
            legacy_front_slice: self.cfg.legacy_front_slice,
            eps: norm.eps as f32,
        };
        let op = NystromLayerOp::with_rows(shape, mask, rows.map(|r| r.to_vec()), n);
        x.contiguous()?.apply_op2(&packed, op)
    }

    /// The same layer built from candle's ordinary ops (autograd through every step): the
    /// straightforward formulation the fused op is checked against.
    pub fn forward_graph(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, n, _) = x.dims3()?;
        let (q, k, v, pad) = self.project(x)?;
        let p = self.parts(&q, &k, n)?;
        // F1 (Z (F3 V)): re-associated from the reference's (F1 Z)(F3 V) so that nothing of size
        // n' × m × m is computed (4× fewer flops at m = 256, d_h = 64); never n' × n'.
        let mut out = p.f1.matmul(&p.z.matmul(&p.f3.matmul(&v)?)?)?;
        if let Some(w) = &self.res_conv {
            let (h, k) = (self.cfg.heads, self.cfg.residual_kernel);
            out = (out + crate::kernels::depthwise_seq_conv(&v, &w.reshape((h, k))?)?)?;
        }
        let np = n + pad;
        let out = out
            .transpose(1, 2)?
            .reshape((b, np, self.cfg.heads * self.cfg.dim_head))?;
        let out = ops::dropout(&self.to_out.forward(&out)?, self.cfg.dropout, mode)?;
        let start = if self.cfg.legacy_front_slice { 0 } else { pad };
        out.narrow(1, start, n)
    }

    /// Attention of the query at original position `row` over the original tokens,
    /// `[b, h, n]` (`F1 Z F3` restricted to that row, front padding removed).
    pub fn attention_row(&self, x: &Tensor, row: usize) -> Result<Tensor> {
        let (_, n, _) = x.dims3()?;
        let (q, k, _, pad) = self.project(x)?;
        let p = self.parts(&q, &k, n)?;
        let left = p.f1.narrow(2, pad + row, 1)?.matmul(&p.z)?;
        left.matmul(&p.f3)?.squeeze(2)?.narrow(2, pad, n)
    }

    fn core_shape(&self) -> CoreShape {
        CoreShape {
            heads: self.cfg.heads,
            dim_head: self.cfg.dim_head,
            landmarks: self.cfg.landmarks,
            pinv_iterations: self.cfg.pinv_iterations,
            kernel: if self.res_conv.is_some() {
                self.cfg.residual_kernel
            } else {
                0
            },
        }
    }

    /// Runs [`nystrom_infer::layer_inplace`] with this layer's parameters on `x` (`[n, dim]`).
    fn infer_inplace(
        &self,
        norm: Option<&LayerNorm>,
        x: &mut [f32],
        chunk: usize,
        update: Update,
    ) -> Result<()> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
        let qkv = flat(&self.to_qkv.weight)?;
        let out_weight = flat(&self.to_out.weight)?;
        let out_bias = self.to_out.bias.as_ref().map(flat).transpose()?;
        let conv = self
            .res_conv
            .as_ref()
            .map(flat)
            .transpose()?
            .unwrap_or_default();
        let norm = norm
            .map(|n| Ok::<_, candle_core::Error>((flat(&n.weight)?, flat(&n.bias)?, n.eps as f32)))
            .transpose()?;
        let w = LayerWeights {
            qkv: &qkv,
            out_weight: &out_weight,
            out_bias: out_bias.as_deref(),
            conv: &conv,
            norm: norm
                .as_ref()
                .map(|(g, b, e)| (g.as_slice(), b.as_slice(), *e)),
        };
        nystrom_infer::layer_inplace(
            self.core_shape(),
            self.cfg.legacy_front_slice,
            &w,
            x,
            chunk,
            update,
        )
    }

    /// The inference path for one bag `x` `[1, n, dim]`: the same result as [`Self::forward`]
    /// in memory linear in the bag, processed in chunks of `chunk` rows (`nystrom_infer`).
    pub fn forward_streaming(&self, x: &Tensor, chunk: usize) -> Result<Tensor> {
        let (b, n, dim) = x.dims3()?;
        if b != 1 {
            candle_core::bail!("streaming attention takes one bag at a time, got {b}");
        }
        let mut data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        self.infer_inplace(None, &mut data, chunk, Update::Replace)?;
        Tensor::from_vec(data, (1, n, dim), x.device())
    }

    /// `x ← x + attention(norm(x))` on the tokens `x` (`[n, dim]`, row-major) in place, without
    /// gradients: the aggregator's pre-norm residual layer at inference.
    pub fn prenorm_residual_inplace(&self, norm: &LayerNorm, x: &mut [f32]) -> Result<()> {
        self.infer_inplace(Some(norm), x, STREAM_CHUNK, Update::Residual)
    }
}
