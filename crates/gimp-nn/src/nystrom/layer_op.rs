//! A whole pre-norm residual Nyström layer, `x + dropout(to_out(core(to_qkv(pad(LN(x))))))`,
//! as one candle op with a hand-written backward pass.
//!
//! Built from separate ops (LayerNorm, projection, padding copy, [`super::core_op`] core,
//! projection, dropout, un-padding copy, residual add) every boundary is a tensor allocated
//! forward and, backward, a zero tensor plus an addition for the gradient candle accumulates
//! into it — about 150 MB of extra memory traffic per layer on a 6,000-patch window. Here the
//! only tensors crossing the op are `x`, the packed parameters and the output; the padding is
//! a zero prefix of the `qkv` buffer and the un-padding is reading the right output rows.
//!
//! For the backward pass the op keeps `qkv` and the core's output, not the normalised input:
//! the LayerNorm is recomputed from `x` there (one cheap pass), and what was kept is freed as
//! the backward pass goes, so on a whole slide the layer never holds a second `N × dim` copy
//! besides its gradient (`docs/PERFORMANCE.md`, "Training on whole slides"). A layer that
//! rebuilds its attention matrices (whole slides) keeps only the core's output and projects
//! `qkv` again in the backward pass ([`NystromLayerOp::with_memory`]).
//!
//! Parameters travel packed in one tensor (LayerNorm weight and bias, `to_qkv.weight`,
//! `to_out.0.weight`, `to_out.0.bias`, the residual kernels): `Tensor::cat` of the parameters is
//! differentiable, so candle hands each parameter its slice of the packed gradient.

use super::core_op::{merge_heads, CoreShape, Dims, HeadGrads, NystromCore};
use super::geometry::Geometry;
use super::AttentionMemory;
use crate::cpu::lanes::{self, layer_norm_rows};
use crate::cpu::matmul::{mm, mm_parallel, View};
use crate::cpu::scratch;
use crate::cpu::{with_data, CpuForward};
use crate::ops::KeepBits;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

/// The layer's dimensions besides the core's.
#[derive(Debug, Clone, Copy)]
pub struct LayerShape {
    pub core: CoreShape,
    pub dim: usize,
    /// Keep the first `n` rows after padding (nystrom-attention ≤ 0.0.9) instead of the last.
    pub legacy_front_slice: bool,
    pub eps: f32,
}

impl LayerShape {
    fn inner(&self) -> usize {
        self.core.heads * self.core.dim_head
    }

    /// Offsets of the packed parameters, and the total length.
    fn offsets(&self) -> [usize; 7] {
        let (dim, inner) = (self.dim, self.inner());
        let sizes = [
            dim,
            dim,
            3 * inner * dim,
            dim * inner,
            dim,
            self.core.heads * self.core.kernel,
        ];
        let mut o = [0; 7];
        for (i, s) in sizes.iter().enumerate() {
            o[i + 1] = o[i] + s;
        }
        o
    }
}

struct Saved {
    qkv: Vec<f32>,
    o: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        for v in [&mut self.qkv, &mut self.o] {
            scratch::recycle(std::mem::take(v));
        }
    }
}

pub struct NystromLayerOp {
    shape: LayerShape,
    /// The dropout mask on the projected output, shaped as the output.
    mask: Option<KeepBits>,
    /// Tokens whose outputs are wanted (increasing), or all: the output is `[B, |rows|, dim]`.
    rows: Option<Vec<usize>>,
    core: NystromCore,
    /// Keep `qkv` for the backward pass (with the attention matrices kept); otherwise the
    /// backward pass projects it again from `x`.
    keep_qkv: bool,
    saved: Mutex<Option<Saved>>,
}

/// Slices of the packed parameters.
struct Params<'a> {
    ln_w: &'a [f32],
    ln_b: &'a [f32],
    w_qkv: &'a [f32],
    w_out: &'a [f32],
    b_out: &'a [f32],
    conv: &'a [f32],
}

impl NystromLayerOp {
    pub fn new(shape: LayerShape, mask: Option<KeepBits>) -> Self {
        Self::with_rows(shape, mask, None, 0)
    }

