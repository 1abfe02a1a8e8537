//! The survival metrics against scikit-survival and lifelines on two fixed random cohorts
//! (`tools/make_survival_fixtures.py` wrote `fixtures/survival.json`): one with tied times (events
//! and censorings at the same time) and tied risks, one continuous.

use gimp_metrics::survival::{
    brier_score, concordance_bootstrap, concordance_index_censored, concordance_index_ipcw,
    cumulative_dynamic_auc, integrated_brier_score, logrank, KaplanMeier, Outcomes, TIED_TOL,
};
use serde_json::Value;

fn cases() -> Vec<Value> {
    let text = include_str!("fixtures/survival.json");
    let v: Value = serde_json::from_str(text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn bools(v: &Value) -> Vec<bool> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_bool().unwrap())
        .collect()
}

fn ints(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn rows(v: &Value) -> Vec<Vec<f64>> {
    v.as_array().unwrap().iter().map(floats).collect()
}

fn assert_close(name: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{name}: got {got}, scikit-survival/lifelines {want}"
    );
}

struct Case {
    name: String,
    train_time: Vec<f64>,
    train_event: Vec<bool>,
    time: Vec<f64>,
    event: Vec<bool>,
    risk: Vec<f64>,
    raw: Value,
}

impl Case {
    fn load(v: Value) -> Self {
        Self {
            name: v["name"].as_str().unwrap().to_string(),
            train_time: floats(&v["train_time"]),
            train_event: bools(&v["train_event"]),
            time: floats(&v["time"]),
            event: bools(&v["event"]),
            risk: floats(&v["risk"]),
            raw: v,
        }
    }
    fn train(&self) -> Outcomes<'_> {
        Outcomes::new(&self.train_time, &self.train_event).unwrap()
    }
    fn test(&self) -> Outcomes<'_> {
        Outcomes::new(&self.time, &self.event).unwrap()
    }
}

#[test]
fn harrell_matches_concordance_index_censored() {
    for case in cases().into_iter().map(Case::load) {
        let c = concordance_index_censored(case.test(), &case.risk, TIED_TOL).unwrap();
        let want = &case.raw["harrell"];
        assert_close(
            &case.name,
            c.cindex,
            want["cindex"].as_f64().unwrap(),
            1e-12,
        );
        assert_eq!(
            [c.concordant, c.discordant, c.tied_risk, c.tied_time],
            [
                want["concordant"].as_u64().unwrap() as usize,
                want["discordant"].as_u64().unwrap() as usize,
                want["tied_risk"].as_u64().unwrap() as usize,
                want["tied_time"].as_u64().unwrap() as usize,
            ],
            "{}",
            case.name
        );
    }
}

#[test]
fn uno_matches_concordance_index_ipcw() {
    for case in cases().into_iter().map(Case::load) {
        let all = concordance_index_ipcw(case.train(), case.test(), &case.risk, None, TIED_TOL);
        assert_close(
            &case.name,
            all.unwrap().cindex,
            case.raw["uno"].as_f64().unwrap(),
            1e-9,
        );
        let tau = case.raw["tau"].as_f64().unwrap();
        let truncated =
            concordance_index_ipcw(case.train(), case.test(), &case.risk, Some(tau), TIED_TOL);
        let want = case.raw["uno_tau"].as_f64().unwrap();
        assert_close(&case.name, truncated.unwrap().cindex, want, 1e-9);
    }
}

#[test]
fn kaplan_meier_matches_kaplan_meier_estimator() {
    for case in cases().into_iter().map(Case::load) {
        let km = KaplanMeier::fit(case.test());
        assert_eq!(km.time, floats(&case.raw["km_time"]), "{}", case.name);
        for (got, want) in km.survival.iter().zip(floats(&case.raw["km_survival"])) {
            assert_close(&case.name, *got, want, 1e-12);
        }
    }
}

#[test]
fn time_dependent_auc_and_brier_match_scikit_survival() {
    for case in cases().into_iter().map(Case::load) {
        let times = floats(&case.raw["times"]);
        let auc = cumulative_dynamic_auc(case.train(), case.test(), &case.risk, &times, TIED_TOL)
            .unwrap();
        for (got, want) in auc.auc.iter().zip(floats(&case.raw["auc"])) {
            assert_close(&case.name, *got, want, 1e-9);
        }
        assert_close(
            &case.name,
            auc.mean,
            case.raw["mean_auc"].as_f64().unwrap(),
            1e-9,
        );
        let surv = rows(&case.raw["survival_probability"]);
        let brier = brier_score(case.train(), case.test(), &surv, &times).unwrap();
        for (got, want) in brier.iter().zip(floats(&case.raw["brier"])) {
            assert_close(&case.name, *got, want, 1e-9);
        }
        let ibs = integrated_brier_score(case.train(), case.test(), &surv, &times).unwrap();
        assert_close(
            &case.name,
            ibs,
            case.raw["integrated_brier"].as_f64().unwrap(),
            1e-9,
        );
    }
}

#[test]
fn logrank_matches_lifelines() {
    for case in cases().into_iter().map(Case::load) {
        for key in ["two", "three", "four"] {
            let groups = ints(&case.raw[format!("groups_{key}").as_str()]);
            let got = logrank(case.test(), &groups).unwrap();
            let want = &case.raw[format!("logrank_{key}").as_str()];
            let label = format!("{} {key}", case.name);
            assert_close(
                &label,
                got.statistic,
                want["statistic"].as_f64().unwrap(),
                1e-9,
            );
            // Relative: p-values are small.
            let p = want["p"].as_f64().unwrap();
            assert!(
                (got.p - p).abs() <= 1e-9 * p,
                "{label}: p {} vs lifelines {p}",
                got.p
            );
        }
    }
}

#[test]
fn concordance_bootstrap_is_seeded_and_brackets_the_value() {
    let case = Case::load(cases().remove(0));
    let a = concordance_bootstrap(case.test(), &case.risk, 200, 7).unwrap();
    let b = concordance_bootstrap(case.test(), &case.risk, 200, 7).unwrap();
    assert_eq!(a, b);
    assert!(a.low < a.value && a.value < a.high, "{a:?}");
    let c = concordance_bootstrap(case.test(), &case.risk, 200, 8).unwrap();
    assert_ne!(a, c);
}
