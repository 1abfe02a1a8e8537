//! Progress bars on stderr (hidden when stderr is not a terminal).

use anyhow::{bail, Context, Result};
use gimp_cohort::cache::FeatureCache;
use gimp_cohort::Cohort;
use gimp_synth::SynthConfig;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

pub fn bar(total: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// A line above the bar, or on stderr when the bar is hidden (not a terminal: logs, CI).
pub fn line(pb: &ProgressBar, msg: impl AsRef<str>) {
    if pb.is_hidden() {
        eprintln!("{}", msg.as_ref());
    } else {
        pb.println(msg.as_ref());
    }
}

/// Writes a synthetic cohort into `out` (empty or absent unless `force`) with a progress bar.
pub fn generate_cohort(
    cfg: &SynthConfig,
    out: &Path,
    force: bool,
) -> Result<gimp_synth::SynthReport> {
    if out.exists()
        && !force
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        bail!(
            "{} is not empty (use --force to write into it)",
            out.display()
        );
    }
    let pb = bar(0, "slides");
    let report = gimp_synth::generate(cfg, out, &|done, total| {
        pb.set_length(total as u64);
        pb.set_position(done as u64);
    })
    .with_context(|| format!("generating the cohort in {}", out.display()))?;
    pb.finish_and_clear();
    Ok(report)
}

/// Fills the cohort's feature cache with a progress bar; returns the bag count and the folder.
pub fn fill_cache(c: &Cohort) -> Result<(usize, PathBuf)> {
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
