//! Fused CPU kernels as candle custom ops with hand-written backward passes: softmax and
//! LayerNorm over the last dimension (the residual convolution of Nyström attention is in
//! `nystrom::residual_conv`).
//!
//! candle-nn's fused softmax and LayerNorm have no backward pass at all. Dropout
//! (a fixed, pre-scaled mask) and masked patch modelling's row replacement are one node each
//! instead of three or four.

use crate::cpu::lanes;
use crate::cpu::{slice, with_data};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Rows per parallel task in the row-wise kernels below.
const ROWS_PER_TASK: usize = 64;

/// Softmax over the last dimension as one op: candle-nn's fused softmax has no backward, and
/// built from ordinary ops it is five tensors forward and as many again backward.
pub struct SoftmaxLast;

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        "softmax-last"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "softmax: input")?;
        let cols = l.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = x.to_vec();
        out.par_chunks_mut(cols * ROWS_PER_TASK)
            .for_each(|c| lanes::softmax_rows(c, cols));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let cols = res.dims().last().copied().unwrap_or(1).max(1);
        let dx = with_data(res, |y| {
            with_data(grad, |g| {
                let mut dx = g.to_vec();
                dx.par_chunks_mut(cols * ROWS_PER_TASK)
                    .zip(y.par_chunks(cols * ROWS_PER_TASK))
                    .for_each(|(d, y)| lanes::softmax_backward_rows(y, d, cols));
                Ok(dx)
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, res.shape(), res.device())?))
    }
}

/// LayerNorm over the last dimension as one op (biased variance, as PyTorch), inputs
/// `(x, weight, bias)`; the backward pass recomputes each row's mean and deviation.
pub struct LayerNormLast {
    pub eps: f32,
}

/// LayerNorm backward over rows of `x` (last dimension `w.len()`), in parallel: writes `dx`,
/// returns `(dweight, dbias)`.
pub(crate) fn layer_norm_backward(
    dx: &mut [f32],
    x: &[f32],
    g: &[f32],
    w: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let dim = w.len();
    let partial: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut(dim * ROWS_PER_TASK)
        .zip(x.par_chunks(dim * ROWS_PER_TASK))
        .zip(g.par_chunks(dim * ROWS_PER_TASK))
        .map(|((dx, x), g)| {
            let mut dw = vec![0f32; dim];
            let mut db = vec![0f32; dim];
            lanes::layer_norm_backward_rows(dx, x, g, w, eps, &mut dw, &mut db);
            (dw, db)
        })
        .collect();
    let mut dw = vec![0f32; dim];
    let mut db = vec![0f32; dim];
    for (pw, pb) in &partial {
        dw.iter_mut().zip(pw).for_each(|(a, v)| *a += v);
        db.iter_mut().zip(pb).for_each(|(a, v)| *a += v);
    }
    (dw, db)
}

impl candle_core::CustomOp3 for LayerNormLast {
    fn name(&self) -> &'static str {
        "layer-norm-last"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "LayerNorm: input")?;
        let w = slice(s2, l2, "LayerNorm: weight")?;
        let b = slice(s3, l3, "LayerNorm: bias")?;
        let dim = w.len();
        if dim == 0 || b.len() != dim || l1.shape().dims().last() != Some(&dim) {
            candle_core::bail!("LayerNorm: weight, bias and the last dimension differ");
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(dim * ROWS_PER_TASK)
            .zip(x.par_chunks(dim * ROWS_PER_TASK))
            .for_each(|(o, x)| {
                lanes::layer_norm_rows(x, o, w, b, self.eps);
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = with_data(x, |xs| {
            with_data(w, |ws| {
                with_data(grad, |gs| {
                    let mut dx = vec![0f32; xs.len()];
                    let (dw, db) = layer_norm_backward(&mut dx, xs, gs, ws, self.eps);
                    Ok((dx, dw, db))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dw, w.shape(), w.device())?),
            Some(Tensor::from_vec(db, w.shape(), w.device())?),
        ))
    }
}

/// Values per parallel task of the element-wise passes.
const ELEMENTS_PER_TASK: usize = 1 << 14;

fn masked(x: &[f32], mask: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(ELEMENTS_PER_TASK)
        .zip(mask.par_chunks(ELEMENTS_PER_TASK))
        .for_each(|(y, m)| y.iter_mut().zip(m).for_each(|(a, b)| *a *= b));
    y
}

/// Multiplication by a fixed (already scaled) dropout mask as one op.
pub struct MaskOp {
    pub mask: Vec<f32>,
}

impl CustomOp1 for MaskOp {
    fn name(&self) -> &'static str {
        "dropout-mask"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "dropout: input")?;
        if x.len() != self.mask.len() {
            candle_core::bail!(
                "dropout: mask of {} for {} values",
                self.mask.len(),
                x.len()
            );
        }
        Ok((CpuStorage::F32(masked(x, &self.mask)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dx = with_data(g, |gs| Ok(masked(gs, &self.mask)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

/// Rows `rows` of `x` (`[..., L, d]` with one leading batch of 1, or `[L, d]`) replaced by
/// `token` (`d` values), as one op: masked patch modelling's mask-token substitution, which
/// through broadcast multiplies and an add is three full-size tensors forward and backward.
pub struct ReplaceRows {
    pub rows: Vec<usize>,
}

impl CustomOp2 for ReplaceRows {
    fn name(&self) -> &'static str {
        "replace-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = slice(s1, l1, "replace rows: input")?;
        let token = slice(s2, l2, "replace rows: token")?;
        let d = token.len();
        if d == 0 || l1.shape().dims().last() != Some(&d) {
            candle_core::bail!(
                "replace rows: token of {d} for input {:?}",
                l1.shape().dims()
            );
        }
        let n = x.len() / d;
        let mut out = x.to_vec();
        for &r in &self.rows {
            if r >= n {
                candle_core::bail!("replace rows: row {r} of {n}");
            }
            out[r * d..(r + 1) * d].copy_from_slice(token);
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        token: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = token.elem_count();
        let (dx, dt) = with_data(g, |gs| {
            let mut dx = gs.to_vec();
            let mut dt = vec![0f32; d];
            for &r in &self.rows {
                let row = &mut dx[r * d..(r + 1) * d];
                dt.iter_mut().zip(row.iter()).for_each(|(a, v)| *a += v);
                row.fill(0.0);
            }
            Ok((dx, dt))
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dt, token.shape(), token.device())?),
        ))
    }
}
