//! The residual depthwise convolution of V along the sequence (kernel `K`, odd, zero outside
//! the padded sequence), one implementation for every path: the fused core op and streaming
//! inference call the slice kernels directly, the graph reference through [`DepthwiseSeqConv`].
//!
//! Built from candle's ordinary ops the convolution is 33 shifted multiply-adds whose
//! intermediates all stay alive for backprop (≈ 66 copies of V); as one op it reads V once and
//! keeps nothing.

use crate::cpu::lanes;
use crate::cpu::matmul::View;
use crate::cpu::{slice, with_data, CpuForward};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Tensor};
use rayon::prelude::*;

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
    pub(crate) fn conv_weight_grad(g: View, x: View, k: usize, positions: Option<&[usize]>) -> Vec<f32> {
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

/// The input gradient of [`conv_rows`]: `dx[p_j + t − K/2] += w[t] · g[j]`. Over every
/// position that is the same correlation with the kernel reversed (odd `K`), register-blocked
/// like the forward; at selected positions a scatter.
pub(crate) fn conv_input_grad(dx: &mut [f32], g: View, w: &[f32], positions: Option<&[usize]>) {
    match positions {
        None => {
            let flipped: Vec<f32> = w.iter().rev().copied().collect();
            conv_rows(dx, g, &flipped, None)
        }
        Some(p) => conv_scatter(dx, g, w, p),
    }
}

/// `out[b,h,i,f] = Σ_t w[h,t] · v[b,h,i+t−⌊K/2⌋,f]` (zeros outside), V `[B, H, N, F]`, W `[H, K]`:
/// the convolution as a candle op, for the graph reference.
pub struct DepthwiseSeqConv;

/// [`conv_rows`] on every `(batch, head)` block of `v` `[B, H, N, F]` into zeros.
fn seq_conv(v: &[f32], w: &[f32], dims: (usize, usize, usize, usize), k: usize) -> Vec<f32> {
    let (b, h, n, f) = dims;
    let mut out = vec![0f32; b * h * n * f];
    out.par_chunks_mut(n * f).enumerate().for_each(|(bh, o)| {
        let head = bh % h;
        let src = View::dense(&v[bh * n * f..(bh + 1) * n * f], n, f);
        conv_rows(o, src, &w[head * k..(head + 1) * k], None);
    });
    out
}

impl CustomOp2 for DepthwiseSeqConv {
    fn name(&self) -> &'static str {
        "depthwise-seq-conv"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> CpuForward {
        let (b, h, n, f) = l1.shape().dims4()?;
        let (hw, k) = l2.shape().dims2()?;
        if hw != h {
            candle_core::bail!("depthwise conv: {h} heads but {hw} kernels");
        }
        let v = slice(s1, l1, "depthwise conv: V")?;
        let w = slice(s2, l2, "depthwise conv: W")?;
        Ok((
            CpuStorage::F32(seq_conv(v, w, (b, h, n, f), k)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        v: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, h, n, f) = v.dims4()?;
        let (_, k) = w.dims2()?;
        let (dv, dw) = with_data(g, |gs| {
            with_data(v, |vs| {
                with_data(w, |ws| {
                    let mut dv = vec![0f32; b * h * n * f];
                    let per_block: Vec<Vec<f32>> = dv
                        .par_chunks_mut(n * f)
                        .enumerate()
                        .map(|(bh, dvb)| {
                            let wk = &ws[(bh % h) * k..(bh % h + 1) * k];
                            let gb = View::dense(&gs[bh * n * f..(bh + 1) * n * f], n, f);
                            let vb = View::dense(&vs[bh * n * f..(bh + 1) * n * f], n, f);
                            conv_input_grad(dvb, gb, wk, None);
                            conv_weight_grad(gb, vb, k, None)
                        })
                        .collect();
                    let mut dw = vec![0f32; h * k];
                    for (bh, d) in per_block.iter().enumerate() {
                        let head = &mut dw[(bh % h) * k..(bh % h + 1) * k];
                        head.iter_mut().zip(d).for_each(|(a, b)| *a += b);
                    }
                    Ok((dv, dw))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dv, (b, h, n, f), v.device())?),
            Some(Tensor::from_vec(dw, (h, k), w.device())?),
        ))
    }
}

/// Depthwise convolution of `v` `[B, H, N, F]` along N with per-head kernels `w` `[H, K]`.
pub fn depthwise_seq_conv(v: &Tensor, w: &Tensor) -> Result<Tensor> {
    v.contiguous()?
        .apply_op2(&w.contiguous()?, DepthwiseSeqConv)
}
