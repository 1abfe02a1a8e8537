//! The linear survival reference: Cox proportional hazards with an L2 penalty, the objective
//!
//! `min_β  −ℓ(β) / n + (λ/2)‖β‖²`,   `ℓ(β) = Σ_{i: event} [ xᵢ·β − log Σ_{j: tⱼ ≥ tᵢ} exp(xⱼ·β) ]`
//!
//! (Breslow's ties: everyone whose time equals or follows an event's time is in its risk set),
//! fitted by damped Newton steps (`docs/DESIGN.md` §34).
//!
//! The scale of λ is lifelines' `penalizer` (with `l1_ratio = 0`): lifelines maximises
//! `ℓ − n · penalizer · ½‖β‖²` on genes it standardises with the sample standard deviation; on
//! columns already standardised that way the two objectives are the same. scikit-survival's
//! `CoxPHSurvivalAnalysis(alpha)` is `λ = alpha / n`.
//!
//! Genes outnumber patients (12,000–60,000 against ~200), so when `p > n` the fit works in the
//! patients' space: the penalty makes the solution a combination of the training rows (the
//! component of β orthogonal to them changes no prediction and only adds to the penalty), so
//! with `X Xᵀ = U S Uᵀ` the problem is the same one on the `n × r` features `U S^{1/2}` and
//! `β = Xᵀ U S^{-1/2} γ`. Each Newton step then costs `O(n r²)` whatever the gene count.

use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;

/// Fitting settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CoxConfig {
    /// λ: lifelines' `penalizer` with `l1_ratio = 0`, on standardised genes.
    pub penalty: f64,
    pub max_iter: usize,
    /// Stop when half the Newton decrement `−∇f·d` falls below this.
    pub tol: f64,
}

impl Default for CoxConfig {
    fn default() -> Self {
        Self {
            penalty: 1.0,
            max_iter: 100,
            tol: 1e-14,
        }
    }
}

/// Why a Cox model cannot be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoxError {
    #[error("{rows} rows of covariates but {times} times and {events} event indicators")]
    Lengths {
        rows: usize,
        times: usize,
        events: usize,
    },
    #[error("row {row} has {got} covariates where {expected} were expected")]
    RowWidth {
        row: usize,
        expected: usize,
        got: usize,
    },
    #[error("no patient has an event: the partial likelihood is constant")]
    NoEvents,
    #[error("value {value} at row {row} is not a finite number")]
    NotFinite { row: usize, value: f64 },
    #[error(
        "penalty {0}: must be a finite number > 0 when genes outnumber patients, ≥ 0 otherwise"
    )]
    Penalty(f64),
    #[error(
        "the penalised Hessian is not positive definite (collinear covariates without a penalty?)"
    )]
    Singular,
}

/// A fitted model: the risk (log relative hazard) of a standardised row is `coef · x`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoxModel {
    pub coef: Vec<f64>,
    /// ℓ at the solution: Breslow's partial log-likelihood, summed over events, unpenalised.
    pub log_likelihood: f64,
    /// lifelines' `log_likelihood_`: `ℓ − n · λ · ½‖β‖²`.
    pub penalised_log_likelihood: f64,
    pub iterations: usize,
    pub converged: bool,
}

impl CoxModel {
    /// Fits on rows `x` (one per patient, standardised) with observed `time` and `event`.
    pub fn fit(
        x: &[Vec<f64>],
        time: &[f64],
        event: &[bool],
        cfg: CoxConfig,
    ) -> Result<Self, CoxError> {
        let rows = Rows::new(x, time, event)?;
        let all: Vec<usize> = (0..x.len()).collect();
        let problem = rows.problem(&all)?;
        let solution = problem.solve(cfg)?;
        Ok(rows.model(&problem, &solution))
    }

    /// The risk (log relative hazard, higher = worse) of one standardised row.
    pub fn risk(&self, x: &[f64]) -> f64 {
        self.coef.iter().zip(x).map(|(c, v)| c * v).sum()
    }
}

