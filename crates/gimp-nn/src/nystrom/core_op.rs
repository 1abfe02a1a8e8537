//! The core of a Nyström-attention layer as one candle custom op with a hand-written backward
//! pass (the llm.c way): from the projected `qkv` `[B, N', 3·H·d]` (front-padded, unscaled Q)
//! and the residual-convolution kernels `[H, K]` to the merged-heads output `[B, N', H·d]`:
//!
//! ```text
//! Q̃, K̃ = segment means of Q, K (m landmarks, l = N'/m rows each)
//! F1 = softmax(s·Q K̃ᵀ)   A = softmax(s·Q̃ K̃ᵀ)   F3 = softmax(s·Q̃ Kᵀ)     s = 1/√d
//! Z  = pinv(A)  (Newton–Schulz iterations, global scalar start, [`super::pinv`])
//! O  = F1 (Z (F3 V)) + conv_K(V)
//! ```
//!
//! Built from candle's ordinary ops the layer allocates dozens of `N' × m` tensors per head
//! (softmax alone is five, its autograd as many again); here each head's work is one task that
//! keeps `F1`, `F3` and the small `m × m` iterates for the backward pass and nothing else. Matrix
//! products call the `gemm` crate directly with strides, so Q, K, V and the gradient are read in
//! place, transposes are free, and no head-split copies are made. Heads run in parallel. The
//! backward pass walks `F1` by row blocks and `F3` by column blocks of `BLOCK` (256), so each block of
//! their gradients goes from its product through the softmax backward to the two products that
//! consume it while it is in cache.
//!
//! [`NystromCore::with_positions`] computes the output at selected padded positions only
//! (`[B, r, H·d]`): keys, values and landmarks still cover every position; `F1`, the output and
//! its gradient shrink to the selected rows (the last layer of masked patch modelling).
//!
//! The backward pass follows the forward's operations exactly (including the gradient through the
//! global maxima of the pseudo-inverse's starting scale, split evenly between ties as PyTorch
//! does), so it reproduces the reference's autograd; `tests/nystrom_parity.rs` checks it against
//! lucidrains' gradients, the candle-graph implementation and finite differences.
//!
//! The forward pass is in `forward.rs`, the backward pass in `backward.rs`; the kernels they
//! share with the other paths are in [`super::geometry`] (landmark means),
//! [`super::residual_conv`] and [`super::pinv`].

mod backward;
mod forward;

pub(crate) use backward::HeadGrads;

pub(crate) use forward::landmark_attention;

use super::geometry::segment_len;
use super::pinv::{PinvStep, StartScale};
use super::AttentionMemory;
use crate::cpu::matmul::View;
use crate::cpu::{self, scratch, with_data, CpuForward};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Rows of `F1` (columns of `F3`) per block: in the backward pass a block of the `N' × m`
/// gradient (256 × 256 floats) stays in the core's L2 cache from its product through the
/// softmax backward to the two products that consume it, instead of streaming whole
/// `N' × m` matrices through memory three times; without kept attention matrices, the forward
/// pass forms them block by block too.
pub(crate) const BLOCK: usize = 256;

/// The shape of one layer's computation.
#[derive(Debug, Clone, Copy)]
pub struct CoreShape {
    pub heads: usize,
    pub dim_head: usize,
    pub landmarks: usize,
    pub pinv_iterations: usize,
    /// Kernel size of the residual convolution (odd), 0 without it.
    pub kernel: usize,
}

/// What one head keeps for its backward pass.
struct HeadSaved {
    qm: Vec<f32>,
    km: Vec<f32>,
    a: Vec<f32>,
    /// `F1` and `F3` when kept ([`AttentionMemory::Keep`]), else empty.
    f1: Vec<f32>,
    f3: Vec<f32>,
    /// Each `F3` row's log-sum-exp when they are rebuilt ([`AttentionMemory::Recompute`]).
    lse3: Vec<f32>,
    steps: Vec<PinvStep>,
    z: Vec<f32>,
    w: Vec<f32>,
    u: Vec<f32>,
}

impl Drop for HeadSaved {
    fn drop(&mut self) {
        scratch::recycle(std::mem::take(&mut self.f1));
        scratch::recycle(std::mem::take(&mut self.f3));
    }
}

pub(crate) struct Saved {
    heads: Vec<HeadSaved>,
    /// The pseudo-inverse's start scale, global over batch and heads.
    scale: StartScale,
}

/// Dimensions of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    pub(crate) b: usize,
    pub(crate) n: usize,
    /// Output rows per batch item: `n`, or the number of selected positions.
    pub(crate) r: usize,
    pub(crate) h: usize,
    pub(crate) d: usize,
    pub(crate) m: usize,
    pub(crate) l: usize,
    pub(crate) scale: f32,
}

impl Dims {
    pub(crate) fn inner(&self) -> usize {
        self.h * self.d
    }

    /// Q, K or V (`which` 0, 1, 2) of task `bh` inside `qkv`.
    fn qkv<'a>(&self, qkv: &'a [f32], bh: usize, which: usize) -> View<'a> {
        let (bi, hi) = (bh / self.h, bh % self.h);
        let row = 3 * self.inner();
        View::rows_of(
            qkv,
            bi * self.n * row + which * self.inner() + hi * self.d,
            self.n,
            self.d,
            row,
        )
    }

    /// Task `bh`'s columns of a merged-heads output-shaped `[B, r, H·d]` tensor.
    fn merged<'a>(&self, x: &'a [f32], bh: usize) -> View<'a> {
        let (bi, hi) = (bh / self.h, bh % self.h);
        View::rows_of(
            x,
            bi * self.r * self.inner() + hi * self.d,
            self.r,
            self.d,
            self.inner(),
        )
    }
}

