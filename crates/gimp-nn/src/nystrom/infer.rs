//! Inference (no gradients) of a Nyström-attention layer on raw buffers, updating the tokens in
//! place, in memory linear in the bag: besides the tokens themselves only V (`N' × H·d`) and
//! chunk-sized scratch are held. This is what makes a 150,000-patch bag fit in under a gigabyte.
//!
//! Three passes over the tokens, in chunks:
//! 1. normalise, project Q K V; keep V, sum Q and K into their landmark segments;
//! 2. per head: `A`, its pseudo-inverse `Z`, and `F3 V` by an online (running-max) softmax over
//!    key chunks, each chunk's K projected again from its tokens, so neither K nor `F3` is ever
//!    held whole; `U = Z (F3 V)`;
//! 3. chunks in reverse order: normalise and project Q again, `F1 U` plus the residual
//!    convolution of the stored V, the output projection, and add to (or replace) the chunk's
//!    tokens. Reverse order keeps the legacy un-padding (output row `i` reads token `i − pad`)
//!    correct in place: rows a chunk reads are never ones already written.
//!
//! Asked for, pass 2 also gives one token's attention over the tokens (`F1[row] Z F3`, the heat
//! map's scores) from each landmark's softmax maximum and sum, projecting K once more.
//!
//! The arithmetic is the training op's (`core_op`, sharing its landmark means, landmark
//! attention, pseudo-inverse and residual convolution); `tests/nystrom_parity.rs` checks both
//! against the reference fixtures.

use super::core_op::{landmark_attention, merge_heads, CoreShape};
use super::geometry::{Geometry, SegmentMeans};
use super::pinv::{pinv_forward, start_scale};
use super::residual_conv::conv_rows;
use crate::cpu::lanes::{layer_norm_rows, softmax_rows};
use crate::cpu::matmul::{linear_rows, mm, View};
use candle_core::Result;
use rayon::prelude::*;

/// The parameters of one layer as row-major slices (PyTorch's layouts).
pub struct LayerWeights<'a> {
    /// `to_qkv.weight`, `[3·H·d, dim]`.
    pub qkv: &'a [f32],
    /// `to_out.0.weight`, `[dim, H·d]`.
    pub out_weight: &'a [f32],
    /// `to_out.0.bias`, `[dim]`.
    pub out_bias: Option<&'a [f32]>,
    /// `res_conv.weight` as `[H, K]` when `shape.kernel > 0`.
    pub conv: &'a [f32],
    /// A LayerNorm (weight, bias, eps) applied to the tokens before the attention (pre-norm).
    pub norm: Option<(&'a [f32], &'a [f32], f32)>,
}

/// What the layer's output does to the tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Update {
    /// `x ← x + attention(norm(x))` (the aggregator's residual layers).
    Residual,
    /// `x ← attention(norm(x))`.
    Replace,
}