/// `aᵀ a` as one blocked matrix product: nalgebra's `tr_mul` takes a dot product per entry,
/// several times slower. The transpose is copied (`rows × cols`, small beside the product's
/// `rows × cols²`) rather than viewed with swapped strides, which nalgebra's path for small
/// matrices reads out of bounds.
fn column_products(a: &DMatrix<f64>) -> DMatrix<f64> {
    a.transpose() * a
}

/// Standardised rows with their outcomes, checked, for fits on subsets of them (the inner folds
/// of a penalty choice): the rows are kept as one matrix, and their Gram matrix `X Xᵀ` is
/// computed once, the first time a subset with more genes than patients is fitted, since every
/// such subset's Gram matrix is a block of it.
pub(crate) struct Rows {
    /// `p × n`: column `i` is row `i` (one patient's genes contiguous).
    xt: DMatrix<f64>,
    time: Vec<f64>,
    event: Vec<bool>,
    gram: OnceLock<DMatrix<f64>>,
}

impl Rows {
    pub(crate) fn new(x: &[Vec<f64>], time: &[f64], event: &[bool]) -> Result<Self, CoxError> {
        let n = x.len();
        if time.len() != n || event.len() != n {
            return Err(CoxError::Lengths {
                rows: n,
                times: time.len(),
                events: event.len(),
            });
        }
        if !event.iter().any(|&e| e) {
            return Err(CoxError::NoEvents);
        }
        let p = x.first().map_or(0, |r| r.len());
        for (row, r) in x.iter().enumerate() {
            if r.len() != p {
                return Err(CoxError::RowWidth {
                    row,
                    expected: p,
                    got: r.len(),
                });
            }
            if let Some(value) = r.iter().chain([&time[row]]).find(|v| !v.is_finite()) {
                return Err(CoxError::NotFinite { row, value: *value });
            }
        }
        Ok(Self {
            xt: DMatrix::from_iterator(p, n, x.iter().flatten().copied()),
            time: time.to_vec(),
            event: event.to_vec(),
            gram: OnceLock::new(),
        })
    }

    fn gram(&self) -> &DMatrix<f64> {
        self.gram.get_or_init(|| column_products(&self.xt))
    }

    /// The problem of fitting rows `fit` (distinct indices): in patient space, from their block
    /// of the Gram matrix, when they are fewer than the genes.
    pub(crate) fn problem(&self, fit: &[usize]) -> Result<Problem, CoxError> {
        if !fit.iter().any(|&i| self.event[i]) {
            return Err(CoxError::NoEvents);
        }
        let (n, p) = (fit.len(), self.xt.nrows());
        let reduced = match p > n {
            true => {
                let gram = self.gram();
                Reduced::new(DMatrix::from_fn(n, n, |a, b| gram[(fit[a], fit[b])]))
            }
            false => Reduced {
                z: DMatrix::from_fn(n, p, |a, j| self.xt[(j, fit[a])]),
                back: None,
            },
        };
        let time: Vec<f64> = fit.iter().map(|&i| self.time[i]).collect();
        let event: Vec<bool> = fit.iter().map(|&i| self.event[i]).collect();
        Ok(Problem {
            fit: fit.to_vec(),
            genes: p,
            reduced,
            risk_sets: RiskSets::new(&time, &event),
        })
    }

    /// The `hold.len() × r` matrix taking a solution `γ` of `problem` to the risks `x · β` of
    /// rows `hold`: with `β = X_fitᵀ back γ` that is `(X_hold X_fitᵀ) back`, a block of the Gram
    /// matrix times `back`, so scoring a penalty's fit never forms its `p` coefficients.
    pub(crate) fn risk_map(&self, problem: &Problem, hold: &[usize]) -> DMatrix<f64> {
        match &problem.reduced.back {
            Some(back) => {
                let gram = self.gram();
                DMatrix::from_fn(hold.len(), problem.fit.len(), |h, a| {
                    gram[(hold[h], problem.fit[a])]
                }) * back
            }
            None => DMatrix::from_fn(hold.len(), self.xt.nrows(), |h, j| self.xt[(j, hold[h])]),
        }
    }

