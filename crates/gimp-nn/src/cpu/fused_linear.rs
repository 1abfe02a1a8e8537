//! `act(x Wᵀ + b)` as a single candle op with a hand-written backward pass.
//!
//! Through candle's ordinary ops a Linear layer is a matmul, a broadcast add and an activation —
//! three nodes, each allocating its output forward and, backward, a zero tensor plus a sum for
//! every gradient it passes on. In the transformer blocks of GroupMSA and the patch aggregator
//! those element-wise passes and allocations cost more than the matrix products. Here it is one
//! node: the bias and the activation are applied in the same pass over the product, and the
//! backward pass forms the activation's derivative, the three gradients and nothing else.

use crate::cpu::matmul::{mm_parallel, View};
use crate::cpu::{slice, with_data};
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The activation applied after the affine map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Relu,
    /// GELU with the exact erf form (PyTorch's `nn.GELU()` default).
    Gelu,
}

const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// 1/√(2π).
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

impl Activation {
    fn apply(self, z: f32) -> f32 {
        match self {
            Self::Identity => z,
            Self::Relu => z.max(0.0),
            Self::Gelu => 0.5 * z * (1.0 + libm::erff(z * FRAC_1_SQRT_2)),
        }
    }

    fn derivative(self, z: f32) -> f32 {
        match self {
            Self::Identity => 1.0,
            Self::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Gelu => {
                0.5 * (1.0 + libm::erff(z * FRAC_1_SQRT_2))
                    + z * FRAC_1_SQRT_2PI * (-0.5 * z * z).exp()
            }
        }
    }
}

/// Rows per parallel task of the element-wise passes.
const CHUNK: usize = 1 << 14;

pub struct LinearOp {
    act: Activation,
    /// The pre-activation `x Wᵀ + b`, kept for the backward pass of a non-identity activation.
    pre: Mutex<Option<Vec<f32>>>,
}

impl LinearOp {
    fn new(act: Activation) -> Self {
        Self {
            act,
            pre: Mutex::new(None),
        }
    }

    fn forward(
        &self,
        x: &[f32],
        lx: &Layout,
        w: &[f32],
        lw: &Layout,
        b: Option<&[f32]>,
    ) -> Result<(CpuStorage, Shape)> {
        let (out_dim, in_dim) = lw.shape().dims2()?;
        let dims = lx.shape().dims();
        if dims.last() != Some(&in_dim) {
            candle_core::bail!("linear: input {:?} does not end in {in_dim}", dims);
        }
        if b.is_some_and(|b| b.len() != out_dim) {
            candle_core::bail!("linear: bias size differs from {out_dim} outputs");
        }
        let rows = x.len() / in_dim.max(1);
        let mut y = if in_dim > 0 {
            crate::cpu::scratch::buffer(rows * out_dim)
        } else {
            vec![0f32; rows * out_dim]
        };
        if rows > 0 && in_dim > 0 {
            mm_parallel(
                &mut y,
                View::dense(x, rows, in_dim),
                View::dense(w, out_dim, in_dim).t(),
                false,
                1.0,
            );
        }
        if let Some(b) = b {
            y.par_chunks_mut(out_dim * (CHUNK / out_dim.max(1)).max(1))
                .for_each(|c| {
                    for row in c.chunks_exact_mut(out_dim) {
                        row.iter_mut().zip(b).for_each(|(v, bb)| *v += bb);
                    }
                });
        }
        if self.act != Activation::Identity {
            let act = self.act;
            let z = y.clone();
            y.par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|v| *v = act.apply(*v)));
            *self.pre.lock().unwrap_or_else(|p| p.into_inner()) = Some(z);
        }
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("checked above") = out_dim;
        Ok((CpuStorage::F32(y), Shape::from(shape)))
    }

    /// (dx, dW, db) for the gradient `g` of the output; no dx when `x` tracks no gradient (the
    /// data entering a network's first layer), which saves a third of the backward products.
    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Tensor, Tensor)> {
        let need_dx = x.track_op();
        let (out_dim, in_dim) = w.dims2()?;
        let pre = self.pre.lock().unwrap_or_else(|p| p.into_inner());
        let (dx, dw, db) = with_data(g, |gs| {
            // dL/dz = g ⊙ act'(z) (g itself for the identity, without a copy).
            let owned;
            let gz: &[f32] = match (self.act, pre.as_ref()) {
                (Activation::Identity, _) => gs,
                (act, Some(z)) => {
                    let mut v = gs.to_vec();
                    v.par_chunks_mut(CHUNK)
                        .zip(z.par_chunks(CHUNK))
                        .for_each(|(g, z)| {
                            g.iter_mut()
                                .zip(z)
                                .for_each(|(g, z)| *g *= act.derivative(*z))
                        });
                    owned = v;
                    &owned
                }
                (_, None) => candle_core::bail!("linear: backward before forward"),
            };
            let rows = gz.len() / out_dim.max(1);
            let gzv = View::dense(gz, rows, out_dim);
            with_data(x, |xs| {
                with_data(w, |ws| {
                    let mut dx = vec![0f32; if need_dx { rows * in_dim } else { 0 }];
                    let mut dw = vec![0f32; out_dim * in_dim];
                    if rows > 0 && in_dim > 0 && out_dim > 0 {
                        if need_dx {
                            mm_parallel(&mut dx, gzv, View::dense(ws, out_dim, in_dim), false, 1.0);
                        }
                        mm_parallel(&mut dw, gzv.t(), View::dense(xs, rows, in_dim), false, 1.0);
                    }
                    let mut db = vec![0f32; out_dim];
                    for row in gz.chunks_exact(out_dim.max(1)) {
                        db.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    Ok((dx, dw, db))
                })
            })
        })?;
        let dx = if need_dx {
            Some(Tensor::from_vec(dx, x.shape(), x.device())?)
        } else {
            None
        };
        Ok((
            dx,
            Tensor::from_vec(dw, w.shape(), w.device())?,
            Tensor::from_vec(db, out_dim, w.device())?,
        ))
    }
}

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(
            slice(s1, l1, "linear: input")?,
            l1,
            slice(s2, l2, "linear: weight")?,
            l2,
            None,
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, g)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
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
        let b = slice(s3, l3, "linear: bias")?;
        self.forward(
            slice(s1, l1, "linear: input")?,
            l1,
            slice(s2, l2, "linear: weight")?,
            l2,
            Some(b),
        )
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = self.backward(x, w, g)?;
        Ok((dx, Some(dw), Some(db)))
    }
}

/// `act(x Wᵀ + b)` for `x` `[..., in]`, `w` `[out, in]`, `b` `[out]`, as one op.
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>, act: Activation) -> Result<Tensor> {
    let x = x.contiguous()?;
    let w = w.contiguous()?;
    match b {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, LinearOp::new(act)),
        None => x.apply_op2(&w, LinearOp::new(act)),
    }
}