    /// The layer's output at the tokens `rows` only (increasing, below `n`, the bag's token
    /// count). Every token still enters the keys, values and landmarks; the queries, the
    /// output projection and the residual act row by row, so they run on the selected rows.
    pub fn with_rows(
        shape: LayerShape,
        mask: Option<KeepBits>,
        rows: Option<Vec<usize>>,
        n: usize,
    ) -> Self {
        let geo = Geometry::new(n, shape.core.landmarks, shape.legacy_front_slice);
        let positions = rows
            .as_ref()
            .map(|r| r.iter().map(|&t| geo.output_position(t)).collect());
        Self {
            shape,
            mask,
            rows,
            core: NystromCore::with_positions(shape.core, positions),
            keep_qkv: true,
            saved: Mutex::new(None),
        }
    }

    /// The same layer keeping or rebuilding the attention matrices (see [`NystromCore`]). A
    /// layer that rebuilds them also rebuilds `qkv` (`3 · N' · H·d` floats, the largest thing
    /// it would keep: 0.9 GB at 150,000 patches) from `x` in the backward pass, one more
    /// projection for a third less memory held between the passes of a whole-slide step.
    pub fn with_memory(mut self, memory: AttentionMemory) -> Self {
        self.core = self.core.with_memory(memory);
        self.keep_qkv = memory == AttentionMemory::Keep;
        self
    }

    /// Output rows per batch item, rows of the core's output per batch item, and the first
    /// of those that is read.
    fn output_rows(&self, geo: &Geometry) -> (usize, usize, usize) {
        match &self.rows {
            Some(r) => (r.len(), r.len(), 0),
            None => (geo.n, geo.padded, geo.start),
        }
    }

    /// Token index of output row `j`.
    fn token(&self, j: usize) -> usize {
        self.rows.as_ref().map_or(j, |r| r[j])
    }

