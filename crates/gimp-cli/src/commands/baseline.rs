//! `gimp-rs baseline logreg` and `baseline cox`: arguments and printing; the baselines are
//! `gimp_linear::baseline` and `gimp_linear::cox_baseline`.

use anyhow::Result;
use gimp_cohort::{Cohort, LoadOptions};
use gimp_io::expression::ExpressionTransform;
use gimp_linear::LogisticConfig;
use gimp_linear::{baseline, cox_baseline};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Gene-only logistic regression (L2, scikit-learn's C) on the cohort's expression, per split:
    /// z-scores fitted on the training part, metrics on validation and test.
    Logreg(LogregArgs),
    /// Gene-only Cox model (L2 penalty, Breslow ties) on the cohort's expression and its
    /// [survival] outcomes, per split: z-scores fitted on the training part, Harrell's c-index
    /// on the test part.
    Cox(CoxArgs),
}

#[derive(clap::Args)]
pub struct CoxArgs {
    /// The cohort file (cohort.toml) with expression and a [survival] section.
    pub cohort: PathBuf,
    /// L2 penalty λ on standardised genes (lifelines' `penalizer`, l1_ratio 0). Several,
    /// comma-separated (the default): each split chooses one as --choose says.
    #[arg(long, value_delimiter = ',', default_value = "0.1,1,10,100,1000")]
    pub penalty: Vec<f64>,
    /// How a split's penalty is chosen among several: cv (the mean c-index of --inner-folds
    /// folds of the training and validation patients, then refitted on all of them; the
    /// default, docs/DESIGN.md §41) or validation (fitted on the training part, the best
    /// c-index on the validation part).
    #[arg(long, default_value = "cv", value_parser = ["cv", "validation"])]
    pub choose: String,
    /// Inner folds of --choose cv.
    #[arg(long, default_value_t = 5)]
    pub inner_folds: usize,
    /// Expression transform before z-scoring: log2p1 (for FPKM/TPM/counts) or none (already log).
    #[arg(long, default_value = "log2p1")]
    pub transform: ExpressionTransform,
    /// Ignore the cohort's split files and use k folds with disjoint test sets, dealt within
    /// each class by events and time bins (as `gimp-rs split`).
    #[arg(long)]
    pub kfold: Option<usize>,
    /// With --kfold: the fraction of each training part kept for validation (where --choose
    /// validation chooses the penalty).
    #[arg(long, default_value_t = 0.2)]
    pub val: f64,
    /// Seed for --kfold and the bootstrap intervals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write each split's test patients with their risks to DIR/split{k}_test.csv (time, event,
    /// risk: what `gimp-rs survival metrics` reads).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct LogregArgs {
    /// The cohort file (cohort.toml) with expression.
    pub cohort: PathBuf,
    /// Inverse regularisation strength (scikit-learn's C).
    #[arg(long, default_value_t = 0.1)]
    pub c: f64,
    /// Expression transform before z-scoring: log2p1 (for FPKM/TPM/counts) or none (already log).
    #[arg(long, default_value = "log2p1")]
    pub transform: ExpressionTransform,
    /// Ignore the cohort's split files and use k stratified folds with disjoint test sets.
    #[arg(long)]
    pub kfold: Option<usize>,
    /// Seed for --kfold and the bootstrap intervals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the result as JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Logreg(a) => logreg(a),
        Command::Cox(a) => cox(a),
    }
}

/// The cohort as the baselines read it: labels, expression and splits, no feature files.
fn open_checked(path: &std::path::Path) -> Result<Cohort> {
    let c = Cohort::open(
        path,
        LoadOptions {
            read_shapes: false,
            deep: false,
        },
    )?;
    baseline::check_cohort(&c)?;
    Ok(c)
}

fn cox(a: CoxArgs) -> Result<ExitCode> {
    let c = open_checked(&a.cohort)?;
    let splits = cox_baseline::splits(&c, a.kfold, a.val, a.seed)?;
    let choice = match a.choose.as_str() {
        "validation" => cox_baseline::PenaltyChoice::Validation,
        _ => cox_baseline::PenaltyChoice::InnerCv {
            folds: a.inner_folds,
        },
    };
    let r = cox_baseline::cross_validate(&c, &splits, &a.penalty, a.transform, choice, a.seed)?;
    if let Some(dir) = &a.scores {
        r.write_scores(dir)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::output::print_cox(&r);
    }
    Ok(ExitCode::SUCCESS)
}

fn logreg(a: LogregArgs) -> Result<ExitCode> {
    let transform = a.transform;
    let c = open_checked(&a.cohort)?;
    let splits = baseline::splits(&c, a.kfold, a.seed)?;
    let cfg = LogisticConfig {
        c: a.c,
        ..Default::default()
    };
    let r = baseline::cross_validate(&c, &splits, cfg, transform, a.seed)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        crate::output::print_logreg(&r);
    }
    Ok(ExitCode::SUCCESS)
}