    /// The model of a solution of `problem`: its coefficients and likelihoods.
    pub(crate) fn model(&self, problem: &Problem, solution: &Solution) -> CoxModel {
        let coef = match &problem.reduced.back {
            None => solution.gamma.clone(),
            Some(back) => {
                let a = back * &solution.gamma;
                let mut coef = DVector::<f64>::zeros(self.xt.nrows());
                for (&i, ai) in problem.fit.iter().zip(a.iter()) {
                    coef.axpy(*ai, &self.xt.column(i), 1.0);
                }
                coef
            }
        };
        let eta = DVector::from_iterator(
            problem.fit.len(),
            problem.fit.iter().map(|&i| self.xt.column(i).dot(&coef)),
        );
        let log_likelihood = problem.risk_sets.log_likelihood(&eta);
        let n = problem.fit.len() as f64;
        let penalised_log_likelihood =
            log_likelihood - n * solution.penalty * 0.5 * coef.norm_squared();
        CoxModel {
            coef: coef.iter().copied().collect(),
            log_likelihood,
            penalised_log_likelihood,
            iterations: solution.iterations,
            converged: solution.converged,
        }
    }
}

/// One subset of [`Rows`] ready for Newton's method at any penalty: its features (decomposed
/// once, however many penalties are tried) and its risk sets.
pub(crate) struct Problem {
    /// The rows fitted, indices into [`Rows`].
    fit: Vec<usize>,
    /// p: without a penalty, more genes than patients leave the solution undetermined.
    genes: usize,
    reduced: Reduced,
    risk_sets: RiskSets,
}

/// The minimiser of one penalty's objective over [`Problem`]'s features.
pub(crate) struct Solution {
    pub(crate) gamma: DVector<f64>,
    penalty: f64,
    iterations: usize,
    converged: bool,
}

impl Problem {
    /// Damped Newton steps from `γ = 0`.
    pub(crate) fn solve(&self, cfg: CoxConfig) -> Result<Solution, CoxError> {
        let n = self.fit.len();
        let lambda = cfg.penalty;
        if !lambda.is_finite() || lambda < 0.0 || (self.genes > n && lambda == 0.0) {
            return Err(CoxError::Penalty(lambda));
        }
        let z = &self.reduced.z;
        let r = z.ncols();
        let objective = |gamma: &DVector<f64>| -> f64 {
            -self.risk_sets.log_likelihood(&(z * gamma)) / n as f64
                + 0.5 * lambda * gamma.norm_squared()
        };
        let mut gamma = DVector::<f64>::zeros(r);
        let mut iterations = 0;
        let mut converged = false;
        for it in 0..cfg.max_iter {
            iterations = it + 1;
            let (ll, g, h) = self.risk_sets.derivatives(z, &gamma);
            let f = -ll / n as f64 + 0.5 * lambda * gamma.norm_squared();
            let grad = -g / n as f64 + lambda * &gamma;
            let mut hess = -h / n as f64;
            for k in 0..r {
                hess[(k, k)] += lambda;
            }
            let chol = hess.cholesky().ok_or(CoxError::Singular)?;
            let dir = -chol.solve(&grad);
            let slope = grad.dot(&dir);
            if -slope / 2.0 <= cfg.tol {
                converged = true;
                break;
            }
            // The objective is convex, so a Newton step halved until it decreases enough
            // (Armijo) converges from anywhere; near the optimum the full step is taken.
            let mut step = 1.0;
            let accepted = loop {
                let trial = &gamma + step * &dir;
                if objective(&trial) <= f + 1e-4 * step * slope {
                    break Some(trial);
                }
                if step < 1e-10 {
                    break None;
                }
                step *= 0.5;
            };
            match accepted {
                Some(trial) => gamma = trial,
                // No decrease along a descent direction: rounding has the last word; keep the
                // point and report it as not converged.
                None => break,
            }
        }
        Ok(Solution {
            gamma,
            penalty: lambda,
            iterations,
            converged,
        })
    }
}

