//! The log-rank test of equal hazards across groups, as lifelines' `logrank_test` (two groups)
//! and `multivariate_logrank_test` (any number) compute it: observed minus expected events per
//! group over every distinct time, its hypergeometric covariance, and the χ² statistic on all
//! groups but the last through a pseudo-inverse.

use super::{Outcomes, SurvivalError};
use serde::Serialize;

/// The test's statistic, its degrees of freedom (groups − 1) and its p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LogRank {
    pub statistic: f64,
    pub degrees_of_freedom: usize,
    pub p: f64,
}

/// Log-rank test between the groups `group[i]` (any labels; compared in increasing order). With
/// a single group there is nothing to compare: statistic 0, p 1.
pub fn logrank(outcomes: Outcomes, group: &[usize]) -> Result<LogRank, SurvivalError> {
    if group.len() != outcomes.len() {
        return Err(SurvivalError::LengthMismatch {
            what: "group",
            expected: outcomes.len(),
            got: group.len(),
        });
    }
    let mut labels: Vec<usize> = group.to_vec();
    labels.sort_unstable();
    labels.dedup();
    let k = labels.len();
    if k < 2 {
        return Ok(LogRank {
            statistic: 0.0,
            degrees_of_freedom: 0,
            p: 1.0,
        });
    }
    let column = |g: usize| labels.binary_search(&g).unwrap_or(0);
    let n = outcomes.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| outcomes.time[a].total_cmp(&outcomes.time[b]));
    // Patients at risk per group, decreasing as times pass.
    let mut at_risk = vec![0.0f64; k];
    for &g in group {
        at_risk[column(g)] += 1.0;
    }
    let mut observed_minus_expected = vec![0.0f64; k];
    let mut covariance = vec![vec![0.0f64; k]; k];
    let mut i = 0;
    while i < n {
        let t = outcomes.time[order[i]];
        let mut deaths = vec![0.0f64; k];
        let mut leaving = vec![0.0f64; k];
        while i < n && outcomes.time[order[i]] == t {
            let c = column(group[order[i]]);
            deaths[c] += outcomes.event[order[i]] as u8 as f64;
            leaving[c] += 1.0;
            i += 1;
        }
        let total_at_risk: f64 = at_risk.iter().sum();
        let total_deaths: f64 = deaths.iter().sum();
        for c in 0..k {
            observed_minus_expected[c] += deaths[c] - at_risk[c] * total_deaths / total_at_risk;
        }
        // Hypergeometric covariance of the deaths at this time; a single patient at risk has
        // no variance (lifelines sets its (n − d)/(n − 1) factor to 1, which multiplies 0).
        let shrink = if total_at_risk > 1.0 {
            (total_at_risk - total_deaths) / (total_at_risk - 1.0)
        } else {
            1.0
        };
        let factor = shrink * total_deaths / (total_at_risk * total_at_risk);
        for a in 0..k {
            for b in 0..k {
                let diagonal = if a == b { total_at_risk } else { 0.0 };
                covariance[a][b] += factor * at_risk[a] * (diagonal - at_risk[b]);
            }
        }
        for c in 0..k {
            at_risk[c] -= leaving[c];
        }
    }
    // All groups but the last: the last is determined by the others (the sums are zero).
    let m = k - 1;
    let sub: Vec<Vec<f64>> = covariance[..m].iter().map(|r| r[..m].to_vec()).collect();
    let z = &observed_minus_expected[..m];
    let inverse = pseudo_inverse(&sub);
    let statistic: f64 = (0..m)
        .map(|a| z[a] * (0..m).map(|b| inverse[a][b] * z[b]).sum::<f64>())
        .sum();
    Ok(LogRank {
        statistic,
        degrees_of_freedom: m,
        p: chi_square_sf(statistic, m),
    })
}

