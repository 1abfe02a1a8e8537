//! Gated-attention pooling over a whole bag — `fc → ReLU → dropout → w·(tanh(V h) ⊙ σ(U h))
//! → softmax over the bag → Σ α h` (ABMIL, CLAM's `Attn_Net_Gated` after its `fc` block) — as
//! one candle op with a hand-written backward pass, computed in blocks of patches.
//!
//! Built from candle's ordinary ops, every intermediate of the graph (the embedding and its
//! dropout, both attention branches before and after their activation and dropout, their
//! product) and, in the backward pass, its gradient is an `N × hidden` or `N × attention`
//! tensor: about 20 rows of 512 floats per patch, 6.5 GB on a 150,000-patch bag. Here no
//! intermediate wider than the scores outlives a block of [`BLOCK`] patches. The forward pass
//! forms each block's embedding and scores and folds the block into the pooled vector by an
//! online softmax (running maximum and sum per branch); it keeps only the raw scores
//! (`branches × N`). The backward pass recomputes each block's embedding and gates from the
//! bag (one more pass of the two products) and accumulates the weight gradients block by block.
//!
//! Dropout masks are not stored either: the masks of patch `i` are drawn from a ChaCha8 stream
//! of their own (stream `i` of a seed drawn from the step's [`Mode`] RNG), so the backward pass
//! draws them again, and the result does not depend on how blocks are spread over threads.
//!
//! CLAM's instance clustering reads the embeddings of each branch's `k` most and `k` least
//! attended patches; the op returns those rows too ([`Pooled::extremes`]), recomputed after the
//! scores are known, so its gradient reaches the `fc` layer through them.
//!
//! Parameters travel packed in one tensor (`Tensor::cat` is differentiable: each parameter gets
//! its slice of the packed gradient). Checked against the same function built from candle's
//! ops and against finite differences (`tests/gated_attention.rs`), and by CLAM's and ABMIL's
//! parity fixtures.

use crate::cpu::lanes;
use crate::cpu::matmul::{mm, View};
use crate::cpu::{slice, with_data, CpuForward};
use crate::layers::Linear;
use crate::ops::Mode;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Patches per block: large enough for the products' inner dimension to keep the matrix
/// kernel busy, small enough that a block's intermediates (a few MB) stay in the caches.
pub const BLOCK: usize = 512;

/// The layers' sizes: `fc` is `d_in → hidden`, the two gates `hidden → attention`, the scores
/// `attention → branches`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolShape {
    pub d_in: usize,
    pub hidden: usize,
    pub attention: usize,
    pub branches: usize,
}

impl PoolShape {
    /// Offsets of the packed parameters (`fc` weight and bias, gate a, gate b, scores; weight
    /// then bias each) and the total length.
    fn offsets(&self) -> [usize; 9] {
        let (i, h, d, k) = (self.d_in, self.hidden, self.attention, self.branches);
        let sizes = [h * i, h, d * h, d, d * h, d, k * d, k];
        let mut o = [0; 9];
        for (j, s) in sizes.iter().enumerate() {
            o[j + 1] = o[j] + s;
        }
        o
    }

    /// Mask values per patch: the embedding's, then gate a's, then gate b's.
    fn mask_len(&self) -> usize {
        self.hidden + 2 * self.attention
    }
}

/// The four layers: `fc` (followed by ReLU), the tanh gate `a`, the sigmoid gate `b`, and the
/// scores `c`.
pub struct GatedLayers<'a> {
    pub fc: &'a Linear,
    pub a: &'a Linear,
    pub b: &'a Linear,
    pub c: &'a Linear,
}

/// What [`gated_attention_pool`] returns.
pub struct Pooled {
    /// `Σ_i softmax(s_k)_i h_i` per branch, `[branches, hidden]`.
    pub pooled: Tensor,
    /// Raw (pre-softmax) scores `[branches, N]`, without gradient (heatmaps, instance choice).
    pub scores: Tensor,
    /// Embeddings of each branch's `k` most attended patches (most first) then its `k` least
    /// attended (in the same descending order), `[branches · 2k, hidden]`, with gradient; `None`
    /// when `k` is 0 or the bag has fewer than `k` patches.
    pub extremes: Option<Tensor>,
}

