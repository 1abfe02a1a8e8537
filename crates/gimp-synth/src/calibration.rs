//! The generator's calibration check: a regularised logistic regression on the expression of the
//! paper's 60/20/20 split (`docs/DESIGN.md` §29).

use crate::config::SynthConfig;
use gimp_cohort::split::{make_splits, Scheme};
use gimp_io::splits::Part;
use gimp_linear::{LogisticConfig, LogisticRegression, Standardiser};

/// Test accuracy of the gene-only logistic regression (C = 0.1, log2(FPKM+1), train-split
/// z-scores) on the cohort `cfg` describes, computed in memory.
pub fn expression_accuracy(cfg: &SynthConfig) -> f64 {
    let (x, y) = crate::expression_in_memory(cfg);
    let split = &make_splits(&y, Scheme::PAPER, cfg.seed)[0];
    let idx = |part: Part| -> Vec<usize> {
        split
            .iter()
            .filter(|(_, p)| **p == part)
            .map(|(i, _)| *i)
            .collect()
    };
    let (train, test) = (idx(Part::Train), idx(Part::Test));
    let train_rows: Vec<&[f32]> = train.iter().map(|&i| x[i].as_slice()).collect();
    let scaler = Standardiser::fit(&train_rows);
    let xs: Vec<Vec<f32>> = train.iter().map(|&i| scaler.apply(&x[i])).collect();
    let ys: Vec<usize> = train.iter().map(|&i| y[i]).collect();
    let model = LogisticRegression::fit(&xs, &ys, cfg.classes.len(), LogisticConfig::default());
    let correct = test
        .iter()
        .filter(|&&i| {
            let p = model.predict_proba(&scaler.apply(&x[i]));
            let pred = p
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(c, _)| c);
            pred == Some(y[i])
        })
        .count();
    correct as f64 / test.len().max(1) as f64
}