/// The features the Newton steps work on: `X` itself when it has no more columns than rows,
/// else `U S^{1/2}` of `X Xᵀ = U S Uᵀ` over its positive eigenvalues.
struct Reduced {
    z: DMatrix<f64>,
    /// `U S^{-1/2}` (n × r) when reduced: `β = Xᵀ (back γ)`.
    back: Option<DMatrix<f64>>,
}

impl Reduced {
    /// From the Gram matrix `X Xᵀ` of rows with more genes than patients.
    fn new(gram: DMatrix<f64>) -> Self {
        let n = gram.nrows();
        let eig = gram.symmetric_eigen();
        let largest = eig.eigenvalues.iter().cloned().fold(0.0, f64::max);
        // Directions with (numerically) zero variance carry no information: centred genes lose
        // one, and duplicated patients more.
        let keep: Vec<usize> = (0..n)
            .filter(|&k| eig.eigenvalues[k] > largest * 1e-12)
            .collect();
        let z = DMatrix::from_fn(n, keep.len(), |i, k| {
            eig.eigenvectors[(i, keep[k])] * eig.eigenvalues[keep[k]].sqrt()
        });
        let back = DMatrix::from_fn(n, keep.len(), |i, k| {
            eig.eigenvectors[(i, keep[k])] / eig.eigenvalues[keep[k]].sqrt()
        });
        Self {
            z,
            back: Some(back),
        }
    }
}

/// Patients grouped by equal time, latest first, with each group's number of events: the order
/// in which Breslow's risk sets grow.
struct RiskSets {
    /// (members, events among them), by decreasing time.
    groups: Vec<(Vec<usize>, usize)>,
    events: Vec<bool>,
}

impl RiskSets {
    fn new(time: &[f64], event: &[bool]) -> Self {
        let mut order: Vec<usize> = (0..time.len()).collect();
        order.sort_by(|&a, &b| time[b].total_cmp(&time[a]));
        let mut groups: Vec<(Vec<usize>, usize)> = Vec::new();
        let mut last = f64::NAN;
        for i in order {
            if time[i] != last || groups.is_empty() {
                groups.push((Vec::new(), 0));
                last = time[i];
            }
            let g = groups.last_mut().expect("pushed above");
            g.0.push(i);
            g.1 += event[i] as usize;
        }
        Self {
            groups,
            events: event.to_vec(),
        }
    }

    /// ℓ at linear predictors `eta`.
    fn log_likelihood(&self, eta: &DVector<f64>) -> f64 {
        // Σ exp(η) over the growing risk set as exp(m) · s0 with m its running maximum: one
        // global maximum would let a risk set of much smaller η underflow to a zero sum.
        let mut m = f64::NEG_INFINITY;
        let mut s0 = 0.0;
        let mut ll = 0.0;
        for (members, d) in &self.groups {
            for &i in members {
                if eta[i] > m {
                    s0 *= (m - eta[i]).exp();
                    m = eta[i];
                }
                s0 += (eta[i] - m).exp();
            }
            if *d > 0 {
                let log_s0 = m + s0.ln();
                for &i in members.iter().filter(|&&i| self.events[i]) {
                    ll += eta[i] - log_s0;
                }
            }
        }
        ll
    }

