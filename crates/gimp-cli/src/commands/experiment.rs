use anyhow::{bail, Result};
use gimp_cohort::LoadOptions;
use gimp_io::shard::Shard;
use gimp_train::config::Preset;
use gimp_train::experiment;
use gimp_train::progress::Bars;
use gimp_train::task::Scores;
use gimp_train::RunConfig;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub compare: Option<Sub>,
    /// table1 (the compared systems and GiMP) or table2 (GiMP's ablations).
    pub table: Option<String>,
    /// The cohort file (cohort.toml) with the split files the runs use.
    pub cohort: Option<PathBuf>,
    /// Experiment folder: OUT/{row}/fold{k}/seed{s}/…, OUT/{table}.md and .csv.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Split files 0..K of the cohort (make k folds with `gimp-rs split --scheme kfold`).
    #[arg(long, default_value_t = 1)]
    pub folds: usize,
    /// Seeds 0..S of every row on every split file.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Only these rows (comma-separated keys; `--dry-run` lists them).
    #[arg(long, value_delimiter = ',')]
    pub rows: Vec<String>,
    /// GiMP rows' preset: paper or demo.
    #[arg(long, default_value = "paper")]
    pub preset: Preset,
    /// How the compared systems train, beyond their reference defaults (and the recipe).
    #[command(flatten)]
    pub compared: super::train::SupervisedFlags,
    /// Expression transform before z-scoring: log2p1 (FPKM, the default of the presets) or none
    /// (data already on a log scale, such as microarray RMA values).
    #[arg(long)]
    pub transform: Option<gimp_io::expression::ExpressionTransform>,
    /// List the runs, which are done, and their cost, without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Run only share I of N of the row × fold × seed runs (0-based, e.g. 0/4); inside a Slurm
    /// array job the share comes from SLURM_ARRAY_TASK_ID/COUNT. Each machine then writes the
    /// tables of whatever is finished; the last one writes them complete.
    #[arg(long)]
    pub shard: Option<Shard>,
    /// How the compared systems train: reference (each as its reference code does) or paper
    /// (every row AdamW 1e-4, cosine, at most 70 epochs, best validation epoch, as the paper
    /// says). One experiment folder holds one recipe.
    #[arg(long, default_value = "reference")]
    pub recipe: experiment::TrainingRecipe,
    /// Only write the tables from the runs finished so far (any machine, any time).
    #[arg(long, conflicts_with = "dry_run")]
    pub summarise: bool,
    /// `--task survival` (with `--loss nll|cox`, `--alpha`): every row trains for the cohort's
    /// survival outcomes and the table gives c-indices. One experiment folder holds one task.
    #[command(flatten)]
    pub task: super::train::TaskArgs,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// Is row A better than row B? Paired sign-flip test of their test accuracies over the runs
    /// both finished, and DeLong's test of their ROC-AUCs on the pooled test predictions.
    Compare {
        /// Row keys, e.g. gimp agg_groupmsa (`--dry-run` lists a table's keys).
        a: String,
        /// The row A is compared with.
        b: String,
        /// The experiment folder.
        #[arg(long)]
        out: PathBuf,
        /// Print the comparison as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn compare(a: &str, b: &str, out: &std::path::Path, json: bool) -> Result<ExitCode> {
    let c = experiment::compare(out, a, b)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{a} vs {b}: {} paired run(s)", c.runs.len());
    for (fold, seed, x, y) in &c.runs {
        println!("  fold {fold} seed {seed}: {} {x:.3} vs {y:.3}", c.metric);
    }
    println!(
        "{} difference {:+.3} ± {:.3} (mean ± std), paired sign-flip p = {:.3}",
        c.metric, c.mean_difference, c.std_difference, c.p_paired
    );
    match &c.delong {
        Some(d) => println!(
            "ROC-AUC on {} pooled patients: {:.3} vs {:.3}, difference {:+.3} (SE {:.3}), DeLong z = {:.2}, p = {:.3}",
            c.patients, d.auc_a, d.auc_b, d.difference, d.se, d.z, d.p
        ),
        None => println!(
            "no DeLong test: it needs two classes and both classes among {} shared test patients with saved predictions",
            c.patients
        ),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(Sub::Compare { a, b, out, json }) = &a.compare {
        return compare(a, b, out, *json);
    }
    let (Some(table), Some(cohort_file), Some(out)) = (&a.table, &a.cohort, &a.out) else {
        bail!("give a table, a cohort and --out: gimp-rs experiment table1 COHORT.toml --out DIR")
    };
    let mut base = RunConfig::preset(a.preset);
    if let Some(t) = a.task.apply(base.task) {
        base.set_task(t);
    }
    let rows = experiment::rows(table, &a.rows, &base.task)?;
    if let Some(t) = a.transform {
        base.model.transform = t;
    }
    let cohort = gimp_cohort::Cohort::open(cohort_file, LoadOptions::default())?;
    if cohort.folds.len() < a.folds {
        bail!(
            "the cohort lists {} split file(s) but --folds {} was asked: write k folds with `gimp-rs split {} --scheme kfold --k {} --out DIR` and list them under [splits]",
            cohort.folds.len(),
            a.folds,
            cohort_file.display(),
            a.folds
        );
    }
    let runs = experiment::plan(out, &rows, a.folds, a.seeds);
    let compared = experiment::Compared {
        recipe: a.recipe,
        overrides: a.compared.overrides(),
    };
    if a.dry_run {
        let n_train = cohort
            .folds
            .first()
            .map(|f| f.patients(gimp_io::splits::Part::Train).len())
            .unwrap_or(0);
        let mut total = 0usize;
        for run in &runs {
            let row = experiment::row_of(&rows, run)?;
            let epochs = experiment::planned_epochs(row, &base, &compared)?;
            let cost = epochs * n_train;
            if !run.done {
                total += cost;
            }
            println!(
                "{:<24} fold {} seed {}  {:<5} {:>4} epochs ≈ {:>7} patient-passes  {}",
                run.row,
                run.fold,
                run.seed,
                if run.done { "done" } else { "to do" },
                epochs,
                cost,
                run.dir.display()
            );
        }
        println!("{} run(s), {} to do, ≈ {total} patient-passes (one bag or expression vector through the model, forward and backward)", runs.len(), runs.iter().filter(|r| !r.done).count());
        return Ok(ExitCode::SUCCESS);
    }
    let shard = match a.shard {
        Some(s) => Some(s),
        None => Shard::from_env()?,
    };
    experiment::claim_recipe(out, a.recipe, &base.task)?;
    if !a.summarise {
        let mine = match shard {
            Some(s) => s.select(runs.iter().cloned()),
            None => runs.clone(),
        };
        let bars = Bars::new();
        experiment::execute_pending(
            &cohort,
            &rows,
            &mine,
            &base,
            &compared,
            &|row, run| println!("{} — fold {}, seed {}", row.name, run.fold, run.seed),
            &|r| {
                bars.finish();
                match &r.figures.test {
                    Some(Scores::Classification(t)) => {
                        println!("    test accuracy {}%", crate::table::pct(t.accuracy.value))
                    }
                    Some(Scores::Survival(t)) => println!("    test c-index {:.3}", t.cindex.value),
                    None => {}
                }
            },
            &|p| bars.update(p),
        )?;
    }
    // Every finished run of the whole plan, whichever machine ran it.
    let runs = experiment::plan(out, &rows, a.folds, a.seeds);
    let md = experiment::write_summary(
        out,
        table,
        &rows,
        &runs,
        &cohort.label_map.names,
        a.recipe,
        &base.task,
    )?;
    let left = runs.iter().filter(|r| !r.done).count();
    println!(
        "\n{md}\n(written to {} and .csv{})",
        out.join(format!("{}.md", table)).display(),
        match left {
            0 => String::new(),
            n => format!("; {n} run(s) not finished yet"),
        }
    );
    Ok(ExitCode::SUCCESS)
}
