//! The Cox baseline against lifelines' and scikit-survival's fits on the data of
//! `tools/make_cox_fixture.py` (fixtures/cox.json), to 1e-6.

use gimp_linear::{CoxConfig, CoxModel};
use serde_json::Value;

fn fixture() -> Value {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/cox.json"
    ))
    .unwrap();
    serde_json::from_str(&text).unwrap()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn data(case: &Value) -> (Vec<Vec<f64>>, Vec<f64>, Vec<bool>) {
    let x = case["x"].as_array().unwrap().iter().map(floats).collect();
    let event = case["event"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_bool().unwrap())
        .collect();
    (x, floats(&case["time"]), event)
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (j, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() < 1e-6, "{what}[{j}]: {g} vs {w}");
    }
}

/// lifelines standardises with the sample standard deviation, penalises on that scale and
/// reports coefficients on the original one: the same fit on columns standardised the same way.
fn check_lifelines(case: &Value) {
    let (x, time, event) = data(case);
    let (n, p) = (x.len(), x[0].len());
    let mean: Vec<f64> = (0..p)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let sd: Vec<f64> = (0..p)
        .map(|j| {
            let ss: f64 = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        })
        .collect();
    let z: Vec<Vec<f64>> = x
        .iter()
        .map(|r| (0..p).map(|j| (r[j] - mean[j]) / sd[j]).collect())
        .collect();
    let cfg = CoxConfig {
        penalty: case["penalizer"].as_f64().unwrap(),
        ..Default::default()
    };
    let m = CoxModel::fit(&z, &time, &event, cfg).unwrap();
    assert!(m.converged, "{} iterations", m.iterations);
    let original: Vec<f64> = m.coef.iter().zip(&sd).map(|(c, s)| c / s).collect();
    close(&original, &floats(&case["params"]), "coefficients");
    let want = case["log_likelihood"].as_f64().unwrap();
    assert!(
        (m.penalised_log_likelihood - want).abs() < 1e-6,
        "{} vs {want}",
        m.penalised_log_likelihood
    );
}

#[test]
fn equals_lifelines_with_fewer_covariates_than_patients() {
    check_lifelines(&fixture()["lifelines_untied"]);
}

#[test]
fn equals_lifelines_with_more_covariates_than_patients() {
    check_lifelines(&fixture()["lifelines_wide"]);
}

#[test]
fn equals_scikit_survival_breslow_with_tied_times() {
    let f = fixture();
    let case = &f["sksurv_ties"];
    let (x, time, event) = data(case);
    let cfg = CoxConfig {
        penalty: case["penalty"].as_f64().unwrap(),
        ..Default::default()
    };
    let m = CoxModel::fit(&x, &time, &event, cfg).unwrap();
    assert!(m.converged);
    close(&m.coef, &floats(&case["coef"]), "coefficients");
    let want = case["log_likelihood"].as_f64().unwrap();
    assert!(
        (m.log_likelihood - want).abs() < 1e-6,
        "{} vs {want}",
        m.log_likelihood
    );
}
