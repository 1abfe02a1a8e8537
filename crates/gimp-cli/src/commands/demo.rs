use anyhow::Result;
use gimp_cohort::{LoadOptions, Summary};
use gimp_linear::LogisticConfig;
use gimp_metrics::Report;
use gimp_synth::{Difficulty, Size, SynthConfig};
use gimp_train::stages;
use gimp_train::{Prepared, RunConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Working folder (the cohort is written to OUT/cohort, the runs to OUT/runs).
    #[arg(long, default_value = "demo-run")]
    pub out: PathBuf,
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
    let steps = if a.quick { 4 } else { 8 };
    println!(
        "1/{steps} generating the demo cohort (difficulty paper, {} patients, seed {}) in {}",
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
    println!("2/{steps} checking the cohort ({})", cohort_file.display());
    let c = super::cohort::load(&cohort_file, LoadOptions::default())?;
    let s = Summary::of(&c);
    for line in s.render().lines() {
        println!("    {line}");
    }
    if !s.errors.is_empty() {
        return Ok(ExitCode::from(1));
    }

    println!("3/{steps} building the memory-mapped feature cache");
    let (n, dir) = super::cohort::build_cache(&c)?;
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
        super::baseline::print(&lr);
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
    let data = Prepared::new(&c, 0, &run.model.transform)?;
    let runs = a.out.join("runs");
    let bars = super::train::Bars::new();
    let on = |p: &stages::Progress| bars.update(p);
    println!(
        "5/{steps} GiMP stage 1: GroupMSA gene pre-training ({} epochs)",
        run.genes.epochs
    );
    let genes = stages::pretrain_genes(
        &data,
        &run,
        &runs.join("gimp/genes"),
        Default::default(),
        &on,
    )?;
    bars.finish();
    println!("6/{steps} GiMP stage 2: masked patch modelling + gene-induced triplets ({} epochs, windows of {})", run.pretrain.epochs, run.pretrain.window);
    let pre = stages::pretrain(
        &data,
        &run,
        Some(&genes.checkpoint),
        &runs.join("gimp/pretrain"),
        Default::default(),
        &on,
    )?;
    bars.finish();
    println!(
        "7/{steps} fine-tuning GiMP, and its image-only part for comparison ({} epochs each)",
        run.finetune.epochs
    );
    let gimp = stages::finetune(
        &data,
        &run,
        Some(&pre.checkpoint),
        Some(&genes.checkpoint),
        &runs.join("gimp/finetune"),
        Default::default(),
        &on,
    )?;
    bars.finish();
    let mut image_cfg = run.clone();
    image_cfg.finetune.modalities = "image".into();
    let image = stages::finetune(
        &data,
        &image_cfg,
        None,
        None,
        &runs.join("image-only/finetune"),
        Default::default(),
        &on,
    )?;
    bars.finish();

    println!("8/{steps} the Table 2 ablation with SNN in place of GroupMSA (all three stages)");
    let mut snn_cfg = run.clone();
    snn_cfg.model.gene_encoder = "snn".into();
    let snn_dir = runs.join("gimp-snn");
    let snn_genes = stages::pretrain_genes(
        &data,
        &snn_cfg,
        &snn_dir.join("genes"),
        Default::default(),
        &on,
    )?;
    bars.finish();
    let snn_pre = stages::pretrain(
        &data,
        &snn_cfg,
        Some(&snn_genes.checkpoint),
        &snn_dir.join("pretrain"),
        Default::default(),
        &on,
    )?;
    bars.finish();
    let snn = stages::finetune(
        &data,
        &snn_cfg,
        Some(&snn_pre.checkpoint),
        None,
        &snn_dir.join("finetune"),
        Default::default(),
        &on,
    )?;
    bars.finish();
    for (name, r) in [
        ("gene pre-training", &genes),
        ("GiMP pre-training", &pre),
        ("GiMP fine-tuning", &gimp),
        ("image-only fine-tuning", &image),
    ] {
        if let Some(dir) = r.checkpoint.parent() {
            super::train::report_quiet(name, r, dir)?;
        }
    }
    println!("\nTest split ({} patients): accuracy [95% Wilson], ROC-AUC [95% bootstrap], balanced accuracy, macro F1", data.test.len());
    let pick = |r: &stages::StageResult| r.test.clone();
    let rows = [
        ("GiMP (slides + expression)", pick(&gimp)),
        ("GiMP with SNN (ablation)", pick(&snn)),
        ("image-only (patch aggregator)", pick(&image)),
        ("gene-only (GroupMSA)", pick(&genes)),
        ("gene-only (SNN)", pick(&snn_genes)),
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
        gimp.checkpoint.display()
    );
    println!("done in {:.0} s.", t0.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}
