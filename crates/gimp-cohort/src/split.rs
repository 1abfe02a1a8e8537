//! Patient-level, label-stratified splits: the paper's single 60/20/20 hold-out split and k folds
//! whose test sets are disjoint (validation carved from each fold's training part).

use gimp_io::splits::Part;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scheme {
    /// One split with these fractions (train = the rest).
    Holdout { val: f64, test: f64 },
    /// k folds; fold i's test set is the i-th k-th of each class; `val` is the fraction of the
    /// remaining patients of each class kept for validation.
    KFold { k: usize, val: f64 },
}

impl Scheme {
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
