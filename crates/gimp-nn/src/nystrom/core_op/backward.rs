//! The core op's backward pass, in two phases per head around one global step: phase A runs
//! everything from the output gradient down to `dA` and the head's share of `dL/dc` (the
//! pseudo-inverse's start scale); once those shares are summed, the global step adds `dL/dc`
//! to `dA` through the two maxima; phase B takes `dA` through the landmark softmax to Q and K.

use super::forward::f1_rows;
use super::{merge_heads, Dims, NystromCore, Saved, BLOCK};
use crate::cpu::lanes::{self, softmax_backward_block, softmax_backward_rows};
use crate::cpu::matmul::{mm, View};
use crate::cpu::scratch;
use crate::nystrom::online_softmax::f3_block;
use crate::nystrom::pinv::pinv_backward;
use crate::nystrom::residual_conv::{conv_input_grad, conv_weight_grad};
use candle_core::Result;
use rayon::prelude::*;
use std::sync::Arc;

impl NystromCore {
    /// The backward pass on raw slices after [`Self::forward_slices`]: `(dqkv, dconv)`.
    pub(crate) fn backward_slices(
        &self,
        qkv: &[f32],
        conv: &[f32],
        grad: &[f32],
        dm: Dims,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let saved = self.take_saved()?;
        let (grads, dconv) = self.backward(&saved, dm, qkv, conv, grad);
        let mut dqkv = scratch::buffer(dm.b * dm.n * 3 * dm.inner());
        merge_grads(&mut dqkv, grads, dm);
        Ok((dqkv, dconv))
    }

    /// [`Self::backward_slices`] taking `qkv` by value: once every head has read it, its
    /// buffer receives `dqkv` (which has its shape), so no second `N' × 3·H·d` buffer is
    /// allocated (the fused layer, which owns the `qkv` it kept).
    pub(crate) fn backward_consuming(
        &self,
        qkv: Vec<f32>,
        conv: &[f32],
        grad: &[f32],
        dm: Dims,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let saved = self.take_saved()?;
        let (grads, dconv) = self.backward(&saved, dm, &qkv, conv, grad);
        let mut dqkv = qkv;
        merge_grads(&mut dqkv, grads, dm);
        Ok((dqkv, dconv))
    }

    /// What the forward pass kept, taken, not cloned: it is freed as soon as the backward
    /// pass ends (one backward pass per forward, as in training).
    pub(crate) fn take_saved(&self) -> Result<Arc<Saved>> {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| candle_core::Error::Msg("nystrom core: backward before forward".into()))
    }
}

/// Every head's `dQ`, `dK`, `dV` into their columns of `dqkv` (`[B, N', 3·H·d]`).
fn merge_grads(dqkv: &mut [f32], grads: Vec<HeadGrads>, dm: Dims) {
    let parts: Vec<[&[f32]; 3]> = grads
        .iter()
        .map(|hg| [hg.dq.as_slice(), hg.dk.as_slice(), hg.dv.as_slice()])
        .collect();
    merge_heads(dqkv, &parts, dm.h, dm.d, dm.n);
}

/// Phase A of one head's backward: everything down to `dA`, plus its share of `dL/dc`.
pub(crate) struct HeadGrads {
    /// dL/dQ, dL/dK, dL/dV of this head, `[N', d]`; the landmark terms are added in phase B.
    pub(crate) dq: Vec<f32>,
    pub(crate) dk: Vec<f32>,
    pub(crate) dv: Vec<f32>,
    /// dL/dQ̃, dL/dK̃ so far (after [`NystromCore::landmark_grads`], whole), `[m, d]`.
    pub(crate) dqm: Vec<f32>,
    pub(crate) dkm: Vec<f32>,
    da: Vec<f32>,
    dc: f32,
    dconv: Vec<f32>,
}