    /// ℓ, its gradient and its Hessian with respect to γ at `η = Z γ`.
    ///
    /// The Hessian is `−Σ_k d_k (S2_k / S0_k − μ_k μ_kᵀ)` over event groups `k` (`S0`, `S1`,
    /// `S2` the risk set's sums of `exp(η)`, `exp(η) z` and `exp(η) z zᵀ`, `μ = S1 / S0`).
    /// Summed group by group that is `O(r²)` per group and per patient; swapping the sums,
    /// patient `i` contributes `a_i z_i z_iᵀ` with `a_i = Σ_{k: i at risk} d_k exp(η_i) / S0_k`,
    /// so `H = −Zᵀ diag(a) Z + Mᵀ M` with the rows of `M` the `√d_k μ_k`: two matrix products.
    fn derivatives(
        &self,
        z: &DMatrix<f64>,
        gamma: &DVector<f64>,
    ) -> (f64, DVector<f64>, DMatrix<f64>) {
        let (n, r) = z.shape();
        let eta = z * gamma;
        // The rows of Z contiguous, for the running sums.
        let zt = z.transpose();
        // Sums weighted by exp(η − m), m the running maximum of the risk set (as in
        // `log_likelihood`); rescaling both keeps the ratios below exact.
        let mut m = f64::NEG_INFINITY;
        let mut s0 = 0.0;
        let mut s1 = DVector::<f64>::zeros(r);
        let mut ll = 0.0;
        let mut grad = DVector::<f64>::zeros(r);
        // Each group's (m, s0) once its members have joined: S0 = exp(m) s0.
        let mut scaled_s0 = Vec::with_capacity(self.groups.len());
        let event_groups = self.groups.iter().filter(|(_, d)| *d > 0).count();
        // M: a row √d_k μ_k per event group.
        let mut means = DMatrix::<f64>::zeros(event_groups, r);
        let mut k = 0;
        for (members, d) in &self.groups {
            for &i in members {
                if eta[i] > m {
                    let shrink = (m - eta[i]).exp();
                    s0 *= shrink;
                    s1 *= shrink;
                    m = eta[i];
                }
                let w = (eta[i] - m).exp();
                s0 += w;
                s1.axpy(w, &zt.column(i), 1.0);
            }
            scaled_s0.push((m, s0));
            if *d == 0 {
                continue;
            }
            let d = *d as f64;
            let mean = &s1 / s0;
            for &i in members.iter().filter(|&&i| self.events[i]) {
                ll += eta[i];
                grad += zt.column(i);
            }
            ll -= d * (m + s0.ln());
            grad.axpy(-d, &mean, 1.0);
            means.row_mut(k).tr_copy_from(&(d.sqrt() * mean));
            k += 1;
        }
        // a_i in the running maxima's scale rather than as exp(η_i) / S0_k, which overflows
        // or underflows where η does: for i in group g, a_i = exp(η_i − m_g) D_g with the sums
        // over the risk sets i belongs to, those of groups k ≥ g (whose maxima m_k ≥ m_g),
        // D_g = Σ_{k ≥ g} d_k exp(m_g − m_k) / s0_k, built from the last group back. Every
        // exp is of a number ≤ 0 and s0 ≥ 1 (its maximum's own term), so nothing overflows;
        // what underflows is e^-745 below the terms kept, as in the running sums.
        let mut root_a = DVector::<f64>::zeros(n);
        let mut later = 0.0;
        let mut m_later = scaled_s0.last().map_or(0.0, |&(m, _)| m);
        for ((members, d), &(m, s0)) in self.groups.iter().zip(&scaled_s0).rev() {
            later = later * (m - m_later).exp() + *d as f64 / s0;
            m_later = m;
            for &i in members {
                root_a[i] = ((eta[i] - m).exp() * later).sqrt();
            }
        }
        // diag(√a) Z, whose column products are Zᵀ diag(a) Z.
        let mut weighted = z.clone();
        for mut column in weighted.column_iter_mut() {
            column.component_mul_assign(&root_a);
        }
        let hess = column_products(&means) - column_products(&weighted);
        (ll, grad, hess)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Breslow's ℓ by its definition, one risk set at a time.
    fn ll_by_definition(eta: &[f64], time: &[f64], event: &[bool]) -> f64 {
        (0..eta.len())
            .filter(|&i| event[i])
            .map(|i| {
                let s: f64 = (0..eta.len())
                    .filter(|&j| time[j] >= time[i])
                    .map(|j| eta[j].exp())
                    .sum();
                eta[i] - s.ln()
            })
            .sum()
    }

    fn data(n: usize, p: usize) -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
        // Deterministic, irregular values; integer-rounded times give tied event times.
        let x: Vec<Vec<f64>> = (0..n)
            .map(|i| {
                (0..p)
                    .map(|j| ((i * 7 + j * 13) % 11) as f64 / 5.0 - 1.0 + 0.01 * (i * j) as f64)
                    .collect()
            })
            .collect();
        let time: Vec<f64> = (0..n).map(|i| ((i * 37) % 17) as f64 + 1.0).collect();
        let event: Vec<bool> = (0..n).map(|i| i % 3 != 0).collect();
        (x, time, event)
    }

