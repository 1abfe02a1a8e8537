//! `gimp-rs`: argument parsing and wiring only; the work is in the library crates.

mod commands;
mod output;
mod progress;
mod table;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Multimodal (slide + gene expression) cancer classification: GiMP and the systems it is
/// compared with, from the files CLAM, TransMIL, MCAT and the GDC give you.
#[derive(Parser)]
#[command(name = "gimp-rs", version, about, long_about = None)]
struct Cli {
    /// Worker threads (default: all cores). Results are reproducible for a given seed and
    /// thread count.
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the built-in synthetic cohort, check it, and run the gene-only baseline on it.
    Demo(commands::demo::Args),
    /// Write a synthetic image-omic cohort in CLAM/GDC layout, with per-patch ground truth.
    Synth(commands::synth::Args),
    /// Inspect a cohort (labels + features + expression + splits, joined by patient).
    #[command(subcommand)]
    Cohort(commands::cohort::Command),
    /// Write patient-level stratified splits, or check split files for leaks (`split check`).
    Split(commands::split::Args),
    /// Survival metrics (Harrell's and Uno's c-index, time-dependent AUC, log-rank) and
    /// Kaplan–Meier curves of predicted risks.
    #[command(subcommand)]
    Survival(commands::survival::Command),
    /// Baselines that need no deep learning.
    #[command(subcommand)]
    Baseline(commands::baseline::Command),
    /// Train any compared system — slide models (ABMIL, DSMIL, CLAM-SB/MB, TransMIL, mean-pooling
    /// MIL), expression models (SNN, GroupMSA), multimodal ones (PORPOISE, Pathomic Fusion, MCAT,
    /// MGCA, BioViL, REFERS) and GiMP's successors (TANGLE probe and fine-tuned, SurvPath, MMP) —
    /// for classification or survival, with the same splits, validation rule, checkpoints and
    /// metrics as GiMP (`--arch` lists every name).
    Train(commands::train::TrainArgs),
    /// The paper's experiments (table1: compared systems; table2: GiMP ablations) on identical
    /// splits and seeds; finished runs are skipped, shares run on several machines; Markdown +
    /// CSV with mean ± std and pooled 95% intervals; `compare` tests one row against another.
    Experiment(commands::experiment::Args),
    /// Stage 1: supervised gene-encoder (GroupMSA) pre-training on expression alone.
    PretrainGenes(commands::train::Common),
    /// Stage 2: GiMP pre-training (masked patch modelling + gene-induced triplets).
    Pretrain(commands::train::PretrainArgs),
    /// Stage 3: fine-tuning on CLS_pat with validation every epoch; reports the test split.
    Finetune(commands::train::FinetuneArgs),
    /// Metrics of a checkpoint on a split (accuracy with a Wilson interval, balanced accuracy,
    /// ROC-AUC with a bootstrap interval, macro F1, confusion), overall and by modality; of a
    /// survival checkpoint, c-indices, time-dependent AUC and Kaplan–Meier curves.
    Evaluate(commands::train::EvalArgs),
    /// Temperature scaling: fit the temperature that minimises the validation split's negative
    /// log-likelihood and store it in the checkpoint; evaluate and predict then use it
    Calibrate(commands::train::CalibrateArgs),
    /// One new patient (slide features and/or expression) → class probabilities and the most
    /// attended patches, as JSON (the same as `model run`); with --slide, raw slides go through
    /// segmentation, patching, feature extraction and the model to probabilities, per-patch
    /// scores and a heatmap (what `view` shows).
    Predict(commands::slide::PredictArgs),
    /// The embedding (CLS_pat for GiMP) of every patient of a cohort, as TSV.
    Embed(commands::train::EmbedArgs),
    /// Fig. 2: t-SNE (after PCA to 50 dimensions) of every patient's embedding, coloured by
    /// class, for one or more checkpoints; PNG and SVG, deterministic for a seed.
    Tsne(commands::train::TsneArgs),
    /// Slide metadata and thumbnails (tiled TIFF, Aperio SVS with JPEG or JPEG 2000 tiles,
    /// OME-TIFF, DICOM WSI series; OpenSlide formats with the `openslide` feature).
    #[command(subcommand)]
    Slide(commands::slide::SlideCommand),
    /// Tissue segmentation and the patch grid at a target magnification, for slides or folders
    /// of slides: CLAM/TRIDENT patch files plus QC pictures and a process list.
    Patch(commands::slide::PatchArgs),
    /// Features of every patch by a patch encoder (UNI, UNI2-h, Virchow2, Prov-GigaPath,
    /// H-optimus-0, Phikon-v2 from your weights file, or CLAM's ResNet50-trunc; `--list`), as
    /// TRIDENT or CLAM feature files; resumable, shardable across machines (--shard, Slurm arrays).
    Extract(commands::slide::ExtractArgs),
    /// Per-patch scores of a trained model (attention; CLS attention for TransMIL and GiMP),
    /// aligned with coords, as CSV and h5, drawn over the slide as PNG.
    Heatmap(commands::slide::HeatmapArgs),
    /// Results for other tools: `export qupath` writes a slide's tissue outlines and scored
    /// patches as GeoJSON that QuPath imports as it is.
    #[command(subcommand)]
    Export(commands::slide::ExportCommand),
    /// A local web page to pan and zoom slides with a prediction's heatmap, patch grid, tissue
    /// outlines, top patches and probabilities (binds 127.0.0.1 unless --host).
    View(commands::view::Args),
    /// Model architectures, checkpoints, and running a model on one input.
    #[command(subcommand)]
    Model(commands::model::Command),
}