    fn params<'a>(&self, p: &'a [f32]) -> Result<Params<'a>> {
        let o = self.shape.offsets();
        if p.len() != o[6] {
            candle_core::bail!(
                "nystrom layer: {} packed parameters, expected {}",
                p.len(),
                o[6]
            );
        }
        Ok(Params {
            ln_w: &p[o[0]..o[1]],
            ln_b: &p[o[1]..o[2]],
            w_qkv: &p[o[2]..o[3]],
            w_out: &p[o[3]..o[4]],
            b_out: &p[o[4]..o[5]],
            conv: &p[o[5]..o[6]],
        })
    }

    /// Batch size and the padded layout of the input `x`.
    fn geometry(&self, x: &Shape) -> Result<(usize, Geometry)> {
        let (b, n, dim) = x.dims3()?;
        let m = self.shape.core.landmarks;
        if dim != self.shape.dim || n == 0 || m == 0 {
            candle_core::bail!(
                "nystrom layer: input {:?} for dim {}",
                x.dims(),
                self.shape.dim
            );
        }
        if let Some(r) = &self.rows {
            if r.windows(2).any(|w| w[0] >= w[1]) || r.last().is_some_and(|&t| t >= n) {
                candle_core::bail!("nystrom layer: selected rows must be increasing and below {n}");
            }
        }
        Ok((b, Geometry::new(n, m, self.shape.legacy_front_slice)))
    }

    fn core_dims(&self, b: usize, np: usize) -> Result<Dims> {
        self.core
            .dims(&Shape::from((b, np, 3 * self.shape.inner())))
    }

    fn forward(&self, x: &[f32], xs: &Shape, packed: &[f32]) -> Result<Vec<f32>> {
        let (b, geo) = self.geometry(xs)?;
        let (n, np) = (geo.n, geo.padded);
        let (t, ro, o_off) = self.output_rows(&geo);
        let p = self.params(packed)?;
        let (dim, inner) = (self.shape.dim, self.shape.inner());
        if let Some(mask) = &self.mask {
            if mask.len() != b * t * dim {
                candle_core::bail!(
                    "nystrom layer: dropout mask of {} for {}",
                    mask.len(),
                    b * t * dim
                );
            }
        }
        let qkv = self.project_qkv(x, &p, b, &geo);
        let dm = self.core_dims(b, np)?;
        let o = self.core.forward_slices(&qkv, p.conv, dm)?;
        let mut out = scratch::buffer(b * t * dim);
        let wout = View::dense(p.w_out, dim, inner);
        for bi in 0..b {
            let rows = View::rows_of(&o, (bi * ro + o_off) * inner, t, inner, inner);
            mm_parallel(
                &mut out[bi * t * dim..(bi + 1) * t * dim],
                rows,
                wout.t(),
                false,
                1.0,
            );
        }
        let mask = self.mask.as_ref();
        out.par_chunks_mut(dim * 64)
            .enumerate()
            .for_each(|(ci, chunk)| {
                let base = ci * 64;
                for (j, row) in chunk.chunks_exact_mut(dim).enumerate() {
                    let (bi, jj) = ((base + j) / t, (base + j) % t);
                    let at = (base + j) * dim;
                    let src = (bi * n + self.token(jj)) * dim;
                    for (c, v) in row.iter_mut().enumerate() {
                        let y = *v + p.b_out[c];
                        let y = mask.map_or(y, |m| y * m.value(at + c));
                        *v = x[src + c] + y;
                    }
                }
            });
        let qkv = match self.keep_qkv {
            true => qkv,
            false => {
                scratch::recycle(qkv);
                Vec::new()
            }
        };
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) = Some(Saved { qkv, o });
        Ok(out)
    }

    /// `qkv` of the padded tokens: the LayerNorm of `x` projected, padding rows zero (the
    /// reference pads before the bias-free projection).
    fn project_qkv(&self, x: &[f32], p: &Params, b: usize, geo: &Geometry) -> Vec<f32> {
        let (n, np, pad) = (geo.n, geo.padded, geo.pad);
        let (dim, inner) = (self.shape.dim, self.shape.inner());
        let ln = self.normalise(x, p);
        let mut qkv = scratch::buffer(b * np * 3 * inner);
        for bi in 0..b {
            qkv[bi * np * 3 * inner..(bi * np + pad) * 3 * inner].fill(0.0);
        }
        let wqkv = View::dense(p.w_qkv, 3 * inner, dim);
        for bi in 0..b {
            let dst = &mut qkv[(bi * np + pad) * 3 * inner..(bi + 1) * np * 3 * inner];
            let src = View::dense(&ln[bi * n * dim..(bi + 1) * n * dim], n, dim);
            mm_parallel(dst, src, wqkv.t(), false, 1.0);
        }
        scratch::recycle(ln);
        qkv
    }

    /// The LayerNorm of every token of `x`.
    fn normalise(&self, x: &[f32], p: &Params) -> Vec<f32> {
        let mut ln = scratch::buffer(x.len());
        self.normalise_into(x, &mut ln, p);
        ln
    }

    /// The LayerNorm of the rows of `x` into `dst` (as long), in parallel.
    fn normalise_into(&self, x: &[f32], dst: &mut [f32], p: &Params) {
        let dim = self.shape.dim;
        dst.par_chunks_mut(dim * 64)
            .zip(x.par_chunks(dim * 64))
            .for_each(|(o, x)| layer_norm_rows(x, o, p.ln_w, p.ln_b, self.shape.eps));
    }

    fn backward(
        &self,
        x: &[f32],
        xs: &Shape,
        packed: &[f32],
        g: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let (b, geo) = self.geometry(xs)?;
        let (n, np) = (geo.n, geo.padded);
        let (t, ro, o_off) = self.output_rows(&geo);
        let p = self.params(packed)?;
        let (dim, inner) = (self.shape.dim, self.shape.inner());
        // Taken: one backward pass per forward; each kept buffer is freed once used.
        let taken = self.saved.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut saved) = taken else {
            candle_core::bail!("nystrom layer: backward before forward");
        };
        let offsets = self.shape.offsets();
        let mut dpacked = vec![0f32; offsets[6]];
        // dy = g ⊙ mask; the residual passes g to dx unchanged.
        let dy: std::borrow::Cow<[f32]> = match &self.mask {
            Some(m) => {
                let mut d = g.to_vec();
                d.par_chunks_mut(1 << 14).enumerate().for_each(|(ci, d)| {
                    let first = ci << 14;
                    d.iter_mut()
                        .enumerate()
                        .for_each(|(j, a)| *a *= m.value(first + j));
                });
                d.into()
            }
            None => g.into(),
        };
        let mut d_o = scratch::buffer(b * ro * inner);
        for bi in 0..b {
            // Rows of the core's output that no output row reads get no gradient.
            d_o[bi * ro * inner..(bi * ro + o_off) * inner].fill(0.0);
            d_o[(bi * ro + o_off + t) * inner..(bi + 1) * ro * inner].fill(0.0);
        }
        let wout = View::dense(p.w_out, dim, inner);
        {
            let (head, rest) = dpacked.split_at_mut(offsets[4]);
            let dw_out = &mut head[offsets[3]..offsets[4]];
            let db_out = &mut rest[..dim];
            for bi in 0..b {
                let dyb = View::dense(&dy[bi * t * dim..(bi + 1) * t * dim], t, dim);
                let rows = View::rows_of(&saved.o, (bi * ro + o_off) * inner, t, inner, inner);
                mm_parallel(dw_out, dyb.t(), rows, bi > 0, 1.0);
                let dst = &mut d_o[(bi * ro + o_off) * inner..(bi * ro + o_off + t) * inner];
                mm_parallel(dst, dyb, wout, false, 1.0);
            }
            for row in dy.chunks_exact(dim) {
                db_out.iter_mut().zip(row).for_each(|(a, v)| *a += v);
            }
        }
        drop(dy);
        scratch::recycle(std::mem::take(&mut saved.o));
        let dm = self.core_dims(b, np)?;
        let dln = match self.keep_qkv {
            true => {
                let qkv = std::mem::take(&mut saved.qkv);
                drop(saved);
                self.qkv_backward(x, &p, &geo, qkv, &d_o, dm, &mut dpacked)?
            }
            false => {
                drop(saved);
                self.qkv_backward_by_head_groups(x, &p, &geo, &d_o, dm, &mut dpacked)?
            }
        };
        scratch::recycle(d_o);
        let mut dx = scratch::buffer(x.len());
        let (dw, db) =
            crate::cpu::kernels::layer_norm_backward(&mut dx, x, &dln, p.ln_w, self.shape.eps);
        // The residual: each output row's gradient goes to its token.
        for (j, gr) in g.chunks_exact(dim).enumerate() {
            let (bi, jj) = (j / t, j % t);
            let at = (bi * n + self.token(jj)) * dim;
            crate::cpu::lanes::axpy(&mut dx[at..at + dim], 1.0, gr);
        }
        dpacked[offsets[0]..offsets[1]].copy_from_slice(&dw);
        dpacked[offsets[1]..offsets[2]].copy_from_slice(&db);
        Ok((dx, dpacked))
    }
}

