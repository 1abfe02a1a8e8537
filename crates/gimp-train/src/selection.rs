//! Model selection inside the training part (`docs/DESIGN.md` §41), as a careful analyst does it
//! by hand: the split's training and validation patients are dealt into inner folds (stratified,
//! seeded), every candidate of a small grid is trained through the one loop on each inner
//! training part and scored after every epoch on its inner validation fold with the task's
//! validation figure, and the best candidate and epoch count are then trained on all the
//! training and validation patients. The split's test part is never read: every part made here
//! is built from `train ∪ val`, with expression statistics (and the most variable genes) of its
//! own training patients only.
//!
//! How a candidate is trained is the caller's ([`Fit`]): the supervised trainer passes its own
//! training, so this module knows nothing of models.

use crate::config::{CandidateScore, Chosen, GeneSelection, Selection, SupervisedConfig};
use crate::data::{standardise, Prepared};
use crate::error::{Result, TrainError};
use crate::task::Task;
use gimp_nn::checkpoint::Preprocessing;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// One inner fit's validation after every epoch: (figure, mean loss), and the figure's name.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    /// Before the first step, where that is a model worth choosing (a linear start,
    /// `docs/DESIGN.md` §43: the linear model alone).
    pub start: Option<(f64, f64)>,
    pub epochs: Vec<(f64, f64)>,
    pub figure_name: &'static str,
}

/// How a candidate is trained: `(part, settings, inner fold)` → its validation curve. The part's
/// `val` is the inner validation fold and its `test` is empty.
pub type Fit<'a> = &'a dyn Fn(&Prepared, &SupervisedConfig, usize) -> Result<Curve>;

/// Seed offset of the inner folds' random stream (the run's seed XOR this).
const FOLD_SEED: u64 = 0x5e1e_c7ed;

/// The patients selection may read: the split's training and validation parts, in order.
pub fn training_part(data: &Prepared) -> Vec<usize> {
    let mut pool: Vec<usize> = data.train.iter().chain(&data.val).copied().collect();
    pool.sort_unstable();
    pool.dedup();
    pool
}

