use anyhow::{anyhow, bail, Result};
use gimp_cohort::split::{
    check_scheme, check_split_files, make_splits, write_splits, Scheme, SplitCheck,
};
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
        #[arg(long)]
        cohort: Option<PathBuf>,
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
    // A survival cohort is balanced on events and time bins (MCAT's labels) within each class,
    // a classification cohort on its classes.
    let labels: Vec<usize> = match (&c.survival, &c.file.config.survival) {
        (Some(outcomes), Some(config)) => {
            let classes: Vec<usize> = c.patients.iter().map(|p| p.label).collect();
            let strata =
                gimp_cohort::survival::class_and_survival_strata(&classes, outcomes, config.bins)
                    .map_err(|e| anyhow!("{}: {e}", cohort.display()))?;
            gimp_cohort::survival::check_scheme(outcomes, scheme)
                .map_err(|e| anyhow!("{}: {e}", cohort.display()))?;
            strata
        }
        _ => {
            let labels: Vec<usize> = c.patients.iter().map(|p| p.label).collect();
            check_scheme(&labels, scheme).map_err(|e| anyhow!("{}: {e}", cohort.display()))?;
            labels
        }
    };
    let splits = make_splits(&labels, scheme, a.seed);
    for (k, n) in write_splits(&c, &splits, &out)?.iter().enumerate() {
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
    } = check_split_files(&path, cohort.as_ref())?;
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