/// Tokens whose LayerNorm is formed at a time where the backward pass recomputes it.
const LN_CHUNK: usize = 4096;

impl NystromLayerOp {
    /// Below the core's output gradient `d_o`, with every head's `qkv` kept: the core's backward
    /// pass into `dqkv` (in `qkv`'s buffer), `to_qkv`'s weight gradient and the residual
    /// kernels' into `dpacked`; returns the gradient of the LayerNorm's output.
    #[allow(clippy::too_many_arguments)]
    fn qkv_backward(
        &self,
        x: &[f32],
        p: &Params,
        geo: &Geometry,
        qkv: Vec<f32>,
        d_o: &[f32],
        dm: Dims,
        dpacked: &mut [f32],
    ) -> Result<Vec<f32>> {
        let (n, np, pad, b) = (geo.n, geo.padded, geo.pad, dm.b);
        let (dim, inner) = (self.shape.dim, self.shape.inner());
        let offsets = self.shape.offsets();
        let (dqkv, dconv) = self.core.backward_consuming(qkv, p.conv, d_o, dm)?;
        let ln = self.normalise(x, p);
        dpacked[offsets[5]..offsets[6]].copy_from_slice(&dconv[..offsets[6] - offsets[5]]);
        let wqkv = View::dense(p.w_qkv, 3 * inner, dim);
        let dq =
            |bi: usize| View::rows_of(&dqkv, (bi * np + pad) * 3 * inner, n, 3 * inner, 3 * inner);
        // One token-sized buffer at a time: the LayerNorm for the weight gradient, then (the
        // same buffer back from the pool) the gradient of the LayerNorm's output.
        for bi in 0..b {
            let lnb = View::dense(&ln[bi * n * dim..(bi + 1) * n * dim], n, dim);
            mm_parallel(
                &mut dpacked[offsets[2]..offsets[3]],
                dq(bi).t(),
                lnb,
                bi > 0,
                1.0,
            );
        }
        scratch::recycle(ln);
        let mut dln = scratch::buffer(x.len());
        for bi in 0..b {
            mm_parallel(
                &mut dln[bi * n * dim..(bi + 1) * n * dim],
                dq(bi),
                wqkv,
                false,
                1.0,
            );
        }
        scratch::recycle(dqkv);
        Ok(dln)
    }

