//! The core of a Nyström-attention layer as one candle custom op with a hand-written backward
//! pass (the llm.c way): from the projected `qkv` `[B, N', 3·H·d]` (front-padded, unscaled Q)
//! and the residual-convolution kernels `[H, K]` to the merged-heads output `[B, N', H·d]`:
//!
//! ```text
//! Q̃, K̃ = segment means of Q, K (m landmarks, l = N'/m rows each)
//! F1 = softmax(s·Q K̃ᵀ)   A = softmax(s·Q̃ K̃ᵀ)   F3 = softmax(s·Q̃ Kᵀ)     s = 1/√d
//! Z  = pinv(A)  (Newton–Schulz iterations, global scalar start, as `nystrom::pinv_iterative`)
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

use crate::cpu::with_data;
use crate::lanes::{softmax_backward_rows, softmax_rows};
use crate::matmul::{mm, View};
use crate::{cpu, lanes, scratch};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

crate::multiversion! {
    /// Softmax backward for columns `c0 .. c0 + cb` of the row-softmax `f` (`[rows, n]`), with
    /// each row's `Σ_j g ⊙ f` given: `g ← f ⊙ (g − rowdot)` on the block `g` (`[rows, cb]`).
    fn softmax_backward_block(f: &[f32], n: usize, c0: usize, g: &mut [f32], cb: usize, rowdot: &[f32]) {
        for (i, gr) in g.chunks_exact_mut(cb).enumerate() {
            let fr = &f[i * n + c0..i * n + c0 + cb];
            let dot = rowdot[i];
            for (gv, fv) in gr.iter_mut().zip(fr) {
                *gv = fv * (*gv - dot);
            }
        }
    }
}

crate::multiversion! {
    /// Means of `l` consecutive rows: `[rows / l, cols]`.
    pub(crate) fn segment_means(x: View, l: usize) -> Vec<f32> {
        let m = x.rows / l;
        let mut out = vec![0f32; m * x.cols];
        for (i, o) in out.chunks_exact_mut(x.cols).enumerate() {
            for r in i * l..(i + 1) * l {
                lanes::axpy(o, 1.0, x.row(r));
            }
            let inv = 1.0 / l as f32;
            o.iter_mut().for_each(|a| *a *= inv);
        }
        out
    }
}

/// One output row's columns `c0 .. c0 + 16·S` of [`conv_rows`], summed over taps `t0..t1` in
/// `S` vector registers (independent chains, so the adds overlap).
#[inline(always)]
fn conv_strips<const S: usize>(
    o: &mut [f32],
    x: View,
    w: &[f32],
    i: usize,
    taps: (usize, usize),
    c0: usize,
) {
    let r = w.len() / 2;
    let mut acc = [[0f32; 16]; S];
    for (t, &wt) in w.iter().enumerate().take(taps.1).skip(taps.0) {
        let row = x.row(i + t - r);
        for (s, a) in acc.iter_mut().enumerate() {
            let src: &[f32; 16] = row[c0 + 16 * s..c0 + 16 * (s + 1)]
                .try_into()
                .expect("16 columns");
            lanes::axpy16(a, wt, src);
        }
    }
    for (s, a) in acc.iter().enumerate() {
        lanes::axpy(&mut o[c0 + 16 * s..c0 + 16 * (s + 1)], 1.0, a);
    }
}

crate::multiversion! {
    /// `out[j] += Σ_t w[t] · x[p_j + t − K/2]` (zero outside `x`), `out` contiguous
    /// `[rows, cols]`, where `p_j` is `positions[j]` or `j`. Register-blocked: 16-column strips
    /// of an output row are summed over all taps in vector registers and stored once.
    pub(crate) fn conv_rows(out: &mut [f32], x: View, w: &[f32], positions: Option<&[usize]>) {
        let (r, n, cols) = (w.len() / 2, x.rows, x.cols);
        let strips = cols / 16;
        for (j, o) in out.chunks_exact_mut(cols).enumerate() {
            let i = positions.map_or(j, |p| p[j]);
            let taps = (r.saturating_sub(i), w.len().min(n + r - i));
            let mut s = 0;
            while s + 4 <= strips {
                conv_strips::<4>(o, x, w, i, taps, 16 * s);
                s += 4;
            }
            while s < strips {
                conv_strips::<1>(o, x, w, i, taps, 16 * s);
                s += 1;
            }
            for (c, oc) in o.iter_mut().enumerate().skip(16 * strips) {
                for (t, &wt) in w.iter().enumerate().take(taps.1).skip(taps.0) {
                    *oc += wt * x.row(i + t - r)[c];
                }
            }
        }
    }
}