    #[test]
    fn gradient_and_hessian_match_finite_differences_with_ties() {
        let (x, time, event) = data(25, 3);
        let rs = RiskSets::new(&time, &event);
        let z = DMatrix::from_fn(25, 3, |i, j| x[i][j]);
        let gamma = DVector::from_vec(vec![0.3, -0.2, 0.5]);
        let (ll, g, h) = rs.derivatives(&z, &gamma);
        let eta: Vec<f64> = (&z * &gamma).iter().copied().collect();
        assert!((ll - ll_by_definition(&eta, &time, &event)).abs() < 1e-10);
        let eps = 1e-5;
        for k in 0..3 {
            let mut up = gamma.clone();
            up[k] += eps;
            let mut down = gamma.clone();
            down[k] -= eps;
            let (lu, gu, _) = rs.derivatives(&z, &up);
            let (ld, gd, _) = rs.derivatives(&z, &down);
            assert!(
                ((lu - ld) / (2.0 * eps) - g[k]).abs() < 1e-6,
                "gradient {k}"
            );
            for l in 0..3 {
                assert!(
                    ((gu[l] - gd[l]) / (2.0 * eps) - h[(l, k)]).abs() < 1e-6,
                    "hessian {l},{k}"
                );
            }
        }
    }

    #[test]
    fn risk_sets_far_below_the_largest_risk_do_not_underflow() {
        // η spans 3,000: with one global maximum the later risk sets' sums would be exp(-2000).
        let time = [1.0, 2.0, 3.0, 4.0];
        let event = [true, true, false, true];
        let eta = DVector::from_vec(vec![1000.0, -1000.0, -1500.0, -2000.0]);
        let rs = RiskSets::new(&time, &event);
        let log_sum = |ids: &[usize]| {
            let m = ids
                .iter()
                .map(|&j| eta[j])
                .fold(f64::NEG_INFINITY, f64::max);
            m + ids.iter().map(|&j| (eta[j] - m).exp()).sum::<f64>().ln()
        };
        let want = (eta[0] - log_sum(&[0, 1, 2, 3]))
            + (eta[1] - log_sum(&[1, 2, 3]))
            + (eta[3] - log_sum(&[3]));
        assert!((rs.log_likelihood(&eta) - want).abs() < 1e-9);
        let z = DMatrix::from_column_slice(4, 1, eta.as_slice());
        let (ll, g, h) = rs.derivatives(&z, &DVector::from_vec(vec![1.0]));
        assert!((ll - want).abs() < 1e-9, "{ll} vs {want}");
        assert!(g[0].is_finite() && h[(0, 0)].is_finite() && h[(0, 0)] <= 0.0);
    }

