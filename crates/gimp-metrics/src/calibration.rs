//! Calibration: does a predicted probability of 0.8 come true 80% of the time? The top-label
//! expected calibration error over equal-width confidence bins (Guo et al. 2017, "On Calibration
//! of Modern Neural Networks"; the binning of torchmetrics' `MulticlassCalibrationError` with
//! `norm="l1"`: bin `b` holds confidences in `(b/B, (b+1)/B]`), the reliability diagram's bins,
//! and temperature scaling fitted by minimising the negative log-likelihood.

use crate::argmax;
use serde::Serialize;

/// Bins of the reliability diagram and of the ECE (15, as Guo et al. and torchmetrics).
pub const DEFAULT_BINS: usize = 15;

/// One confidence bin: the patients whose top probability falls in `(low, high]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReliabilityBin {
    pub low: f64,
    pub high: f64,
    pub count: usize,
    /// Mean top probability of the bin's patients (0 when empty).
    pub confidence: f64,
    /// Fraction of them predicted right (0 when empty).
    pub accuracy: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// Expected calibration error: `Σ_b (n_b / N) · |accuracy_b − confidence_b|`.
    pub ece: f64,
    /// Maximum calibration error over the non-empty bins.
    pub mce: f64,
    pub bins: Vec<ReliabilityBin>,
}

/// Top-label calibration of `probs` (one row per patient) against `y_true`, in `n_bins` bins.
pub fn calibration(y_true: &[usize], probs: &[Vec<f64>], n_bins: usize) -> Calibration {
    let n_bins = n_bins.max(1);
    let mut count = vec![0usize; n_bins];
    let mut conf = vec![0f64; n_bins];
    let mut right = vec![0usize; n_bins];
    for ((y, p), pred) in y_true.iter().zip(probs).zip(argmax(probs)) {
        let c = p.get(pred).copied().unwrap_or(0.0).clamp(0.0, 1.0);
        // (b/B, (b+1)/B]: ceil(c·B) − 1, with 0 in the first bin.
        let b = ((c * n_bins as f64).ceil() as usize).clamp(1, n_bins) - 1;
        count[b] += 1;
        conf[b] += c;
        right[b] += usize::from(pred == *y);
    }
    let n = y_true.len().max(1) as f64;
    let mut ece = 0.0;
    let mut mce = 0f64;
    let bins = (0..n_bins)
        .map(|b| {
            let k = count[b];
            let (confidence, accuracy) = match k {
                0 => (0.0, 0.0),
                _ => (conf[b] / k as f64, right[b] as f64 / k as f64),
            };
            if k > 0 {
                let gap = (accuracy - confidence).abs();
                ece += k as f64 / n * gap;
                mce = mce.max(gap);
            }
            ReliabilityBin {
                low: b as f64 / n_bins as f64,
                high: (b + 1) as f64 / n_bins as f64,
                count: k,
                confidence,
                accuracy,
            }
        })
        .collect();
    Calibration { ece, mce, bins }
}

/// Probabilities at temperature `t`: `softmax(z / t)`, computed from probabilities (`log p`
/// differs from the logits `z` by a constant per row, which softmax ignores).
pub fn with_temperature(probs: &[Vec<f64>], t: f64) -> Vec<Vec<f64>> {
    probs
        .iter()
        .map(|p| {
            let z: Vec<f64> = p.iter().map(|&v| v.max(1e-300).ln() / t).collect();
            let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// Mean negative log-likelihood of `y_true` under `probs` at temperature `t`.
pub fn nll_at(y_true: &[usize], probs: &[Vec<f64>], t: f64) -> f64 {
    let scaled = with_temperature(probs, t);
    let n = y_true.len().max(1) as f64;
    y_true
        .iter()
        .zip(&scaled)
        .map(|(&y, p)| -p.get(y).copied().unwrap_or(0.0).max(1e-300).ln())
        .sum::<f64>()
        / n
}

/// The temperature in [0.05, 20] that minimises the validation NLL (Guo et al.'s temperature
/// scaling). The NLL is convex in `1/t`, so a golden-section search over `ln t` finds the one
/// minimum; predictions (the argmax) do not change, only their confidence.
pub fn fit_temperature(y_true: &[usize], probs: &[Vec<f64>]) -> f64 {
    let f = |log_t: f64| nll_at(y_true, probs, log_t.exp());
    let (mut a, mut b) = (0.05f64.ln(), 20f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let mut c = b - g * (b - a);
    let mut d = a + g * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: 4 patients, 3 classes, 2 bins. In (0, 0.5]: confidences 0.40 (right) and
    /// 0.45 (wrong): confidence 0.425, accuracy 0.5. In (0.5, 1]: 0.9 (right) and 0.8 (wrong):
    /// 0.85 and 0.5. ECE = 2/4·0.075 + 2/4·0.35 = 0.2125; MCE = 0.35.
    #[test]
    fn ece_by_hand() {
        let probs = vec![
            vec![0.40, 0.30, 0.30],
            vec![0.45, 0.35, 0.20],
            vec![0.90, 0.05, 0.05],
            vec![0.20, 0.80, 0.00],
        ];
        let c = calibration(&[0, 1, 0, 0], &probs, 2);
        assert!((c.ece - 0.2125).abs() < 1e-12, "{}", c.ece);
        assert!((c.mce - 0.35).abs() < 1e-12);
        assert_eq!((c.bins[0].count, c.bins[1].count), (2, 2));
        assert!((c.bins[0].confidence - 0.425).abs() < 1e-12);
        assert!((c.bins[1].confidence - 0.85).abs() < 1e-12);
        assert!((c.bins[1].accuracy - 0.5).abs() < 1e-12);
    }

    /// Perfectly calibrated in expectation: many patients at confidence 0.75, right 3 times in 4.
    #[test]
    fn calibrated_predictions_have_no_error() {
        let probs = vec![vec![0.75, 0.25]; 400];
        let y: Vec<usize> = (0..400).map(|i| usize::from(i % 4 == 3)).collect();
        let c = calibration(&y, &probs, DEFAULT_BINS);
        assert!(c.ece < 1e-12, "{}", c.ece);
    }

    #[test]
    fn temperature_keeps_the_argmax_and_one_is_identity() {
        let probs = vec![vec![0.7, 0.2, 0.1], vec![0.1, 0.3, 0.6]];
        let same = with_temperature(&probs, 1.0);
        for (a, b) in probs.iter().flatten().zip(same.iter().flatten()) {
            assert!((a - b).abs() < 1e-12);
        }
        let hot = with_temperature(&probs, 3.0);
        assert_eq!(argmax(&hot), argmax(&probs));
        assert!(hot[0][0] < 0.7 && hot[0][0] > 1.0 / 3.0);
    }

    /// Over-confident predictions (right 75% of the time at confidence 0.99) are cooled to a
    /// temperature where the confidence matches: softmax(z/t) top = 0.75, i.e. for two classes
    /// t = ln(0.99/0.01) / ln(0.75/0.25).
    #[test]
    fn fitted_temperature_matches_the_accuracy() {
        let probs = vec![vec![0.99, 0.01]; 400];
        let y: Vec<usize> = (0..400).map(|i| usize::from(i % 4 == 3)).collect();
        let t = fit_temperature(&y, &probs);
        let want = (99f64).ln() / 3f64.ln();
        assert!((t - want).abs() < 1e-4, "t {t}, want {want}");
        let after = calibration(&y, &with_temperature(&probs, t), DEFAULT_BINS);
        assert!(after.ece < 1e-4, "{}", after.ece);
        assert!(nll_at(&y, &probs, t) < nll_at(&y, &probs, 1.0));
    }
}