crate::multiversion! {
    /// `dw[t] = Σ_j ⟨g[j], x[p_j + t − K/2]⟩` (`p_j` as in [`conv_rows`]): one 16-lane
    /// accumulator per tap, reduced once at the end (a horizontal sum per row pair would cost
    /// more than the products).
    fn conv_weight_grad(g: View, x: View, k: usize, positions: Option<&[usize]>) -> Vec<f32> {
        let (r, n, cols) = (k / 2, x.rows, x.cols);
        let mut acc = vec![[0f32; 16]; k];
        let mut tail = vec![0f32; k];
        for j in 0..g.rows {
            let i = positions.map_or(j, |p| p[j]);
            let gi = g.row(j);
            let t0 = r.saturating_sub(i);
            let t1 = k.min(n + r - i);
            for t in t0..t1 {
                let xs = x.row(i + t - r);
                // A local copy of the accumulator stays in a register (through the slot in
                // `acc` the compiler cannot rule out aliasing and does not vectorise).
                let mut a = acc[t];
                let mut c0 = 0;
                while c0 + 16 <= cols {
                    let gs: &[f32; 16] = gi[c0..c0 + 16].try_into().expect("16 columns");
                    let vs: &[f32; 16] = xs[c0..c0 + 16].try_into().expect("16 columns");
                    lanes::fma16(&mut a, gs, vs);
                    c0 += 16;
                }
                acc[t] = a;
                for c in c0..cols {
                    tail[t] += gi[c] * xs[c];
                }
            }
        }
        acc.iter()
            .zip(&tail)
            .map(|(a, &t)| a.iter().fold(t, |s, v| s + v))
            .collect()
    }
}

crate::multiversion! {
    /// The transpose of [`conv_rows`] with positions: `dx[p_j + t − K/2] += w[t] · g[j]`.
    fn conv_scatter(dx: &mut [f32], g: View, w: &[f32], positions: &[usize]) {
        let (r, cols) = (w.len() / 2, g.cols);
        let n = dx.len() / cols.max(1);
        for (j, &i) in positions.iter().enumerate() {
            let gj = g.row(j);
            for (t, &wt) in w.iter().enumerate().take(w.len().min(n + r - i)).skip(r.saturating_sub(i)) {
                let at = (i + t - r) * cols;
                lanes::axpy(&mut dx[at..at + cols], wt, gj);
            }
        }
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

/// d|x|/dx as PyTorch takes it (0 at 0).
fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn transpose(a: &[f32], n: usize) -> Vec<f32> {
    let mut t = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            t[j * n + i] = a[i * n + j];
        }
    }
    t
}

/// The pseudo-inverse of the row-stochastic `a` (`m × m`) from the start `Z₀ = Aᵀ / c`, and
/// each iteration's saved values when `keep` (for the backward pass).
pub(crate) fn pinv_forward(
    a: &[f32],
    m: usize,
    c: f32,
    iterations: usize,
    keep: bool,
) -> (Vec<f32>, Vec<PinvStep>) {
    let mut z: Vec<f32> = transpose(a, m).into_iter().map(|x| x / c).collect();
    let av = View::dense(a, m, m);
    let mut steps = Vec::with_capacity(if keep { iterations } else { 0 });
    for _ in 0..iterations {
        let mut p = vec![0f32; m * m];
        mm(&mut p, av, View::dense(&z, m, m), false, 1.0);
        // T1 = 7P − P·P
        let mut t1 = p.iter().map(|x| 7.0 * x).collect::<Vec<_>>();
        mm(
            &mut t1,
            View::dense(&p, m, m),
            View::dense(&p, m, m),
            true,
            -1.0,
        );
        // M = 13I − (15P − P·T1)
        let mut mt = p.iter().map(|x| -15.0 * x).collect::<Vec<_>>();
        mm(
            &mut mt,
            View::dense(&p, m, m),
            View::dense(&t1, m, m),
            true,
            1.0,
        );
        (0..m).for_each(|i| mt[i * m + i] += 13.0);
        let mut next = vec![0f32; m * m];
        mm(
            &mut next,
            View::dense(&z, m, m),
            View::dense(&mt, m, m),
            false,
            0.25,
        );
        let prev = std::mem::replace(&mut z, next);
        if keep {
            steps.push(PinvStep {
                z: prev,
                p,
                t1,
                m: mt,
            });
        }
    }
    (z, steps)
}

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