/// Patch indices of one branch's `k` highest scores (highest first) followed by its `k` lowest
/// (in descending order), ties broken by index as a stable sort does — CLAM's `torch.topk` choice
/// of instances, shared by the fused op and the graph formulation.
pub fn extreme_rows(scores: &[f32], k: usize) -> Vec<usize> {
    let n = scores.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
    let mut rows = order[..k].to_vec();
    rows.extend_from_slice(&order[n - k..]);
    rows
}

/// Inverted-dropout masks drawn per patch: patch `i`'s values come from stream `i` of `seed`.
#[derive(Debug, Clone, Copy)]
struct Dropout {
    seed: u64,
    /// A draw below this keeps the value (probability `1 − p`).
    threshold: u32,
    scale: f32,
}

impl Dropout {
    fn new(p: f64, mode: &Mode) -> Option<Self> {
        if !mode.train || p <= 0.0 {
            return None;
        }
        let keep = 1.0 - p;
        Some(Self {
            seed: mode.with_rng(|r| r.next_u64()),
            threshold: (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32,
            scale: (1.0 / keep) as f32,
        })
    }

    /// Patch `patch`'s mask values `from ..` into `out[from ..]`, through `draws` (scratch).
    fn fill(&self, patch: usize, out: &mut [f32], from: usize, draws: &mut Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(patch as u64);
        rng.set_word_pos(from as u128);
        let out = &mut out[from..];
        draws.resize(out.len(), 0);
        rng.fill(&mut draws[..]);
        for (v, &d) in out.iter_mut().zip(draws.iter()) {
            *v = if d < self.threshold { self.scale } else { 0.0 };
        }
    }
}

/// Slices of the packed parameters.
struct Params<'a> {
    w0: &'a [f32],
    b0: &'a [f32],
    wa: &'a [f32],
    ba: &'a [f32],
    wb: &'a [f32],
    bb: &'a [f32],
    wc: &'a [f32],
    bc: &'a [f32],
}

/// One block's intermediates, reused from block to block.
struct Block {
    /// `relu(x W0ᵀ + b0) ⊙ m0`, `[rows, hidden]`.
    h: Vec<f32>,
    /// `tanh(h Waᵀ + ba)` (before its mask), `[rows, attention]`.
    ta: Vec<f32>,
    /// `σ(h Wbᵀ + bb)` (before its mask).
    sb: Vec<f32>,
    /// The gated product `(ta ⊙ ma) ⊙ (sb ⊙ mb)`.
    g: Vec<f32>,
    /// Scores `g Wcᵀ + bc`, `[rows, branches]`.
    s: Vec<f32>,
    /// Every patch's masks, `[rows, hidden + 2 · attention]` (ones without dropout).
    masks: Vec<f32>,
    /// The masks' random draws.
    draws: Vec<u32>,
}

impl Block {
    fn new(shape: &PoolShape) -> Self {
        let (h, d, k) = (shape.hidden, shape.attention, shape.branches);
        Self {
            h: vec![0.0; BLOCK * h],
            ta: vec![0.0; BLOCK * d],
            sb: vec![0.0; BLOCK * d],
            g: vec![0.0; BLOCK * d],
            s: vec![0.0; BLOCK * k],
            masks: vec![1.0; BLOCK * shape.mask_len()],
            draws: Vec::new(),
        }
    }
}

crate::multiversion! {
    /// `h ← relu(h + b0) ⊙ m0` row by row (`h` holds `x W0ᵀ`).
    fn bias_relu_mask(h: &mut [f32], b0: &[f32], masks: &[f32], mask_len: usize) {
        let dim = b0.len();
        for (row, m) in h.chunks_exact_mut(dim).zip(masks.chunks_exact(mask_len)) {
            for ((v, b), m) in row.iter_mut().zip(b0).zip(&m[..dim]) {
                *v = (*v + b).max(0.0) * m;
            }
        }
    }
}

