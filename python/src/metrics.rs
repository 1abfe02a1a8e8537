//! gimp-metrics from Python: the same numbers, intervals and seeds as every report of the CLI.

use crate::arrays;
use crate::boundary::detached;
use crate::values;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(accuracy, m)?)?;
    m.add_function(wrap_pyfunction!(roc_auc, m)?)?;
    m.add_function(wrap_pyfunction!(report, m)?)?;
    m.add_function(wrap_pyfunction!(delong, m)?)?;
    Ok(())
}

/// Labels and probabilities of the same patients, checked against each other.
fn labelled(
    labels: &Bound<'_, PyAny>,
    probabilities: &Bound<'_, PyAny>,
) -> PyResult<(Vec<usize>, Vec<Vec<f64>>, usize)> {
    let y = arrays::labels("labels", labels)?;
    let p = arrays::probabilities("probabilities", probabilities)?;
    if y.len() != p.len() {
        return Err(PyValueError::new_err(format!(
            "probabilities: {} rows for {} labels",
            p.len(),
            y.len()
        )));
    }
    if y.is_empty() {
        return Err(PyValueError::new_err("labels: no patients"));
    }
    let nc = p[0].len();
    if let Some((i, &l)) = y.iter().enumerate().find(|(_, &l)| l >= nc) {
        return Err(PyValueError::new_err(format!(
            "labels[{i}]: class {l}, but probabilities have {nc} classes"
        )));
    }
    Ok((y, p, nc))
}

/// Accuracy of `predicted` against `labels` (1-D integer arrays) with its 95% Wilson score
/// interval: `{"value", "low", "high"}`.
#[pyfunction]
fn accuracy(
    py: Python<'_>,
    labels: &Bound<'_, PyAny>,
    predicted: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let y = arrays::labels("labels", labels)?;
    let p = arrays::labels("predicted", predicted)?;
    if y.len() != p.len() {
        return Err(PyValueError::new_err(format!(
            "predicted: {} values for {} labels",
            p.len(),
            y.len()
        )));
    }
    let k = y.iter().zip(&p).filter(|(a, b)| a == b).count();
    let e = detached(py, || Ok(gimp_metrics::wilson(k, y.len())))?;
    values::serialised(py, &e)
}

/// ROC-AUC of class probabilities `[N, C]` (one-vs-rest macro average for more than two
/// classes, as scikit-learn) with a 95% percentile-bootstrap interval over patients
/// (`resamples` draws from a ChaCha8 stream seeded by `seed`): `{"value", "low", "high"}`, or
/// None when a class is absent from `labels`.
#[pyfunction]
#[pyo3(signature = (labels, probabilities, *, seed = 0, resamples = 1000))]
fn roc_auc(
    py: Python<'_>,
    labels: &Bound<'_, PyAny>,
    probabilities: &Bound<'_, PyAny>,
    seed: u64,
    resamples: usize,
) -> PyResult<Py<PyAny>> {
    let (y, p, nc) = labelled(labels, probabilities)?;
    let e = detached(py, || {
        Ok(gimp_metrics::roc_auc_bootstrap(&y, &p, nc, resamples, seed))
    })?;
    values::serialised(py, &e)
}

/// Every metric the CLI reports for a set of patients: `n`, `accuracy` (Wilson interval),
/// `balanced_accuracy`, `roc_auc` (bootstrap interval, 1000 resamples seeded by `seed`),
/// `macro_f1` and `confusion[true][predicted]`; the prediction is each row's most probable
/// class.
#[pyfunction]
#[pyo3(signature = (labels, probabilities, *, seed = 0))]
fn report(
    py: Python<'_>,
    labels: &Bound<'_, PyAny>,
    probabilities: &Bound<'_, PyAny>,
    seed: u64,
) -> PyResult<Py<PyAny>> {
    let (y, p, nc) = labelled(labels, probabilities)?;
    let r = detached(py, || Ok(gimp_metrics::Report::new(&y, &p, nc, seed)))?;
    values::serialised(py, &r)
}

/// DeLong's test of two models' ROC-AUCs on the same patients: `positive` (1-D bool or 0/1
/// array) and the two models' scores for the positive class. Returns `{"auc_a", "auc_b",
/// "difference", "se", "z", "p"}`, or None when one class is absent.
#[pyfunction]
fn delong(
    py: Python<'_>,
    positive: &Bound<'_, PyAny>,
    a: &Bound<'_, PyAny>,
    b: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let pos: Vec<bool> = match arrays::labels("positive", positive) {
        Ok(v) => v.into_iter().map(|x| x != 0).collect(),
        Err(_) => positive.extract::<Vec<bool>>().map_err(|_| {
            PyValueError::new_err("positive: expected a 1-D bool or 0/1 integer array")
        })?,
    };
    let scores = |name: &str, o: &Bound<'_, PyAny>| -> PyResult<Vec<f64>> {
        let v: Vec<f64> = o.extract().map_err(|_| {
            PyValueError::new_err(format!("{name}: expected a 1-D float array of scores"))
        })?;
        if v.len() != pos.len() {
            return Err(PyValueError::new_err(format!(
                "{name}: {} scores for {} patients",
                v.len(),
                pos.len()
            )));
        }
        Ok(v)
    };
    let (sa, sb) = (scores("a", a)?, scores("b", b)?);
    let d = detached(py, || Ok(gimp_metrics::delong(&pos, &sa, &sb)))?;
    values::serialised(py, &d)
}
