//! The gene-only baseline: per-gene standardisation fitted on the training split, then an
//! L2-regularised multinomial logistic regression with scikit-learn's objective
//!
//! `min_W,b  ½‖W‖² + C · Σ_i −log softmax(W x_i + b)[y_i]`   (intercept not penalised),
//!
//! fitted by L-BFGS. With 60,480 genes and a few hundred patients the work is matrix–vector
//! products over the samples × genes matrix, parallelised over samples and genes.
//!
//! [`baseline`] runs it over a cohort's splits. [`cox`] is the survival counterpart: an
//! L2-penalised Cox model on the same standardised genes.

pub mod baseline;
pub mod cox;
pub mod cox_baseline;

pub use cox::{CoxConfig, CoxError, CoxModel};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Per-gene z-scoring with statistics from the training samples only (`docs/DESIGN.md` §3): population
/// standard deviation; a gene with std < 1e-6 is 0 everywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardiser {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl Standardiser {
    pub fn fit(rows: &[&[f32]]) -> Self {
        let p = rows.first().map_or(0, |r| r.len());
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0f64; p];
        for r in rows {
            for (m, v) in mean.iter_mut().zip(r.iter()) {
                *m += *v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; p];
        for r in rows {
            for ((s, v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
                let d = *v as f64 - m;
                *s += d * d;
            }
        }
        Self {
            mean: mean.iter().map(|m| *m as f32).collect(),
            std: var.iter().map(|s| (s / n).sqrt() as f32).collect(),
        }
    }

    pub fn apply(&self, row: &[f32]) -> Vec<f32> {
        row.iter()
            .zip(self.mean.iter().zip(&self.std))
            .map(|(v, (m, s))| if *s < 1e-6 { 0.0 } else { (v - m) / s })
            .collect()
    }
}

/// Fitting settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LogisticConfig {
    /// Inverse regularisation strength, as scikit-learn's `C`.
    pub c: f64,
    pub max_iter: usize,
    /// Stop when the largest gradient component falls below this (scikit-learn's `tol`).
    pub tol: f64,
}

impl Default for LogisticConfig {
    fn default() -> Self {
        Self {
            c: 0.1,
            max_iter: 500,
            tol: 1e-4,
        }
    }
}

/// A fitted model: `weights[c][j]`, `bias[c]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogisticRegression {
    pub n_classes: usize,
    pub weights: Vec<Vec<f64>>,
    pub bias: Vec<f64>,
    pub iterations: usize,
    pub converged: bool,
}

fn softmax_in_place(s: &mut [f64]) {
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut z = 0.0;
    for v in s.iter_mut() {
        *v = (*v - m).exp();
        z += *v;
    }
    s.iter_mut().for_each(|v| *v /= z);
}

fn dot(w: &[f64], x: &[f32]) -> f64 {
    // Four accumulators let the compiler vectorise without reassociating one sum.
    let mut acc = [0f64; 4];
    let chunks = w.len() / 4;
    for k in 0..chunks {
        for l in 0..4 {
            acc[l] += w[4 * k + l] * x[4 * k + l] as f64;
        }
    }
    let mut s = acc.iter().sum::<f64>();
    for k in chunks * 4..w.len() {
        s += w[k] * x[k] as f64;
    }
    s
}

struct Problem<'a> {
    x: &'a [Vec<f32>],
    y: &'a [usize],
    c: f64,
    k: usize,
    p: usize,
}

