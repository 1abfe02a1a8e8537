//! From slides to features and back: `slide info`, `patch` (segmentation + patch grid),
//! `extract` (features by any registered patch encoder) and `heatmap` (per-patch scores of a trained model).
//! Batch commands take slide files or folders, skip finished slides, keep going past a bad slide
//! (and exit 1 at the end), and split the list across machines with `--shard i/n` or a Slurm
//! array; that batch logic is `gimp_slide::batch`, the per-slide extraction
//! `gimp_extract::extract::FeatureRun`.

use crate::progress;
use anyhow::{anyhow, bail, Context, Result};
use gimp_extract::encoders::{self, ENCODERS};
use gimp_extract::extract::{FeatureRun, Layout};
use gimp_io::h5;
use gimp_models::BagInput;
use gimp_slide::batch::{self, ProcessList};
use gimp_slide::overlay::{self, PatchGrid};
use gimp_slide::patching::{ContourFn, PatchParams};
use gimp_slide::resolution::{self, ScaleOverride};
use gimp_slide::segment::{SegmentParams, PRESETS};
use gimp_train::data::expression_row;
use gimp_train::evaluate::{patch_scores, ModelSource};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(clap::Subcommand)]
pub enum SlideCommand {
    /// Levels, magnification, pixel size and associated images of a slide.
    Info {
        /// The slide file (TIFF/SVS; with --features openslide any format OpenSlide reads).
        slide: PathBuf,
        /// Print the properties as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        scale: ScaleArgs,
    },
    /// Write a downsampled picture of the whole slide (PNG).
    Thumbnail {
        /// The slide file.
        slide: PathBuf,
        /// The picture to write (PNG).
        #[arg(long)]
        out: PathBuf,
        /// Level-0 pixels per thumbnail pixel.
        #[arg(long, default_value_t = 32.0)]
        downsample: f64,
    },
}

/// The slide's level-0 scale, when the file lacks it or states it wrongly (rules:
/// `gimp_slide::resolution`).
#[derive(clap::Args, Clone, Copy, Default)]
pub struct ScaleArgs {
    /// Microns per level-0 pixel (overrides the file's; the magnification follows as 10 / mpp
    /// unless --level0-magnification is given).
    #[arg(long)]
    mpp: Option<f64>,
    /// Objective power of level 0 (overrides the file's).
    #[arg(long)]
    level0_magnification: Option<f64>,
}

impl ScaleArgs {
    fn resolve(&self) -> Result<ScaleOverride> {
        let o = ScaleOverride {
            mpp: self.mpp,
            magnification: self.level0_magnification,
        };
        o.check().map_err(anyhow::Error::msg)?;
        Ok(o)
    }
}

#[derive(clap::Args)]
pub struct Shard {
    /// Process only slides k with k mod n = i (0-based, `--shard 0/4`). Without it, a Slurm
    /// array job's SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT choose the share.
    #[arg(long, value_name = "I/N")]
    shard: Option<String>,
}

impl Shard {
    fn resolve(&self) -> Result<Option<batch::Shard>> {
        match &self.shard {
            Some(s) => Ok(Some(s.parse().map_err(|e| anyhow!("--shard {e}"))?)),
            None => Ok(batch::Shard::from_env()?),
        }
    }
}

/// Slide files from files and folders, then this shard's share.
fn slide_list(inputs: &[PathBuf], shard: Option<&batch::Shard>) -> Result<Vec<PathBuf>> {
    let all = batch::slide_files(inputs)?;
    Ok(match shard {
        Some(s) => s.select(all),
        None => all,
    })
}

