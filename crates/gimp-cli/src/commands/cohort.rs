use crate::progress::bar;
use anyhow::Result;
use gimp_cohort::cache::FeatureCache;
use gimp_cohort::{Cohort, CohortFile, LoadOptions, Summary};
use rayon::prelude::*;
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

pub fn load(path: &Path, opts: LoadOptions) -> Result<Cohort> {
    Ok(Cohort::load(CohortFile::load(path)?, opts)?)
}

pub fn cache_dir(c: &Cohort) -> Option<PathBuf> {
    let f = c.file.config.features.as_ref()?;
    Some(match &f.cache_dir {
        Some(d) => c.file.resolve(d),
        None => c.file.resolve(&f.dir).join(".gimp-cache"),
    })
}

pub fn build_cache(c: &Cohort) -> Result<(usize, PathBuf)> {
    let dir =
        cache_dir(c).ok_or_else(|| anyhow::anyhow!("the cohort has no [features] section"))?;
    let cache = FeatureCache::new(&dir);
    let slides: Vec<(String, PathBuf)> = c
        .patients
        .iter()
        .flat_map(|p| p.slides.iter())
        .filter_map(|s| s.path.clone().map(|p| (s.slide_id.clone(), p)))
        .collect();
    let pb = bar(slides.len() as u64, "caching");
    slides.par_iter().try_for_each(|(id, path)| -> Result<()> {
        cache.get(path, id, gimp_io::DEFAULT_MAX_BAG_BYTES)?;
        pb.inc(1);
        Ok(())
    })?;
    pb.finish_and_clear();
    Ok((slides.len(), dir))
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::Check { cohort, json, deep } => {
            let c = load(
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
            let c = load(&cohort, LoadOptions::default())?;
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
