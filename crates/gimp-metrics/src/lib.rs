//! Classification metrics, defined as scikit-learn defines them (the crates tried disagree with
//! it on ties and multi-class averaging), with the intervals `docs/DESIGN.md` §10 records, and the tests that compare two models.
//! Survival metrics are in [`survival`].

pub mod survival;

pub mod calibration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Deserializer, Serialize};

/// A point estimate with a 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    #[serde(deserialize_with = "nan_as_null")]
    pub value: f64,
    #[serde(deserialize_with = "nan_as_null")]
    pub low: f64,
    #[serde(deserialize_with = "nan_as_null")]
    pub high: f64,
}

/// Reads back a figure that JSON wrote: serde_json writes NaN (a metric without a value) as
/// `null`, which is read as NaN again.
pub fn nan_as_null<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// [`nan_as_null`] for a list of figures.
pub fn nans_as_nulls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    Ok(Vec::<Option<f64>>::deserialize(d)?
        .into_iter()
        .map(|v| v.unwrap_or(f64::NAN))
        .collect())
}

/// A figure missing from a file written before it was reported.
fn missing() -> f64 {
    f64::NAN
}

/// Wilson score interval for a proportion `k / n` at 95%.
pub fn wilson(k: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            value: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
        };
    }
    let z = 1.959_963_984_540_054_f64;
    let nf = n as f64;
    let p = k as f64 / nf;
    let denom = 1.0 + z * z / nf;
    let centre = (p + z * z / (2.0 * nf)) / denom;
    let half = z * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt() / denom;
    Estimate {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
    }
}