impl HeadGrads {
    /// Frees the `N' × d` gradients once they have been used, keeping the landmark terms.
    pub(crate) fn release_rows(&mut self) {
        for v in [&mut self.dq, &mut self.dk, &mut self.dv] {
            scratch::recycle(std::mem::take(v));
        }
    }
}

impl Drop for HeadGrads {
    fn drop(&mut self) {
        scratch::recycle(std::mem::take(&mut self.dq));
        scratch::recycle(std::mem::take(&mut self.dk));
        scratch::recycle(std::mem::take(&mut self.dv));
    }
}

impl NystromCore {
    /// Phase A of task `bh` (batch item × head) from its `Q`, `K`, `V` (`[N', d]` views, where
    /// the caller holds them) and the output gradient `grad` (`[B, r, H·d]`).
    pub(crate) fn head_backward_a(
        &self,
        saved: &Saved,
        (dm, conv): (Dims, &[f32]),
        [q, k, v]: [View; 3],
        bh: usize,
        grad: &[f32],
    ) -> HeadGrads {
        let s = &saved.heads[bh];
        let c = saved.scale.c();
        let (m, n, d) = (dm.m, dm.n, dm.d);
        let sc = dm.scale;
        let g = dm.merged(grad, bh);
        let (qmv, kmv) = (View::dense(&s.qm, m, d), View::dense(&s.km, m, d));
        let uv = View::dense(&s.u, m, d);
        // F1 side, by row blocks: dU = F1ᵀ G, dS1 = softmax'(G Uᵀ), dQ = s·dS1 K̃, dK̃ = s·dS1ᵀ Q.
        let r = dm.r;
        let mut q_buf = Vec::new();
        let qr = self.query_rows(q, &mut q_buf);
        let mut du = vec![0f32; m * d];
        let mut dq = scratch::buffer(r * d);
        let mut dkm = vec![0f32; m * d];
        let keep = self.keeps_attention();
        let mut block = vec![0f32; BLOCK * m.max(1)];
        // The rebuilt block of F1 (or of F3 below) when they were not kept.
        let mut rebuilt = if keep {
            Vec::new()
        } else {
            vec![0f32; BLOCK * m.max(1)]
        };
        for (bi, r0) in (0..r).step_by(BLOCK).enumerate() {
            let rb = BLOCK.min(r - r0);
            let f1s: &[f32] = if keep {
                &s.f1[r0 * m..(r0 + rb) * m]
            } else {
                let f = &mut rebuilt[..rb * m];
                f1_rows(f, qr.rows(r0, rb), kmv, sc);
                f
            };
            let f1b = View::dense(f1s, rb, m);
            let gb = g.rows(r0, rb);
            let ds = &mut block[..rb * m];
            mm(&mut du, f1b.t(), gb, bi > 0, 1.0);
            mm(ds, gb, uv.t(), false, 1.0);
            softmax_backward_rows(f1s, ds, m);
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
            // The block as a view, and as (matrix, its row length, first column) for the
            // softmax backward.
            let (f3b, (f, f_cols, f_c0)) = if keep {
                (View::rows_of(&s.f3, c0, m, cb, n), (&s.f3[..], n, c0))
            } else {
                let f = &mut rebuilt[..m * cb];
                f3_block(f, qmv, k, c0, cb, sc, &s.lse3);
                let f: &[f32] = f;
                (View::dense(f, m, cb), (f, cb, 0))
            };
            let ds = &mut block[..m * cb];
            mm(&mut dv[c0 * d..(c0 + cb) * d], f3b.t(), dwv, false, 1.0);
            mm(ds, dwv, v.rows(c0, cb).t(), false, 1.0);
            softmax_backward_block(f, f_cols, f_c0, ds, cb, &rowdot);
            let dsv = View::dense(ds, m, cb);
            mm(&mut dk[c0 * d..(c0 + cb) * d], dsv.t(), qmv, false, sc);
            mm(&mut dqm, dsv, k.rows(c0, cb), bi > 0, sc);
        }
        let kk = self.shape.kernel;
        let dconv = if kk > 0 {
            let hi = bh % dm.h;
            let (gc, vc) = (g.to_dense(), v.to_dense());
            let (gc, vc) = (View::dense(&gc, r, d), View::dense(&vc, n, d));
            let positions = self.positions.as_deref();
            conv_input_grad(&mut dv, gc, &conv[hi * kk..(hi + 1) * kk], positions);
            conv_weight_grad(gc, vc, kk, positions)
        } else {
            Vec::new()
        };
        let (da, dc) = pinv_backward(&s.a, m, c, &s.steps, gz);
        HeadGrads {
            dq,
            dk,
            dv,
            dqm,
            dkm,
            da,
            dc,
            dconv,
        }
    }