    /// The derivatives as the Hessian used to be summed: `S2` carried along the risk sets and
    /// `d_k (S2_k / S0_k − μ_k μ_kᵀ)` taken off at each event group.
    fn derivatives_by_groups(
        rs: &RiskSets,
        z: &DMatrix<f64>,
        gamma: &DVector<f64>,
    ) -> (f64, DVector<f64>, DMatrix<f64>) {
        let r = z.ncols();
        let eta = z * gamma;
        let mut m = f64::NEG_INFINITY;
        let mut s0 = 0.0;
        let mut s1 = DVector::<f64>::zeros(r);
        let mut s2 = DMatrix::<f64>::zeros(r, r);
        let mut ll = 0.0;
        let mut grad = DVector::<f64>::zeros(r);
        let mut hess = DMatrix::<f64>::zeros(r, r);
        for (members, d) in &rs.groups {
            for &i in members {
                if eta[i] > m {
                    let shrink = (m - eta[i]).exp();
                    s0 *= shrink;
                    s1 *= shrink;
                    s2 *= shrink;
                    m = eta[i];
                }
                let w = (eta[i] - m).exp();
                let zi = z.row(i).transpose();
                s0 += w;
                s1.axpy(w, &zi, 1.0);
                s2.ger(w, &zi, &zi, 1.0);
            }
            if *d == 0 {
                continue;
            }
            let d = *d as f64;
            let mean = &s1 / s0;
            for &i in members.iter().filter(|&&i| rs.events[i]) {
                ll += eta[i];
                grad += z.row(i).transpose();
            }
            ll -= d * (m + s0.ln());
            grad.axpy(-d, &mean, 1.0);
            hess -= &s2 * (d / s0);
            hess.ger(d, &mean, &mean, 1.0);
        }
        (ll, grad, hess)
    }

    #[test]
    fn hessian_by_matrix_products_equals_the_per_group_sum() {
        // 60 patients at 40 times (ties), the earliest all censored.
        let n = 60;
        let z = DMatrix::from_fn(n, 4, |i, j| {
            (((i * 31 + j * 17) % 23) as f64 / 11.0 - 1.0) * (1.0 + (i % 5) as f64)
        });
        let time: Vec<f64> = (0..n).map(|i| ((i * 13) % 40) as f64).collect();
        let event: Vec<bool> = (0..n).map(|i| i % 4 != 1 && time[i] != 0.0).collect();
        let rs = RiskSets::new(&time, &event);
        let compare = |gamma: &[f64], tolerance: f64| {
            let gamma = DVector::from_column_slice(gamma);
            let (ll, g, h) = rs.derivatives(&z, &gamma);
            let (want_ll, want_g, want_h) = derivatives_by_groups(&rs, &z, &gamma);
            assert!(
                (ll - want_ll).abs() <= 1e-12 * want_ll.abs(),
                "ℓ {ll} vs {want_ll}"
            );
            assert!((&g - &want_g).amax() <= 1e-12 * want_g.amax());
            let worst = (&h - &want_h).amax();
            assert!(
                worst <= tolerance,
                "{worst} (largest entry {})",
                want_h.amax()
            );
        };
        // η within about ±3, ±50 and ±55: to 1e-10 of the Hessian's largest entry.
        for gamma in [
            [0.3, -0.2, 0.5, 0.1],
            [6.0, -4.0, 3.0, 5.0],
            [-9.0, 7.0, -8.0, 2.0],
        ] {
            let scale = derivatives_by_groups(&rs, &z, &DVector::from_column_slice(&gamma))
                .2
                .amax();
            compare(&gamma, 1e-10 * scale);
        }
        // η from −690 to 550: neighbouring risk sets' maxima further apart than exp spans, and
        // each risk set so dominated by its largest risk that its covariance is a difference of
        // nearly equal terms; both sums are then good to rounding of the terms' size, at most
        // Σ d_k · max z², not of the (1e-3) Hessian left.
        let events = event.iter().filter(|&&e| e).count() as f64;
        compare(
            &[90.0, -70.0, 80.0, 40.0],
            1e-13 * events * z.amax().powi(2),
        );
    }