impl Problem<'_> {
    /// Objective and gradient at θ = [W row-major (k × p), b (k)].
    fn eval(&self, theta: &[f64], grad: &mut [f64]) -> f64 {
        let (k, p) = (self.k, self.p);
        let w = &theta[..k * p];
        let b = &theta[k * p..];
        // Per-sample residuals r_i = C (softmax(s_i) − onehot(y_i)).
        let per: Vec<(f64, Vec<f64>)> = self
            .x
            .par_iter()
            .zip(self.y.par_iter())
            .map(|(xi, &yi)| {
                let mut s: Vec<f64> = (0..k)
                    .map(|c| dot(&w[c * p..(c + 1) * p], xi) + b[c])
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = m + s.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
                let loss = lse - s[yi];
                softmax_in_place(&mut s);
                s[yi] -= 1.0;
                s.iter_mut().for_each(|v| *v *= self.c);
                (loss, s)
            })
            .collect();
        let data_loss: f64 = per.iter().map(|(l, _)| l).sum::<f64>() * self.c;
        let reg: f64 = 0.5 * w.iter().map(|v| v * v).sum::<f64>();
        // ∂/∂W_c = W_c + Σ_i r_ic x_i, computed gene block by gene block in parallel.
        let (gw, gb) = grad.split_at_mut(k * p);
        gw.par_chunks_mut(p).enumerate().for_each(|(c, gc)| {
            gc.copy_from_slice(&w[c * p..(c + 1) * p]);
            for (xi, (_, r)) in self.x.iter().zip(&per) {
                let rc = r[c];
                if rc != 0.0 {
                    for (g, v) in gc.iter_mut().zip(xi.iter()) {
                        *g += rc * *v as f64;
                    }
                }
            }
        });
        for (c, g) in gb.iter_mut().enumerate() {
            *g = per.iter().map(|(_, r)| r[c]).sum();
        }
        data_loss + reg
    }
}

impl LogisticRegression {
    /// Fits on standardised rows `x` with labels `y` in `0..n_classes`.
    pub fn fit(x: &[Vec<f32>], y: &[usize], n_classes: usize, cfg: LogisticConfig) -> Self {
        let p = x.first().map_or(0, |r| r.len());
        let k = n_classes.max(2);
        // scikit-learn fits two classes with one weight vector v and ½‖v‖²; the softmax form
        // with v = W₁ − W₀ has the same minimiser when C is halved.
        let c = if k == 2 { cfg.c / 2.0 } else { cfg.c };
        let prob = Problem { x, y, c, k, p };
        let dim = k * p + k;
        let mut theta = vec![0f64; dim];
        let mut grad = vec![0f64; dim];
        let mut f = prob.eval(&theta, &mut grad);
        let m = 10;
        let mut s_hist: Vec<Vec<f64>> = Vec::new();
        let mut y_hist: Vec<Vec<f64>> = Vec::new();
        let mut iterations = 0;
        let mut converged = false;
        let mut new_grad = vec![0f64; dim];
        for it in 0..cfg.max_iter {
            iterations = it + 1;
            let gmax = grad.iter().fold(0f64, |a, g| a.max(g.abs()));
            if gmax <= cfg.tol {
                converged = true;
                break;
            }
            // Two-loop recursion for the search direction.
            let mut q = grad.clone();
            let mut alphas = vec![0f64; s_hist.len()];
            for i in (0..s_hist.len()).rev() {
                let rho = 1.0 / vdot(&y_hist[i], &s_hist[i]);
                alphas[i] = rho * vdot(&s_hist[i], &q);
                axpy(-alphas[i], &y_hist[i], &mut q);
            }
            let gamma = match (s_hist.last(), y_hist.last()) {
                (Some(s), Some(yv)) => vdot(s, yv) / vdot(yv, yv),
                _ => 1.0 / gmax.max(1e-12),
            };
            q.iter_mut().for_each(|v| *v *= gamma);
            for i in 0..s_hist.len() {
                let rho = 1.0 / vdot(&y_hist[i], &s_hist[i]);
                let beta = rho * vdot(&y_hist[i], &q);
                axpy(alphas[i] - beta, &s_hist[i], &mut q);
            }
            let dir: Vec<f64> = q.iter().map(|v| -v).collect();
            let slope = vdot(&grad, &dir);
            if slope >= 0.0 {
                // Not a descent direction (curvature information went stale): restart.
                s_hist.clear();
                y_hist.clear();
                continue;
            }
            // Backtracking line search (Armijo).
            let mut step = 1.0;
            let mut trial = vec![0f64; dim];
            let mut f_new;
            loop {
                for ((t, th), d) in trial.iter_mut().zip(&theta).zip(&dir) {
                    *t = th + step * d;
                }
                f_new = prob.eval(&trial, &mut new_grad);
                if f_new <= f + 1e-4 * step * slope || step < 1e-12 {
                    break;
                }
                step *= 0.5;
            }
            let s: Vec<f64> = trial.iter().zip(&theta).map(|(a, b)| a - b).collect();
            let yv: Vec<f64> = new_grad.iter().zip(&grad).map(|(a, b)| a - b).collect();
            let improvement = f - f_new;
            theta.copy_from_slice(&trial);
            grad.copy_from_slice(&new_grad);
            f = f_new;
            if vdot(&s, &yv) > 1e-12 {
                s_hist.push(s);
                y_hist.push(yv);
                if s_hist.len() > m {
                    s_hist.remove(0);
                    y_hist.remove(0);
                }
            }
            if improvement.abs() <= 1e-12 * f.abs().max(1.0) {
                converged = true;
                break;
            }
        }
        let weights = (0..k).map(|c| theta[c * p..(c + 1) * p].to_vec()).collect();
        let bias = theta[k * p..].to_vec();
        Self {
            n_classes: k,
            weights,
            bias,
            iterations,
            converged,
        }
    }