crate::multiversion! {
    /// The gates from their pre-activations: `ta ← tanh(ta + ba)`, `sb ← σ(sb + bb)`,
    /// `g ← ta ⊙ ma ⊙ sb ⊙ mb` (`tanh z = 1 − 2 / (e²ᶻ + 1)`, vectorised through `lanes::exp`).
    fn gates(ta: &mut [f32], sb: &mut [f32], g: &mut [f32], ba: &[f32], bb: &[f32], masks: &[f32], hidden: usize) {
        let d = ba.len();
        let mask_len = hidden + 2 * d;
        for (((ta, sb), g), m) in ta
            .chunks_exact_mut(d)
            .zip(sb.chunks_exact_mut(d))
            .zip(g.chunks_exact_mut(d))
            .zip(masks.chunks_exact(mask_len))
        {
            let (ma, mb) = m[hidden..].split_at(d);
            for j in 0..d {
                let t = 1.0 - 2.0 / (lanes::exp(2.0 * (ta[j] + ba[j])) + 1.0);
                let s = 1.0 / (1.0 + lanes::exp(-(sb[j] + bb[j])));
                ta[j] = t;
                sb[j] = s;
                g[j] = t * ma[j] * s * mb[j];
            }
        }
    }
}

crate::multiversion! {
    /// The gates' backward pass: from `dg` (in `g`), `ta ← dza` and `sb ← dzb`.
    fn gates_backward(ta: &mut [f32], sb: &mut [f32], g: &[f32], masks: &[f32], hidden: usize, d: usize) {
        let mask_len = hidden + 2 * d;
        for (((ta, sb), dg), m) in ta
            .chunks_exact_mut(d)
            .zip(sb.chunks_exact_mut(d))
            .zip(g.chunks_exact(d))
            .zip(masks.chunks_exact(mask_len))
        {
            let (ma, mb) = m[hidden..].split_at(d);
            for j in 0..d {
                let (t, s) = (ta[j], sb[j]);
                let (a, b) = (t * ma[j], s * mb[j]);
                ta[j] = dg[j] * b * ma[j] * (1.0 - t * t);
                sb[j] = dg[j] * a * mb[j] * s * (1.0 - s);
            }
        }
    }
}

/// `acc += Σ_rows m` for a row-major `m` of rows as wide as `acc`.
fn add_column_sums(acc: &mut [f32], m: &[f32]) {
    for row in m.chunks_exact(acc.len()) {
        lanes::axpy(acc, 1.0, row);
    }
}

