//! Patient-level, label-stratified splits: the paper's single 60/20/20 hold-out split and k folds
//! whose test sets are disjoint (validation carved from each fold's training part).

use crate::cohort::{check_split_standalone, resolve_split, test_overlap, Cohort};
use gimp_io::splits::Part;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// One split with these fractions (train = the rest).
    Holdout { val: f64, test: f64 },
    /// k folds; fold i's test set is the i-th k-th of each class; `val` is the fraction of the
    /// remaining patients of each class kept for validation.
    KFold { k: usize, val: f64 },
}

impl Scheme {
    /// One split with these validation and test fractions, checked.
    pub fn holdout(val: f64, test: f64) -> Result<Self, String> {
        if !(0.0..1.0).contains(&(val + test)) || val < 0.0 || test <= 0.0 {
            return Err(format!(
                "validation {val} and test {test} must be non-negative fractions, test above 0, summing to less than 1"
            ));
        }
        Ok(Scheme::Holdout { val, test })
    }

    /// `k` folds (at least 2) with this fraction of each training part kept for validation.
    pub fn kfold(k: usize, val: f64) -> Result<Self, String> {
        if k < 2 {
            return Err(format!("{k} folds: k-fold needs at least 2"));
        }
        if !(0.0..1.0).contains(&val) {
            return Err(format!("validation fraction {val}: must be in [0, 1)"));
        }
        Ok(Scheme::KFold { k, val })
    }

    /// The paper's protocol (`docs/DESIGN.md` §11): one stratified 60/20/20 split.
    pub const PAPER: Scheme = Scheme::Holdout {
        val: 0.2,
        test: 0.2,
    };
}

/// Refuses a scheme that cannot give every split training and test patients of every class:
/// k folds need at least k patients in the smallest class (else some folds' test parts lack that
/// class, or are empty). The error names the class by index, its size and k.
pub fn check_scheme(labels: &[usize], scheme: Scheme) -> Result<(), String> {
    let Scheme::KFold { k, .. } = scheme else {
        return Ok(());
    };
    let n_classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut sizes = vec![0usize; n_classes];
    for &l in labels {
        sizes[l] += 1;
    }
    let smallest = sizes
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .min_by_key(|(_, n)| **n);
    match smallest {
        Some((class, &n)) if n < k => Err(format!(
            "{k} folds need at least {k} patients in every class, but class {class} has {n}: use at most {n} folds"
        )),
        None => Err("no labelled patient to split".into()),
        _ => Ok(()),
    }
}

/// Part of every patient, per split. `labels[i]` is patient i's class.
pub fn make_splits(labels: &[usize], scheme: Scheme, seed: u64) -> Vec<BTreeMap<usize, Part>> {
    let n_classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l].push(i);
    }
    for members in by_class.iter_mut() {
        members.shuffle(&mut rng);
    }
    match scheme {
        Scheme::Holdout { val, test } => {
            let mut out = BTreeMap::new();
            for members in &by_class {
                let n = members.len();
                let n_test = (n as f64 * test).round() as usize;
                let n_val = ((n as f64 * val).round() as usize).min(n - n_test);
                for (j, &i) in members.iter().enumerate() {
                    let part = if j < n_test {
                        Part::Test
                    } else if j < n_test + n_val {
                        Part::Val
                    } else {
                        Part::Train
                    };
                    out.insert(i, part);
                }
            }
            vec![out]
        }
        Scheme::KFold { k, val } => {
            let k = k.max(2);
            // Deal patients to folds class by class, continuing the deal across classes so fold
            // sizes differ by at most one.
            let mut fold_of = vec![0usize; labels.len()];
            let mut next = 0usize;
            for members in &by_class {
                for &i in members {
                    fold_of[i] = next % k;
                    next += 1;
                }
            }
            (0..k)
                .map(|f| {
                    let mut out = BTreeMap::new();
                    for members in &by_class {
                        let rest: Vec<usize> = members
                            .iter()
                            .copied()
                            .filter(|&i| fold_of[i] != f)
                            .collect();
                        let n_val = (rest.len() as f64 * val).round() as usize;
                        for &i in members.iter().filter(|&&i| fold_of[i] == f) {
                            out.insert(i, Part::Test);
                        }
                        for (j, &i) in rest.iter().enumerate() {
                            out.insert(i, if j < n_val { Part::Val } else { Part::Train });
                        }
                    }
                    out
                })
                .collect()
        }
    }
}

