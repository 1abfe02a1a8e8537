use anyhow::{anyhow, bail, Result};
use gimp_cohort::split::{check_split_files, make_splits, Scheme, SplitCheck};
use gimp_cohort::{Cohort, LoadOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub check: Option<Sub>,
    /// The cohort to split.
    pub cohort: Option<PathBuf>,
    /// Output folder for CLAM-layout split files (splits_{k}.csv, _bool.csv, _descriptor.csv).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// holdout: one split (the paper's 60/20/20 by default); kfold: k folds with disjoint tests.
    #[arg(long, default_value = "holdout")]
    pub scheme: String,
    /// Number of folds (kfold).
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Validation fraction: of all patients (holdout) or of each fold's training part (kfold).
    #[arg(long, default_value_t = 0.2)]
    pub val: f64,
    /// Test fraction (holdout).
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
    /// Seed of the stratified shuffles; the same seed gives the same split files.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// Find leaks in split files: an id in two parts; with --cohort, a patient in two parts
    /// through different slides, unknown ids, and test sets shared between folds.
    Check {
        /// A split file, or a folder of splits_{k}.csv / fold{k}.csv.
        path: PathBuf,
        /// Also check against this cohort file's patients and slides.
        #[arg(long)]
        cohort: Option<PathBuf>,
        /// Print the problems and warnings as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(Sub::Check { path, cohort, json }) = a.check {
        return check(path, cohort, json);
    }
    let Some(cohort) = a.cohort else {
        bail!("give a cohort file: gimp-rs split COHORT.toml --out DIR")
    };
    let Some(out) = a.out else {
        bail!("give an output folder with --out")
    };
    let scheme = match a.scheme.as_str() {
        "holdout" | "paper" => Scheme::holdout(a.val, a.test),
        "kfold" => Scheme::kfold(a.k, a.val),
        other => bail!("--scheme must be holdout or kfold, not '{other}'"),
    }
    .map_err(|e| anyhow!("--scheme {}: {e}", a.scheme))?;
    let c = Cohort::open(
        &cohort,
        LoadOptions {
            read_shapes: false,
            deep: false,
        },
    )?;
    let labels = c
        .split_strata(scheme)
        .map_err(|e| anyhow!("{}: {e}", cohort.display()))?;
    let splits = make_splits(&labels, scheme, a.seed);
    for (k, n) in c.write_splits(&splits, &out)?.iter().enumerate() {
        println!(
            "split {k}: train {} / val {} / test {} patients -> {}",
            n.train,
            n.val,
            n.test,
            out.join(format!("splits_{k}.csv")).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(path: PathBuf, cohort: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let cohort = cohort
        .map(|cp| {
            let options = LoadOptions {
                read_shapes: false,
                deep: false,
            };
            Cohort::open(&cp, options)
        })
        .transpose()?;
    let SplitCheck {
        files,
        problems,
        warnings,
    } = check_split_files(&path, cohort.map(|c| c.patient_ids()).as_ref())?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "files": files, "leaks": problems, "warnings": warnings })
        );
    } else {
        for w in &warnings {
            println!("warning: {w}");
        }
        if problems.is_empty() {
            println!("no leaks in {} file(s)", files.len());
        } else {
            for p in &problems {
                println!("problem: {p}");
            }
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