/// One block's share of the softmax pooling: its scores (`[rows, branches]`) and, per branch,
/// its maximum score, `Σ exp(s − max)` and `Σ exp(s − max) h`.
struct BlockSoftmax {
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

/// What the forward pass keeps for the backward pass.
struct Saved {
    /// Raw scores `[branches, N]`.
    scores: Vec<f32>,
    /// Per branch, the scores' maximum and `Σ exp(s − max)`.
    max: Vec<f32>,
    sum: Vec<f32>,
    pooled: Vec<f32>,
    /// The patches whose embeddings follow the pooled rows in the output.
    extremes: Vec<usize>,
    /// Every patch's embedding, when kept (`[N, hidden]`).
    h: Option<Vec<f32>>,
}

pub struct GatedPoolOp {
    shape: PoolShape,
    dropout: Option<Dropout>,
    /// `k` of [`Pooled::extremes`].
    k: usize,
    /// Keep every patch's embedding for the backward pass instead of recomputing it there.
    keep: bool,
    saved: Mutex<Option<Arc<Saved>>>,
}

impl GatedPoolOp {
    fn params<'a>(&self, p: &'a [f32]) -> Result<Params<'a>> {
        let o = self.shape.offsets();
        if p.len() != o[8] {
            candle_core::bail!(
                "gated attention: {} packed parameters, expected {}",
                p.len(),
                o[8]
            );
        }
        Ok(Params {
            w0: &p[o[0]..o[1]],
            b0: &p[o[1]..o[2]],
            wa: &p[o[2]..o[3]],
            ba: &p[o[3]..o[4]],
            wb: &p[o[4]..o[5]],
            bb: &p[o[5]..o[6]],
            wc: &p[o[6]..o[7]],
            bc: &p[o[7]..o[8]],
        })
    }

    /// Embeddings, gates and scores of patches `r0 .. r0 + rows` (`x` holds their features).
    fn forward_block(&self, p: &Params, x: &[f32], r0: usize, rows: usize, b: &mut Block) {
        let (d_in, hidden, ml) = (self.shape.d_in, self.shape.hidden, self.shape.mask_len());
        let masks = &mut b.masks[..rows * ml];
        if let Some(drop) = &self.dropout {
            for (i, m) in masks.chunks_exact_mut(ml).enumerate() {
                drop.fill(r0 + i, m, 0, &mut b.draws);
            }
        }
        let h = &mut b.h[..rows * hidden];
        mm(
            h,
            View::dense(x, rows, d_in),
            View::dense(p.w0, hidden, d_in).t(),
            false,
            1.0,
        );
        bias_relu_mask(h, p.b0, masks, ml);
        let h = std::mem::take(&mut b.h);
        self.gate_block(p, &h[..rows * hidden], rows, b);
        b.h = h;
    }

    /// Gates and scores of `rows` patches from their embeddings `h` (and the gates' masks in
    /// `b.masks`).
    fn gate_block(&self, p: &Params, h: &[f32], rows: usize, b: &mut Block) {
        let PoolShape {
            hidden,
            attention: d,
            branches: k,
            ..
        } = self.shape;
        let masks = &b.masks[..rows * self.shape.mask_len()];
        let hv = View::dense(h, rows, hidden);
        let (ta, sb, g) = (
            &mut b.ta[..rows * d],
            &mut b.sb[..rows * d],
            &mut b.g[..rows * d],
        );
        mm(ta, hv, View::dense(p.wa, d, hidden).t(), false, 1.0);
        mm(sb, hv, View::dense(p.wb, d, hidden).t(), false, 1.0);
        gates(ta, sb, g, p.ba, p.bb, masks, hidden);
        let s = &mut b.s[..rows * k];
        mm(
            s,
            View::dense(g, rows, d),
            View::dense(p.wc, k, d).t(),
            false,
            1.0,
        );
        for row in s.chunks_exact_mut(k) {
            lanes::axpy(row, 1.0, p.bc);
        }
    }

    /// The backward pass's view of block `r0 .. r0 + rows`: the kept embeddings with the gates
    /// recomputed, or everything recomputed from the bag.
    fn backward_block<'b>(
        &self,
        p: &Params,
        x: &[f32],
        kept: Option<&'b [f32]>,
        r0: usize,
        rows: usize,
        b: &'b mut Block,
    ) {
        let (d_in, hidden, ml) = (self.shape.d_in, self.shape.hidden, self.shape.mask_len());
        match kept {
            Some(h) => {
                if let Some(drop) = &self.dropout {
                    for (i, m) in b.masks[..rows * ml].chunks_exact_mut(ml).enumerate() {
                        drop.fill(r0 + i, m, hidden, &mut b.draws);
                    }
                }
                let h = &h[r0 * hidden..(r0 + rows) * hidden];
                b.h[..rows * hidden].copy_from_slice(h);
                self.gate_block(p, h, rows, b);
            }
            None => self.forward_block(p, &x[r0 * d_in..(r0 + rows) * d_in], r0, rows, b),
        }
    }

    fn forward(&self, x: &[f32], n: usize, packed: &[f32]) -> Result<Vec<f32>> {
        let p = self.params(packed)?;
        let PoolShape {
            d_in,
            hidden,
            branches: k,
            ..
        } = self.shape;
        if n == 0 {
            candle_core::bail!("gated attention: an empty bag has no attention to pool");
        }
        let blocks = n.div_ceil(BLOCK);
        let mut kept = self.keep.then(|| vec![0f32; n * hidden]);
        let kept_parts: Vec<Option<&mut [f32]>> = match kept.as_mut() {
            Some(v) => v.chunks_mut(BLOCK * hidden).map(Some).collect(),
            None => (0..blocks).map(|_| None).collect(),
        };
        // Per block: its scores, and its softmax maximum, sum and weighted sum per branch.
        let parts: Vec<BlockSoftmax> = kept_parts
            .into_par_iter()
            .enumerate()
            .map_init(
                || Block::new(&self.shape),
                |b, (bi, kept_part)| {
                    let r0 = bi * BLOCK;
                    let rows = BLOCK.min(n - r0);
                    self.forward_block(&p, &x[r0 * d_in..(r0 + rows) * d_in], r0, rows, b);
                    if let Some(k) = kept_part {
                        k.copy_from_slice(&b.h[..rows * hidden]);
                    }
                    let s = &b.s[..rows * k];
                    let mut max = vec![f32::NEG_INFINITY; k];
                    for row in s.chunks_exact(k) {
                        for (m, v) in max.iter_mut().zip(row) {
                            *m = m.max(*v);
                        }
                    }
                    let mut e = s.to_vec();
                    let mut sum = vec![0f32; k];
                    for row in e.chunks_exact_mut(k) {
                        for ((v, m), t) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                            *v = lanes::exp(*v - m);
                            *t += *v;
                        }
                    }
                    let mut acc = vec![0f32; k * hidden];
                    mm(
                        &mut acc,
                        View::dense(&e, rows, k).t(),
                        View::dense(&b.h[..rows * hidden], rows, hidden),
                        false,
                        1.0,
                    );
                    BlockSoftmax {
                        scores: s.to_vec(),
                        max,
                        sum,
                        acc,
                    }
                },
            )
            .collect();
        let mut max = vec![f32::NEG_INFINITY; k];
        for part in &parts {
            for (g, v) in max.iter_mut().zip(&part.max) {
                *g = g.max(*v);
            }
        }
        let mut sum = vec![0f32; k];
        let mut pooled = vec![0f32; k * hidden];
        let mut scores = vec![0f32; k * n];
        for (bi, part) in parts.iter().enumerate() {
            let (s, m, l, acc) = (&part.scores, &part.max, &part.sum, &part.acc);
            for c in 0..k {
                let w = lanes::exp(m[c] - max[c]);
                sum[c] += w * l[c];
                lanes::axpy(
                    &mut pooled[c * hidden..(c + 1) * hidden],
                    w,
                    &acc[c * hidden..(c + 1) * hidden],
                );
            }
            for (i, row) in s.chunks_exact(k).enumerate() {
                for (c, v) in row.iter().enumerate() {
                    scores[c * n + bi * BLOCK + i] = *v;
                }
            }
        }
        for c in 0..k {
            let inv = 1.0 / sum[c];
            pooled[c * hidden..(c + 1) * hidden]
                .iter_mut()
                .for_each(|v| *v *= inv);
        }
        let extremes: Vec<usize> = if self.k > 0 && n >= self.k {
            (0..k)
                .flat_map(|c| extreme_rows(&scores[c * n..(c + 1) * n], self.k))
                .collect()
        } else {
            Vec::new()
        };
        let mut out = pooled.clone();
        out.extend(self.embed_rows(&p, x, &extremes));
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(Saved {
            scores,
            max,
            sum,
            pooled,
            extremes,
            h: kept,
        }));
        Ok(out)
    }

    /// The embeddings `relu(x W0ᵀ + b0) ⊙ m0` of the patches `rows`, `[rows, hidden]`.
    fn embed_rows(&self, p: &Params, x: &[f32], rows: &[usize]) -> Vec<f32> {
        let (d_in, hidden, ml) = (self.shape.d_in, self.shape.hidden, self.shape.mask_len());
        let mut picked = Vec::with_capacity(rows.len() * d_in);
        let mut masks = vec![1f32; rows.len() * ml];
        let mut draws = Vec::new();
        for (&r, m) in rows.iter().zip(masks.chunks_exact_mut(ml)) {
            picked.extend_from_slice(&x[r * d_in..(r + 1) * d_in]);
            if let Some(drop) = &self.dropout {
                drop.fill(r, m, 0, &mut draws);
            }
        }
        let mut h = vec![0f32; rows.len() * hidden];
        mm(
            &mut h,
            View::dense(&picked, rows.len(), d_in),
            View::dense(p.w0, hidden, d_in).t(),
            false,
            1.0,
        );
        bias_relu_mask(&mut h, p.b0, &masks, ml);
        h
    }

    /// `(dx, dpacked)` for the output gradient `grad`; no `dx` unless `need_dx`.
    fn backward(
        &self,
        x: &[f32],
        n: usize,
        packed: &[f32],
        grad: &[f32],
        need_dx: bool,
    ) -> Result<(Option<Vec<f32>>, Vec<f32>)> {
        let p = self.params(packed)?;
        let saved = self
            .saved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg("gated attention: backward before forward".into())
            })?;
        let PoolShape {
            d_in,
            hidden,
            attention: d,
            branches: k,
        } = self.shape;
        let o = self.shape.offsets();
        let (dm, dext) = grad.split_at(k * hidden);
        // Σ_i α_i (dM · h_i) = dM · M: the softmax backward's row constant, per branch.
        let c: Vec<f32> = (0..k)
            .map(|b| {
                lanes::dot(
                    &dm[b * hidden..(b + 1) * hidden],
                    &saved.pooled[b * hidden..(b + 1) * hidden],
                )
            })
            .collect();
        // Gradients reaching single patches' embeddings through the extremes, by patch.
        let mut direct: Vec<(usize, usize)> = saved
            .extremes
            .iter()
            .enumerate()
            .map(|(j, &r)| (r, j))
            .collect();
        direct.sort_unstable();
        let blocks = n.div_ceil(BLOCK);
        // Contiguous runs of blocks, one per thread, summed in order: the same sums whatever
        // thread finishes first.
        let groups = rayon::current_num_threads().clamp(1, blocks);
        let per_group = blocks.div_ceil(groups);
        let mut dx = need_dx.then(|| vec![0f32; n * d_in]);
        let dx_parts: Vec<Option<&mut [f32]>> = match dx.as_mut() {
            Some(v) => v.chunks_mut(per_group * BLOCK * d_in).map(Some).collect(),
            None => (0..groups).map(|_| None).collect(),
        };
        let partial: Vec<Vec<f32>> = dx_parts
            .into_par_iter()
            .enumerate()
            .map(|(gi, mut dx_part)| {
                let mut dp = vec![0f32; o[8]];
                let mut b = Block::new(&self.shape);
                let mut alpha = vec![0f32; BLOCK * k];
                let mut dh = vec![0f32; BLOCK * hidden];
                for bi in gi * per_group..((gi + 1) * per_group).min(blocks) {
                    let r0 = bi * BLOCK;
                    let rows = BLOCK.min(n - r0);
                    let xb = &x[r0 * d_in..(r0 + rows) * d_in];
                    self.backward_block(&p, x, saved.h.as_deref(), r0, rows, &mut b);
                    let h = &b.h[..rows * hidden];
                    let alpha = &mut alpha[..rows * k];
                    for (i, a) in alpha.chunks_exact_mut(k).enumerate() {
                        for (c, v) in a.iter_mut().enumerate() {
                            *v = lanes::exp(saved.scores[c * n + r0 + i] - saved.max[c])
                                / saved.sum[c];
                        }
                    }
                    // ds = α ⊙ (h · dM − c), into the block's score buffer.
                    let ds = &mut b.s[..rows * k];
                    mm(
                        ds,
                        View::dense(h, rows, hidden),
                        View::dense(dm, k, hidden).t(),
                        false,
                        1.0,
                    );
                    for (dsr, ar) in ds.chunks_exact_mut(k).zip(alpha.chunks_exact(k)) {
                        for ((v, a), cc) in dsr.iter_mut().zip(ar).zip(&c) {
                            *v = a * (*v - cc);
                        }
                    }
                    let ds = &b.s[..rows * k];
                    // The score layer: dWc += dsᵀ g, dbc += Σ ds; dg = ds Wc (over g).
                    mm(
                        &mut dp[o[6]..o[7]],
                        View::dense(ds, rows, k).t(),
                        View::dense(&b.g[..rows * d], rows, d),
                        true,
                        1.0,
                    );
                    add_column_sums(&mut dp[o[7]..o[8]], ds);
                    let dg = &mut b.g[..rows * d];
                    mm(
                        dg,
                        View::dense(ds, rows, k),
                        View::dense(p.wc, k, d),
                        false,
                        1.0,
                    );
                    let (dza, dzb) = (&mut b.ta[..rows * d], &mut b.sb[..rows * d]);
                    gates_backward(
                        dza,
                        dzb,
                        dg,
                        &b.masks[..rows * self.shape.mask_len()],
                        hidden,
                        d,
                    );
                    let hv = View::dense(h, rows, hidden);
                    mm(
                        &mut dp[o[2]..o[3]],
                        View::dense(dza, rows, d).t(),
                        hv,
                        true,
                        1.0,
                    );
                    add_column_sums(&mut dp[o[3]..o[4]], dza);
                    mm(
                        &mut dp[o[4]..o[5]],
                        View::dense(dzb, rows, d).t(),
                        hv,
                        true,
                        1.0,
                    );
                    add_column_sums(&mut dp[o[5]..o[6]], dzb);
                    // dh = α dM + dza Wa + dzb Wb (+ the extremes' own gradients).
                    let dh = &mut dh[..rows * hidden];
                    mm(
                        dh,
                        View::dense(alpha, rows, k),
                        View::dense(dm, k, hidden),
                        false,
                        1.0,
                    );
                    mm(
                        dh,
                        View::dense(dza, rows, d),
                        View::dense(p.wa, d, hidden),
                        true,
                        1.0,
                    );
                    mm(
                        dh,
                        View::dense(dzb, rows, d),
                        View::dense(p.wb, d, hidden),
                        true,
                        1.0,
                    );
                    let first = direct.partition_point(|&(r, _)| r < r0);
                    for &(r, j) in direct[first..].iter().take_while(|&&(r, _)| r < r0 + rows) {
                        lanes::axpy(
                            &mut dh[(r - r0) * hidden..(r - r0 + 1) * hidden],
                            1.0,
                            &dext[j * hidden..(j + 1) * hidden],
                        );
                    }
                    // Through the dropout and the ReLU: h > 0 exactly where both let through,
                    // and there the mask is 1/(1 − p).
                    let scale = self.dropout.map_or(1.0, |d| d.scale);
                    for (g, v) in dh.iter_mut().zip(h) {
                        *g = if *v > 0.0 { *g * scale } else { 0.0 };
                    }
                    let dz0 = &dh[..];
                    mm(
                        &mut dp[o[0]..o[1]],
                        View::dense(dz0, rows, hidden).t(),
                        View::dense(xb, rows, d_in),
                        true,
                        1.0,
                    );
                    add_column_sums(&mut dp[o[1]..o[2]], dz0);
                    if let Some(dxp) = dx_part.as_deref_mut() {
                        let at = (bi - gi * per_group) * BLOCK * d_in;
                        mm(
                            &mut dxp[at..at + rows * d_in],
                            View::dense(dz0, rows, hidden),
                            View::dense(p.w0, hidden, d_in),
                            false,
                            1.0,
                        );
                    }
                }
                dp
            })
            .collect();
        let mut dp = vec![0f32; o[8]];
        for part in &partial {
            lanes::axpy(&mut dp, 1.0, part);
        }
        Ok((dx, dp))
    }
}