/// Applies one layer to the `n` tokens of `x` (`[n, dim]`, row-major) in place. With
/// `attention_of = Some(row)` it also returns the attention of token `row`'s query over the `n`
/// tokens, per head (`[H, n]`, front padding removed): what
/// `NystromAttention::attention_row` gives on the normalised tokens.
pub fn layer_inplace(
    shape: CoreShape,
    legacy_front_slice: bool,
    w: &LayerWeights,
    x: &mut [f32],
    chunk: usize,
    update: Update,
    attention_of: Option<usize>,
) -> Result<Option<Vec<f32>>> {
    let (h, d, m) = (shape.heads, shape.dim_head, shape.landmarks);
    let inner = h * d;
    let dim = w.out_weight.len() / inner.max(1);
    if inner == 0
        || m == 0
        || w.qkv.len() != 3 * inner * dim
        || w.out_weight.len() != dim * inner
        || !x.len().is_multiple_of(dim)
        || (shape.kernel > 0 && w.conv.len() != h * shape.kernel)
    {
        candle_core::bail!("nystrom inference: parameter shapes do not match the layer");
    }
    let n = x.len() / dim;
    if n == 0 {
        candle_core::bail!("nystrom inference: empty bag");
    }
    if attention_of.is_some_and(|r| r >= n) {
        candle_core::bail!("nystrom inference: attention of token {attention_of:?} of {n}");
    }
    let geo = Geometry::new(n, m, legacy_front_slice);
    let (pad, np, l) = (geo.pad, geo.padded, geo.segment);
    let chunk = chunk.max(1);
    let scale = 1.0 / (d as f32).sqrt();
    let wqkv = View::dense(w.qkv, 3 * inner, dim);
    let normalise = |src: &[f32]| -> Vec<f32> {
        let mut out = vec![0f32; src.len()];
        match w.norm {
            Some((g, b, eps)) => layer_norm_rows(src, &mut out, g, b, eps),
            None => out.copy_from_slice(src),
        }
        out
    };

    // Pass 1: V for every position (padding rows stay zero), Q and K summed per landmark
    // segment. K is not kept: pass 2 projects it again chunk by chunk, which costs a third of
    // this pass's projection and saves holding a second `N × H·d` buffer beside V.
    let mut v_all = vec![0f32; np * inner];
    let mut q_means = SegmentMeans::new(h * m, d, l);
    let mut k_means = SegmentMeans::new(h * m, d, l);
    for t0 in (0..n).step_by(chunk) {
        let t1 = (t0 + chunk).min(n);
        let normed = normalise(&x[t0 * dim..t1 * dim]);
        let mut proj = vec![0f32; (t1 - t0) * 3 * inner];
        linear_rows(&normed, wqkv, None, &mut proj);
        for (i, row) in proj.chunks_exact(3 * inner).enumerate() {
            let pos = pad + t0 + i;
            v_all[pos * inner..(pos + 1) * inner].copy_from_slice(&row[2 * inner..]);
            let seg = pos / l;
            for hd in 0..h {
                q_means.add(hd * m + seg, &row[hd * d..(hd + 1) * d]);
                k_means.add(hd * m + seg, &row[inner + hd * d..inner + (hd + 1) * d]);
            }
        }
    }
    let q_land = q_means.finish();
    let k_land_all = k_means.finish();
    let k_land: Vec<&[f32]> = k_land_all.chunks_exact(m * d).collect();
    // K of the padded positions `c0..c0 + cc` (`[cc, H·d]`; padding rows are zero).
    let wk = View::rows_of(w.qkv, inner * dim, inner, dim, dim);
    let keys = |c0: usize, cc: usize| -> Vec<f32> {
        let mut k = vec![0f32; cc * inner];
        let zero = pad.saturating_sub(c0).min(cc);
        if zero < cc {
            let (s0, s1) = (c0 + zero - pad, c0 + cc - pad);
            linear_rows(
                &normalise(&x[s0 * dim..s1 * dim]),
                wk,
                None,
                &mut k[zero * inner..],
            );
        }
        k
    };

    // Head `hd`'s scaled scores of its landmark queries against `cc` keys (`[m, cc]`).
    let landmark_scores = |hd: usize, k: &[f32], cc: usize| -> Vec<f32> {
        let qm = View::dense(&q_land[hd * m * d..(hd + 1) * m * d], m, d);
        let mut s = vec![0f32; m * cc];
        mm(
            &mut s,
            qm,
            View::rows_of(k, hd * d, cc, d, inner).t(),
            false,
            scale,
        );
        s
    };

    // Pass 2: A, the global start scale, Z, and U = Z (F3 V) per head, F3's softmax a running
    // one over chunks of keys.
    let a: Vec<Vec<f32>> = (0..h)
        .map(|hd| {
            landmark_attention(
                &q_land[hd * m * d..(hd + 1) * m * d],
                k_land[hd],
                m,
                d,
                scale,
            )
        })
        .collect();
    let c = start_scale(a.iter().map(|a| a.as_slice()), m).c();
    // The attention row's query, before pass 3 overwrites its token.
    let q_row = attention_of.map(|row| {
        let mut q = vec![0f32; inner];
        let normed = normalise(&x[row * dim..(row + 1) * dim]);
        linear_rows(
            &normed,
            View::rows_of(w.qkv, 0, inner, dim, dim),
            None,
            &mut q,
        );
        q
    });
    struct Running {
        max: Vec<f32>,
        sum: Vec<f32>,
        acc: Vec<f32>,
    }
    let mut running: Vec<Running> = (0..h)
        .map(|_| Running {
            max: vec![f32::NEG_INFINITY; m],
            sum: vec![0f32; m],
            acc: vec![0f32; m * d],
        })
        .collect();
    for c0 in (0..np).step_by(chunk) {
        let cc = chunk.min(np - c0);
        let k = keys(c0, cc);
        running.par_iter_mut().enumerate().for_each(|(hd, r)| {
            let mut s = landmark_scores(hd, &k, cc);
            for i in 0..m {
                let row = &mut s[i * cc..(i + 1) * cc];
                let cmax = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_max = r.max[i].max(cmax);
                let factor = (r.max[i] - new_max).exp();
                r.sum[i] *= factor;
                r.acc[i * d..(i + 1) * d]
                    .iter_mut()
                    .for_each(|v| *v *= factor);
                let mut sum = 0f32;
                for v in row.iter_mut() {
                    *v = (*v - new_max).exp();
                    sum += *v;
                }
                r.sum[i] += sum;
                r.max[i] = new_max;
            }
            let vc = View::rows_of(&v_all, c0 * inner + hd * d, cc, d, inner);
            mm(&mut r.acc, View::dense(&s, m, cc), vc, true, 1.0);
        });
    }
    let per_head: Vec<(Vec<f32>, Option<Vec<f32>>)> = running
        .par_iter_mut()
        .enumerate()
        .map(|(hd, r)| {
            let (z, _) = pinv_forward(&a[hd], m, c, shape.pinv_iterations, false);
            for (row, s) in r.acc.chunks_exact_mut(d).zip(&r.sum) {
                row.iter_mut().for_each(|v| *v /= s);
            }
            let mut u = vec![0f32; m * d];
            let zv = View::dense(&z, m, m);
            mm(&mut u, zv, View::dense(&r.acc, m, d), false, 1.0);
            // `F1[row] Z F3` = Σ_i g_i exp(s_ij − max_i) with g = (F1[row] Z) / sum: F3's
            // softmax needs every key's score first, hence the second read of K below.
            let g = q_row.as_ref().map(|q| {
                let mut f1 = vec![0f32; m];
                let qh = View::dense(&q[hd * d..(hd + 1) * d], 1, d);
                mm(&mut f1, qh, View::dense(k_land[hd], m, d).t(), false, scale);
                softmax_rows(&mut f1, m);
                let mut left = vec![0f32; m];
                mm(&mut left, View::dense(&f1, 1, m), zv, false, 1.0);
                left.iter()
                    .zip(&r.sum)
                    .map(|(l, s)| l / s)
                    .collect::<Vec<f32>>()
            });
            (u, g)
        })
        .collect();
    let (u, g): (Vec<Vec<f32>>, Vec<Option<Vec<f32>>>) = per_head.into_iter().unzip();
    let attention = match g.into_iter().collect::<Option<Vec<_>>>() {
        None => None,
        Some(g) => {
            let mut rows = vec![0f32; h * n];
            for c0 in (pad..pad + n).step_by(chunk) {
                let cc = chunk.min(pad + n - c0);
                let k = keys(c0, cc);
                rows.par_chunks_mut(n).enumerate().for_each(|(hd, row)| {
                    let s = landmark_scores(hd, &k, cc);
                    let out = &mut row[c0 - pad..c0 - pad + cc];
                    for (i, srow) in s.chunks_exact(cc).enumerate() {
                        let (gi, mx) = (g[hd][i], running[hd].max[i]);
                        for (o, &v) in out.iter_mut().zip(srow) {
                            *o += gi * (v - mx).exp();
                        }
                    }
                });
            }
            Some(rows)
        }
    };

    // Pass 3: outputs, chunks in reverse order (see the module comment).
    let start = geo.start;
    let wq = View::rows_of(w.qkv, 0, inner, dim, dim);
    let wout = View::dense(w.out_weight, dim, inner);
    let kk = shape.kernel;
    let starts: Vec<usize> = (0..n).step_by(chunk).collect();
    for &i0 in starts.iter().rev() {
        let i1 = (i0 + chunk).min(n);
        let c = i1 - i0;
        // Positions start+i0 .. start+i1; those before `pad` are padding (Q = 0).
        let (p0, p1) = (start + i0, start + i1);
        let zero_rows = pad.saturating_sub(p0).min(c);
        let mut q = vec![0f32; c * inner];
        if zero_rows < c {
            let (s0, s1) = (p0 + zero_rows - pad, p1 - pad);
            let normed = normalise(&x[s0 * dim..s1 * dim]);
            linear_rows(&normed, wq, None, &mut q[zero_rows * inner..]);
        }
        let positions: Vec<usize> = (p0..p1).collect();
        let per_head: Vec<Vec<f32>> = (0..h)
            .into_par_iter()
            .map(|hd| {
                let mut f1 = vec![0f32; c * m];
                let qv = View::rows_of(&q, hd * d, c, d, inner);
                mm(&mut f1, qv, View::dense(k_land[hd], m, d).t(), false, scale);
                softmax_rows(&mut f1, m);
                let mut o = vec![0f32; c * d];
                mm(
                    &mut o,
                    View::dense(&f1, c, m),
                    View::dense(&u[hd], m, d),
                    false,
                    1.0,
                );
                if kk > 0 {
                    let v = View::rows_of(&v_all, hd * d, np, d, inner);
                    let wk = &w.conv[hd * kk..(hd + 1) * kk];
                    conv_rows(&mut o, v, wk, Some(&positions));
                }
                o
            })
            .collect();
        let mut merged = vec![0f32; c * inner];
        let parts: Vec<[&[f32]; 1]> = per_head.iter().map(|o| [o.as_slice()]).collect();
        merge_heads(&mut merged, &parts, h, d, c);
        drop(parts);
        drop(per_head);
        let mut y = vec![0f32; c * dim];
        linear_rows(&merged, wout, w.out_bias, &mut y);
        let dst = &mut x[i0 * dim..i1 * dim];
        match update {
            Update::Residual => dst.iter_mut().zip(&y).for_each(|(a, b)| *a += b),
            Update::Replace => dst.copy_from_slice(&y),
        }
    }
    Ok(attention)
}