/// One call's dimensions and input data.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    dm: Dims,
    qkv: &'a [f32],
    conv: &'a [f32],
}

pub struct NystromCore {
    shape: CoreShape,
    /// Padded positions whose outputs are wanted (increasing), or all of them. The keys, values
    /// and landmarks always cover every position; only `F1`, the output and its gradient
    /// shrink to the selected rows.
    positions: Option<Vec<usize>>,
    memory: AttentionMemory,
    saved: Mutex<Option<Arc<Saved>>>,
}

impl NystromCore {
    pub fn new(shape: CoreShape) -> Self {
        Self::with_positions(shape, None)
    }

    /// A core computing outputs only at the given padded positions (increasing): the output
    /// is `[B, positions.len(), H·d]`.
    pub fn with_positions(shape: CoreShape, positions: Option<Vec<usize>>) -> Self {
        Self {
            shape,
            positions,
            memory: AttentionMemory::Keep,
            saved: Mutex::new(None),
        }
    }

    /// The same core keeping or rebuilding the attention matrices.
    pub fn with_memory(mut self, memory: AttentionMemory) -> Self {
        self.memory = memory;
        self
    }

    fn keeps_attention(&self) -> bool {
        self.memory == AttentionMemory::Keep
    }

    /// The query rows whose outputs are computed: a view of Q, or a packed copy of the
    /// selected rows.
    fn query_rows<'a>(&self, q: View<'a>, buf: &'a mut Vec<f32>) -> View<'a> {
        match &self.positions {
            None => q,
            Some(p) => {
                *buf = gather_rows(q, p);
                View::dense(buf, p.len(), q.cols)
            }
        }
    }

    pub(crate) fn dims(&self, qkv: &Shape) -> Result<Dims> {
        let (b, n, c) = qkv.dims3()?;
        let s = self.shape;
        let inner = s.heads * s.dim_head;
        if c != 3 * inner {
            candle_core::bail!("nystrom core: qkv has {c} columns, expected 3 × {inner}");
        }
        if s.landmarks == 0 || n % s.landmarks != 0 || n == 0 {
            candle_core::bail!(
                "nystrom core: {n} rows is not a positive multiple of {} landmarks",
                s.landmarks
            );
        }
        if s.kernel != 0 && s.kernel.is_multiple_of(2) {
            candle_core::bail!("nystrom core: residual kernel {} must be odd", s.kernel);
        }
        if let Some(p) = &self.positions {
            if p.windows(2).any(|w| w[0] >= w[1]) || p.last().is_some_and(|&x| x >= n) {
                candle_core::bail!("nystrom core: output rows must be increasing and below {n}");
            }
        }
        Ok(Dims {
            b,
            n,
            r: self.positions.as_ref().map_or(n, |p| p.len()),
            h: s.heads,
            d: s.dim_head,
            m: s.landmarks,
            l: segment_len(n, s.landmarks),
            scale: 1.0 / (s.dim_head as f32).sqrt(),
        })
    }
}

/// The rows `positions` of `x`, packed.
fn gather_rows(x: View, positions: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(positions.len() * x.cols);
    for &p in positions {
        out.extend_from_slice(x.row(p));
    }
    out
}

/// Scatters per-task `[n, d]` blocks into a merged `[B, n, P·h·d]` tensor: part `p` of task
/// `(b, head)` goes to columns `p·h·d + head·d ..`. Parallel over rows.
pub(crate) fn merge_heads<const P: usize>(
    dst: &mut [f32],
    parts: &[[&[f32]; P]],
    h: usize,
    d: usize,
    n: usize,
) {
    let row_len = P * h * d;
    dst.par_chunks_mut(row_len * 256)
        .enumerate()
        .for_each(|(ci, block)| {
            for (j, row) in block.chunks_exact_mut(row_len).enumerate() {
                let global = ci * 256 + j;
                let (bi, i) = (global / n, global % n);
                for hi in 0..h {
                    for (p, src) in parts[bi * h + hi].iter().enumerate() {
                        let at = p * h * d + hi * d;
                        row[at..at + d].copy_from_slice(&src[i * d..(i + 1) * d]);
                    }
                }
            }
        });
}

impl CustomOp2 for NystromCore {
    fn name(&self) -> &'static str {
        "nystrom-core"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuForward {
        let dm = self.dims(l1.shape())?;
        let qkv = cpu::slice(s1, l1, "nystrom core: qkv")?;
        let conv = cpu::slice(s2, l2, "nystrom core: conv kernels")?;
        let out = self.forward_slices(qkv, conv, dm)?;
        Ok((CpuStorage::F32(out), Shape::from((dm.b, dm.r, dm.inner()))))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        conv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(qkv.shape())?;
        let (dqkv, dconv) = with_data(qkv, |q| {
            with_data(grad, |g| {
                with_data(conv, |w| self.backward_slices(q, w, g, dm))
            })
        })?;
        let dqkv = Tensor::from_vec(dqkv, qkv.shape(), qkv.device())?;
        let dconv = Tensor::from_vec(dconv, conv.shape(), conv.device())?;
        Ok((Some(dqkv), Some(dconv)))
    }
}

/// The layer core on `qkv` `[B, N', 3·H·d]` (N' a multiple of the landmarks) with residual
/// kernels `conv` `[H, K]` (ignored when `shape.kernel` is 0) → `[B, N', H·d]`.
pub fn nystrom_core(
    qkv: &Tensor,
    conv: &Tensor,
    shape: CoreShape,
    memory: AttentionMemory,
) -> Result<Tensor> {
    qkv.contiguous()?.apply_op2(
        &conv.contiguous()?,
        NystromCore::new(shape).with_memory(memory),
    )
}