impl CustomOp2 for GatedPoolOp {
    fn name(&self) -> &'static str {
        "gated-attention-pool"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuForward {
        let x = slice(s1, l1, "gated attention: bag")?;
        let p = slice(s2, l2, "gated attention: parameters")?;
        let (n, d_in) = l1.shape().dims2()?;
        if d_in != self.shape.d_in {
            candle_core::bail!(
                "gated attention: patches of {d_in} features, the fc layer takes {}",
                self.shape.d_in
            );
        }
        let out = self.forward(x, n, p)?;
        let rows = out.len() / self.shape.hidden.max(1);
        Ok((CpuStorage::F32(out), Shape::from((rows, self.shape.hidden))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = x.dim(0)?;
        let need_dx = x.track_op();
        let (dx, dp) = with_data(x, |xs| {
            with_data(packed, |ps| {
                with_data(grad, |gs| self.backward(xs, n, ps, gs, need_dx))
            })
        })?;
        let dx = dx
            .map(|v| Tensor::from_vec(v, x.shape(), x.device()))
            .transpose()?;
        Ok((
            dx,
            Some(Tensor::from_vec(dp, packed.shape(), packed.device())?),
        ))
    }
}

/// A layer's weight and bias flattened (a missing bias as zeros).
fn flat(l: &Linear) -> Result<[Tensor; 2]> {
    let w = l.weight.flatten_all()?;
    let b = match &l.bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(l.weight.dim(0)?, DType::F32, l.weight.device())?,
    };
    Ok([w, b])
}

/// Gated-attention pooling of the bag `x` (`[N, d_in]`, `f32` on the CPU) with dropout `p` on
/// the embedding and on both gates in training mode, and the embeddings of each branch's `k`
/// most and least attended patches (see [`Pooled`]).
pub fn gated_attention_pool(
    x: &Tensor,
    layers: GatedLayers,
    p: f64,
    k: usize,
    mode: &Mode,
) -> Result<Pooled> {
    let (hidden, d_in) = layers.fc.weight.dims2()?;
    let shape = PoolShape {
        d_in,
        hidden,
        attention: layers.a.weight.dim(0)?,
        branches: layers.c.weight.dim(0)?,
    };
    let mut parts = Vec::with_capacity(8);
    for l in [layers.fc, layers.a, layers.b, layers.c] {
        parts.extend(flat(l)?);
    }
    let packed = Tensor::cat(&parts, 0)?;
    let saved = Mutex::new(None);
    let n = x.dim(0)?;
    let op = Arc::new(GatedPoolOp {
        shape,
        dropout: Dropout::new(p, mode),
        k,
        keep: !mode.no_grad && n * hidden * 4 <= crate::nystrom::keep_attention_limit(),
        saved,
    });
    let x = x.contiguous()?;
    let out = if mode.no_grad {
        x.apply_op2_no_bwd(&packed, op.as_ref())?
    } else {
        x.apply_op2_arc(&packed, Arc::new(Box::new(SharedOp(op.clone()))))?
    };
    let kept = op
        .saved
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .ok_or_else(|| candle_core::Error::Msg("gated attention: forward did not run".into()))?;
    if mode.no_grad {
        // Nothing will ask for the backward pass.
        *op.saved.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
    let branches = shape.branches;
    let scores = Tensor::from_vec(kept.scores.clone(), (branches, n), x.device())?;
    let extremes = (!kept.extremes.is_empty())
        .then(|| out.narrow(0, branches, kept.extremes.len()))
        .transpose()?;
    Ok(Pooled {
        pooled: out.narrow(0, 0, branches)?,
        scores,
        extremes,
    })
}

/// The op behind an `Arc` the caller keeps, to read the scores after the forward pass.
struct SharedOp(Arc<GatedPoolOp>);

impl CustomOp2 for SharedOp {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuForward {
        self.0.cpu_fwd(s1, l1, s2, l2)
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.0.bwd(x, packed, res, grad)
    }
}