    #[test]
    fn a_subset_fitted_from_the_gram_matrix_equals_a_fit_of_its_rows() {
        // 20 rows of 30 genes: subsets of 15 rows are fitted from blocks of the 20 rows' Gram
        // matrix, and must give the model (and the held-out risks) of fitting the 15 rows.
        let (x, time, event) = data(20, 30);
        let rows = Rows::new(&x, &time, &event).unwrap();
        let cfg = CoxConfig {
            penalty: 0.2,
            ..Default::default()
        };
        for fit in [(0..15).collect::<Vec<usize>>(), (5..20).collect()] {
            let hold: Vec<usize> = (0..20).filter(|i| !fit.contains(i)).collect();
            let problem = rows.problem(&fit).unwrap();
            let solution = problem.solve(cfg).unwrap();
            let model = rows.model(&problem, &solution);
            let part = |ids: &[usize]| -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
                let x = ids.iter().map(|&i| x[i].clone()).collect();
                (
                    x,
                    ids.iter().map(|&i| time[i]).collect(),
                    ids.iter().map(|&i| event[i]).collect(),
                )
            };
            let (fx, ft, fe) = part(&fit);
            let want = CoxModel::fit(&fx, &ft, &fe, cfg).unwrap();
            assert_eq!(model.iterations, want.iterations);
            assert!((model.log_likelihood - want.log_likelihood).abs() < 1e-10);
            for (a, b) in model.coef.iter().zip(&want.coef) {
                assert!((a - b).abs() < 1e-10, "{a} vs {b}");
            }
            let risks = rows.risk_map(&problem, &hold) * &solution.gamma;
            for (r, &i) in risks.iter().zip(&hold) {
                assert!((r - want.risk(&x[i])).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn patient_space_fit_equals_gene_space_fit() {
        // 12 patients, 30 genes: the reduced problem must give the gene-space Newton solution.
        let (x, time, event) = data(12, 30);
        let cfg = CoxConfig {
            penalty: 0.3,
            ..Default::default()
        };
        let reduced = CoxModel::fit(&x, &time, &event, cfg).unwrap();
        assert!(reduced.converged);
        // Plain Newton on all 30 genes (its 30 × 30 Hessian is positive definite with λ > 0).
        let z = DMatrix::from_fn(12, 30, |i, j| x[i][j]);
        let rs = RiskSets::new(&time, &event);
        let mut beta = DVector::<f64>::zeros(30);
        for _ in 0..50 {
            let (_, g, h) = rs.derivatives(&z, &beta);
            let grad = -g / 12.0 + 0.3 * &beta;
            let mut hess = -h / 12.0;
            for k in 0..30 {
                hess[(k, k)] += 0.3;
            }
            beta -= hess.cholesky().unwrap().solve(&grad);
        }
        for (a, b) in reduced.coef.iter().zip(beta.iter()) {
            assert!((a - b).abs() < 1e-9, "{a} vs {b}");
        }
    }

    #[test]
    fn bad_input_is_an_error() {
        let (x, time, event) = data(6, 2);
        let cfg = CoxConfig::default();
        assert_eq!(
            CoxModel::fit(&x, &time[..5], &event, cfg),
            Err(CoxError::Lengths {
                rows: 6,
                times: 5,
                events: 6
            })
        );
        assert_eq!(
            CoxModel::fit(&x, &time, &[false; 6], cfg),
            Err(CoxError::NoEvents)
        );
        let mut bad = time.clone();
        bad[4] = f64::NAN;
        assert!(matches!(
            CoxModel::fit(&x, &bad, &event, cfg),
            Err(CoxError::NotFinite { row: 4, .. })
        ));
        let wide = data(6, 9).0;
        let unpenalised = CoxConfig {
            penalty: 0.0,
            ..cfg
        };
        assert_eq!(
            CoxModel::fit(&wide, &time, &event, unpenalised),
            Err(CoxError::Penalty(0.0))
        );
    }
}
