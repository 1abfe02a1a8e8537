//! Patient-level, label-stratified splits: the paper's single 60/20/20 hold-out split and k folds
//! whose test sets are disjoint (validation carved from each fold's training part).

use crate::listing::list_some;
use gimp_io::splits::{self, Part, SplitFormat};
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

/// Refuses k folds with fewer events than folds: some test parts would have no event, and no
/// concordance index.
pub fn check_events(event: &[bool], scheme: Scheme) -> Result<(), String> {
    let events = event.iter().filter(|&&e| e).count();
    match scheme {
        Scheme::KFold { k, .. } if events < k => Err(format!(
            "{k} folds need at least {k} patients with an event, but the cohort has {events}"
        )),
        _ if events == 0 => Err("no patient has an event: survival cannot be evaluated".into()),
        _ => Ok(()),
    }
}

/// Refuses a scheme that cannot give every split training and test patients of every class:
/// k folds need at least k patients in the smallest class (else some folds' test parts lack that
/// class, or are empty). The error names the class by index, its size and k.
pub fn check_classes(labels: &[usize], scheme: Scheme) -> Result<(), String> {
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

/// Checks a split file, or a folder of them, alone or against a cohort's patients (its
/// [`crate::Cohort::patient_ids`]).
pub fn check_split_files(path: &Path, cohort: Option<&PatientIds>) -> gimp_io::Result<SplitCheck> {
    let files = if path.is_dir() {
        crate::config::split_files_in(path)?
    } else {
        vec![path.to_path_buf()]
    };
    let mut check = SplitCheck {
        files: files.clone(),
        ..Default::default()
    };
    let Some(ids) = cohort else {
        for f in &files {
            check.problems.extend(check_split_standalone(f)?.1);
        }
        return Ok(check);
    };
    let mut folds = Vec::new();
    for f in &files {
        let (fold, p) = resolve_split(f, ids)?;
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

/// Who a split file's ids can name: each patient's case id (by patient index), and the patient
/// of each case id and of each slide id.
#[derive(Debug, Clone, Default)]
pub struct PatientIds {
    pub case_ids: Vec<String>,
    pub by_case: HashMap<String, usize>,
    pub by_slide: HashMap<String, usize>,
}

/// One split (a fold) resolved to patients.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    pub file: PathBuf,
    pub format: SplitFormat,
    /// Part of every patient listed (by index into [`Cohort::patients`]).
    pub part: BTreeMap<usize, Part>,
}

impl Fold {
    pub fn patients(&self, part: Part) -> Vec<usize> {
        self.part
            .iter()
            .filter(|(_, p)| **p == part)
            .map(|(i, _)| *i)
            .collect()
    }
}

/// Number of patients in more than one fold's test part.
pub fn test_overlap(folds: &[Fold]) -> usize {
    let mut count: HashMap<usize, usize> = HashMap::new();
    for f in folds {
        for i in f.patients(Part::Test) {
            *count.entry(i).or_default() += 1;
        }
    }
    count.values().filter(|c| **c > 1).count()
}

/// Resolves a split file's ids (slide ids or case ids) to patients. Returns the fold and the
/// problems found: unknown ids, and patients in more than one part (directly, or through two of
/// their slides — the leak that inflates MIL results).
pub fn resolve_split(path: &Path, patients: &PatientIds) -> gimp_io::Result<(Fold, Vec<String>)> {
    let (format, file) = splits::read_split(path)?;
    let mut problems = Vec::new();
    let mut part: BTreeMap<usize, (Part, String, u64)> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (p, ids) in &file.parts {
        for (id, line) in ids {
            let who = patients
                .by_slide
                .get(id)
                .or_else(|| patients.by_case.get(id))
                .copied();
            let Some(pi) = who else {
                unknown.push(format!("'{id}' (line {line})"));
                continue;
            };
            match part.get(&pi) {
                Some((q, other, l)) if q != p => problems.push(format!(
                    "{}: line {line}: patient '{}' is in {} through '{id}' and in {} through '{other}' (line {l})",
                    path.display(),
                    patients.case_ids[pi],
                    p.name(),
                    q.name()
                )),
                Some(_) => {}
                None => {
                    part.insert(pi, (*p, id.clone(), *line));
                }
            }
        }
    }
    if !unknown.is_empty() {
        problems.push(format!(
            "{}: {} id(s) are neither a slide_id nor a case_id of the dataset: {}",
            path.display(),
            unknown.len(),
            list_some(&unknown)
        ));
    }
    problems.extend(empty_parts(path, format, &file));
    Ok((
        Fold {
            file: path.to_path_buf(),
            format,
            part: part.into_iter().map(|(k, (p, _, _))| (k, p)).collect(),
        },
        problems,
    ))
}

/// A split without training or without evaluation patients cannot be trained and evaluated
/// honestly (k folds over too few patients write such files). The evaluation part is the test
/// column, or MCAT's `val` (its layout has no test column).
fn empty_parts(path: &Path, format: SplitFormat, file: &splits::SplitFile) -> Vec<String> {
    let evaluated = match format {
        SplitFormat::Mcat => Part::Val,
        _ => Part::Test,
    };
    [Part::Train, evaluated]
        .into_iter()
        .filter(|p| file.parts.get(p).is_none_or(|ids| ids.is_empty()))
        .map(|p| format!("{}: the {} part is empty", path.display(), p.name()))
        .collect()
}

/// Checks one split file without a cohort: an id listed in two parts, an empty training or test
/// part.
pub fn check_split_standalone(path: &Path) -> gimp_io::Result<(SplitFormat, Vec<String>)> {
    let (format, file) = splits::read_split(path)?;
    let mut seen: HashMap<&str, (Part, u64)> = HashMap::new();
    let mut problems = empty_parts(path, format, &file);
    for (p, ids) in &file.parts {
        for (id, line) in ids {
            if let Some((q, l)) = seen.get(id.as_str()) {
                problems.push(format!(
                    "{}: line {line}: '{id}' is in {} and also in {} (line {l})",
                    path.display(),
                    p.name(),
                    q.name()
                ));
            } else {
                seen.insert(id, (*p, *line));
            }
        }
    }
    Ok((format, problems))
}