/// One pseudo-inverse iteration's saved values: `Z_k`, `P = A Z_k`, `T1 = P(7I − P)`,
/// `M = 13I − P(15I − T1)`; `Z_{k+1} = ¼ Z_k M`.
pub(crate) struct PinvStep {
    z: Vec<f32>,
    p: Vec<f32>,
    t1: Vec<f32>,
    m: Vec<f32>,
}

/// What one head keeps for its backward pass.
struct HeadSaved {
    qm: Vec<f32>,
    km: Vec<f32>,
    a: Vec<f32>,
    f1: Vec<f32>,
    f3: Vec<f32>,
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

struct Saved {
    heads: Vec<HeadSaved>,
    /// The starting scale `c` = (max row abs-sum) · (max column abs-sum) over all heads.
    row_max: f32,
    col_max: f32,
    /// (task, row) reaching `row_max`, (task, column) reaching `col_max`.
    row_ties: Vec<(usize, usize)>,
    col_ties: Vec<(usize, usize)>,
}

/// Dimensions of one call.
#[derive(Clone, Copy)]
pub(crate) struct Dims {
    b: usize,
    n: usize,
    /// Output rows per batch item: `n`, or the number of selected positions.
    r: usize,
    h: usize,
    d: usize,
    m: usize,
    l: usize,
    scale: f32,
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
            saved: Mutex::new(None),
        }
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
            l: n / s.landmarks,
            scale: 1.0 / (s.dim_head as f32).sqrt(),
        })
    }

    /// Phase 1 of one head: landmarks and `A`.
    fn landmark_attention(
        &self,
        qkv: &[f32],
        dm: Dims,
        bh: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (q, k) = (dm.qkv(qkv, bh, 0), dm.qkv(qkv, bh, 1));
        let qm = segment_means(q, dm.l);
        let km = segment_means(k, dm.l);
        let mut a = vec![0f32; dm.m * dm.m];
        mm(
            &mut a,
            View::dense(&qm, dm.m, dm.d),
            View::dense(&km, dm.m, dm.d).t(),
            false,
            dm.scale,
        );
        softmax_rows(&mut a, dm.m);
        (qm, km, a)
    }

    /// Phase 2 of one head: the pseudo-inverse, `F1`, `F3` and the output `[N', d]`.
    fn head_forward(
        &self,
        Inputs { dm, qkv, conv }: Inputs,
        bh: usize,
        (qm, km, a): (Vec<f32>, Vec<f32>, Vec<f32>),
        c: f32,
    ) -> (HeadSaved, Vec<f32>) {
        let (m, n, d) = (dm.m, dm.n, dm.d);
        let (q, k, v) = (dm.qkv(qkv, bh, 0), dm.qkv(qkv, bh, 1), dm.qkv(qkv, bh, 2));
        let (z, steps) = pinv_forward(&a, m, c, self.shape.pinv_iterations, true);
        let kmv = View::dense(&km, m, d);
        let r = dm.r;
        let mut q_buf = Vec::new();
        let qr = self.query_rows(q, &mut q_buf);
        let mut f1 = scratch::buffer(r * m);
        mm(&mut f1, qr, kmv.t(), false, dm.scale);
        softmax_rows(&mut f1, m);
        let mut f3 = scratch::buffer(m * n);
        mm(&mut f3, View::dense(&qm, m, d), k.t(), false, dm.scale);
        softmax_rows(&mut f3, n);
        let mut w = vec![0f32; m * d];
        mm(&mut w, View::dense(&f3, m, n), v, false, 1.0);
        let mut u = vec![0f32; m * d];
        mm(
            &mut u,
            View::dense(&z, m, m),
            View::dense(&w, m, d),
            false,
            1.0,
        );
        let mut out = scratch::buffer(r * d);
        mm(
            &mut out,
            View::dense(&f1, r, m),
            View::dense(&u, m, d),
            false,
            1.0,
        );
        if self.shape.kernel > 0 {
            let hi = bh % dm.h;
            let kk = self.shape.kernel;
            let vc = v.to_dense();
            conv_rows(
                &mut out,
                View::dense(&vc, n, d),
                &conv[hi * kk..(hi + 1) * kk],
                self.positions.as_deref(),
            );
        }
        (
            HeadSaved {
                qm,
                km,
                a,
                f1,
                f3,
                steps,
                z,
                w,
                u,
            },
            out,
        )
    }
}

