//! `gimp-rs baseline logreg`: arguments and printing; the baseline is `gimp_linear::baseline`.

use anyhow::Result;
use gimp_cohort::{Cohort, LoadOptions};
use gimp_io::expression::ExpressionTransform;
use gimp_linear::baseline;
use gimp_linear::LogisticConfig;
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
    pub transform: ExpressionTransform,
    /// Ignore the cohort's split files and use k stratified folds with disjoint test sets.
    #[arg(long)]
    pub kfold: Option<usize>,
    /// Seed for --kfold and the bootstrap intervals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    let Command::Logreg(a) = cmd;
    let transform = a.transform;
    let c = Cohort::open(
        &a.cohort,
        LoadOptions {
            read_shapes: false,
            deep: false,
        },
    )?;
    baseline::check_cohort(&c)?;
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
