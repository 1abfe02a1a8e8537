//! The gene-only baseline over a cohort: which patients it may use, its splits (the cohort's
//! split files or k stratified folds), and per split the fit on the training part with metrics
//! on validation and test.

use crate::{fit_predict, LogisticConfig};
use gimp_cohort::split::{check_classes, make_splits, Scheme};
use gimp_cohort::Cohort;
use gimp_io::expression::ExpressionTransform;
use gimp_io::splits::Part;
use gimp_metrics::Report;
use serde::Serialize;
use std::collections::BTreeMap;

/// Why the baseline cannot run on a cohort.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BaselineError {
    #[error("the cohort has errors (see `gimp-rs cohort check`):\n  - {}", .0.join("\n  - "))]
    CohortErrors(Vec<String>),
    #[error("the cohort has no expression")]
    NoExpression,
    #[error(
        "the cohort lists no split files: add [splits], run `gimp-rs split`, or pass --kfold K"
    )]
    NoSplits,
    #[error("split {0} has no training or no test patients with expression")]
    EmptySplit(usize),
    #[error("--kfold: {0}")]
    Scheme(String),
}

/// One split of a patient-level split: patient index (in [`Cohort::patients`]) → part.
pub type Split = BTreeMap<usize, Part>;

#[derive(Debug, Clone, Serialize)]
pub struct FoldResult {
    pub fold: usize,
    /// Training patients with expression.
    pub train: usize,
    pub val: Option<Report>,
    pub test: Report,
    /// L-BFGS iterations of the fit.
    pub iterations: usize,
    pub converged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogregResult {
    pub classes: Vec<String>,
    pub genes: usize,
    pub folds: Vec<FoldResult>,
    pub test_accuracy_mean: f64,
    /// Sample standard deviation over the splits (0 for one split).
    pub test_accuracy_std: f64,
}

/// Fails when the cohort has errors other than patients with neither slides nor expression:
/// the baseline reads expression only, so such patients are simply not used.
pub fn check_cohort(c: &Cohort) -> Result<(), BaselineError> {
    let blocking = c
        .diagnostics
        .errors
        .iter()
        .any(|e| !e.contains("neither slide"));
    if blocking {
        return Err(BaselineError::CohortErrors(c.diagnostics.errors.clone()));
    }
    Ok(())
}

/// The splits to evaluate: `kfold` stratified folds with disjoint test sets and no validation
/// part (k is at least 2), else the cohort's split files.
pub fn splits(c: &Cohort, kfold: Option<usize>, seed: u64) -> Result<Vec<Split>, BaselineError> {
    match kfold {
        Some(k) => {
            let labels: Vec<usize> = c.patients.iter().map(|p| p.label).collect();
            let scheme = Scheme::KFold {
                k: k.max(2),
                val: 0.0,
            };
            check_classes(&labels, scheme).map_err(BaselineError::Scheme)?;
            Ok(make_splits(&labels, scheme, seed))
        }
        None if c.folds.is_empty() => Err(BaselineError::NoSplits),
        None => Ok(c.folds.iter().map(|f| f.part.clone()).collect()),
    }
}

/// Each patient's expression after `transform`; `None` without expression.
pub(crate) fn transformed_rows(
    c: &Cohort,
    transform: ExpressionTransform,
) -> Vec<Option<Vec<f32>>> {
    c.patients
        .iter()
        .map(|p| c.expression_of(p).map(|r| transform.apply_row(r)))
        .collect()
}

/// Split `k`'s training, validation and test patients that have expression (`rows`); an
/// empty training or test part is an error.
pub(crate) fn parts(
    split: &Split,
    rows: &[Option<Vec<f32>>],
    k: usize,
) -> Result<[Vec<usize>; 3], BaselineError> {
    let members = |part: Part| -> Vec<usize> {
        split
            .iter()
            .filter(|(i, p)| **p == part && rows[**i].is_some())
            .map(|(i, _)| *i)
            .collect()
    };
    let [train, val, test] = [Part::Train, Part::Val, Part::Test].map(members);
    if train.is_empty() || test.is_empty() {
        return Err(BaselineError::EmptySplit(k));
    }
    Ok([train, val, test])
}

/// Runs the baseline on every split of `splits`: expression transformed with `transform`, z-scored
/// with training statistics, fitted with `cfg`; metrics (bootstrap intervals seeded by `seed`) on
/// the validation part, when there is one, and the test part. Patients without expression are
/// left out.
pub fn cross_validate(
    c: &Cohort,
    splits: &[Split],
    cfg: LogisticConfig,
    transform: ExpressionTransform,
    seed: u64,
) -> Result<LogregResult, BaselineError> {
    let expr = c.expression.as_ref().ok_or(BaselineError::NoExpression)?;
    let rows = transformed_rows(c, transform);
    let labels: Vec<usize> = c.patients.iter().map(|p| p.label).collect();
    let nc = c.label_map.len();
    let mut out = Vec::new();
    for (k, split) in splits.iter().enumerate() {
        let [train, val, test] = parts(split, &rows, k)?;
        let get = |ids: &[usize]| -> Vec<&[f32]> {
            ids.iter().filter_map(|&i| rows[i].as_deref()).collect()
        };
        let label = |ids: &[usize]| -> Vec<usize> { ids.iter().map(|&i| labels[i]).collect() };
        // Validation and test are predicted in one pass, then split apart.
        let eval: Vec<usize> = val.iter().chain(&test).copied().collect();
        let (_, model, probs) = fit_predict(&get(&train), &label(&train), &get(&eval), nc, cfg);
        let (pv, pt) = probs.split_at(val.len());
        out.push(FoldResult {
            fold: k,
            train: train.len(),
            val: (!val.is_empty()).then(|| Report::new(&label(&val), pv, nc, seed)),
            test: Report::new(&label(&test), pt, nc, seed),
            iterations: model.iterations,
            converged: model.converged,
        });
    }
    let accs: Vec<f64> = out.iter().map(|f| f.test.accuracy.value).collect();
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    let std = if accs.len() > 1 {
        (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (accs.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(LogregResult {
        classes: c.label_map.names.clone(),
        genes: expr.n_genes(),
        folds: out,
        test_accuracy_mean: mean,
        test_accuracy_std: std,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimp_cohort::{CohortFile, LoadOptions};
    use std::fmt::Write as _;
    use std::path::Path;

    fn write(dir: &Path, rel: &str, text: &str) {
        std::fs::write(dir.join(rel), text).unwrap();
    }

    /// 24 patients in two classes told apart by gene A (linear scale, as FPKM), gene B noise;
    /// patient p24 is in the label table only.
    fn cohort(dir: &Path, splits: &str) -> Cohort {
        let mut labels = String::from("case_id,slide_id,label\n");
        let mut expr = String::from("case_id\tENSG01\tENSG02\n");
        for i in 0..24 {
            let class = ["A", "B"][i % 2];
            writeln!(labels, "p{i},s{i},{class}").unwrap();
            let a = if i % 2 == 0 { 3.0 } else { 1000.0 } + (i % 3) as f64;
            writeln!(expr, "p{i}\t{a}\t{}", (i * 7 % 5) as f64).unwrap();
        }
        writeln!(labels, "p24,s24,A").unwrap();
        write(dir, "dataset.csv", &labels);
        write(dir, "expr.tsv", &expr);
        write(
            dir,
            "cohort.toml",
            &format!(
                "[labels]\ncsv = \"dataset.csv\"\n[expression]\nmatrix = \"expr.tsv\"\n{splits}"
            ),
        );
        let file = CohortFile::load(&dir.join("cohort.toml")).unwrap();
        Cohort::load(file, LoadOptions::default()).unwrap()
    }

    #[test]
    fn kfold_baseline_separates_the_classes_on_every_fold() {
        let d = tempfile::tempdir().unwrap();
        let c = cohort(d.path(), "");
        // p24 has neither slides nor expression: an error the baseline tolerates.
        assert!(!c.diagnostics.errors.is_empty());
        check_cohort(&c).unwrap();
        assert_eq!(splits(&c, None, 1), Err(BaselineError::NoSplits));
        let s = splits(&c, Some(3), 1).unwrap();
        assert_eq!(s.len(), 3);
        let cfg = LogisticConfig {
            c: 1.0,
            ..Default::default()
        };
        let r = cross_validate(&c, &s, cfg, ExpressionTransform::Log2p1, 1).unwrap();
        assert_eq!((r.classes.len(), r.genes, r.folds.len()), (2, 2, 3));
        let mut tested = 0;
        for (k, f) in r.folds.iter().enumerate() {
            assert_eq!(f.fold, k);
            assert!(f.val.is_none() && f.converged);
            assert_eq!(f.test.accuracy.value, 1.0, "fold {k}: {f:?}");
            // Every patient with expression is either trained on or tested, never both.
            assert_eq!(f.train + f.test.n, 24);
            tested += f.test.n;
        }
        assert_eq!(
            tested, 24,
            "the folds' test sets are disjoint and cover the cohort"
        );
        assert_eq!((r.test_accuracy_mean, r.test_accuracy_std), (1.0, 0.0));
    }

    #[test]
    fn errors_name_the_problem() {
        let d = tempfile::tempdir().unwrap();
        let c = cohort(d.path(), "");
        // A split whose test part has only the patient without expression.
        let split: Split = (0..24)
            .map(|i| (i, Part::Train))
            .chain([(24, Part::Test)])
            .collect();
        let e = cross_validate(
            &c,
            &[split],
            LogisticConfig::default(),
            ExpressionTransform::None,
            1,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "split 0 has no training or no test patients with expression"
        );
        let bad = BaselineError::CohortErrors(vec!["x.csv: line 2: bad".into(), "y".into()]);
        assert_eq!(
            bad.to_string(),
            "the cohort has errors (see `gimp-rs cohort check`):\n  - x.csv: line 2: bad\n  - y"
        );
    }
}
