//! `F3 = softmax(s·Q̃ Kᵀ)` (`m × N'`) without ever holding it whole.
//!
//! Its only use forward is `W = F3 V` (`m × d`), which an online softmax over blocks of keys
//! computes with one block of `F3` in memory at a time (a running maximum and sum per row,
//! the accumulator rescaled whenever the maximum grows). Each row's log-sum-exp is kept, so
//! the backward pass rebuilds any block of `F3` exactly as `exp(s·Q̃ K_blockᵀ − lse)` (one
//! product and one `exp` per element) instead of keeping `m × N'` floats per head. The
//! streaming inference (`super::infer`) and the training op's recomputing mode
//! (`super::core_op`) share it.

use crate::cpu::lanes;
use crate::cpu::matmul::{mm, View};

crate::multiversion! {
    /// One block of the online softmax: `s ← exp(s − new row maximum)`, and each row's running
    /// sum and accumulator row (`acc_cols` values) rescaled to the new maximum and the sum
    /// increased by the block's.
    fn online_block(
        s: &mut [f32],
        cols: usize,
        run_max: &mut [f32],
        run_sum: &mut [f32],
        acc: &mut [f32],
        acc_cols: usize,
    ) {
        for (i, row) in s.chunks_exact_mut(cols).enumerate() {
            let new_max = run_max[i].max(lanes::max(row));
            // exp(−∞) = 0 on the first block: nothing accumulated yet.
            let factor = lanes::exp(run_max[i] - new_max);
            run_sum[i] *= factor;
            acc[i * acc_cols..(i + 1) * acc_cols]
                .iter_mut()
                .for_each(|v| *v *= factor);
            for v in row.iter_mut() {
                *v = lanes::exp(*v - new_max);
            }
            run_sum[i] += lanes::sum(row);
            run_max[i] = new_max;
        }
    }
}

crate::multiversion! {
    /// `x[i, j] ← exp(x[i, j] − shift[i])` on rows of `cols` values: softmax rows rebuilt
    /// from their log-sum-exp.
    fn exp_shifted_rows(x: &mut [f32], cols: usize, shift: &[f32]) {
        for (row, &s) in x.chunks_exact_mut(cols).zip(shift) {
            for v in row.iter_mut() {
                *v = lanes::exp(*v - s);
            }
        }
    }
}

/// `W = softmax(scale·Q̃ Kᵀ) V` for landmarks `qm` (`[m, d]`), keys `k` and values `v`
/// (`[N', d]` views), over key blocks of `block` columns: `(W [m, d], lse [m])` where `lse` is
/// each softmax row's log-sum-exp.
pub(crate) fn f3_times_v(
    qm: View,
    k: View,
    v: View,
    scale: f32,
    block: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (m, n, d) = (qm.rows, k.rows, v.cols);
    let block = block.clamp(1, n.max(1));
    let mut run_max = vec![f32::NEG_INFINITY; m];
    let mut run_sum = vec![0f32; m];
    let mut acc = vec![0f32; m * d];
    let mut s = vec![0f32; m * block];
    for c0 in (0..n).step_by(block) {
        let cb = block.min(n - c0);
        let s = &mut s[..m * cb];
        mm(s, qm, k.rows(c0, cb).t(), false, scale);
        online_block(s, cb, &mut run_max, &mut run_sum, &mut acc, d);
        mm(&mut acc, View::dense(s, m, cb), v.rows(c0, cb), true, 1.0);
    }
    for (row, sum) in acc.chunks_exact_mut(d).zip(&run_sum) {
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
    let lse = run_max
        .iter()
        .zip(&run_sum)
        .map(|(mx, s)| mx + s.ln())
        .collect();
    (acc, lse)
}

/// Columns `c0 .. c0 + cb` of `F3 = softmax(scale·Q̃ Kᵀ)` rebuilt from the rows' log-sum-exp
/// into `out` (`[m, cb]`).
pub(crate) fn f3_block(
    out: &mut [f32],
    qm: View,
    k: View,
    c0: usize,
    cb: usize,
    scale: f32,
    lse: &[f32],
) {
    mm(out, qm, k.rows(c0, cb).t(), false, scale);
    exp_shifted_rows(out, cb, lse);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::lanes::softmax_rows;

    /// The online product and the rebuilt blocks equal the softmax formed whole.
    #[test]
    fn online_softmax_equals_the_whole_softmax() {
        let (m, n, d) = (5, 37, 3);
        let val = |i: usize, p: usize| ((i * p % 17) as f32 - 8.0) / 3.0;
        let qm: Vec<f32> = (0..m * d).map(|i| val(i, 7)).collect();
        let k: Vec<f32> = (0..n * d).map(|i| val(i, 5)).collect();
        let v: Vec<f32> = (0..n * d).map(|i| val(i, 3)).collect();
        let (qv, kv, vv) = (
            View::dense(&qm, m, d),
            View::dense(&k, n, d),
            View::dense(&v, n, d),
        );
        let mut f3 = vec![0f32; m * n];
        mm(&mut f3, qv, kv.t(), false, 0.7);
        softmax_rows(&mut f3, n);
        let mut w = vec![0f32; m * d];
        mm(&mut w, View::dense(&f3, m, n), vv, false, 1.0);
        for block in [1, 8, 37, 100] {
            let (wo, lse) = f3_times_v(qv, kv, vv, 0.7, block);
            for (a, b) in wo.iter().zip(&w) {
                assert!((a - b).abs() < 1e-5, "block {block}: {a} vs {b}");
            }
            let mut out = vec![0f32; m * 8];
            f3_block(&mut out, qv, kv, 24, 8, 0.7, &lse);
            for i in 0..m {
                for j in 0..8 {
                    let (a, b) = (out[i * 8 + j], f3[i * n + 24 + j]);
                    assert!((a - b).abs() < 1e-6, "block {block}: F3[{i}, {}]", 24 + j);
                }
            }
        }
    }
}
