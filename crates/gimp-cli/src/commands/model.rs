use anyhow::{bail, Result};
use gimp_models::registry::REGISTRY;
use gimp_models::BagInput;
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::Mode;
use gimp_train::data::expression_row;
use gimp_train::evaluate::ModelSource;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// The architectures this build knows (the registry the trainer and docs read).
    List {
        /// Print the registry as JSON.
        #[arg(long)]
        json: bool,
        /// Print the table docs/MODELS.md embeds.
        #[arg(long, conflicts_with = "json")]
        markdown: bool,
    },
    /// Print a gimp-rs checkpoint's architecture, config, classes and preprocessing.
    Info {
        /// A gimp-rs checkpoint (model.safetensors).
        checkpoint: PathBuf,
    },
    /// Run a model on one input and print logits and probabilities as JSON.
    Run(RunArgs),
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// A gimp-rs checkpoint (weights + config + preprocessing).
    #[arg(long, conflicts_with_all = ["arch", "weights"])]
    pub checkpoint: Option<PathBuf>,
    /// Architecture of --weights (see `gimp-rs model list`).
    #[arg(long, requires = "weights")]
    pub arch: Option<String>,
    /// The reference code's weights by their parameter names: safetensors, a `torch.save`d
    /// state dict (.pt/.pth, e.g. CLAM's s_0_checkpoint.pt) or a Lightning checkpoint (.ckpt).
    #[arg(long, requires = "arch")]
    pub weights: Option<PathBuf>,
    /// Slide features: CLAM .h5, .pt, .npy or .safetensors.
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// Expression matrix (for expression models); with --sample.
    #[arg(long, requires = "sample")]
    pub expression: Option<PathBuf>,
    /// Row of --expression to run.
    #[arg(long)]
    pub sample: Option<String>,
    /// How many of the most attended patches to list.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
}

#[derive(Serialize)]
struct Patch {
    row: usize,
    x: Option<i64>,
    y: Option<i64>,
    score: f32,
}

#[derive(Serialize)]
struct RunOutput {
    arch: String,
    input: String,
    /// The modalities the answer used.
    modalities: Vec<&'static str>,
    /// Set when the model was not trained to answer without a modality it lacks here.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    logits: Vec<f32>,
    /// A survival model's risk (higher: earlier event) and, for the discrete-time head, its
    /// survival curve per time bin (`classes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    risk: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    survival: Option<Vec<f64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time_bins: Option<Vec<String>>,
    probabilities: Vec<f32>,
    predicted: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted_class: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    top_patches: Vec<Patch>,
}