/// Scatters per-task `[n, d]` blocks into a merged `[B, n, P·H·d]` tensor: part `p` of task
/// `(b, h)` goes to columns `p·H·d + h·d ..`. Parallel over rows.
fn merge_heads<const P: usize>(dst: &mut [f32], parts: &[[&[f32]; P]], dm: Dims, n: usize) {
    let (d, h) = (dm.d, dm.h);
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

/// The pseudo-inverse's start `Z₀ = Aᵀ / (row_max · col_max)`: the largest row and column
/// abs-sums over every head's `A` (all `m × m`), with the (head, row/column) reaching each.
pub(crate) struct StartScale {
    pub row_max: f32,
    pub col_max: f32,
    pub row_ties: Vec<(usize, usize)>,
    pub col_ties: Vec<(usize, usize)>,
}

pub(crate) fn start_scale<'a>(
    heads: impl Iterator<Item = &'a [f32]> + Clone,
    m: usize,
) -> StartScale {
    let (row_max, row_ties) = max_with_ties(heads.clone().enumerate().flat_map(|(t, a)| {
        a.chunks_exact(m)
            .enumerate()
            .map(move |(i, r)| ((t, i), r.iter().map(|x| x.abs()).sum::<f32>()))
    }));
    let (col_max, col_ties) = max_with_ties(heads.enumerate().flat_map(|(t, a)| {
        (0..m).map(move |j| ((t, j), (0..m).map(|i| a[i * m + j].abs()).sum::<f32>()))
    }));
    StartScale {
        row_max,
        col_max,
        row_ties,
        col_ties,
    }
}

/// Maximum of the values and every position reaching it.
fn max_with_ties(
    values: impl Iterator<Item = ((usize, usize), f32)>,
) -> (f32, Vec<(usize, usize)>) {
    let mut best = f32::NEG_INFINITY;
    let mut at = Vec::new();
    for (pos, v) in values {
        if v > best {
            best = v;
            at.clear();
            at.push(pos);
        } else if v == best {
            at.push(pos);
        }
    }
    (best, at)
}

impl CustomOp2 for NystromCore {
    fn name(&self) -> &'static str {
        "nystrom-core"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
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

impl NystromCore {
    /// The forward pass on raw `qkv` `[B, N', 3·H·d]` (shape from `dims`), keeping what the
    /// backward pass needs; returns `[B, N', H·d]`.
    pub(crate) fn forward_slices(&self, qkv: &[f32], conv: &[f32], dm: Dims) -> Result<Vec<f32>> {
        if self.shape.kernel > 0 && conv.len() != dm.h * self.shape.kernel {
            candle_core::bail!(
                "nystrom core: {} conv weights, expected {} × {}",
                conv.len(),
                dm.h,
                self.shape.kernel
            );
        }
        let tasks = dm.b * dm.h;
        let phase1: Vec<_> = (0..tasks)
            .into_par_iter()
            .map(|bh| self.landmark_attention(qkv, dm, bh))
            .collect();
        // The starting scale of the pseudo-inverse is global over batch and heads.
        let m = dm.m;
        let StartScale {
            row_max,
            col_max,
            row_ties,
            col_ties,
        } = start_scale(phase1.iter().map(|p| p.2.as_slice()), m);
        let c = row_max * col_max;
        let results: Vec<(HeadSaved, Vec<f32>)> = phase1
            .into_par_iter()
            .enumerate()
            .map(|(bh, p1)| self.head_forward(Inputs { dm, qkv, conv }, bh, p1, c))
            .collect();
        let (heads, per_head): (Vec<HeadSaved>, Vec<Vec<f32>>) = results.into_iter().unzip();
        // Every element is written by the merge.
        let mut out = scratch::buffer(dm.b * dm.r * dm.inner());
        let parts: Vec<[&[f32]; 1]> = per_head.iter().map(|o| [o.as_slice()]).collect();
        merge_heads(&mut out, &parts, dm, dm.r);
        drop(parts);
        per_head.into_iter().for_each(scratch::recycle);
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Saved {
            heads,
            row_max,
            col_max,
            row_ties,
            col_ties,
        }));
        Ok(out)
    }

    /// The backward pass on raw slices after [`Self::forward_slices`]: `(dqkv, dconv)`.
    pub(crate) fn backward_slices(
        &self,
        qkv: &[f32],
        conv: &[f32],
        grad: &[f32],
        dm: Dims,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg("nystrom core: backward before forward".into())
            })?;
        Ok(self.backward(&saved, dm, qkv, conv, grad))
    }
}

