//! The registry is the only place that knows the list of models, and a model's file the only
//! place that knows the model: checked on the workspace's source.

use gimp_models::REGISTRY;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `src/` file of every crate, with its path relative to `crates/`.
fn workspace_sources() -> Vec<(String, String)> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in std::fs::read_dir(&crates).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            sources(&src, &mut files);
        }
    }
    assert!(files.len() > 50, "found only {} source files", files.len());
    files
        .into_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(&crates)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn nothing_outside_gimp_models_matches_on_an_architecture_name() {
    let mut found = Vec::new();
    for (path, text) in workspace_sources() {
        if path.starts_with("gimp-models/") {
            continue;
        }
        for arch in REGISTRY {
            let quoted = format!("\"{}\"", arch.name);
            for pattern in [
                format!("{quoted} =>"),
                format!("{quoted} |"),
                format!("| {quoted}"),
                format!("== {quoted}"),
                format!("!= {quoted}"),
            ] {
                if text.contains(&pattern) {
                    found.push(format!("{path}: {pattern}"));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "architecture names matched outside gimp-models: {found:?}"
    );
}

/// `mean_mil` was added as the docs say a model is added: its own file, its module line and its
/// registry line. No other source file may need to know it.
#[test]
fn adding_a_model_takes_one_file_and_one_registry_line() {
    assert!(REGISTRY.iter().any(|a| a.name == "mean_mil"));
    let mut mentions = Vec::new();
    for (path, text) in workspace_sources() {
        for (n, line) in text.lines().enumerate() {
            if line.contains("mean_mil") || line.contains("MeanMil") {
                mentions.push((path.clone(), n, line.trim().to_string()));
            }
        }
    }
    let mut outside: Vec<_> = mentions
        .iter()
        .filter(|(p, _, _)| p != "gimp-models/src/mean_mil.rs")
        .collect();
    outside.sort();
    assert_eq!(
        outside
            .iter()
            .map(|(p, _, l)| (p.as_str(), l.as_str()))
            .collect::<Vec<_>>(),
        vec![
            ("gimp-models/src/lib.rs", "pub mod mean_mil;"),
            ("gimp-models/src/registry.rs", "&crate::mean_mil::ARCH,"),
        ]
    );
}

#[test]
fn names_are_unique_and_every_model_describes_itself() {
    let mut names: Vec<&str> = REGISTRY.iter().map(|a| a.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), REGISTRY.len());
    for a in REGISTRY {
        assert!(
            !a.summary.is_empty() && !a.reference.is_empty(),
            "{}",
            a.name
        );
        let cfg = (a.default_config)(gimp_models::Dims::both(16), 2);
        assert!(cfg.is_object(), "{}: default config {cfg}", a.name);
    }
}