pub fn run(cmd: Command) -> Result<ExitCode> {
    match cmd {
        Command::List { json, markdown } => {
            if markdown {
                println!("| name | input | model | parameter names from |");
                println!("|---|---|---|---|");
                for a in REGISTRY {
                    println!(
                        "| `{}` | {} | {} | {} |",
                        a.name,
                        format!("{:?}", a.input).to_lowercase(),
                        a.summary,
                        a.reference
                    );
                }
            } else if json {
                let v: Vec<_> = REGISTRY
                    .iter()
                    .map(|a| serde_json::json!({"name": a.name, "input": a.input, "summary": a.summary, "reference": a.reference}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for a in REGISTRY {
                    println!(
                        "{:<10} {:<11} {}",
                        a.name,
                        format!("{:?}", a.input).to_lowercase(),
                        a.summary
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Info { checkpoint } => {
            let c = Checkpoint::load(&checkpoint)?;
            let params: usize = c.weights.values().map(|t| t.elem_count()).sum();
            println!("architecture  {}", c.arch);
            println!("classes       {}", c.classes.join(", "));
            println!("parameters    {params}");
            if let Some(p) = &c.preprocessing {
                println!(
                    "expression    {} genes, transform {}",
                    p.genes.len(),
                    p.transform
                );
            }
            for (k, v) in &c.info {
                println!("{k:<13} {v}");
            }
            println!("config\n{}", serde_json::to_string_pretty(&c.config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Run(a) => run_model(a),
    }
}

fn run_model(a: RunArgs) -> Result<ExitCode> {
    let source = ModelSource::open(
        a.checkpoint.as_deref(),
        a.arch.as_deref(),
        a.weights.as_deref(),
    )?;
    let (loaded, preprocessing) = (&source.loaded, &source.preprocessing);
    let arch_name = loaded.arch.name;
    let mut coords = None;
    let wants_bag = loaded.arch.input.reads_slides();
    let wants_expr = loaded.arch.input.reads_expression();
    let mut desc = Vec::new();
    let bag = match (&a.features, wants_bag) {
        (Some(f), true) => {
            source.check_features(f)?;
            // Read by rows: inference embeds the bag window by window (docs/DESIGN.md §42).
            let (rows, c) = gimp_io::feature_file::open_rows(f, gimp_io::DEFAULT_MAX_BAG_BYTES)?;
            coords = c;
            desc.push(f.display().to_string());
            Some(rows)
        }
        (Some(_), false) => bail!("{arch_name} reads expression, not --features"),
        (None, _) => None,
    };
    let expr = match (&a.expression, &a.sample, wants_expr) {
        (Some(m), Some(sample), true) => {
            let Some(p) = preprocessing else {
                bail!(
                    "expression input needs the preprocessing statistics of a gimp-rs --checkpoint"
                )
            };
            desc.push(format!("{}#{sample}", m.display()));
            Some(expression_row(m, sample, p)?)
        }
        (Some(_), _, false) => bail!("{arch_name} reads slide features, not --expression"),
        _ => None,
    };
    let input_desc = desc.join(" + ");
    let modalities: Vec<&'static str> = [(bag.is_some(), "slides"), (expr.is_some(), "expression")]
        .into_iter()
        .filter_map(|(has, name)| has.then_some(name))
        .collect();
    let warning = source.missing_modality_warning(bag.is_some(), expr.is_some());
    if let Some(w) = &warning {
        eprintln!("warning: {w}");
    }
    let input = loaded
        .arch
        .input
        .select(bag.as_deref().map(BagInput::Rows), expr.as_ref())
        .map_err(|missing| {
            anyhow::anyhow!(
                "{arch_name} {missing}: give --features FILE and/or --expression MATRIX --sample ID"
            )
        })?;
    let out = loaded.model.forward(&input, &Mode::inference())?;
    let logits: Vec<f32> = out.logits.to_vec1()?;
    let probabilities: Vec<f32> = loaded.probabilities(&out.logits)?.to_vec1()?;
    let predicted = probabilities
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let (risk, survival) = match &loaded.survival {
        Some(head) => (
            head.risk(&out.logits)?.first().copied(),
            head.survival_curve(&out.logits)?,
        ),
        None => (None, None),
    };
    let time_bins = survival.as_ref().and(source.classes.clone());
    let mut top_patches = Vec::new();
    if let Some(att) = &out.attention {
        let s: Vec<f32> = att.to_vec1()?;
        let mut idx: Vec<usize> = (0..s.len()).collect();
        idx.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
        for &i in idx.iter().take(a.top) {
            let c = coords
                .as_ref()
                .and_then(|c: &Vec<[i64; 2]>| c.get(i).copied());
            top_patches.push(Patch {
                row: i,
                x: c.map(|c| c[0]),
                y: c.map(|c| c[1]),
                score: s[i],
            });
        }
    }
    let r = RunOutput {
        arch: arch_name.to_string(),
        input: input_desc,
        modalities,
        warning,
        logits,
        risk,
        survival,
        time_bins,
        probabilities,
        predicted,
        predicted_class: source
            .classes
            .as_ref()
            .and_then(|c| c.get(predicted).cloned()),
        top_patches,
    };
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(ExitCode::SUCCESS)
}