    /// Heads whose `q`, `k`, `v` and gradients [`Self::qkv_backward_by_head_groups`] holds at
    /// once: as many as there are threads (at least two), so the core's phase A keeps every
    /// thread busy. The gradient's summation order follows the groups: the same thread count
    /// gives the same result.
    fn head_group(&self) -> usize {
        rayon::current_num_threads()
            .max(2)
            .min(self.shape.core.heads)
    }

    /// [`Self::qkv_backward`] without `qkv` kept, a group of heads at a time: the group's
    /// `q`, `k`, `v` are projected again from the LayerNorm (recomputed by chunks of tokens),
    /// the core's phase A runs on them, and their gradients go at once into `to_qkv`'s weight
    /// gradient and the LayerNorm output's gradient. Neither `qkv` nor `dqkv` (0.9 GB each at
    /// 150,000 patches) is ever whole. The landmark terms, which need every head's phase A,
    /// come last: a landmark's gradient reaches each row of its segment in equal parts, so its
    /// share of the weight gradient is taken against the segment's sum of LayerNorm rows and
    /// its share of `dln` is one row per segment, added to the segment's rows.
    fn qkv_backward_by_head_groups(
        &self,
        x: &[f32],
        p: &Params,
        geo: &Geometry,
        d_o: &[f32],
        dm: Dims,
        dpacked: &mut [f32],
    ) -> Result<Vec<f32>> {
        let saved = self.core.take_saved()?;
        let (n, np, pad, b) = (geo.n, geo.padded, geo.pad, dm.b);
        let (dim, inner, d, h, m, l) = (self.shape.dim, self.shape.inner(), dm.d, dm.h, dm.m, dm.l);
        let w_at = self.shape.offsets()[2];
        let mut dln = scratch::buffer(x.len());
        dln.fill(0.0);
        // Per batch item, the sum of the LayerNorm rows of each landmark's segment.
        let mut segment_sums = vec![0f32; b * m * dim];
        let mut phase_a = Vec::with_capacity(b * h);
        let group = self.head_group();
        for g0 in (0..h).step_by(group) {
            let gh = group.min(h - g0);
            let cols = 3 * gh * d;
            // The group's rows of `to_qkv` (its heads' Q, K, V), packed `[3·gh·d, dim]`.
            let mut wg = Vec::with_capacity(cols * dim);
            for which in 0..3 {
                let first = which * inner + g0 * d;
                wg.extend_from_slice(&p.w_qkv[first * dim..(first + gh * d) * dim]);
            }
            let wgv = View::dense(&wg, cols, dim);
            let mut dwg = vec![0f32; cols * dim];
            for bi in 0..b {
                // The group's `qkv` `[N', 3·gh·d]`, padding rows zero.
                let mut buf = scratch::buffer(np * cols);
                buf[..pad * cols].fill(0.0);
                let sums = &mut segment_sums[bi * m * dim..(bi + 1) * m * dim];
                self.normalised_chunks(x, p, bi, n, |r0, ln| {
                    let rows = ln.len() / dim;
                    let dst = &mut buf[(pad + r0) * cols..(pad + r0 + rows) * cols];
                    mm_parallel(dst, View::dense(ln, rows, dim), wgv.t(), false, 1.0);
                    if g0 == 0 {
                        for (j, row) in ln.chunks_exact(dim).enumerate() {
                            let seg = (pad + r0 + j) / l;
                            lanes::axpy(&mut sums[seg * dim..(seg + 1) * dim], 1.0, row);
                        }
                    }
                });
                let mut grads: Vec<HeadGrads> = (0..gh)
                    .into_par_iter()
                    .map(|j| {
                        let views =
                            [0, 1, 2].map(|w| View::rows_of(&buf, w * gh * d + j * d, np, d, cols));
                        self.core
                            .head_backward_a(&saved, (dm, p.conv), views, bi * h + g0 + j, d_o)
                    })
                    .collect();
                // Their gradients replace `qkv` in its buffer, in the same layout.
                {
                    let parts: Vec<[&[f32]; 3]> = grads
                        .iter()
                        .map(|g| [g.dq.as_slice(), g.dk.as_slice(), g.dv.as_slice()])
                        .collect();
                    merge_heads(&mut buf, &parts, gh, d, np);
                }
                grads.iter_mut().for_each(HeadGrads::release_rows);
                phase_a.push((bi * h + g0, grads));
                self.normalised_chunks(x, p, bi, n, |r0, ln| {
                    let rows = ln.len() / dim;
                    let dq = View::dense(
                        &buf[(pad + r0) * cols..(pad + r0 + rows) * cols],
                        rows,
                        cols,
                    );
                    let first = bi > 0 || r0 > 0;
                    mm_parallel(&mut dwg, dq.t(), View::dense(ln, rows, dim), first, 1.0);
                    let dst = &mut dln[(bi * n + r0) * dim..(bi * n + r0 + rows) * dim];
                    mm_parallel(dst, dq, wgv, true, 1.0);
                });
                scratch::recycle(buf);
            }
            for which in 0..3 {
                let first = w_at + (which * inner + g0 * d) * dim;
                dpacked[first..first + gh * d * dim]
                    .copy_from_slice(&dwg[which * gh * d * dim..(which + 1) * gh * d * dim]);
            }
        }
        phase_a.sort_by_key(|(first, _)| *first);
        let mut phase_a: Vec<HeadGrads> = phase_a.into_iter().flat_map(|(_, g)| g).collect();
        self.core.landmark_grads(&saved, dm, &mut phase_a);
        let inv = 1.0 / l as f32;
        for bi in 0..b {
            let sums = View::dense(&segment_sums[bi * m * dim..(bi + 1) * m * dim], m, dim);
            // The landmarks' share of `dln`, one row per segment.
            let mut per_segment = vec![0f32; m * dim];
            for hi in 0..h {
                let hg = &phase_a[bi * h + hi];
                for (which, grad) in [(0, &hg.dqm), (1, &hg.dkm)] {
                    let row = which * inner + hi * d;
                    let gv = View::dense(grad, m, d);
                    let dw = &mut dpacked[w_at + row * dim..w_at + (row + d) * dim];
                    mm(dw, gv.t(), sums, true, inv);
                    let w = View::dense(&p.w_qkv[row * dim..(row + d) * dim], d, dim);
                    mm(&mut per_segment, gv, w, true, inv);
                }
            }
            dln[bi * n * dim..(bi + 1) * n * dim]
                .par_chunks_mut(dim * 64)
                .enumerate()
                .for_each(|(c, rows)| {
                    for (j, row) in rows.chunks_exact_mut(dim).enumerate() {
                        let seg = (pad + c * 64 + j) / l;
                        lanes::axpy(row, 1.0, &per_segment[seg * dim..(seg + 1) * dim]);
                    }
                });
        }
        let dconv = self.core.conv_grads(dm, &phase_a, p.conv.len());
        let offsets = self.shape.offsets();
        dpacked[offsets[5]..offsets[6]].copy_from_slice(&dconv[..offsets[6] - offsets[5]]);
        Ok(dln)
    }