/// Large freed tensors are reused instead of re-faulted from the kernel (see `gimp_nn::cpu::alloc`).
#[global_allocator]
static ALLOC: gimp_nn::cpu::alloc::CachingAlloc = gimp_nn::cpu::alloc::CachingAlloc::new();

fn main() -> ExitCode {
    // Freed tensors stay in glibc's heap for reuse instead of being unmapped and faulted in again
    // (docs/PERFORMANCE.md, "What the user's commands cost").
    gimp_nn::cpu::alloc::keep_freed_memory();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // Panics inside third-party parsers are caught and reported as errors naming the file;
    // their panic messages would only confuse.
    gimp_io::guard::install_quiet_panic_hook();
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        if let Err(e) = rayon::ThreadPoolBuilder::new()
            .num_threads(n.max(1))
            .build_global()
        {
            eprintln!("error: cannot set the thread count: {e}");
            return ExitCode::from(2);
        }
    }
    let result = match cli.command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Synth(a) => commands::synth::run(a),
        Command::Cohort(c) => commands::cohort::run(c),
        Command::Split(a) => commands::split::run(a),
        Command::Survival(c) => commands::survival::run(c),
        Command::Baseline(c) => commands::baseline::run(c),
        Command::Model(c) => commands::model::run(c),
        Command::Slide(c) => commands::slide::run(c),
        Command::Patch(a) => commands::slide::patch(a),
        Command::Extract(a) => commands::slide::extract(a),
        Command::Heatmap(a) => commands::slide::heatmap(a),
        Command::Export(c) => commands::slide::export(c),
        Command::View(a) => commands::view::run(a),
        Command::PretrainGenes(c) => commands::train::genes(c),
        Command::Train(a) => commands::train::train(a),
        Command::Experiment(a) => commands::experiment::run(a),
        Command::Evaluate(a) => commands::train::evaluate(a),
        Command::Calibrate(a) => commands::train::calibrate(a),
        Command::Predict(a) if a.has_slides() => commands::slide::predict(a),
        Command::Predict(a) => commands::model::run(commands::model::Command::Run(a.run)),
        Command::Embed(a) => commands::train::embed(a),
        Command::Tsne(a) => commands::train::tsne(a),
        Command::Pretrain(a) => commands::train::pretrain(a),
        Command::Finetune(a) => commands::train::finetune(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
