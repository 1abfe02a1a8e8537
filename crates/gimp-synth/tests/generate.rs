//! The generator writes a complete cohort that the cohort loader reads without errors, and the
//! same seed gives byte-identical files.

use gimp_cohort::{Cohort, CohortFile, LoadOptions};
use gimp_synth::{generate, Difficulty, Size, SynthConfig};
use std::collections::BTreeMap;
use std::path::Path;

fn small(seed: u64) -> SynthConfig {
    let mut cfg = SynthConfig::new(Difficulty::Paper, Size::Demo, seed);
    cfg.n_patients = 24;
    cfg.patches_min = 30;
    cfg.patches_max = 200;
    cfg.d_in = 32;
    cfg.n_genes = 300;
    cfg.gdc_fraction = 0.25;
    cfg.write_pt = true;
    cfg
}

fn digest(dir: &Path) -> BTreeMap<String, Vec<u8>> {
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

#[test]
fn same_seed_gives_identical_bytes_and_other_seed_differs() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    generate(&small(5), a.path(), &|_, _| {}).unwrap();
    generate(&small(5), b.path(), &|_, _| {}).unwrap();
    generate(&small(6), c.path(), &|_, _| {}).unwrap();
    let (da, db, dc) = (digest(a.path()), digest(b.path()), digest(c.path()));
    assert_eq!(da.keys().collect::<Vec<_>>(), db.keys().collect::<Vec<_>>());
    for (k, v) in &da {
        assert!(v == &db[k], "{k} differs between two runs with one seed");
    }
    assert_ne!(da.get("dataset.csv"), None);
    assert_ne!(
        da["expression/matrix.tsv.gz"],
        dc["expression/matrix.tsv.gz"]
    );
}

#[test]
fn generated_cohort_loads_cleanly_with_every_layout() {
    let dir = tempfile::tempdir().unwrap();
    let report = generate(&small(9), dir.path(), &|_, _| {}).unwrap();
    assert!(report.gdc_samples > 0 && report.matrix_samples > 0);
    for sub in [
        "features/h5_files",
        "features/pt_files",
        "patches",
        "truth",
        "splits",
        "expression/gdc",
    ] {
        assert!(dir.path().join(sub).is_dir(), "{sub} missing");
    }
    let file = CohortFile::load(&dir.path().join("cohort.toml")).unwrap();
    let cohort = Cohort::load(
        file,
        LoadOptions {
            read_shapes: true,
            deep: true,
        },
    )
    .unwrap();
    assert!(
        cohort.diagnostics.errors.is_empty(),
        "{:?}",
        cohort.diagnostics.errors
    );
    assert_eq!(cohort.patients.len(), 24);
    assert_eq!(cohort.feature_dim, Some(32));
    assert!(cohort
        .patients
        .iter()
        .all(|p| p.has_slides() && p.has_expression()));
    assert_eq!(cohort.expression.as_ref().unwrap().n_genes(), 300);
    assert_eq!(cohort.folds.len(), 1);
    // Truth files line up 1:1 with the feature rows.
    let p = &cohort.patients[0];
    let s = &p.slides[0];
    let truth =
        std::fs::read_to_string(dir.path().join("truth").join(format!("{}.tsv", s.slide_id)))
            .unwrap();
    assert_eq!(truth.lines().count() - 1, s.shape.unwrap().0);
}

#[test]
fn missing_modalities_are_written_as_absent_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small(3);
    cfg.missing_expression = 0.25;
    cfg.missing_slide = 0.25;
    generate(&cfg, dir.path(), &|_, _| {}).unwrap();
    let file = CohortFile::load(&dir.path().join("cohort.toml")).unwrap();
    let cohort = Cohort::load(file, LoadOptions::default()).unwrap();
    assert!(
        cohort.diagnostics.errors.is_empty(),
        "{:?}",
        cohort.diagnostics.errors
    );
    let no_expr = cohort
        .patients
        .iter()
        .filter(|p| !p.has_expression())
        .count();
    let no_slide = cohort.patients.iter().filter(|p| !p.has_slides()).count();
    assert_eq!((no_expr, no_slide), (6, 6));
}