/// `confusion[true][predicted]`.
pub fn confusion(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> Vec<Vec<usize>> {
    let mut m = vec![vec![0; n_classes]; n_classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        if t < n_classes && p < n_classes {
            m[t][p] += 1;
        }
    }
    m
}

pub fn accuracy(y_true: &[usize], y_pred: &[usize]) -> f64 {
    let k = y_true.iter().zip(y_pred).filter(|(a, b)| a == b).count();
    k as f64 / y_true.len().max(1) as f64
}

/// Mean recall over the classes present in `y_true` (scikit-learn's `balanced_accuracy_score`).
pub fn balanced_accuracy(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> f64 {
    let m = confusion(y_true, y_pred, n_classes);
    let recalls: Vec<f64> = (0..n_classes)
        .filter(|&c| m[c].iter().sum::<usize>() > 0)
        .map(|c| m[c][c] as f64 / m[c].iter().sum::<usize>() as f64)
        .collect();
    recalls.iter().sum::<f64>() / recalls.len().max(1) as f64
}

/// Macro F1 over the classes that appear in `y_true` or `y_pred` (scikit-learn's labels set);
/// a class with no predicted and no true member is left out, one with F1 undefined counts 0.
pub fn macro_f1(y_true: &[usize], y_pred: &[usize], n_classes: usize) -> f64 {
    let m = confusion(y_true, y_pred, n_classes);
    let mut f1s = Vec::new();
    for (c, row) in m.iter().enumerate() {
        let tp = row[c] as f64;
        let actual: usize = row.iter().sum();
        let predicted: usize = (0..n_classes).map(|r| m[r][c]).sum();
        if actual == 0 && predicted == 0 {
            continue;
        }
        let denom = actual as f64 + predicted as f64;
        f1s.push(if denom > 0.0 { 2.0 * tp / denom } else { 0.0 });
    }
    f1s.iter().sum::<f64>() / f1s.len().max(1) as f64
}

/// Binary ROC-AUC by the Mann–Whitney statistic with average ranks for ties (equal to
/// scikit-learn's trapezoidal `roc_auc_score`). `None` when one class is absent.
pub fn roc_auc_binary(positive: &[bool], score: &[f64]) -> Option<f64> {
    let n_pos = positive.iter().filter(|p| **p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[a].total_cmp(&score[b]));
    let mut rank_sum_pos = 0.0;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && score[idx[j + 1]] == score[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            if positive[k] {
                rank_sum_pos += avg_rank;
            }
        }
        i = j + 1;
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// ROC-AUC from class probabilities `probs[i][c]`: binary → probability of class 1; multi-class →
/// unweighted mean of one-vs-rest AUCs (scikit-learn `multi_class="ovr"`, `average="macro"`).
pub fn roc_auc(y_true: &[usize], probs: &[Vec<f64>], n_classes: usize) -> Option<f64> {
    if n_classes == 2 {
        let pos: Vec<bool> = y_true.iter().map(|&y| y == 1).collect();
        let s: Vec<f64> = probs.iter().map(|p| p[1]).collect();
        return roc_auc_binary(&pos, &s);
    }
    let mut aucs = Vec::new();
    for c in 0..n_classes {
        let pos: Vec<bool> = y_true.iter().map(|&y| y == c).collect();
        let s: Vec<f64> = probs.iter().map(|p| p[c]).collect();
        aucs.push(roc_auc_binary(&pos, &s)?);
    }
    Some(aucs.iter().sum::<f64>() / aucs.len() as f64)
}

/// Percentile bootstrap 95% interval of the ROC-AUC over patients (resamples where one class is
/// absent are redrawn). Deterministic for a seed.
pub fn roc_auc_bootstrap(
    y_true: &[usize],
    probs: &[Vec<f64>],
    n_classes: usize,
    resamples: usize,
    seed: u64,
) -> Option<Estimate> {
    let value = roc_auc(y_true, probs, n_classes)?;
    let n = y_true.len();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut stats = Vec::with_capacity(resamples);
    let mut attempts = 0;
    while stats.len() < resamples && attempts < resamples * 20 {
        attempts += 1;
        let idx: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
        let yt: Vec<usize> = idx.iter().map(|&i| y_true[i]).collect();
        let pr: Vec<Vec<f64>> = idx.iter().map(|&i| probs[i].clone()).collect();
        if let Some(a) = roc_auc(&yt, &pr, n_classes) {
            stats.push(a);
        }
    }
    if stats.is_empty() {
        return Some(Estimate {
            value,
            low: f64::NAN,
            high: f64::NAN,
        });
    }
    stats.sort_by(f64::total_cmp);
    let q = |p: f64| stats[((stats.len() - 1) as f64 * p).round() as usize];
    Some(Estimate {
        value,
        low: q(0.025),
        high: q(0.975),
    })
}

/// Every metric of `docs/DESIGN.md` §10 for one evaluated set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub n: usize,
    pub accuracy: Estimate,
    #[serde(deserialize_with = "nan_as_null")]
    pub balanced_accuracy: f64,
    pub roc_auc: Option<Estimate>,
    #[serde(deserialize_with = "nan_as_null")]
    pub macro_f1: f64,
    pub confusion: Vec<Vec<usize>>,
    /// Expected calibration error of the top-label probability
    /// ([`calibration::DEFAULT_BINS`] bins); NaN in files written before it was reported.
    #[serde(deserialize_with = "nan_as_null", default = "missing")]
    pub ece: f64,
}

/// The predicted class of each row of probabilities (the first of equal maxima).
pub fn argmax(probs: &[Vec<f64>]) -> Vec<usize> {
    probs
        .iter()
        .map(|p| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                .unwrap_or(0)
        })
        .collect()
}

impl Report {
    pub fn new(y_true: &[usize], probs: &[Vec<f64>], n_classes: usize, seed: u64) -> Self {
        let y_pred = argmax(probs);
        let k = y_true.iter().zip(&y_pred).filter(|(a, b)| a == b).count();
        Self {
            n: y_true.len(),
            accuracy: wilson(k, y_true.len()),
            balanced_accuracy: balanced_accuracy(y_true, &y_pred, n_classes),
            roc_auc: roc_auc_bootstrap(y_true, probs, n_classes, 1000, seed),
            macro_f1: macro_f1(y_true, &y_pred, n_classes),
            confusion: confusion(y_true, &y_pred, n_classes),
            ece: calibration::calibration(y_true, probs, calibration::DEFAULT_BINS).ece,
        }
    }
}

/// Two models' ROC-AUCs on the same patients compared by DeLong's test (DeLong, DeLong &
/// Clarke-Pearson 1988): the difference, its standard error from the structural components of
/// both AUCs (which accounts for their correlation), and the two-sided p-value of `z`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AucComparison {
    pub auc_a: f64,
    pub auc_b: f64,
    pub difference: f64,
    pub se: f64,
    pub z: f64,
    pub p: f64,
}

/// Mann–Whitney kernel: 1 when the positive scores higher, ½ on a tie.
fn psi(pos: f64, neg: f64) -> f64 {
    if pos > neg {
        1.0
    } else if pos == neg {
        0.5
    } else {
        0.0
    }
}

