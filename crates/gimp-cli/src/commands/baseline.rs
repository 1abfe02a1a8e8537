use anyhow::{bail, Result};
use gimp_cohort::split::{make_splits, Scheme};
use gimp_cohort::{Cohort, LoadOptions};
use gimp_io::splits::Part;
use gimp_linear::{fit_predict, LogisticConfig};
use gimp_metrics::Report;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Gene-only logistic regression (L2, scikit-learn's C) on the cohort's expression, per split:
    /// z-scores fitted on the training part, metrics on validation and test.
    Logreg(LogregArgs),
}

#[derive(clap::Args)]
pub struct LogregArgs {
    pub cohort: PathBuf,
    /// Inverse regularisation strength (scikit-learn's C).
    #[arg(long, default_value_t = 0.1)]
    pub c: f64,
    /// Expression transform before z-scoring: log2p1 (for FPKM/TPM/counts) or none (already log).
    #[arg(long, default_value = "log2p1")]
    pub transform: String,
    /// Ignore the cohort's split files and use k stratified folds with disjoint test sets.
    #[arg(long)]
    pub kfold: Option<usize>,
    /// Seed for --kfold and the bootstrap intervals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
pub struct FoldResult {
    pub fold: usize,
    pub train: usize,
    pub val: Option<Report>,
    pub test: Report,
    pub iterations: usize,
    pub converged: bool,
}

#[derive(Serialize)]
pub struct LogregResult {
    pub classes: Vec<String>,
    pub genes: usize,
    pub folds: Vec<FoldResult>,
    pub test_accuracy_mean: f64,
    pub test_accuracy_std: f64,
}

/// Runs the baseline on every fold of `folds` (patient index → part).
pub fn logreg(
    c: &Cohort,
    folds: &[BTreeMap<usize, Part>],
    cfg: LogisticConfig,
    log2p1: bool,
    seed: u64,
) -> Result<LogregResult> {
    let Some(expr) = &c.expression else {
        bail!("the cohort has no expression")
    };
    let rows: Vec<Option<Vec<f32>>> = c
        .patients
        .iter()
        .map(|p| {
            c.expression_of(p).map(|r| {
                if log2p1 {
                    r.iter().map(|v| (v.max(0.0) + 1.0).log2()).collect()
                } else {
                    r.to_vec()
                }
            })
        })
        .collect();
    let nc = c.label_map.len();
    let mut out = Vec::new();
    for (k, fold) in folds.iter().enumerate() {
        let members = |part: Part| -> Vec<usize> {
            fold.iter()
                .filter(|(i, p)| **p == part && rows[**i].is_some())
                .map(|(i, _)| *i)
                .collect()
        };
        let (train, val, test) = (
            members(Part::Train),
            members(Part::Val),
            members(Part::Test),
        );
        if train.is_empty() || test.is_empty() {
            bail!("split {k} has no training or no test patients with expression");
        }
        let get = |ids: &[usize]| -> Vec<&[f32]> {
            ids.iter().filter_map(|&i| rows[i].as_deref()).collect()
        };
        let eval: Vec<usize> = val.iter().chain(&test).copied().collect();
        let ytr: Vec<usize> = train.iter().map(|&i| c.patients[i].label).collect();
        let (_, model, probs) = fit_predict(&get(&train), &ytr, &get(&eval), nc, cfg);
        let (pv, pt) = probs.split_at(val.len());
        let label =
            |ids: &[usize]| -> Vec<usize> { ids.iter().map(|&i| c.patients[i].label).collect() };
        out.push(FoldResult {
            fold: k,
            train: train.len(),
            val: (!val.is_empty()).then(|| Report::new(&label(&val), pv, nc, seed)),
            test: Report::new(&label(&test), pt, nc, seed),
            iterations: model.iterations,
            converged: model.converged,
        });
    }
    let accs: Vec<f64> = out.iter().map(|f| f.test.accuracy.value).collect();
    let mean = accs.iter().sum::<f64>() / accs.len() as f64;
    let std = if accs.len() > 1 {
        (accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / (accs.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    Ok(LogregResult {
        classes: c.label_map.names.clone(),
        genes: expr.n_genes(),
        folds: out,
        test_accuracy_mean: mean,
        test_accuracy_std: std,
    })
}

pub fn print(r: &LogregResult) {
    for f in &r.folds {
        println!(
            "split {}: {} training patients, {} genes, L-BFGS {} iterations{}",
            f.fold,
            f.train,
            r.genes,
            f.iterations,
            if f.converged { "" } else { " (not converged)" }
        );
        if let Some(v) = &f.val {
            print!("{}", crate::table::report("  validation", v, &r.classes));
        }
        print!("{}", crate::table::report("  test", &f.test, &r.classes));
    }
    if r.folds.len() > 1 {
        println!(
            "test accuracy over {} splits: {}% ± {} (mean ± std)",
            r.folds.len(),
            crate::table::pct(r.test_accuracy_mean),
            crate::table::pct(r.test_accuracy_std)
        );
    }
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let Command::Logreg(a) = cmd;
    let log2p1 = match a.transform.as_str() {
        "log2p1" => true,
        "none" => false,
        other => bail!("--transform must be log2p1 or none, not '{other}'"),
    };
    let c = super::cohort::load(
        &a.cohort,
        LoadOptions {
            read_shapes: false,
            deep: false,
        },
    )?;
    let expression_errors: Vec<&String> = c
        .diagnostics
        .errors
        .iter()
        .filter(|e| !e.contains("neither slide"))
        .collect();
    if !expression_errors.is_empty() {
        bail!(
            "the cohort has errors (see `gimp-rs cohort check`):\n  - {}",
            c.diagnostics.errors.join("\n  - ")
        );
    }
    let folds: Vec<BTreeMap<usize, Part>> = match a.kfold {
        Some(k) => {
            let labels: Vec<usize> = c.patients.iter().map(|p| p.label).collect();
            make_splits(
                &labels,
                Scheme::KFold {
                    k: k.max(2),
                    val: 0.0,
                },
                a.seed,
            )
        }
        None => {
            if c.folds.is_empty() {
                bail!("the cohort lists no split files: add [splits], run `gimp-rs split`, or pass --kfold K");
            }
            c.folds.iter().map(|f| f.part.clone()).collect()
        }
    };
    let r = logreg(
        &c,
        &folds,
        LogisticConfig {
            c: a.c,
            ..Default::default()
        },
        log2p1,
        a.seed,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print(&r);
    }
    Ok(ExitCode::SUCCESS)
}