/// `k` inner folds of `pool`, dealt within each of the task's strata (class, or event) in a
/// seeded random order, the count carried from stratum to stratum so the folds' sizes differ by
/// one at most.
pub fn inner_folds(
    task: &Task,
    data: &Prepared,
    pool: &[usize],
    k: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>> {
    if k < 2 {
        return Err(TrainError::Msg(format!(
            "selection: {k} inner fold(s); at least 2 are needed"
        )));
    }
    if pool.len() < 2 * k {
        return Err(TrainError::Msg(format!(
            "selection: {} training and validation patients cannot make {k} inner folds of 2 or \
             more (fewer folds with --select-folds, or --select off)",
            pool.len()
        )));
    }
    let mut strata: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &i in pool {
        strata.entry(task.stratum(data, i)).or_default().push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ FOLD_SEED);
    let mut folds = vec![Vec::new(); k];
    let mut next = 0;
    for members in strata.values_mut() {
        members.shuffle(&mut rng);
        for &i in members.iter() {
            folds[next % k].push(i);
            next += 1;
        }
    }
    for f in &mut folds {
        f.sort_unstable();
    }
    Ok(folds)
}

/// `data` with parts `train`, `val`, `test` and expression standardised with the statistics of
/// `train` alone (as `Prepared::new` does for a split's training part), so nothing outside
/// `train` shapes the inputs or the genes a model keeps.
pub fn with_parts(
    data: &Prepared,
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
) -> Result<Prepared> {
    let mut d = data.clone();
    if let Some(p) = &data.preprocessing {
        let g = p.genes.len();
        let rows: Vec<&[f32]> = train
            .iter()
            .filter_map(|&i| data.transformed_expression(i))
            .collect();
        if rows.iter().any(|r| r.len() != g) {
            return Err(TrainError::Msg(
                "selection: the expression was reordered for a checkpoint; select on the \
                 cohort's own expression"
                    .into(),
            ));
        }
        let n = rows.len().max(1) as f64;
        let mut mean = vec![0f64; g];
        for r in &rows {
            for (a, v) in mean.iter_mut().zip(r.iter()) {
                *a += *v as f64;
            }
        }
        mean.iter_mut().for_each(|a| *a /= n);
        let mut var = vec![0f64; g];
        for r in &rows {
            for ((a, v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
                *a += (*v as f64 - m).powi(2);
            }
        }
        let pp = Preprocessing {
            transform: p.transform,
            genes: p.genes.clone(),
            mean: mean.iter().map(|v| *v as f32).collect(),
            std: var.iter().map(|v| (v / n).sqrt() as f32).collect(),
        };
        for (i, pd) in d.patients.iter_mut().enumerate() {
            pd.expression = data.transformed_expression(i).map(|r| standardise(r, &pp));
        }
        d.preprocessing = Some(pp);
    }
    d.train = train;
    d.val = val;
    d.test = test;
    Ok(d)
}

/// The split for the final fit: every training and validation patient trains (no validation
/// part: the loop keeps the last epoch), the test part as it was, statistics of the training
/// patients.
pub fn refit_part(data: &Prepared) -> Result<Prepared> {
    with_parts(data, training_part(data), Vec::new(), data.test.clone())
}

/// The candidates of `s` around `cfg`: every learning rate × weight decay × gene count (an empty
/// list keeps `cfg`'s value), in that order.
fn candidates(s: &Selection, cfg: &SupervisedConfig) -> Vec<(f64, f64, GeneSelection)> {
    let genes: Vec<GeneSelection> = match s.genes.is_empty() {
        true => vec![cfg.genes.clone()],
        false => s
            .genes
            .iter()
            .map(|&k| GeneSelection::TopVariance(k))
            .collect(),
    };
    let mut out = Vec::new();
    for (lr, wd) in rate_candidates(s, cfg.lr, cfg.weight_decay) {
        for g in &genes {
            out.push((lr, wd, g.clone()));
        }
    }
    out
}

/// The loop's rule (docs/DESIGN.md §9): the higher figure, ties to the lower loss.
fn better(figure: f64, loss: f64, best: Option<(f64, f64)>) -> bool {
    match best {
        None => true,
        Some((bf, bl)) => figure > bf || (figure == bf && loss < bl),
    }
}

/// The mean curve of the inner folds over the epochs all of them ran, and its best epoch:
/// `(epochs, figure, loss)` with `epochs` the count (best 0-based index + 1).
///
/// When every fold was validated before its first step (a linear start, `docs/DESIGN.md`
/// §43), "0 epochs" — the linear model alone — is a choice too, and the choice follows the
/// one-standard-error rule towards it: the fewest epochs whose mean figure is within one
/// standard error (over the folds) of the best mean figure. Training must beat the linear model
/// by more than the inner folds' noise to be kept.
fn best_epoch(curves: &[Curve]) -> Option<(usize, f64, f64)> {
    let n = curves.iter().map(|c| c.epochs.len()).min()?;
    let starts: Option<Vec<(f64, f64)>> = curves.iter().map(|c| c.start).collect();
    let point = |c: &Curve, e: usize| match (&starts, e) {
        (Some(_), 0) => c.start.unwrap_or((f64::NAN, f64::NAN)),
        (Some(_), e) => c.epochs[e - 1],
        (None, e) => c.epochs[e],
    };
    let (first, count) = match &starts {
        Some(_) => (0, n + 1),
        None => (1, n),
    };
    let k = curves.len() as f64;
    // (epoch count, mean figure, mean loss, standard error of the mean figure)
    let mut means = Vec::with_capacity(count);
    for e in 0..count {
        let figures: Vec<f64> = curves.iter().map(|c| point(c, e).0).collect();
        let figure = figures.iter().sum::<f64>() / k;
        let spread = match figures.len() {
            0 | 1 => 0.0,
            m => {
                let var =
                    figures.iter().map(|f| (f - figure).powi(2)).sum::<f64>() / (m - 1) as f64;
                (var / m as f64).sqrt()
            }
        };
        // A NaN loss (a fold without a comparable pair) counts as no information.
        let losses: Vec<f64> = curves
            .iter()
            .map(|c| point(c, e).1)
            .filter(|l| l.is_finite())
            .collect();
        let loss = match losses.is_empty() {
            true => f64::INFINITY,
            false => losses.iter().sum::<f64>() / losses.len() as f64,
        };
        means.push((e + first, figure, loss, spread));
    }
    let mut best: Option<(usize, f64, f64, f64)> = None;
    for &m in &means {
        if better(m.1, m.2, best.map(|(_, f, l, _)| (f, l))) {
            best = Some(m);
        }
    }
    let best = best?;
    if starts.is_some() && best.3.is_finite() {
        if let Some(&(e, f, l, _)) = means.iter().find(|m| m.1 >= best.1 - best.3) {
            return Some((e, f, l));
        }
    }
    Some((best.0, best.1, best.2))
}

/// One candidate's inner cross-validation: the epoch count of its best mean figure, that
/// figure and the mean loss there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub epochs: usize,
    pub figure: f64,
    pub loss: f64,
}

/// Cross-validates `n` candidates inside `pool` (patients of `data`'s training part): `folds`
/// inner folds dealt by the task's strata with `seed`, each candidate fitted by `fit(part,
/// candidate, fold)` on each fold's training patients (expression statistics of those alone)
/// and validated on the fold. Returns every candidate's score, the chosen candidate (the best
/// mean figure, ties to the lower loss, then the earlier candidate) and the figure's name.
pub fn cross_validate(
    data: &Prepared,
    task: &Task,
    pool: &[usize],
    folds: usize,
    seed: u64,
    n: usize,
    fit: &dyn Fn(&Prepared, usize, usize) -> Result<Curve>,
) -> Result<(Vec<Scored>, usize, &'static str)> {
    let inner = inner_folds(task, data, pool, folds, seed)?;
    let parts = inner
        .iter()
        .map(|val| {
            let train: Vec<usize> = pool.iter().copied().filter(|i| !val.contains(i)).collect();
            with_parts(data, train, val.clone(), Vec::new())
        })
        .collect::<Result<Vec<_>>>()?;
    let mut scores = Vec::with_capacity(n);
    let mut figure_name = "";
    let mut best: Option<(usize, f64, f64)> = None;
    for c in 0..n {
        let curves = parts
            .iter()
            .enumerate()
            .map(|(k, part)| fit(part, c, k))
            .collect::<Result<Vec<_>>>()?;
        figure_name = curves.first().map_or("", |c| c.figure_name);
        let (epochs, figure, loss) = best_epoch(&curves)
            .ok_or_else(|| TrainError::Msg("selection: an inner fit trained no epoch".into()))?;
        if better(figure, loss, best.map(|(_, f, l)| (f, l))) {
            best = Some((c, figure, loss));
        }
        scores.push(Scored {
            epochs,
            figure,
            loss,
        });
    }
    let (c, _, _) = best.ok_or_else(|| TrainError::Msg("selection: no candidate".into()))?;
    Ok((scores, c, figure_name))
}

/// The candidates' learning rates and weight decays of `s` around `lr` and `weight_decay` (an
/// empty list keeps the value), every rate × every decay.
pub fn rate_candidates(s: &Selection, lr: f64, weight_decay: f64) -> Vec<(f64, f64)> {
    let or = |v: &[f64], own: f64| if v.is_empty() { vec![own] } else { v.to_vec() };
    let mut out = Vec::new();
    for lr in or(&s.lr, lr) {
        for wd in or(&s.weight_decay, weight_decay) {
            out.push((lr, wd));
        }
    }
    out
}

/// What was chosen, for the record: `pick` of `candidates` (as `(lr, weight decay, genes)`) with
/// their scores.
pub fn record(
    s: &Selection,
    patients: usize,
    figure_name: &str,
    candidates: &[(f64, f64, GeneSelection)],
    scores: &[Scored],
    pick: usize,
    schedule_epochs: usize,
) -> Chosen {
    let (lr, weight_decay, genes) = candidates[pick].clone();
    Chosen {
        folds: s.folds,
        patients,
        figure_name: figure_name.to_string(),
        epochs: scores[pick].epochs,
        lr,
        weight_decay,
        genes,
        figure: scores[pick].figure,
        schedule_epochs,
        candidates: candidates
            .iter()
            .zip(scores)
            .map(|((lr, weight_decay, genes), sc)| CandidateScore {
                lr: *lr,
                weight_decay: *weight_decay,
                genes: genes.clone(),
                epochs: sc.epochs,
                figure: sc.figure,
                loss: sc.loss,
            })
            .collect(),
    }
}

/// Runs the selection `s` of `cfg` on `data`'s training and validation patients with `fit`, and
/// returns the settings of the final fit: the chosen candidate and epoch count, no early
/// stopping (there is no validation part left to stop on), `chosen` filled in.
pub fn choose(
    data: &Prepared,
    cfg: &SupervisedConfig,
    s: &Selection,
    fit: Fit,
) -> Result<SupervisedConfig> {
    s.check()?;
    let task = Task::new(&cfg.task, data)?;
    let pool = training_part(data);
    let cands = candidates(s, cfg);
    let settings = |c: usize| {
        let (lr, weight_decay, genes) = cands[c].clone();
        let mut inner = cfg.clone();
        inner.lr = lr;
        inner.weight_decay = weight_decay;
        inner.genes = genes;
        inner.selection = None;
        inner.chosen = None;
        inner
    };
    let (scores, pick, figure_name) = cross_validate(
        data,
        &task,
        &pool,
        s.folds,
        cfg.seed,
        cands.len(),
        &|part, c, k| fit(part, &settings(c), k),
    )?;
    let chosen = record(
        s,
        pool.len(),
        figure_name,
        &cands,
        &scores,
        pick,
        cfg.epochs,
    );
    let mut out = settings(pick);
    out.selection = cfg.selection.clone();
    out.epochs = chosen.epochs;
    out.early_stopping = None;
    out.chosen = Some(chosen);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(v: &[(f64, f64)]) -> Curve {
        Curve {
            start: None,
            epochs: v.to_vec(),
            figure_name: "val_accuracy",
        }
    }

    /// With a validation before the first step in every fold (a linear start), "no epoch" is a
    /// choice, and the fewest epochs within one standard error of the best mean figure are
    /// kept; without a start in every fold, the best mean figure as before.
    #[test]
    fn a_linear_start_is_kept_unless_training_beats_it_by_more_than_the_noise() {
        let with = |s: (f64, f64), v: &[(f64, f64)]| Curve {
            start: Some(s),
            ..curve(v)
        };
        // Means: start 0.85, epoch 1 0.75, epoch 2 0.88 with a standard error of 0.02: the
        // start is not within 0.86–0.88, so epoch 2 stays.
        let a = with((0.9, 0.3), &[(0.8, 0.5), (0.9, 0.4)]);
        let b = with((0.8, 0.3), &[(0.7, 0.6), (0.86, 0.2)]);
        assert_eq!(best_epoch(&[a.clone(), b]).map(|b| b.0), Some(2));
        // Noisy folds: epoch 2's mean 0.875 has a standard error of 0.075, and the start's 0.85
        // is within it: the linear model is kept.
        let c = with((0.8, 0.3), &[(0.7, 0.6), (0.95, 0.2)]);
        let d = with((0.9, 0.3), &[(0.8, 0.6), (0.8, 0.2)]);
        assert_eq!(best_epoch(&[c, d]).map(|b| b.0), Some(0));
        let no_start = curve(&[(0.9, 0.4), (0.95, 0.4)]);
        assert_eq!(best_epoch(&[a, no_start]).map(|b| b.0), Some(2));
    }

    /// The best epoch is that of the best mean figure, ties to the lower mean loss, over the
    /// epochs every fold ran.
    #[test]
    fn best_epoch_of_mean_curve() {
        let a = curve(&[(0.5, 1.0), (0.8, 0.6), (0.8, 0.5), (0.9, 0.4)]);
        let b = curve(&[(0.6, 1.0), (0.7, 0.6), (0.7, 0.4)]);
        // Means: 0.55, 0.75, 0.75 (loss 0.45 < 0.6); epoch 4 is not in every fold.
        assert_eq!(best_epoch(&[a, b]), Some((3, 0.75, 0.45)));
    }
}