    /// Every head's landmark gradients `dQ̃`, `dK̃` whole, after phase A of every head: the
    /// global `dL/dc` reaches `dA` through the two maxima, then each head's landmark attention
    /// takes `dA` through its softmax. What remains is to spread them over their segments'
    /// rows (each row of a segment of `l` gets `1/l` of its landmark's gradient).
    pub(crate) fn landmark_grads(&self, saved: &Saved, dm: Dims, phase_a: &mut [HeadGrads]) {
        {
            let dc: f32 = phase_a.iter().map(|g| g.dc).sum();
            let a: Vec<&[f32]> = saved.heads.iter().map(|h| h.a.as_slice()).collect();
            let mut da: Vec<&mut [f32]> = phase_a.iter_mut().map(|g| g.da.as_mut_slice()).collect();
            saved.scale.backward(dc, dm.m, &a, &mut da);
        }
        phase_a.par_iter_mut().enumerate().for_each(|(bh, hg)| {
            let (s, m, d) = (&saved.heads[bh], dm.m, dm.d);
            softmax_backward_rows(&s.a, &mut hg.da, m);
            let ds2 = View::dense(&hg.da, m, m);
            let (qmv, kmv) = (View::dense(&s.qm, m, d), View::dense(&s.km, m, d));
            mm(&mut hg.dkm, ds2.t(), qmv, true, dm.scale);
            mm(&mut hg.dqm, ds2, kmv, true, dm.scale);
        });
    }

    /// The residual convolution's kernel gradients `[H, K]` summed over the batch.
    pub(crate) fn conv_grads(&self, dm: Dims, phase_a: &[HeadGrads], conv_len: usize) -> Vec<f32> {
        let kk = self.shape.kernel;
        let mut dconv = vec![0f32; if kk > 0 { dm.h * kk } else { conv_len }];
        if kk > 0 {
            for (bh, hg) in phase_a.iter().enumerate() {
                let hi = bh % dm.h;
                dconv[hi * kk..(hi + 1) * kk]
                    .iter_mut()
                    .zip(&hg.dconv)
                    .for_each(|(a, b)| *a += b);
            }
        }
        dconv
    }

    /// The landmark gradients spread over their segments' rows of `dQ`, `dK`.
    fn spread_landmarks(dm: Dims, hg: &mut HeadGrads) {
        let (n, d, l) = (dm.n, dm.d, dm.l);
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
    ) -> (Vec<HeadGrads>, Vec<f32>) {
        let tasks = dm.b * dm.h;
        let mut phase_a: Vec<HeadGrads> = (0..tasks)
            .into_par_iter()
            .map(|bh| {
                let views = [0, 1, 2].map(|w| dm.qkv(qkv, bh, w));
                self.head_backward_a(saved, (dm, conv), views, bh, grad)
            })
            .collect();
        self.landmark_grads(saved, dm, &mut phase_a);
        phase_a
            .par_iter_mut()
            .for_each(|hg| Self::spread_landmarks(dm, hg));
        let dconv = self.conv_grads(dm, &phase_a, conv.len());
        (phase_a, dconv)
    }
}
