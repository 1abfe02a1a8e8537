//! The graph reference: Nyström attention from candle's ordinary ops with autograd through
//! every step, the straightforward formulation the fused ops and streaming inference are
//! checked against (`tests/nystrom_parity.rs`), and the source of the CLS attention map.
//! It is never chosen by [`super::choose_path`]; callers ask for it by name.

use super::geometry::Geometry;
use super::residual_conv::depthwise_seq_conv;
use super::NystromAttention;
use crate::ops::{self, Mode};
use candle_core::{DType, Result, Tensor, D};

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
    fn split_heads(&self, t: &Tensor) -> Result<Tensor> {
        let (b, n, _) = t.dims3()?;
        t.reshape((b, n, self.cfg.heads, self.cfg.dim_head))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Q (scaled), K, V per head for the front-padded input, and the layout.
    fn project(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor, Geometry)> {
        let (qkv, geo) = self.padded_qkv(x)?;
        let inner = self.cfg.heads * self.cfg.dim_head;
        let q = self.split_heads(&qkv.narrow(D::Minus1, 0, inner)?)?;
        let k = self.split_heads(&qkv.narrow(D::Minus1, inner, inner)?)?;
        let v = self.split_heads(&qkv.narrow(D::Minus1, 2 * inner, inner)?)?;
        let q = q.affine(1.0 / (self.cfg.dim_head as f64).sqrt(), 0.0)?;
        Ok((q, k, v, geo))
    }

    /// Landmarks: means of `l` consecutive padded rows (divisor `l` even over padding).
    fn landmarks(&self, t: &Tensor, l: usize) -> Result<Tensor> {
        let (b, h, np, d) = t.dims4()?;
        t.reshape((b, h, np / l, l, d))?
            .sum(3)?
            .affine(1.0 / l as f64, 0.0)
    }

    fn parts(&self, q: &Tensor, k: &Tensor, geo: &Geometry) -> Result<AttentionParts> {
        let ql = self.landmarks(q, geo.segment)?;
        let kl = self.landmarks(k, geo.segment)?;
        let klt = kl.transpose(D::Minus1, D::Minus2)?.contiguous()?;
        let f1 = ops::softmax_last(&q.matmul(&klt)?)?;
        let a = ops::softmax_last(&ql.matmul(&klt)?)?;
        let f3 = ops::softmax_last(&ql.matmul(&k.transpose(D::Minus1, D::Minus2)?.contiguous()?)?)?;
        let z = pinv_iterative(&a, self.cfg.pinv_iterations)?;
        Ok(AttentionParts { f1, z, f3 })
    }

    /// The layer built from candle's ordinary ops (autograd through every step): the
    /// straightforward formulation the fused op is checked against.
    pub fn forward_graph(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, _, _) = x.dims3()?;
        let (q, k, v, geo) = self.project(x)?;
        let p = self.parts(&q, &k, &geo)?;
        // F1 (Z (F3 V)): re-associated from the reference's (F1 Z)(F3 V) so that nothing of size
        // n' × m × m is computed (4× fewer flops at m = 256, d_h = 64); never n' × n'.
        let mut out = p.f1.matmul(&p.z.matmul(&p.f3.matmul(&v)?)?)?;
        if let Some(w) = &self.res_conv {
            let (h, k) = (self.cfg.heads, self.cfg.residual_kernel);
            out = (out + depthwise_seq_conv(&v, &w.reshape((h, k))?)?)?;
        }
        let out =
            out.transpose(1, 2)?
                .reshape((b, geo.padded, self.cfg.heads * self.cfg.dim_head))?;
        self.project_and_unpad(&out, &geo, mode)
    }

    /// Attention of the query at original position `row` over the original tokens,
    /// `[b, h, n]` (`F1 Z F3` restricted to that row, front padding removed).
    pub fn attention_row(&self, x: &Tensor, row: usize) -> Result<Tensor> {
        let (q, k, _, geo) = self.project(x)?;
        let p = self.parts(&q, &k, &geo)?;
        let left = p.f1.narrow(2, geo.pad + row, 1)?.matmul(&p.z)?;
        left.matmul(&p.f3)?.squeeze(2)?.narrow(2, geo.pad, geo.n)
    }
}