/// Moore–Penrose pseudo-inverse of a symmetric matrix by Jacobi eigen-decomposition, dropping
/// eigenvalues below `n · ε · max|λ|` (NumPy's `pinv` cut-off): a group with no one at risk at
/// any event time gives a singular covariance, which lifelines inverts this way.
fn pseudo_inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut d: Vec<Vec<f64>> = a.to_vec();
    let mut v: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| (i == j) as u8 as f64).collect())
        .collect();
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| d[i][j] * d[i][j])
            .sum();
        if off < 1e-30 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                if d[p][q] == 0.0 {
                    continue;
                }
                // Rotation that zeroes d[p][q].
                let theta = (d[q][q] - d[p][p]) / (2.0 * d[p][q]);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                let rotate = |x: &mut f64, y: &mut f64| {
                    let (a, b) = (*x, *y);
                    *x = c * a - s * b;
                    *y = s * a + c * b;
                };
                for row in d.iter_mut() {
                    let (mut a, mut b) = (row[p], row[q]);
                    rotate(&mut a, &mut b);
                    (row[p], row[q]) = (a, b);
                }
                let (upper, lower) = d.split_at_mut(q);
                for (x, y) in upper[p].iter_mut().zip(lower[0].iter_mut()) {
                    rotate(x, y);
                }
                for row in v.iter_mut() {
                    let (mut a, mut b) = (row[p], row[q]);
                    rotate(&mut a, &mut b);
                    (row[p], row[q]) = (a, b);
                }
            }
        }
    }
    let eigen: Vec<f64> = (0..n).map(|i| d[i][i]).collect();
    let largest = eigen.iter().fold(0.0f64, |m, e| m.max(e.abs()));
    let cutoff = n as f64 * f64::EPSILON * largest;
    let mut inverse = vec![vec![0.0; n]; n];
    for (e, &lambda) in eigen.iter().enumerate() {
        if lambda.abs() <= cutoff {
            continue;
        }
        for i in 0..n {
            for j in 0..n {
                inverse[i][j] += v[i][e] * v[j][e] / lambda;
            }
        }
    }
    inverse
}

/// Upper tail `P(X > x)` of the χ² distribution with `df` degrees of freedom, in closed form
/// for integer `df` (the regularised upper incomplete gamma `Q(df/2, x/2)` as a finite sum:
/// `e^{−x/2} Σ (x/2)^i / i!` for even `df`, `erfc(√(x/2))` plus half-integer terms for odd).
pub fn chi_square_sf(x: f64, df: usize) -> f64 {
    if df == 0 || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let h = x / 2.0;
    if df.is_multiple_of(2) {
        let mut term = 1.0;
        let mut sum = 1.0;
        for i in 1..df / 2 {
            term *= h / i as f64;
            sum += term;
        }
        (-h).exp() * sum
    } else {
        // Terms (x/2)^{i−½} / Γ(i + ½) for i = 1 … (df−1)/2, starting at √(x/2)/Γ(3/2).
        let mut term = h.sqrt() / (std::f64::consts::PI.sqrt() / 2.0);
        let mut sum = 0.0;
        for i in 1..=(df - 1) / 2 {
            if i > 1 {
                term *= h / (i as f64 - 0.5);
            }
            sum += term;
        }
        libm::erfc(h.sqrt()) + (-h).exp() * sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scipy.stats.chi2.sf values.
    #[test]
    fn chi_square_tail() {
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
        assert!(close(
            chi_square_sf(3.841458820694124, 1),
            0.04999999999999989
        ));
        assert!(close(chi_square_sf(2.0, 2), (-1.0f64).exp()));
        // chi2.sf(7.0, 3) = 0.07189777249646509; chi2.sf(12.5, 5) = 0.028543123326167485
        assert!(close(chi_square_sf(7.0, 3), 0.07189777249646509));
        assert!(close(chi_square_sf(12.5, 5), 0.028543123326167485));
        // chi2.sf(9.0, 4) = 0.06109948096033269
        assert!(close(chi_square_sf(9.0, 4), 0.06109948096033269));
        assert_eq!(chi_square_sf(0.0, 3), 1.0);
    }

    /// Group 1 is censored before the first event: its covariance row is zero, and lifelines'
    /// pseudo-inverse leaves it out. lifelines `multivariate_logrank_test` on these data:
    /// statistic 0.13175622747924184 (the same as without group 1), p = χ²₂'s tail there.
    #[test]
    fn a_group_never_at_risk_at_an_event_is_left_out() {
        let time = [0.5, 0.7, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let event = [false, false, true, true, false, true, true, false, true];
        let group = [1, 1, 0, 0, 0, 2, 2, 2, 0];
        let r = logrank(Outcomes::new(&time, &event).unwrap(), &group).unwrap();
        assert!((r.statistic - 0.13175622747924184).abs() < 1e-12, "{r:?}");
        assert_eq!(r.degrees_of_freedom, 2);
        assert!((r.p - 0.9362449727358773).abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn one_group_has_nothing_to_test() {
        let o = Outcomes::new(&[1.0, 2.0], &[true, false]).unwrap();
        assert_eq!(logrank(o, &[3, 3]).unwrap().p, 1.0);
    }
}
