//! The Moore–Penrose pseudo-inverse of the landmark attention `A` (`m × m` per head) by
//! Newton–Schulz-style iterations, as the reference computes it, on raw slices for the fused op
//! and streaming inference (the graph reference keeps its own candle formulation,
//! `reference::pinv_iterative`, as the independent check):
//!
//! ```text
//! Z₀ = Aᵀ / c,   c = (max row abs-sum) · (max column abs-sum), both over every head's A
//! Z ← ¼ Z (13I − AZ(15I − AZ(7I − AZ)))
//! ```
//!
//! The start scale is global over batch and heads, so it is computed once from every head's
//! `A` ([`start_scale`]) and its gradient flows back through the two maxima to the heads that
//! reach them ([`StartScale::backward`]).

use crate::cpu::matmul::{mm, View};

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

/// `x` as a dense `m × m` matrix.
fn square(x: &[f32], m: usize) -> View<'_> {
    View::dense(x, m, m)
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
        mm(&mut t1, square(&p, m), square(&p, m), true, -1.0);
        // M = 13I − (15P − P·T1)
        let mut mt = p.iter().map(|x| -15.0 * x).collect::<Vec<_>>();
        mm(&mut mt, square(&p, m), square(&t1, m), true, 1.0);
        (0..m).for_each(|i| mt[i * m + i] += 13.0);
        let mut next = vec![0f32; m * m];
        mm(&mut next, square(&z, m), square(&mt, m), false, 0.25);
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

/// One pseudo-inverse iteration's saved values: `Z_k`, `P = A Z_k`, `T1 = P(7I − P)`,
/// `M = 13I − P(15I − T1)`; `Z_{k+1} = ¼ Z_k M`.
pub(crate) struct PinvStep {
    z: Vec<f32>,
    p: Vec<f32>,
    t1: Vec<f32>,
    m: Vec<f32>,
}

/// The pseudo-inverse's start `Z₀ = Aᵀ / (row_max · col_max)`: the largest row and column
/// abs-sums over every head's `A` (all `m × m`), with the (head, row/column) reaching each.
pub(crate) struct StartScale {
    row_max: f32,
    col_max: f32,
    row_ties: Vec<(usize, usize)>,
    col_ties: Vec<(usize, usize)>,
}

impl StartScale {
    /// `c`, the divisor of the start `Z₀ = Aᵀ / c`.
    pub fn c(&self) -> f32 {
        self.row_max * self.col_max
    }

    /// Adds `dL/dc` to the heads' `dA` through the two global maxima (`d|a|/da` = sign, and
    /// ties share the gradient evenly, as PyTorch's max does): `a[t]`, `da[t]` are head `t`'s.
    pub fn backward(&self, dc: f32, m: usize, a: &[&[f32]], da: &mut [&mut [f32]]) {
        let d_row = dc * self.col_max / self.row_ties.len() as f32;
        for &(t, i) in &self.row_ties {
            for j in 0..m {
                da[t][i * m + j] += d_row * sign(a[t][i * m + j]);
            }
        }
        let d_col = dc * self.row_max / self.col_ties.len() as f32;
        for &(t, j) in &self.col_ties {
            for i in 0..m {
                da[t][i * m + j] += d_col * sign(a[t][i * m + j]);
            }
        }
    }
}

/// The start scale of every head's `A` (each `m × m`, row-stochastic).
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

/// Back through the iterations from `gz` = dL/dZ of the last iterate, with the `steps` that
/// [`pinv_forward`] kept: `dL/dA` through the iterations and the start, and this head's
/// `dL/dc` (for [`StartScale::backward`], once every head's share is summed).
pub(crate) fn pinv_backward(
    a: &[f32],
    m: usize,
    c: f32,
    steps: &[PinvStep],
    mut gz: Vec<f32>,
) -> (Vec<f32>, f32) {
    let av = View::dense(a, m, m);
    let mut da = vec![0f32; m * m];
    let mut dt2 = vec![0f32; m * m];
    let mut dp = vec![0f32; m * m];
    let mut dt1 = vec![0f32; m * m];
    for st in steps.iter().rev() {
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
            dc -= gz[i * m + j] * a[j * m + i];
        }
    }
    (da, dc / (c * c))
}