/// Patients per part of one written split file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// Writes `splits` of `c`'s patients as CLAM split files (`splits_{k}.csv`, `_bool.csv`,
/// `_descriptor.csv`) in `out`: patients are listed by their slide ids, as CLAM lists them, and a
/// patient without slides by case id.
pub fn write_splits(
    c: &Cohort,
    splits: &[BTreeMap<usize, Part>],
    out: &Path,
) -> gimp_io::Result<Vec<PartCounts>> {
    let mut label_of: HashMap<String, String> = HashMap::new();
    for p in &c.patients {
        let name = c.label_map.names[p.label].clone();
        label_of.insert(p.case_id.clone(), name.clone());
        for s in &p.slides {
            label_of.insert(s.slide_id.clone(), name.clone());
        }
    }
    let mut counts = Vec::with_capacity(splits.len());
    for (k, split) in splits.iter().enumerate() {
        let mut parts: BTreeMap<Part, Vec<String>> = BTreeMap::new();
        for (i, part) in split {
            let p = &c.patients[*i];
            let ids = parts.entry(*part).or_default();
            if p.slides.is_empty() {
                ids.push(p.case_id.clone());
            }
            ids.extend(p.slides.iter().map(|s| s.slide_id.clone()));
        }
        gimp_io::splits::write_clam_split(out, k, &parts, &c.label_map.names, &|s| {
            label_of.get(s).cloned()
        })?;
        let count = |part| split.values().filter(|p| **p == part).count();
        counts.push(PartCounts {
            train: count(Part::Train),
            val: count(Part::Val),
            test: count(Part::Test),
        });
    }
    Ok(counts)
}

/// What `split check` finds in split files.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SplitCheck {
    pub files: Vec<PathBuf>,
    /// Leaks and unusable splits: an id in two parts (with a cohort: a patient in two parts
    /// through different slides), ids no patient has, an empty training or test part.
    pub problems: Vec<String>,
    /// Test sets shared between folds (repeated sub-sampling rather than k-fold).
    pub warnings: Vec<String>,
}

/// Checks a split file, or a folder of them, alone or against a cohort's patients.
pub fn check_split_files(path: &Path, cohort: Option<&Cohort>) -> gimp_io::Result<SplitCheck> {
    let files = if path.is_dir() {
        crate::config::split_files_in(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut check = SplitCheck {
        files: files.clone(),
        ..Default::default()
    };
    let Some(c) = cohort else {
        for f in &files {
            check.problems.extend(check_split_standalone(f)?.1);
        }
        return Ok(check);
    };
    let index: HashMap<String, usize> = c
        .patients
        .iter()
        .enumerate()
        .map(|(i, p)| (p.case_id.clone(), i))
        .collect();
    let owner: HashMap<String, usize> = c
        .patients
        .iter()
        .enumerate()
        .flat_map(|(i, p)| p.slides.iter().map(move |s| (s.slide_id.clone(), i)))
        .collect();
    let mut folds = Vec::new();
    for f in &files {
        let (fold, p) = resolve_split(f, &c.patients, &index, &owner)?;
        check.problems.extend(p);
        folds.push(fold);
    }
    let overlap = test_overlap(&folds);
    if overlap > 0 {
        check.warnings.push(format!(
            "{overlap} patient(s) are in the test part of more than one split (repeated sub-sampling, not k-fold)"
        ));
    }
    Ok(check)
}