/// DeLong's test of `AUC(a) − AUC(b)` for scores of the same patients; `None` without both
/// classes. Scores are the positive class's probability.
pub fn delong(positive: &[bool], a: &[f64], b: &[f64]) -> Option<AucComparison> {
    let pos: Vec<usize> = (0..positive.len()).filter(|&i| positive[i]).collect();
    let neg: Vec<usize> = (0..positive.len()).filter(|&i| !positive[i]).collect();
    let (m, n) = (pos.len(), neg.len());
    if m < 2 || n < 2 || a.len() != positive.len() || b.len() != positive.len() {
        return None;
    }
    // Structural components: V10 per positive (over negatives), V01 per negative (over positives).
    let components = |s: &[f64]| -> (Vec<f64>, Vec<f64>) {
        let v10 = pos
            .iter()
            .map(|&i| neg.iter().map(|&j| psi(s[i], s[j])).sum::<f64>() / n as f64)
            .collect();
        let v01 = neg
            .iter()
            .map(|&j| pos.iter().map(|&i| psi(s[i], s[j])).sum::<f64>() / m as f64)
            .collect();
        (v10, v01)
    };
    let ((a10, a01), (b10, b01)) = (components(a), components(b));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let cov = |x: &[f64], y: &[f64]| {
        let (mx, my) = (mean(x), mean(y));
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - mx) * (q - my))
            .sum::<f64>()
            / (x.len() - 1) as f64
    };
    let (auc_a, auc_b) = (mean(&a10), mean(&b10));
    let var = (cov(&a10, &a10) + cov(&b10, &b10) - 2.0 * cov(&a10, &b10)) / m as f64
        + (cov(&a01, &a01) + cov(&b01, &b01) - 2.0 * cov(&a01, &b01)) / n as f64;
    let se = var.max(0.0).sqrt();
    let difference = auc_a - auc_b;
    let (z, p) = if se > 0.0 {
        let z = difference / se;
        (z, libm::erfc(z.abs() / std::f64::consts::SQRT_2))
    } else {
        // Identical rankings: no evidence of a difference.
        (0.0, 1.0)
    };
    Some(AucComparison {
        auc_a,
        auc_b,
        difference,
        se,
        z,
        p,
    })
}