    /// Class probabilities of one standardised row.
    pub fn predict_proba(&self, x: &[f32]) -> Vec<f64> {
        let mut s: Vec<f64> = self
            .weights
            .iter()
            .zip(&self.bias)
            .map(|(w, b)| dot(w, x) + b)
            .collect();
        softmax_in_place(&mut s);
        s
    }
}

fn vdot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn axpy(a: f64, x: &[f64], y: &mut [f64]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += a * xi;
    }
}

/// The gene-only baseline on one split: standardise on `train`, fit, and return class
/// probabilities for every row of `eval`.
pub fn fit_predict(
    train: &[&[f32]],
    train_labels: &[usize],
    eval: &[&[f32]],
    n_classes: usize,
    cfg: LogisticConfig,
) -> (Standardiser, LogisticRegression, Vec<Vec<f64>>) {
    let scaler = Standardiser::fit(train);
    let xs: Vec<Vec<f32>> = train.iter().map(|r| scaler.apply(r)).collect();
    let model = LogisticRegression::fit(&xs, train_labels, n_classes, cfg);
    let probs = eval
        .iter()
        .map(|r| model.predict_proba(&scaler.apply(r)))
        .collect();
    (scaler, model, probs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_two_class_problem_is_learned() {
        let x: Vec<Vec<f32>> = (0..40)
            .map(|i| vec![if i % 2 == 0 { -1.0 } else { 1.0 } + (i as f32 * 0.01), 0.5])
            .collect();
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let m = LogisticRegression::fit(
            &x,
            &y,
            2,
            LogisticConfig {
                c: 1.0,
                ..Default::default()
            },
        );
        assert!(m.converged);
        for (xi, yi) in x.iter().zip(&y) {
            let p = m.predict_proba(xi);
            assert!(p[*yi] > 0.5);
        }
    }

    #[test]
    fn matches_scikit_learn_coefficients() {
        // sklearn LogisticRegression(C=0.5, tol=1e-10).fit(X, y): coef_ [[0.83479, 0.00486]],
        // intercept_ [-1.25761]; our binary margin W₁ − W₀ must equal them.
        let x = vec![
            vec![0.0f32, 1.0],
            vec![1.0, 0.0],
            vec![2.0, 1.0],
            vec![3.0, 2.0],
            vec![0.5, 2.5],
            vec![2.5, 0.5],
        ];
        let y = vec![0, 0, 1, 1, 0, 1];
        let m = LogisticRegression::fit(
            &x,
            &y,
            2,
            LogisticConfig {
                c: 0.5,
                max_iter: 1000,
                tol: 1e-10,
            },
        );
        let margin: Vec<f64> = (0..2).map(|j| m.weights[1][j] - m.weights[0][j]).collect();
        let expected = [0.834_792, 0.004_856];
        for (a, e) in margin.iter().zip(expected) {
            assert!((a - e).abs() < 1e-4, "{margin:?}");
        }
        assert!(
            (m.bias[1] - m.bias[0] + 1.257_608).abs() < 1e-4,
            "{:?}",
            m.bias
        );
    }

    #[test]
    fn standardiser_zeroes_constant_genes() {
        let rows = [vec![1.0f32, 5.0], vec![3.0, 5.0]];
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        let s = Standardiser::fit(&refs);
        assert_eq!(s.apply(&[3.0, 7.0]), vec![1.0, 0.0]);
    }
}