    /// `each(first token, LayerNorm of the next tokens)` over batch item `bi`'s `n` tokens,
    /// [`LN_CHUNK`] at a time.
    fn normalised_chunks(
        &self,
        x: &[f32],
        p: &Params,
        bi: usize,
        n: usize,
        mut each: impl FnMut(usize, &[f32]),
    ) {
        let dim = self.shape.dim;
        let mut buf = vec![0f32; LN_CHUNK.min(n) * dim];
        for r0 in (0..n).step_by(LN_CHUNK) {
            let rows = LN_CHUNK.min(n - r0);
            let src = &x[(bi * n + r0) * dim..(bi * n + r0 + rows) * dim];
            let dst = &mut buf[..rows * dim];
            self.normalise_into(src, dst, p);
            each(r0, dst);
        }
    }
}

impl CustomOp2 for NystromLayerOp {
    fn name(&self) -> &'static str {
        "nystrom-layer"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuForward {
        let x = crate::cpu::slice(s1, l1, "nystrom layer: input")?;
        let p = crate::cpu::slice(s2, l2, "nystrom layer: parameters")?;
        let out = self.forward(x, l1.shape(), p)?;
        let (b, _, dim) = l1.shape().dims3()?;
        let rows = out.len() / (b * dim).max(1);
        Ok((CpuStorage::F32(out), Shape::from((b, rows, dim))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp) = with_data(x, |xs| {
            with_data(packed, |ps| {
                with_data(grad, |gs| self.backward(xs, x.shape(), ps, gs))
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dp, packed.shape(), packed.device())?),
        ))
    }
}