/// Phase A of one head's backward: everything down to `dA`, plus its share of `dL/dc`.
struct HeadGrads {
    /// dL/dQ, dL/dK, dL/dV of this head, `[N', d]`; the landmark terms are added in phase B.
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
    /// dL/dQ̃, dL/dK̃ so far, `[m, d]`.
    dqm: Vec<f32>,
    dkm: Vec<f32>,
    da: Vec<f32>,
    dc: f32,
    dconv: Vec<f32>,
}

impl Drop for HeadGrads {
    fn drop(&mut self) {
        scratch::recycle(std::mem::take(&mut self.dq));
        scratch::recycle(std::mem::take(&mut self.dk));
        scratch::recycle(std::mem::take(&mut self.dv));
    }
}

/// Rows of `F1` (columns of `F3`) per block of the backward pass: a block of the `N' × m`
/// gradient (256 × 256 floats) stays in the core's L2 cache from its product through the
/// softmax backward to the two products that consume it, instead of streaming whole
/// `N' × m` matrices through memory three times.
const BLOCK: usize = 256;

impl NystromCore {
    fn head_backward_a(
        &self,
        s: &HeadSaved,
        inp: Inputs,
        bh: usize,
        grad: &[f32],
        c: f32,
    ) -> HeadGrads {
        let Inputs { dm, qkv, conv } = inp;
        let (m, n, d) = (dm.m, dm.n, dm.d);
        let sc = dm.scale;
        let g = dm.merged(grad, bh);
        let (q, k, v) = (dm.qkv(qkv, bh, 0), dm.qkv(qkv, bh, 1), dm.qkv(qkv, bh, 2));
        let (qmv, kmv) = (View::dense(&s.qm, m, d), View::dense(&s.km, m, d));
        let uv = View::dense(&s.u, m, d);
        // F1 side, by row blocks: dU = F1ᵀ G, dS1 = softmax'(G Uᵀ), dQ = s·dS1 K̃, dK̃ = s·dS1ᵀ Q.
        let r = dm.r;
        let mut q_buf = Vec::new();
        let qr = self.query_rows(q, &mut q_buf);
        let mut du = vec![0f32; m * d];
        let mut dq = scratch::buffer(r * d);
        let mut dkm = vec![0f32; m * d];
        let mut block = vec![0f32; BLOCK * m.max(1)];
        for (bi, r0) in (0..r).step_by(BLOCK).enumerate() {
            let rb = BLOCK.min(r - r0);
            let f1b = View::dense(&s.f1[r0 * m..(r0 + rb) * m], rb, m);
            let gb = g.rows(r0, rb);
            let ds = &mut block[..rb * m];
            mm(&mut du, f1b.t(), gb, bi > 0, 1.0);
            mm(ds, gb, uv.t(), false, 1.0);
            softmax_backward_rows(&s.f1[r0 * m..(r0 + rb) * m], ds, m);
            let dsv = View::dense(ds, rb, m);
            mm(&mut dq[r0 * d..(r0 + rb) * d], dsv, kmv, false, sc);
            mm(&mut dkm, dsv.t(), qr.rows(r0, rb), bi > 0, sc);
        }
        if let Some(p) = &self.positions {
            // Unselected rows get no gradient through F1 (their landmark terms come later).
            let mut full = vec![0f32; n * d];
            for (j, &pos) in p.iter().enumerate() {
                full[pos * d..(pos + 1) * d].copy_from_slice(&dq[j * d..(j + 1) * d]);
            }
            scratch::recycle(std::mem::replace(&mut dq, full));
        }
        let mut dw = vec![0f32; m * d];
        mm(
            &mut dw,
            View::dense(&s.z, m, m).t(),
            View::dense(&du, m, d),
            false,
            1.0,
        );
        let mut gz = vec![0f32; m * m];
        mm(
            &mut gz,
            View::dense(&du, m, d),
            View::dense(&s.w, m, d).t(),
            false,
            1.0,
        );
        // F3 side, by column blocks: dV = F3ᵀ dW, dS3 = softmax'(dW Vᵀ), dK = s·dS3ᵀ Q̃,
        // dQ̃ = s·dS3 K. The softmax backward needs Σ_j dF3 ⊙ F3 over whole rows, which is
        // Σ_f dW ⊙ W (as F3 V = W), so no block needs another.
        let dwv = View::dense(&dw, m, d);
        let rowdot: Vec<f32> = dw
            .chunks_exact(d)
            .zip(s.w.chunks_exact(d))
            .map(|(a, b)| lanes::dot(a, b))
            .collect();
        let mut dv = scratch::buffer(n * d);
        let mut dk = scratch::buffer(n * d);
        let mut dqm = vec![0f32; m * d];
        for (bi, c0) in (0..n).step_by(BLOCK).enumerate() {
            let cb = BLOCK.min(n - c0);
            let f3b = View::rows_of(&s.f3, c0, m, cb, n);
            let ds = &mut block[..m * cb];
            mm(&mut dv[c0 * d..(c0 + cb) * d], f3b.t(), dwv, false, 1.0);
            mm(ds, dwv, v.rows(c0, cb).t(), false, 1.0);
            softmax_backward_block(&s.f3, n, c0, ds, cb, &rowdot);
            let dsv = View::dense(ds, m, cb);
            mm(&mut dk[c0 * d..(c0 + cb) * d], dsv.t(), qmv, false, sc);
            mm(&mut dqm, dsv, k.rows(c0, cb), bi > 0, sc);
        }
        let kk = self.shape.kernel;
        let dconv = if kk > 0 {
            let hi = bh % dm.h;
            let flipped: Vec<f32> = conv[hi * kk..(hi + 1) * kk].iter().rev().copied().collect();
            let (gc, vc) = (g.to_dense(), v.to_dense());
            let (gc, vc) = (View::dense(&gc, r, d), View::dense(&vc, n, d));
            match &self.positions {
                None => conv_rows(&mut dv, gc, &flipped, None),
                Some(p) => conv_scatter(&mut dv, gc, &conv[hi * kk..(hi + 1) * kk], p),
            }
            conv_weight_grad(gc, vc, kk, self.positions.as_deref())
        } else {
            Vec::new()
        };
        // Back through the pseudo-inverse iterations.
        let av = View::dense(&s.a, m, m);
        let mut da = vec![0f32; m * m];
        let mut dt2 = vec![0f32; m * m];
        let mut dp = vec![0f32; m * m];
        let mut dt1 = vec![0f32; m * m];
        for st in s.steps.iter().rev() {
            let (zv, pv, t1v, mv) = (
                View::dense(&st.z, m, m),
                View::dense(&st.p, m, m),
                View::dense(&st.t1, m, m),
                View::dense(&st.m, m, m),
            );
            let gzv = View::dense(&gz, m, m);
            // Z' = ¼ Z M, M = 13I − T2: dM = ¼ Zᵀ G, dT2 = −dM.
            mm(&mut dt2, zv.t(), gzv, false, -0.25);
            let mut dz = vec![0f32; m * m];
            mm(&mut dz, gzv, mv.t(), false, 0.25);
            // T2 = 15P − P T1.
            dp.iter_mut().zip(&dt2).for_each(|(a, b)| *a = 15.0 * b);
            mm(&mut dp, View::dense(&dt2, m, m), t1v.t(), true, -1.0);
            mm(&mut dt1, pv.t(), View::dense(&dt2, m, m), false, -1.0);
            // T1 = 7P − P P.
            dp.iter_mut().zip(&dt1).for_each(|(a, b)| *a += 7.0 * b);
            mm(&mut dp, View::dense(&dt1, m, m), pv.t(), true, -1.0);
            mm(&mut dp, pv.t(), View::dense(&dt1, m, m), true, -1.0);
            // P = A Z.
            mm(&mut da, View::dense(&dp, m, m), zv.t(), true, 1.0);
            mm(&mut dz, av.t(), View::dense(&dp, m, m), true, 1.0);
            gz = dz;
        }
        // Z₀ = Aᵀ / c.
        let mut dc = 0f32;
        for i in 0..m {
            for j in 0..m {
                da[j * m + i] += gz[i * m + j] / c;
                dc -= gz[i * m + j] * s.a[j * m + i];
            }
        }
        HeadGrads {
            dq,
            dk,
            dv,
            dqm,
            dkm,
            da,
            dc: dc / (c * c),
            dconv,
        }
    }

