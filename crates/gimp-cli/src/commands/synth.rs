use anyhow::{bail, Result};
use gimp_synth::{Difficulty, Size, SynthConfig};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder (must be empty or absent unless --force).
    #[arg(long)]
    pub out: PathBuf,
    /// Class separability: easy, paper (calibrated to the paper's difficulty) or hard.
    #[arg(long, default_value = "paper")]
    pub difficulty: String,
    /// Cohort size: demo (160 patients, small bags) or paper (946 patients, up to 148,569 patches,
    /// 1024-d, 60,480 genes — about 100 GB).
    #[arg(long, default_value = "demo")]
    pub size: String,
    /// Seed of every random choice; the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Override the number of patients.
    #[arg(long)]
    pub patients: Option<usize>,
    /// Override patches per slide, as MIN,MAX (log-uniform).
    #[arg(long, value_parser = parse_range)]
    pub patches: Option<(usize, usize)>,
    /// Override the feature width.
    #[arg(long)]
    pub dim: Option<usize>,
    /// Override the number of genes.
    #[arg(long)]
    pub genes: Option<usize>,
    /// Class names, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub classes: Option<Vec<String>>,
    /// Fraction of patients whose expression is written as GDC STAR files.
    #[arg(long)]
    pub gdc_fraction: Option<f64>,
    /// Fraction of patients without expression.
    #[arg(long)]
    pub missing_expression: Option<f64>,
    /// Fraction of patients without a slide.
    #[arg(long)]
    pub missing_slide: Option<f64>,
    /// Fraction of recorded labels that are wrong.
    #[arg(long)]
    pub label_noise: Option<f64>,
    /// Also write features/pt_files/*.pt (torch.save format).
    #[arg(long)]
    pub pt: bool,
    /// Write no survival outcomes (no survival_months/censorship columns, no [survival]).
    #[arg(long)]
    pub no_survival: bool,
    /// Expected fraction of censored patients (default 0.5).
    #[arg(long, conflicts_with = "no_survival")]
    pub censoring_rate: Option<f64>,
    /// Write into a non-empty folder.
    #[arg(long)]
    pub force: bool,
}

fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let (a, b) = s.split_once(',').ok_or("expected MIN,MAX")?;
    let a = a
        .trim()
        .parse()
        .map_err(|_| format!("'{a}' is not a number"))?;
    let b = b
        .trim()
        .parse()
        .map_err(|_| format!("'{b}' is not a number"))?;
    Ok((a, b))
}

pub fn config(a: &Args) -> Result<SynthConfig> {
    let Some(d) = Difficulty::parse(&a.difficulty) else {
        bail!(
            "--difficulty must be easy, paper or hard, not '{}'",
            a.difficulty
        )
    };
    let Some(s) = Size::parse(&a.size) else {
        bail!("--size must be demo or paper, not '{}'", a.size)
    };
    let mut cfg = SynthConfig::new(d, s, a.seed);
    if let Some(v) = a.patients {
        cfg.n_patients = v;
    }
    if let Some((lo, hi)) = a.patches {
        cfg.patches_min = lo;
        cfg.patches_max = hi;
    }
    if let Some(v) = a.dim {
        cfg.d_in = v;
    }
    if let Some(v) = a.genes {
        cfg.n_genes = v;
    }
    if let Some(v) = &a.classes {
        cfg.classes = v.iter().map(|s| s.trim().to_string()).collect();
    }
    if let Some(v) = a.gdc_fraction {
        cfg.gdc_fraction = v;
    }
    if let Some(v) = a.missing_expression {
        cfg.missing_expression = v;
    }
    if let Some(v) = a.missing_slide {
        cfg.missing_slide = v;
    }
    if let Some(v) = a.label_noise {
        cfg.label_noise = v;
    }
    cfg.write_pt = a.pt;
    if a.no_survival {
        cfg.survival = None;
    }
    if let (Some(v), Some(s)) = (a.censoring_rate, cfg.survival.as_mut()) {
        s.censoring_rate = v;
    }
    cfg.validate()
        .map_err(|m| anyhow::anyhow!("invalid settings: {m}"))?;
    Ok(cfg)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let cfg = config(&a)?;
    let r = crate::progress::generate_cohort(&cfg, &a.out, a.force)?;
    println!(
        "wrote {} patients, {} slides, {} patches ({}-d); expression: {} in the matrix, {} as GDC files; cohort file {}",
        r.patients,
        r.slides,
        r.patches,
        cfg.d_in,
        r.matrix_samples,
        r.gdc_samples,
        a.out.join("cohort.toml").display()
    );
    if let (Some(events), Some(c)) = (r.events, r.truth_cindex) {
        println!(
            "survival: {events} events, {} censored; Harrell's c-index of the true log-hazard {c:.4} (the ceiling of any risk model; truth/patients.tsv)",
            r.patients - events
        );
    }
    Ok(ExitCode::SUCCESS)
}
