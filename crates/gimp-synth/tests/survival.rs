//! The synthetic cohort's survival outcomes: drawn apart from everything else (adding them
//! changes no other byte), censored near the configured rate, and carrying a truth a model can
//! rank patients by; written as MCAT's columns that the cohort loader reads back.

use gimp_cohort::{Cohort, LoadOptions};
use gimp_synth::{generate, model, survival, Difficulty, Size, SurvivalSettings, SynthConfig};
use std::collections::BTreeMap;
use std::path::Path;

fn small(seed: u64) -> SynthConfig {
    let mut cfg = SynthConfig::new(Difficulty::Paper, Size::Demo, seed);
    cfg.n_patients = 40;
    cfg.patches_min = 10;
    cfg.patches_max = 40;
    cfg.d_in = 8;
    cfg.n_genes = 200;
    cfg.gdc_fraction = 0.2;
    cfg.missing_slide = 0.1;
    cfg
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The first `n` fields of every line, split on `sep`.
fn columns(bytes: &[u8], sep: char, n: usize) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(|l| l.split(sep).take(n).collect::<Vec<_>>().join(","))
        .collect()
}

#[test]
fn survival_adds_columns_and_changes_no_other_byte() {
    let (with, without) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let cfg = small(3);
    let mut plain = cfg.clone();
    plain.survival = None;
    let report = generate(&cfg, with.path(), &|_, _| {}).unwrap();
    let plain_report = generate(&plain, without.path(), &|_, _| {}).unwrap();
    assert_eq!(
        (plain_report.events, plain_report.truth_cindex),
        (None, None)
    );
    let (a, b) = (files(with.path()), files(without.path()));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    let grown = ["dataset.csv", "cohort.toml", "truth/patients.tsv"];
    for (k, v) in &a {
        if !grown.contains(&k.as_str()) {
            assert!(v == &b[k], "{k} changed when survival was added");
        }
    }
    assert_eq!(
        columns(&a["dataset.csv"], ',', 3),
        columns(&b["dataset.csv"], ',', 3)
    );
    assert_eq!(
        columns(&a["truth/patients.tsv"], '\t', 7),
        columns(&b["truth/patients.tsv"], '\t', 7)
    );
    // The cohort file only gains lines ([survival] and the generator's survival settings).
    let with_toml = String::from_utf8_lossy(&a["cohort.toml"]).into_owned();
    let mut rest = with_toml.lines();
    for line in String::from_utf8_lossy(&b["cohort.toml"]).lines() {
        assert!(rest.any(|l| l == line), "cohort.toml lost '{line}'");
    }
    assert!(with_toml.contains("[survival]") && with_toml.contains("censorship_column"));

    // The loader reads the outcomes back: the written times are the truth table's, rounded.
    let c = Cohort::open(&with.path().join("cohort.toml"), LoadOptions::default()).unwrap();
    assert!(
        c.diagnostics.errors.is_empty(),
        "{:?}",
        c.diagnostics.errors
    );
    let outcomes = c.survival.as_ref().unwrap();
    assert_eq!(outcomes.len(), 40);
    let events = outcomes.iter().filter(|o| o.event).count();
    assert_eq!(Some(events), report.events);
    let truth = String::from_utf8_lossy(&a["truth/patients.tsv"]).into_owned();
    let header: Vec<&str> = truth.lines().next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for (line, patient) in truth.lines().skip(1).zip(&c.patients) {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f[0], patient.case_id);
        let o = outcomes[c.patients.iter().position(|p| p.case_id == f[0]).unwrap()];
        let event: f64 = f[col("event_months")].parse().unwrap();
        let censoring: f64 = f[col("censoring_months")].parse().unwrap();
        assert_eq!(o.event, event <= censoring, "{line}");
        assert!((o.time - event.min(censoring)).abs() <= 0.006, "{line}");
    }
}

#[test]
fn censoring_is_near_the_target_and_the_truth_ranks_patients() {
    for (seed, target) in [(1u64, 0.3), (2, 0.6)] {
        let mut cfg = SynthConfig::new(Difficulty::Paper, Size::Demo, seed);
        cfg.n_patients = 2000;
        let settings = SurvivalSettings {
            censoring_rate: target,
            ..Default::default()
        };
        let patients = model::patients(&cfg);
        let outcomes = survival::outcomes(&cfg, &settings, &patients);
        // Same settings and seed, same outcomes.
        assert_eq!(outcomes, survival::outcomes(&cfg, &settings, &patients));
        let censored = outcomes.iter().filter(|o| o.censored).count() as f64 / 2000.0;
        // Binomial standard deviation at n = 2000 is about 0.011.
        assert!((censored - target).abs() < 0.035, "{censored} vs {target}");
        let truth = survival::truth_cindex(&outcomes).unwrap();
        assert!(truth > 0.68, "c-index of the truth {truth}");
        // The class raises the hazard of the second class, as configured.
        let mean = |class: usize| {
            let v: Vec<f64> = patients
                .iter()
                .zip(&outcomes)
                .filter(|(p, _)| p.true_class == class)
                .map(|(_, o)| o.log_hazard)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        assert!(mean(1) - mean(0) > 0.5, "{} {}", mean(0), mean(1));
        // Without censoring every patient has an event.
        let none = SurvivalSettings {
            censoring_rate: 0.0,
            ..Default::default()
        };
        assert!(survival::outcomes(&cfg, &none, &patients[..50])
            .iter()
            .all(|o| !o.censored));
    }
}

#[test]
fn bad_survival_settings_are_refused() {
    let mut cfg = small(1);
    cfg.survival.as_mut().unwrap().censoring_rate = 1.0;
    assert!(cfg.validate().unwrap_err().contains("censoring_rate"));
    let mut cfg = small(1);
    cfg.survival.as_mut().unwrap().shape = 0.0;
    assert!(cfg.validate().unwrap_err().contains("shape"));
}
