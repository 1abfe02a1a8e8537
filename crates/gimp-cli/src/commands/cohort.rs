use crate::progress::bar;
use anyhow::Result;
use gimp_cohort::cache::FeatureCache;
use gimp_cohort::{Cohort, LoadOptions, Summary};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Join everything by patient and report counts per class and split, missing modalities,
    /// duplicate or unknown ids, feature width and bag sizes. Exits 1 when there are errors.
    Check {
        cohort: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        /// Read every bag completely (finds NaN values and truncated data).
        #[arg(long)]
        deep: bool,
    },
    /// Convert every slide's features into the memory-mapped cache training reads from.
    Cache { cohort: PathBuf },
}

/// Kept for the commands being rewritten (train, experiment, demo); new code calls
/// [`Cohort::open`].
pub fn load(path: &Path, opts: LoadOptions) -> Result<Cohort> {
    Ok(Cohort::open(path, opts)?)
}

/// Fills the cohort's feature cache with a progress bar; returns the bag count and the folder.
pub fn build_cache(c: &Cohort) -> Result<(usize, PathBuf)> {
    let cache = FeatureCache::of(c)
        .ok_or_else(|| anyhow::anyhow!("the cohort has no [features] section"))?;
    let n_slides = c
        .patients
        .iter()
        .flat_map(|p| &p.slides)
        .filter(|s| s.path.is_some())
        .count();
    let pb = bar(n_slides as u64, "caching");
    let n = cache.fill(c, || pb.inc(1))?;
    pb.finish_and_clear();
    Ok((n, cache.dir))
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
            let (n, dir) = build_cache(&c)?;
            println!("{n} bag(s) cached in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