pub fn run(cmd: SlideCommand) -> Result<ExitCode> {
    match cmd {
        SlideCommand::Info { slide, json, scale } => {
            let s = gimp_slide::open(&slide)?;
            let p = s.properties();
            let r = resolution::resolve(p, &scale.resolve()?);
            for w in &r.warnings {
                eprintln!("warning: {}: {w}", slide.display());
            }
            if json {
                let v = serde_json::json!({
                    "path": slide,
                    "vendor": p.vendor,
                    "mpp": r.mpp.map(|m| m.0),
                    "mpp_source": r.mpp.map(|m| m.1),
                    "objective_power": p.objective_power,
                    "magnification": r.magnification.map(|m| m.0),
                    "magnification_source": r.magnification.map(|m| m.1),
                    "magnification_from_mpp": r.magnification.map(|m| m.1 == resolution::Source::Estimated),
                    "warnings": r.warnings,
                    "levels": s.levels().iter().map(|l| serde_json::json!({"width": l.width, "height": l.height, "downsample": l.downsample})).collect::<Vec<_>>(),
                    "associated": s.associated_names(),
                    "properties": p.raw,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("slide          {}", slide.display());
            println!("vendor         {}", p.vendor);
            match r.magnification {
                Some((m, resolution::Source::File)) => {
                    println!("magnification  {m}× (objective power)")
                }
                Some((m, resolution::Source::Estimated)) => {
                    println!("magnification  {m:.1}× (estimated from the pixel size)")
                }
                Some((m, _)) => println!("magnification  {m}× (given)"),
                None => println!("magnification  unknown (give --level0-magnification or --mpp)"),
            }
            match r.mpp {
                Some(([x, y], src)) => println!("µm per pixel   {x} × {y} ({})", src.describe()),
                None => println!("µm per pixel   unknown (give --mpp or --level0-magnification)"),
            }
            for (i, l) in s.levels().iter().enumerate() {
                println!(
                    "level {i}        {} × {} (downsample {:.3})",
                    l.width, l.height, l.downsample
                );
            }
            println!("associated     {}", s.associated_names().join(", "));
            Ok(ExitCode::SUCCESS)
        }
        SlideCommand::Thumbnail {
            slide,
            out,
            downsample,
        } => {
            let s = gimp_slide::open(&slide)?;
            let (img, _) = s.overview(downsample, 1 << 28)?;
            overlay::save_png(&img, &out)?;
            eprintln!("wrote {} ({}×{})", out.display(), img.width(), img.height());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Regions a pathologist drew (QuPath: File > Export objects as GeoJSON, level-0 pixels).
#[derive(clap::Args, Clone, Default)]
pub struct RegionArgs {
    /// Patch only inside these annotations (holes left out): a GeoJSON file (one slide), or a
    /// folder of {slide_id}.geojson. A patch is kept when its centre is inside.
    #[arg(long, value_name = "FILE.geojson|DIR")]
    roi: Option<PathBuf>,
    /// Leave out patches whose centre is inside these regions (same forms as --roi).
    #[arg(long, value_name = "FILE.geojson|DIR")]
    exclude: Option<PathBuf>,
}

impl RegionArgs {
    /// A single region file describes one slide.
    fn check(&self, n_slides: usize) -> Result<()> {
        for (flag, p) in [("--roi", &self.roi), ("--exclude", &self.exclude)] {
            if let Some(p) = p {
                if !p.exists() {
                    bail!("{flag} {}: no such file or folder", p.display());
                }
                if p.is_file() && n_slides > 1 {
                    bail!(
                        "{flag} {} is one file for {n_slides} slides: give a folder of \
                         {{slide_id}}.geojson instead",
                        p.display()
                    );
                }
            }
        }
        Ok(())
    }
}

#[derive(clap::Args)]
pub struct PatchArgs {
    /// Slide files, or folders of them.
    #[arg(required = true)]
    slides: Vec<PathBuf>,
    /// Output folder: patches/{slide_id}.h5, masks/{slide_id}.png, process_list.csv.
    #[arg(long)]
    out: PathBuf,
    /// Segmentation preset (CLAM's): clam, tcga, bwh_biopsy, bwh_resection.
    #[arg(long, default_value = "tcga")]
    preset: String,
    /// Saturation threshold (overrides the preset).
    #[arg(long)]
    sthresh: Option<u8>,
    /// Median blur kernel, odd (overrides the preset).
    #[arg(long)]
    mthresh: Option<usize>,
    /// Closing kernel (overrides the preset).
    #[arg(long)]
    close: Option<usize>,
    /// Otsu's threshold instead of --sthresh.
    #[arg(long)]
    otsu: bool,
    /// Minimum tissue area, in 512×512 level-0 reference patches (overrides the preset).
    #[arg(long)]
    a_t: Option<f64>,
    /// Minimum hole area, in reference patches (overrides the preset).
    #[arg(long)]
    a_h: Option<f64>,
    /// Most holes kept per tissue region (overrides the preset).
    #[arg(long)]
    max_n_holes: Option<usize>,
    /// Downsample of the overview that is segmented.
    #[arg(long, default_value_t = 64.0)]
    seg_downsample: f64,
    /// Patch magnification.
    #[arg(long, default_value_t = 20.0)]
    magnification: f64,
    /// Patch side in pixels at --magnification.
    #[arg(long, default_value_t = 256)]
    patch_size: u32,
    /// Grid step in pixels at --magnification (default: --patch-size, no overlap).
    #[arg(long)]
    step: Option<u32>,
    #[command(flatten)]
    scale: ScaleArgs,
    #[command(flatten)]
    regions: RegionArgs,
    /// Patch test: four_pt (any of four points in tissue, CLAM's default) or center.
    #[arg(long, default_value = "four_pt")]
    contour_fn: String,
    /// Redo slides that already have a patch file.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    shard: Shard,
}

impl PatchArgs {
    fn segment_params(&self) -> Result<SegmentParams> {
        let mut p = SegmentParams::preset(&self.preset).with_context(|| {
            format!(
                "unknown --preset '{}'; known: {}",
                self.preset,
                PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
            )
        })?;
        p.sthresh = self.sthresh.unwrap_or(p.sthresh);
        p.mthresh = self.mthresh.unwrap_or(p.mthresh);
        p.close = self.close.unwrap_or(p.close);
        p.use_otsu |= self.otsu;
        p.a_t = self.a_t.unwrap_or(p.a_t);
        p.a_h = self.a_h.unwrap_or(p.a_h);
        p.max_n_holes = self.max_n_holes.unwrap_or(p.max_n_holes);
        p.downsample = self.seg_downsample;
        p.check().map_err(anyhow::Error::msg)?;
        Ok(p)
    }

    fn patch_params(&self) -> Result<PatchParams> {
        let contour_fn = match self.contour_fn.as_str() {
            "four_pt" => ContourFn::FourPt,
            "center" => ContourFn::Center,
            other => bail!("unknown --contour-fn '{other}'; known: four_pt, center"),
        };
        let scale = self.scale.resolve()?;
        Ok(PatchParams {
            patch_size: self.patch_size,
            step: self.step.unwrap_or(self.patch_size),
            target_magnification: self.magnification,
            level0_magnification: scale.magnification,
            mpp: scale.mpp,
            contour_fn,
            roi: self.regions.roi.clone(),
            exclude: self.regions.exclude.clone(),
        })
    }
}

pub fn patch(a: PatchArgs) -> Result<ExitCode> {
    let sp = a.segment_params()?;
    let pp = a.patch_params()?;
    let shard = a.shard.resolve()?;
    let slides = slide_list(&a.slides, shard.as_ref())?;
    a.regions.check(slides.len())?;
    let mut list = ProcessList::new();
    let pb = progress::bar(slides.len() as u64, "patching");
    for slide in &slides {
        let id = batch::slide_id(slide);
        if !a.overwrite && batch::patches_done(&a.out, &id) {
            list.already_exist(&id);
            pb.inc(1);
            continue;
        }
        let t = Instant::now();
        match batch::patch_slide(slide, &a.out, &sp, &pp) {
            Ok(done) => {
                for w in &done.warnings {
                    progress::line(&pb, format!("{id}: warning: {w}"));
                }
                progress::line(
                    &pb,
                    format!(
                        "{id}: {} patches in {:.1} s",
                        done.n_patches,
                        t.elapsed().as_secs_f64()
                    ),
                );
                list.processed(&done);
            }
            Err(e) => {
                progress::line(&pb, format!("{id}: failed: {e:#}"));
                list.failed(&id, &format!("{e:#}"));
            }
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let path = list.write(&a.out, shard.as_ref())?;
    eprintln!(
        "{} slides, {} failed; see {}",
        slides.len(),
        list.n_failed(),
        path.display()
    );
    Ok(if list.n_failed() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    /// Slide files, or folders of them.
    #[arg(required_unless_present = "list")]
    slides: Vec<PathBuf>,
    /// Folder of patch files ({slide_id}.h5, from `gimp-rs patch` or CLAM/TRIDENT).
    #[arg(long, required_unless_present = "list")]
    patches: Option<PathBuf>,
    /// Patch encoder (TRIDENT's names; `--list` shows them).
    #[arg(long, default_value = "resnet50_trunc")]
    encoder: String,
    /// The encoder's weights by the reference's parameter names: safetensors, or a torch state
    /// dict (pytorch_model.bin, .pth). Nothing is downloaded.
    #[arg(long, required_unless_present = "list")]
    weights: Option<PathBuf>,
    /// List the encoders: output width, input size, transform and normalisation.
    #[arg(long)]
    list: bool,
    /// Output folder.
    #[arg(long, required_unless_present = "list")]
    out: Option<PathBuf>,
    /// Where features go: trident (features_{encoder}/{slide_id}.h5) or clam
    /// (h5_files/{slide_id}.h5). Default: clam for resnet50_trunc, trident for the others.
    #[arg(long)]
    layout: Option<String>,
    /// Patches per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Resize patches to this side before the encoder's own transform (CLAM's
    /// --target_patch_size; 224 for 2024+ CLAM feature sets). Default: the patch file's target
    /// size, else as read.
    #[arg(long)]
    target_patch_size: Option<u32>,
    /// Also write pt_files/{slide_id}.pt (torch.save of the [N, D] tensor).
    #[arg(long)]
    pt: bool,
    /// Redo slides that already have features.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    shard: Shard,
}

/// `extract --list`: one line per encoder.
fn list_encoders() {
    println!(
        "{:<16}{:>6}{:>7}  what; transform",
        "encoder", "width", "input"
    );
    for s in ENCODERS {
        let input = s
            .transform
            .input_size()
            .map_or("as read".to_string(), |v| v.to_string());
        println!(
            "{:<16}{:>6}{:>9}  {}; {}",
            s.name,
            s.out_dim,
            input,
            s.summary,
            s.transform.describe()
        );
        println!("{:<33}weights: {}", "", s.weights);
    }
}

pub fn extract(a: ExtractArgs) -> Result<ExitCode> {
    if a.list {
        list_encoders();
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(patch_dir), Some(weights), Some(out)) = (&a.patches, &a.weights, &a.out) else {
        bail!("--patches, --weights and --out are needed (or --list)");
    };
    let spec = encoders::find(&a.encoder).with_context(|| {
        format!(
            "unknown --encoder '{}'; known: {}",
            a.encoder,
            encoders::names().join(", ")
        )
    })?;
    let layout = match a.layout.as_deref() {
        None if spec.name == "resnet50_trunc" => Layout::Clam,
        None | Some("trident") => Layout::Trident,
        Some("clam") => Layout::Clam,
        Some(other) => bail!("unknown --layout '{other}'; known: trident, clam"),
    };
    let slides = slide_list(&a.slides, a.shard.resolve()?.as_ref())?;
    let encoder = spec.load(weights)?;
    let sha = gimp_io::weights::sha256_hex(weights)?;
    eprintln!(
        "{}: {}-d features from {} (sha256 {})",
        spec.name,
        encoder.out_dim(),
        weights.display(),
        &sha[..12]
    );
    let run = FeatureRun {
        encoder: encoder.as_ref(),
        weights_sha256: &sha,
        layout,
        batch: a.batch,
        input_size: a.target_patch_size,
        out,
        pt: a.pt,
    };
    // Patch files are read up front so the progress bar can count patches, not slides.
    let mut jobs = Vec::new();
    let mut failed = 0;
    for slide in &slides {
        let id = batch::slide_id(slide);
        let pfile = patch_dir.join(format!("{id}.h5"));
        let patches = match h5::read_patches(&pfile) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{id}: failed: {e}");
                failed += 1;
                continue;
            }
        };
        if !a.overwrite && run.is_done(&id, patches.coords.len()) {
            eprintln!("{id}: done already");
            continue;
        }
        jobs.push((slide, id, pfile, patches));
    }
    let total: usize = jobs.iter().map(|j| j.3.coords.len()).sum();
    let pb = progress::bar(total as u64, "patches");
    let started = Instant::now();
    for (slide, id, pfile, patches) in jobs {
        let t = Instant::now();
        match run.slide(slide, &patches, &pfile, |k| pb.inc(k as u64)) {
            Ok(n) => progress::line(
                &pb,
                format!(
                    "{id}: {n} patches in {:.1} s ({:.1} patches/s)",
                    t.elapsed().as_secs_f64(),
                    n as f64 / t.elapsed().as_secs_f64()
                ),
            ),
            Err(e) => {
                failed += 1;
                progress::line(&pb, format!("{id}: failed: {e:#}"));
            }
        }
    }
    pb.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{total} patches in {secs:.1} s ({:.1} patches/s); {failed} slides failed",
        total as f64 / secs.max(1e-9)
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Args)]
pub struct HeatmapArgs {
    /// A gimp-rs checkpoint.
    #[arg(long, conflicts_with_all = ["arch", "weights"])]
    checkpoint: Option<PathBuf>,
    /// Architecture of --weights (reference code's parameter names).
    #[arg(long, requires = "weights")]
    arch: Option<String>,
    /// The reference code's weights of --arch (safetensors, a `torch.save`d state dict or a
    /// Lightning checkpoint).
    #[arg(long, requires = "arch")]
    weights: Option<PathBuf>,
    /// The slide's features (CLAM .h5 with coords).
    #[arg(long)]
    features: PathBuf,
    /// The slide's patch file (patch size and coordinates); default: the feature file's coords
    /// with --patch-size-level0.
    #[arg(long)]
    patches: Option<PathBuf>,
    /// Patch side in level-0 pixels, when there is no patch file.
    #[arg(long)]
    patch_size_level0: Option<f64>,
    /// The slide, for the picture (without it only the scores are written).
    #[arg(long)]
    slide: Option<PathBuf>,
    /// Expression of this patient for multimodal models; with --sample.
    #[arg(long, requires = "sample")]
    expression: Option<PathBuf>,
    /// The patient's column (sample id) in --expression.
    #[arg(long)]
    sample: Option<String>,
    /// Output folder: {id}.scores.csv, {id}.scores.h5, {id}.heatmap.png.
    #[arg(long)]
    out: PathBuf,
    /// Level-0 pixels per pixel of the picture.
    #[arg(long, default_value_t = 16.0)]
    downsample: f64,
    /// Opacity of the colours over the slide.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Also write {id}.qupath.geojson: the patches as QuPath detections with their score and
    /// percentile, the --top highest as class "Top patch".
    #[arg(long)]
    qupath: bool,
    /// How many of the highest-scoring patches get the class "Top patch" (with --qupath).
    #[arg(long, default_value_t = 10, requires = "qupath")]
    top: usize,
}

pub fn heatmap(a: HeatmapArgs) -> Result<ExitCode> {
    let source = ModelSource::open(
        a.checkpoint.as_deref(),
        a.arch.as_deref(),
        a.weights.as_deref(),
    )?;
    source.check_features(&a.features)?;
    let ModelSource {
        loaded,
        preprocessing,
        ..
    } = source;
    let arch = loaded.arch.name;
    // Read by rows: inference embeds the bag window by window (docs/DESIGN.md §42).
    let (bag, coords) =
        gimp_io::feature_file::open_rows(&a.features, gimp_io::DEFAULT_MAX_BAG_BYTES)?;
    let grid = PatchGrid::resolve(
        &a.features,
        coords,
        bag.dims().0,
        a.patches.as_deref(),
        a.patch_size_level0,
    )?;
    let expr = match (&a.expression, &a.sample, &preprocessing) {
        (Some(m), Some(s), Some(p)) => Some(expression_row(m, s, p)?),
        (Some(_), _, None) => bail!("--expression needs a gimp-rs --checkpoint"),
        _ => None,
    };
    let scores = patch_scores(&loaded, BagInput::Rows(bag.as_ref()), expr.as_ref())?;
    let id = batch::slide_id(&a.features);
    let picture = a
        .slide
        .as_deref()
        .map(|slide| gimp_predict::pipeline::Heatmap {
            slide,
            downsample: a.downsample,
            alpha: a.alpha,
        });
    let png = gimp_predict::pipeline::write_scores(
        &a.out,
        &id,
        &grid.coords,
        grid.size_level0,
        &scores,
        picture,
    )?;
    eprintln!(
        "wrote {} scores of {arch} to {}/{id}.scores.{{csv,h5}}",
        scores.len(),
        a.out.display()
    );
    if a.qupath {
        let path = gimp_predict::qupath::write_scored_patches(
            &a.out,
            &id,
            &grid.coords,
            grid.size_level0,
            &scores,
            a.top,
        )?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(path) = png {
        eprintln!("wrote {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct PredictArgs {
    #[command(flatten)]
    pub run: crate::commands::model::RunArgs,
    /// Slide files or folders of them: run the whole pipeline (segmentation, patching, features,
    /// model, scores, heatmap) on each, instead of reading --features.
    #[arg(long, num_args = 1.., conflicts_with = "features", requires_all = ["encoder_weights", "out"])]
    pub slide: Vec<PathBuf>,
    /// Weights of the encoder the model was trained on (the checkpoint records which; by the
    /// reference's parameter names, safetensors or a torch state dict; `extract --list`).
    #[arg(long, requires = "slide")]
    encoder_weights: Option<PathBuf>,
    /// Output folder: {slide_id}.prediction.json, .scores.csv/.h5, .heatmap.png, and patches/,
    /// masks/, h5_files/ (what `gimp-rs view` shows).
    #[arg(long, requires = "slide")]
    out: Option<PathBuf>,
    /// Segmentation preset (CLAM's): clam, tcga, bwh_biopsy, bwh_resection.
    #[arg(long, default_value = "tcga")]
    preset: String,
    /// Patch magnification.
    #[arg(long, default_value_t = 20.0)]
    magnification: f64,
    /// Patch side in pixels at --magnification.
    #[arg(long, default_value_t = 256)]
    patch_size: u32,
    #[command(flatten)]
    scale: ScaleArgs,
    #[command(flatten)]
    regions: RegionArgs,
    /// Patches per forward pass of the encoder.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Level-0 pixels per pixel of the heatmap picture.
    #[arg(long, default_value_t = 16.0)]
    heatmap_downsample: f64,
    #[command(flatten)]
    shard: Shard,
}

impl PredictArgs {
    /// Whether slides were given (the pipeline) rather than features (`model run`).
    pub fn has_slides(&self) -> bool {
        !self.slide.is_empty()
    }
}

/// `predict --slide`: every slide (this shard's share) through `gimp_predict::Predictor`, with a
/// progress bar over the patches and each stage's time; a failed slide is reported and the
/// others go on (exit 1 at the end).
pub fn predict(a: PredictArgs) -> Result<ExitCode> {
    let (Some(encoder_weights), Some(out)) = (&a.encoder_weights, &a.out) else {
        bail!("--slide needs --encoder-weights and --out");
    };
    let slides = slide_list(&a.slide, a.shard.resolve()?.as_ref())?;
    a.regions.check(slides.len())?;
    let scale = a.scale.resolve()?;
    if slides.len() > 1 && a.run.sample.is_some() {
        bail!("--expression/--sample describe one patient: give one --slide with them");
    }
    let source = ModelSource::open(
        a.run.checkpoint.as_deref(),
        a.run.arch.as_deref(),
        a.run.weights.as_deref(),
    )?;
    let expression = match (&a.run.expression, &a.run.sample, &source.preprocessing) {
        (Some(m), Some(s), Some(p)) => Some(expression_row(m, s, p)?),
        (Some(_), _, None) => bail!("--expression needs a gimp-rs --checkpoint"),
        _ => None,
    };
    let segment = SegmentParams::preset(&a.preset).with_context(|| {
        format!(
            "unknown --preset '{}'; known: {}",
            a.preset,
            PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        )
    })?;
    let patching = PatchParams {
        patch_size: a.patch_size,
        step: a.patch_size,
        target_magnification: a.magnification,
        level0_magnification: scale.magnification,
        mpp: scale.mpp,
        contour_fn: ContourFn::FourPt,
        roi: a.regions.roi.clone(),
        exclude: a.regions.exclude.clone(),
    };
    // The encoder the checkpoint records; ResNet50-trunc for checkpoints from before encoders
    // were recorded (the width check in `Predictor::new` still applies).
    let encoder_name = source
        .features
        .as_ref()
        .and_then(|f| f.encoder.clone())
        .unwrap_or_else(|| gimp_predict::encoder::DEFAULT_ENCODER.to_string());
    let encoder = gimp_predict::SlideEncoder::open(&encoder_name, encoder_weights, a.batch)?;
    let mut predictor = gimp_predict::Predictor::new(source, encoder, segment, patching)?;
    predictor.top = a.run.top;
    predictor.heatmap_downsample = a.heatmap_downsample;
    if let Some(w) = predictor
        .model
        .missing_modality_warning(true, expression.is_some())
    {
        eprintln!("warning: {w}");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let pb = progress::bar(0, "patches");
    let mut failed = 0;
    let mut records = Vec::new();
    for slide in &slides {
        let mut on_progress = |p: gimp_predict::Progress| match p {
            gimp_predict::Progress::Stage { slide, stage } => {
                pb.set_message(format!("{slide}: {}", stage.name()))
            }
            gimp_predict::Progress::Patches(n) => pb.inc_length(n as u64),
            gimp_predict::Progress::Encoded(k) => pb.inc(k as u64),
            gimp_predict::Progress::Warning(w) => progress::line(&pb, format!("warning: {w}")),
        };
        let id = batch::slide_id(slide);
        match predictor.slide(slide, out, expression.as_ref(), &mut on_progress) {
            Ok(r) => {
                let times: Vec<String> = r
                    .times
                    .iter()
                    .map(|t| format!("{} {:.2} s", t.stage, t.seconds))
                    .collect();
                let p = r.probabilities.get(r.predicted).copied().unwrap_or(0.0);
                let answer = match (r.risk, &r.survival) {
                    (Some(risk), Some(s)) => {
                        let curve: Vec<String> = s.iter().map(|v| format!("{v:.3}")).collect();
                        format!("risk {risk:.4}, survival by bin [{}]", curve.join(", "))
                    }
                    (Some(risk), None) => format!("risk {risk:.4}"),
                    _ => format!("{} ({p:.3})", r.predicted_class.as_deref().unwrap_or("?")),
                };
                progress::line(
                    &pb,
                    format!(
                        "{id}: {answer} from {} patches; {}",
                        r.n_patches,
                        times.join(", ")
                    ),
                );
                records.push(r);
            }
            Err(e) => {
                failed += 1;
                progress::line(&pb, format!("{id}: failed: {e}"));
            }
        }
    }
    pb.finish_and_clear();
    println!("{}", serde_json::to_string_pretty(&records)?);
    eprintln!(
        "{} slides, {failed} failed; records in {} (look at them with `gimp-rs view {}`)",
        slides.len(),
        out.display(),
        out.display()
    );
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Subcommand)]
pub enum ExportCommand {
    /// One slide's tissue outlines (annotations, class "Tissue", holes kept) and patches
    /// (detections, class "Patch"; the highest scores "Top patch") with their score, percentile
    /// and the predicted class as measurements, as GeoJSON in level-0 pixels that QuPath opens
    /// as it is (drag the file onto the slide, or File > Import objects). From a `predict`
    /// record, or from the files of `patch` and `heatmap`.
    Qupath(QupathArgs),
}

#[derive(clap::Args)]
pub struct QupathArgs {
    /// A `predict --slide` record ({slide_id}.prediction.json): its patches, scores, prediction
    /// and the tissue outlines beside it.
    #[arg(long, conflicts_with_all = ["patches", "scores", "contours"], required_unless_present = "patches")]
    prediction: Option<PathBuf>,
    /// A patch file (`patch`'s patches/{slide_id}.h5, or CLAM's / TRIDENT's).
    #[arg(long)]
    patches: Option<PathBuf>,
    /// Per-patch scores of those patches (`heatmap`'s {slide_id}.scores.csv).
    #[arg(long, requires = "patches")]
    scores: Option<PathBuf>,
    /// Tissue outlines (`patch`'s contours_geojson/{slide_id}.geojson).
    #[arg(long, requires = "patches")]
    contours: Option<PathBuf>,
    /// How many of the highest-scoring patches get the class "Top patch".
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// The GeoJSON file to write.
    #[arg(long)]
    out: PathBuf,
}

pub fn export(c: ExportCommand) -> Result<ExitCode> {
    let ExportCommand::Qupath(a) = c;
    let features = match (&a.prediction, &a.patches) {
        (Some(record), _) => gimp_predict::qupath::record_features(record, a.top)?,
        (None, Some(patches)) => gimp_predict::qupath::slide_features(
            a.contours.as_deref(),
            patches,
            a.scores.as_deref(),
            None,
            a.top,
        )?,
        (None, None) => bail!("give --prediction, or --patches (with --scores, --contours)"),
    };
    let n = features.len();
    gimp_slide::qupath::write(&a.out, features)?;
    eprintln!("wrote {n} objects to {}", a.out.display());
    Ok(ExitCode::SUCCESS)
}
