use anyhow::Result;
use gimp_cohort::{LoadOptions, Summary};
use gimp_linear::LogisticConfig;
use gimp_synth::{Difficulty, Size, SynthConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Working folder (the cohort is written to OUT/cohort).
    #[arg(long, default_value = "demo-run")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let cohort_dir = a.out.join("cohort");
    let cfg = SynthConfig::new(Difficulty::Paper, Size::Demo, a.seed);
    println!(
        "1/4 generating the demo cohort (difficulty paper, {} patients, seed {}) in {}",
        cfg.n_patients,
        a.seed,
        cohort_dir.display()
    );
    let r = super::synth::generate(&cfg, &cohort_dir, true)?;
    println!(
        "    {} slides, {} patches, {}-d features, {} genes",
        r.slides, r.patches, cfg.d_in, cfg.n_genes
    );

    let cohort_file = cohort_dir.join("cohort.toml");
    println!("2/4 checking the cohort ({})", cohort_file.display());
    let c = super::cohort::load(&cohort_file, LoadOptions::default())?;
    let s = Summary::of(&c);
    for line in s.render().lines() {
        println!("    {line}");
    }
    if !s.errors.is_empty() {
        return Ok(ExitCode::from(1));
    }

    println!("3/4 building the memory-mapped feature cache");
    let (n, dir) = super::cohort::build_cache(&c)?;
    println!("    {n} bags in {}", dir.display());

    println!("4/4 gene-only baseline: logistic regression (C = 0.1) on log2(FPKM + 1), split 0");
    let folds: Vec<_> = c.folds.iter().map(|f| f.part.clone()).collect();
    let res = super::baseline::logreg(&c, &folds, LogisticConfig::default(), true, a.seed)?;
    super::baseline::print(&res);
    println!(
        "done in {:.1} s; the cohort stays in {} for the other commands.",
        t0.elapsed().as_secs_f64(),
        cohort_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