/// Two-sided p-value of paired differences having mean 0, by flipping their signs: exactly
/// (every sign pattern) up to 16 pairs, else 20,000 seeded random patterns. Makes no normality
/// assumption, which a handful of folds could not support.
pub fn paired_sign_flip(differences: &[f64], seed: u64) -> f64 {
    let n = differences.len();
    if n == 0 {
        return f64::NAN;
    }
    let observed = differences.iter().sum::<f64>().abs();
    // A tolerance so that patterns equal to the observed sum up to rounding count as extreme.
    let extreme = |signs: &mut dyn Iterator<Item = bool>| {
        let s: f64 = differences
            .iter()
            .zip(signs)
            .map(|(d, flip)| if flip { -d } else { *d })
            .sum();
        s.abs() >= observed - 1e-12
    };
    let (mut hits, mut total) = (0u64, 0u64);
    if n <= 16 {
        for pattern in 0u32..(1 << n) {
            if extreme(&mut (0..n).map(|k| pattern >> k & 1 == 1)) {
                hits += 1;
            }
            total += 1;
        }
    } else {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..20_000 {
            let signs: Vec<bool> = (0..n).map(|_| rng.gen()).collect();
            if extreme(&mut signs.into_iter()) {
                hits += 1;
            }
            total += 1;
        }
    }
    hits as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_statsmodels() {
        // statsmodels proportion_confint(180, 190, method="wilson") = (0.90584, 0.97116)
        let e = wilson(180, 190);
        assert!(
            (e.low - 0.90584).abs() < 1e-5 && (e.high - 0.97116).abs() < 1e-5,
            "{e:?}"
        );
        let e = wilson(0, 10);
        assert_eq!(e.low, 0.0);
        assert!((e.high - 0.2775).abs() < 1e-4);
    }

    #[test]
    fn auc_with_ties_matches_sklearn() {
        // sklearn roc_auc_score([0,0,1,1,1,0], [0.1,0.4,0.35,0.8,0.4,0.4]) = 0.6666667
        let pos = [false, false, true, true, true, false];
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4];
        assert!((roc_auc_binary(&pos, &s).unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!(roc_auc_binary(&[true, true], &[0.1, 0.2]).is_none());
    }

    #[test]
    fn multiclass_ovr_macro_auc() {
        // sklearn roc_auc_score(y, p, multi_class="ovr") = 0.75 for this case
        let y = [0, 1, 2, 2];
        let p = vec![
            vec![0.1, 0.5, 0.4],
            vec![0.3, 0.1, 0.6],
            vec![0.2, 0.6, 0.2],
            vec![0.4, 0.2, 0.4],
        ];
        // class 0: pos idx0 score .1 vs .3,.2,.4 → 0/3; class 1: pos idx1 .1 vs .5,.6,.2 → 0/3;
        // class 2: pos {2,3} {.2,.4} vs {.4,.6}: pairs (.2<.4,.2<.6,.4=.4 → .5,.4<.6) → .5/4
        let expected = (0.0 + 0.0 + 0.125) / 3.0;
        assert!((roc_auc(&y, &p, 3).unwrap() - expected).abs() < 1e-12);
    }

    #[test]
    fn f1_balanced_confusion() {
        let t = [0, 0, 1, 1, 2];
        let p = [0, 1, 1, 1, 0];
        // per-class F1: c0 2*1/(2+2)=0.5, c1 2*2/(2+3)=0.8, c2 0 → macro 0.4333
        assert!((macro_f1(&t, &p, 3) - 1.3 / 3.0).abs() < 1e-12);
        // recalls 0.5, 1.0, 0.0 → 0.5
        assert!((balanced_accuracy(&t, &p, 3) - 0.5).abs() < 1e-12);
        assert_eq!(
            confusion(&t, &p, 3),
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
    }

    #[test]
    fn bootstrap_is_deterministic_and_brackets_value() {
        let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let p: Vec<Vec<f64>> = (0..40)
            .map(|i| {
                let s = if i % 2 == 1 { 0.6 } else { 0.4 } + ((i * 7) % 10) as f64 * 0.03 - 0.15;
                vec![1.0 - s, s]
            })
            .collect();
        let a = roc_auc_bootstrap(&y, &p, 2, 200, 1).unwrap();
        let b = roc_auc_bootstrap(&y, &p, 2, 200, 1).unwrap();
        assert_eq!(a, b);
        assert!(a.low <= a.value && a.value <= a.high);
    }

    /// DeLong's test against an independent NumPy computation of the same formulas (structural
    /// components, their sample covariances, erfc) on 15 patients with a tie; the AUCs are also
    /// `roc_auc_binary`'s (scikit-learn's definition).
    #[test]
    fn delong_matches_an_independent_computation() {
        let y = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0];
        let a = [
            0.613, 0.749, 0.688, 0.003, 0.45, 0.437, 0.003, 0.411, 0.399, 0.234, 0.152, 0.439,
            0.127, 0.523, 0.252,
        ];
        let b = [
            0.537, 0.847, 0.705, 0.586, 0.842, 0.151, 0.112, 0.429, 0.031, 0.025, 0.36, 0.476,
            0.642, 0.59, 0.36,
        ];
        let pos: Vec<bool> = y.iter().map(|&v| v == 1).collect();
        let c = delong(&pos, &a, &b).unwrap();
        let close = |x: f64, e: f64| (x - e).abs() < 1e-12;
        assert!(close(c.auc_a, 0.8660714285714286), "{c:?}");
        assert!(close(c.auc_b, 0.9285714285714286), "{c:?}");
        assert!(close(c.se, 0.14554236556730524), "{c:?}");
        assert!(close(c.z, -0.4294282270071887), "{c:?}");
        assert!(close(c.p, 0.6676116155300016), "{c:?}");
        assert_eq!(roc_auc_binary(&pos, &a), Some(c.auc_a));
        let same = delong(&pos, &a, &a).unwrap();
        assert_eq!((same.difference, same.p), (0.0, 1.0));
    }

    #[test]
    fn sign_flip_p_values() {
        // Five positive differences: only the all-positive and all-negative patterns are as
        // extreme, 2 of 32.
        assert!((paired_sign_flip(&[0.1, 0.2, 0.05, 0.3, 0.1], 0) - 2.0 / 32.0).abs() < 1e-12);
        // Differences that cancel: every pattern is at least as extreme.
        assert_eq!(paired_sign_flip(&[0.1, -0.1], 0), 1.0);
        assert!(paired_sign_flip(&[], 0).is_nan());
        // Many pairs: the seeded random patterns, the same for a seed.
        let d: Vec<f64> = (0..30)
            .map(|i| if i % 3 == 0 { -0.01 } else { 0.02 })
            .collect();
        let p = paired_sign_flip(&d, 1);
        assert!(p < 0.01 && p == paired_sign_flip(&d, 1), "{p}");
    }
}
