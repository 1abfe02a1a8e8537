use anyhow::{Context, Result};
use gimp_cohort::{Cohort, LoadOptions, Summary};
use gimp_linear::LogisticConfig;
use gimp_metrics::Report;
use gimp_synth::{Difficulty, Size, SynthConfig};
use gimp_train::config::{GeneEncoderKind, Modalities};
use gimp_train::progress::Bars;
use gimp_train::stages;
use gimp_train::task::{Scores, StageResult};
use gimp_train::trainer::{Control, Progress};
use gimp_train::{Prepared, RunConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Working folder (the cohort is written to OUT/cohort, the runs to OUT/runs).
    #[arg(long, default_value = "demo-run")]
    pub out: PathBuf,
    /// Seed of the synthetic cohort and of every run (the figures in the README are seed 0).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop after the cohort, its check and the gene-only baseline (no training).
    #[arg(long)]
    pub quick: bool,
}

fn row(name: &str, r: &Report) -> String {
    let pct = crate::table::pct;
    let auc = match &r.roc_auc {
        Some(a) => format!("{:.3} [{:.3}–{:.3}]", a.value, a.low, a.high),
        None => "n/a".into(),
    };
    format!(
        "  {name:<34} {:>5}% [{:>5}–{:>5}]   {auc:<21} {:>5}%   {:.3}",
        pct(r.accuracy.value),
        pct(r.accuracy.low),
        pct(r.accuracy.high),
        pct(r.balanced_accuracy),
        r.macro_f1
    )
}

pub fn run(a: Args) -> Result<ExitCode> {
    let t0 = Instant::now();
    let cohort_dir = a.out.join("cohort");
    let cfg = SynthConfig::new(Difficulty::Paper, Size::Demo, a.seed);
    let steps = if a.quick { 4 } else { 7 };
    println!(
        "1/{steps} generating the demo cohort (difficulty paper, {} patients, seed {}) in {}",
        cfg.n_patients,
        a.seed,
        cohort_dir.display()
    );
    let r = crate::progress::generate_cohort(&cfg, &cohort_dir, true)?;
    println!(
        "    {} slides, {} patches, {}-d features, {} genes",
        r.slides, r.patches, cfg.d_in, cfg.n_genes
    );

    let cohort_file = cohort_dir.join("cohort.toml");
    println!("2/{steps} checking the cohort ({})", cohort_file.display());
    let c = Cohort::open(&cohort_file, LoadOptions::default())?;
    let s = Summary::of(&c);
    for line in s.render().lines() {
        println!("    {line}");
    }
    if !s.errors.is_empty() {
        return Ok(ExitCode::from(1));
    }

    println!("3/{steps} building the memory-mapped feature cache");
    let (n, dir) = crate::progress::fill_cache(&c)?;
    println!("    {n} bags in {}", dir.display());

    println!(
        "4/{steps} gene-only baseline: logistic regression (C = 0.1) on log2(FPKM + 1), split 0"
    );
    let folds: Vec<_> = c.folds.iter().map(|f| f.part.clone()).collect();
    let lr = gimp_linear::baseline::cross_validate(
        &c,
        &folds,
        LogisticConfig::default(),
        gimp_io::expression::ExpressionTransform::Log2p1,
        a.seed,
    )?;
    if a.quick {
        crate::output::print_logreg(&lr);
        println!(
            "done in {:.1} s; the cohort stays in {} for the other commands.",
            t0.elapsed().as_secs_f64(),
            cohort_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "    test accuracy {}%",
        crate::table::pct(lr.folds[0].test.accuracy.value)
    );

    let mut run = RunConfig::demo();
    run.seed = a.seed;
    let data = Prepared::new(&c, 0, run.model.transform)?;
    let runs = a.out.join("runs");
    let bars = Bars::new();
    let on = |p: &Progress| bars.update(p);
    println!(
        "5/{steps} GiMP stage 1: GroupMSA gene pre-training ({} epochs); stage 2: masked patch modelling + gene-induced triplets ({} epochs, windows of {}); stage 3: fine-tuning ({} epochs)",
        run.genes.epochs, run.pretrain.epochs, run.pretrain.window, run.finetune.epochs
    );
    let gimp = stages::train_gimp(&data, &run, &runs.join("gimp"), Control::default(), &on)?;
    bars.finish();
    println!("6/{steps} its image-only part, fine-tuned from scratch for comparison");
    let mut image_cfg = run.clone();
    image_cfg.finetune.modalities = Modalities::Image;
    image_cfg.pretrain.epochs = 0;
    let image = stages::train_gimp(
        &data,
        &image_cfg,
        &runs.join("image-only"),
        Control::default(),
        &on,
    )?;
    bars.finish();
    println!("7/{steps} the Table 2 ablation with SNN in place of GroupMSA (all three stages)");
    let mut snn_cfg = run.clone();
    snn_cfg.model.gene_encoder = GeneEncoderKind::Snn;
    let snn = stages::train_gimp(
        &data,
        &snn_cfg,
        &runs.join("gimp-snn"),
        Control::default(),
        &on,
    )?;
    bars.finish();
    let genes = gimp.genes.as_ref().context("GiMP's run has a gene stage")?;
    let pre = gimp.pretrain.as_ref().context("the demo pre-trains")?;
    for (name, r) in [
        ("gene pre-training", genes),
        ("GiMP pre-training", pre),
        ("GiMP fine-tuning", &gimp.finetune),
        ("image-only fine-tuning", &image.finetune),
    ] {
        if let Some(dir) = r.checkpoint.parent() {
            crate::output::report_quiet(name, r, dir)?;
        }
    }
    println!("\nTest split ({} patients): accuracy [95% Wilson], ROC-AUC [95% bootstrap], balanced accuracy, macro F1", data.test.len());
    let pick = |r: &StageResult| r.figures.test.as_ref().and_then(Scores::report).cloned();
    let rows = [
        ("GiMP (slides + expression)", pick(&gimp.finetune)),
        ("GiMP with SNN (ablation)", pick(&snn.finetune)),
        ("image-only (patch aggregator)", pick(&image.finetune)),
        ("gene-only (GroupMSA)", pick(genes)),
        ("gene-only (SNN)", snn.genes.as_ref().and_then(pick)),
        (
            "gene-only (logistic regression)",
            Some(lr.folds[0].test.clone()),
        ),
    ];
    for (name, r) in &rows {
        if let Some(r) = r {
            println!("{}", row(name, r));
        }
    }
    println!(
        "\nCheckpoints, logs (log.jsonl) and metrics (metrics.json) are in {}; try\n  gimp-rs evaluate {} --checkpoint {}",
        runs.display(),
        cohort_file.display(),
        gimp.finetune.checkpoint.display()
    );
    println!("done in {:.0} s.", t0.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
