use anyhow::Result;
use gimp_cohort::{Cohort, LoadOptions, Summary};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Join everything by patient and report counts per class and split, missing modalities,
    /// duplicate or unknown ids, feature width and bag sizes. Exits 1 when there are errors.
    Check {
        /// The cohort file (cohort.toml, docs/FORMATS.md).
        cohort: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Read every bag completely (finds NaN values and truncated data).
        #[arg(long)]
        deep: bool,
    },
    /// Convert every slide's features into the memory-mapped cache training reads from.
    Cache {
        /// The cohort file (cohort.toml) whose feature files are cached.
        cohort: PathBuf,
    },
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Check { cohort, json, deep } => {
            let c = Cohort::open(
                &cohort,
                LoadOptions {
                    read_shapes: true,
                    deep,
                },
            )?;
            let s = Summary::of(&c);
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.render());
            }
            Ok(if s.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Cache { cohort } => {
            let c = Cohort::open(&cohort, LoadOptions::default())?;
            if !c.diagnostics.errors.is_empty() {
                anyhow::bail!(
                    "the cohort has errors; run `gimp-rs cohort check {}` first:\n  - {}",
                    cohort.display(),
                    c.diagnostics.errors.join("\n  - ")
                );
            }
            let (n, dir) = crate::progress::fill_cache(&c)?;
            println!("{n} bag(s) cached in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