    /// Phase B of one head (after the global `dc` reached `dA`): the landmark attention's
    /// softmax backward, and the landmark gradients spread over their segments' rows.
    fn head_backward_b(&self, s: &HeadSaved, dm: Dims, hg: &mut HeadGrads) {
        let (m, n, d, l) = (dm.m, dm.n, dm.d, dm.l);
        softmax_backward_rows(&s.a, &mut hg.da, m);
        let ds2 = View::dense(&hg.da, m, m);
        let (qmv, kmv) = (View::dense(&s.qm, m, d), View::dense(&s.km, m, d));
        mm(&mut hg.dkm, ds2.t(), qmv, true, dm.scale);
        mm(&mut hg.dqm, ds2, kmv, true, dm.scale);
        let inv = 1.0 / l as f32;
        for r in 0..n {
            let seg = r / l;
            let (gq, gk) = (
                &hg.dqm[seg * d..(seg + 1) * d],
                &hg.dkm[seg * d..(seg + 1) * d],
            );
            lanes::axpy(&mut hg.dq[r * d..(r + 1) * d], inv, gq);
            lanes::axpy(&mut hg.dk[r * d..(r + 1) * d], inv, gk);
        }
    }

    fn backward(
        &self,
        saved: &Saved,
        dm: Dims,
        qkv: &[f32],
        conv: &[f32],
        grad: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        let c = saved.row_max * saved.col_max;
        let tasks = dm.b * dm.h;
        let mut phase_a: Vec<HeadGrads> = (0..tasks)
            .into_par_iter()
            .map(|bh| self.head_backward_a(&saved.heads[bh], Inputs { dm, qkv, conv }, bh, grad, c))
            .collect();
        // dL/dc reaches A through the two global maxima (ties share it evenly).
        let dc: f32 = phase_a.iter().map(|g| g.dc).sum();
        let m = dm.m;
        let d_row = dc * saved.col_max / saved.row_ties.len() as f32;
        for &(t, i) in &saved.row_ties {
            let a = &saved.heads[t].a;
            for j in 0..m {
                phase_a[t].da[i * m + j] += d_row * sign(a[i * m + j]);
            }
        }
        let d_col = dc * saved.row_max / saved.col_ties.len() as f32;
        for &(t, j) in &saved.col_ties {
            let a = &saved.heads[t].a;
            for i in 0..m {
                phase_a[t].da[i * m + j] += d_col * sign(a[i * m + j]);
            }
        }
        phase_a
            .par_iter_mut()
            .enumerate()
            .for_each(|(bh, hg)| self.head_backward_b(&saved.heads[bh], dm, hg));
        let inner = dm.inner();
        let n = dm.n;
        let mut dqkv = scratch::buffer(dm.b * n * 3 * inner);
        let parts: Vec<[&[f32]; 3]> = phase_a
            .iter()
            .map(|hg| [hg.dq.as_slice(), hg.dk.as_slice(), hg.dv.as_slice()])
            .collect();
        merge_heads(&mut dqkv, &parts, dm, dm.n);
        drop(parts);
        let kk = self.shape.kernel;
        let mut dconv = vec![0f32; if kk > 0 { dm.h * kk } else { conv.len() }];
        if kk > 0 {
            for (bh, hg) in phase_a.iter().enumerate() {
                let hi = bh % dm.h;
                dconv[hi * kk..(hi + 1) * kk]
                    .iter_mut()
                    .zip(&hg.dconv)
                    .for_each(|(a, b)| *a += b);
            }
        }
        (dqkv, dconv)
    }
}

/// The layer core on `qkv` `[B, N', 3·H·d]` (N' a multiple of the landmarks) with residual
/// kernels `conv` `[H, K]` (ignored when `shape.kernel` is 0) → `[B, N', H·d]`.
pub fn nystrom_core(qkv: &Tensor, conv: &Tensor, shape: CoreShape) -> Result<Tensor> {
    qkv.contiguous()?
        .apply_op2(&conv.contiguous()?, NystromCore::new(shape))
}
