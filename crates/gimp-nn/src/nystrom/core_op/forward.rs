//! The core op's forward pass: per head, the landmarks and `A` (phase 1); then, once the
//! pseudo-inverse's global start scale is known, `Z`, `F1`, `F3` and the output (phase 2).

use super::{merge_heads, Dims, HeadSaved, Inputs, NystromCore, Saved, BLOCK};
use crate::cpu::lanes::softmax_rows;
use crate::cpu::matmul::{mm, View};
use crate::cpu::scratch;
use crate::nystrom::geometry::segment_means;
use crate::nystrom::online_softmax::f3_times_v;
use crate::nystrom::pinv::{pinv_forward, start_scale};
use crate::nystrom::residual_conv::conv_rows;
use candle_core::Result;
use rayon::prelude::*;
use std::sync::Arc;

/// The landmark attention `A = softmax(s·Q̃ K̃ᵀ)` (`m × m`) of one head's landmarks
/// (`[m, d]` each).
pub(crate) fn landmark_attention(
    qm: &[f32],
    km: &[f32],
    m: usize,
    d: usize,
    scale: f32,
) -> Vec<f32> {
    let mut a = vec![0f32; m * m];
    let (qv, kv) = (View::dense(qm, m, d), View::dense(km, m, d));
    mm(&mut a, qv, kv.t(), false, scale);
    softmax_rows(&mut a, m);
    a
}

/// `F1 = softmax(scale·Q K̃ᵀ)` on the query rows `q` into `dst` (`[q.rows, m]`): the forward
/// pass and, when it is not kept, the backward pass block by block.
pub(crate) fn f1_rows(dst: &mut [f32], q: View, km: View, scale: f32) {
    mm(dst, q, km.t(), false, scale);
    softmax_rows(dst, km.rows);
}

impl NystromCore {
    /// Phase 1 of one head: landmarks and `A`.
    fn head_landmarks(&self, qkv: &[f32], dm: Dims, bh: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (q, k) = (dm.qkv(qkv, bh, 0), dm.qkv(qkv, bh, 1));
        let qm = segment_means(q, dm.l);
        let km = segment_means(k, dm.l);
        let a = landmark_attention(&qm, &km, dm.m, dm.d, dm.scale);
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
        let qmv = View::dense(&qm, m, d);
        let r = dm.r;
        let mut q_buf = Vec::new();
        let qr = self.query_rows(q, &mut q_buf);
        let keep = self.keeps_attention();
        // W = F3 V: formed whole and kept, or by the online softmax keeping the log-sum-exps.
        let (f3, w, lse3) = if keep {
            let mut f3 = scratch::buffer(m * n);
            mm(&mut f3, qmv, k.t(), false, dm.scale);
            softmax_rows(&mut f3, n);
            let mut w = vec![0f32; m * d];
            mm(&mut w, View::dense(&f3, m, n), v, false, 1.0);
            (f3, w, Vec::new())
        } else {
            let (w, lse) = f3_times_v(qmv, k, v, dm.scale, BLOCK);
            (Vec::new(), w, lse)
        };
        let mut u = vec![0f32; m * d];
        let (zv, wv) = (View::dense(&z, m, m), View::dense(&w, m, d));
        mm(&mut u, zv, wv, false, 1.0);
        let uv = View::dense(&u, m, d);
        // O = F1 U: in one product into the kept F1, or by row blocks through one block.
        let mut out = scratch::buffer(r * d);
        let mut f1 = if keep {
            scratch::buffer(r * m)
        } else {
            Vec::new()
        };
        let mut block = if keep {
            Vec::new()
        } else {
            vec![0f32; BLOCK.min(r) * m]
        };
        let step = if keep { r.max(1) } else { BLOCK };
        for r0 in (0..r).step_by(step) {
            let rb = step.min(r - r0);
            let f1b = if keep {
                &mut f1[r0 * m..(r0 + rb) * m]
            } else {
                &mut block[..rb * m]
            };
            f1_rows(f1b, qr.rows(r0, rb), kmv, dm.scale);
            mm(
                &mut out[r0 * d..(r0 + rb) * d],
                View::dense(f1b, rb, m),
                uv,
                false,
                1.0,
            );
        }
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
                lse3,
                steps,
                z,
                w,
                u,
            },
            out,
        )
    }

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
            .map(|bh| self.head_landmarks(qkv, dm, bh))
            .collect();
        // The starting scale of the pseudo-inverse is global over batch and heads.
        let m = dm.m;
        let scale = start_scale(phase1.iter().map(|p| p.2.as_slice()), m);
        let c = scale.c();
        let results: Vec<(HeadSaved, Vec<f32>)> = phase1
            .into_par_iter()
            .enumerate()
            .map(|(bh, p1)| self.head_forward(Inputs { dm, qkv, conv }, bh, p1, c))
            .collect();
        let (heads, per_head): (Vec<HeadSaved>, Vec<Vec<f32>>) = results.into_iter().unzip();
        // Every element is written by the merge.
        let mut out = scratch::buffer(dm.b * dm.r * dm.inner());
        let parts: Vec<[&[f32]; 1]> = per_head.iter().map(|o| [o.as_slice()]).collect();
        merge_heads(&mut out, &parts, dm.h, dm.d, dm.r);
        drop(parts);
        per_head.into_iter().for_each(scratch::recycle);
        *self.saved.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Arc::new(Saved { heads, scale }));
        Ok(out)
    }
}
