use anyhow::{bail, Result};
use gimp_cohort::cohort::{check_split_standalone, resolve_split, test_overlap};
use gimp_cohort::split::{check_scheme, make_splits, Scheme};
use gimp_cohort::{Cohort, LoadOptions};
use gimp_io::splits::Part;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    pub check: Option<Sub>,
    /// The cohort to split.
    pub cohort: Option<PathBuf>,
    /// Output folder for CLAM-layout split files (splits_{k}.csv, _bool.csv, _descriptor.csv).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// holdout: one split (the paper's 60/20/20 by default); kfold: k folds with disjoint tests.
    #[arg(long, default_value = "holdout")]
    pub scheme: String,
    /// Number of folds (kfold).
    #[arg(long, default_value_t = 5)]
    pub k: usize,
    /// Validation fraction: of all patients (holdout) or of each fold's training part (kfold).
    #[arg(long, default_value_t = 0.2)]
    pub val: f64,
    /// Test fraction (holdout).
    #[arg(long, default_value_t = 0.2)]
    pub test: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(clap::Subcommand)]
pub enum Sub {
    /// Find leaks in split files: an id in two parts; with --cohort, a patient in two parts
    /// through different slides, unknown ids, and test sets shared between folds.
    Check {
        /// A split file, or a folder of splits_{k}.csv / fold{k}.csv.
        path: PathBuf,
        #[arg(long)]
        cohort: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(Sub::Check { path, cohort, json }) = a.check {
        return check(path, cohort, json);
    }
    let Some(cohort) = a.cohort else {
        bail!("give a cohort file: gimp-rs split COHORT.toml --out DIR")
    };
    let Some(out) = a.out else {
        bail!("give an output folder with --out")
    };
    let scheme = match a.scheme.as_str() {
        "holdout" | "paper" => {
            if !(0.0..1.0).contains(&(a.val + a.test)) || a.val < 0.0 || a.test <= 0.0 {
                bail!("--val and --test must be non-negative and sum to less than 1");
            }
            Scheme::Holdout {
                val: a.val,
                test: a.test,
            }
        }
        "kfold" => {
            if a.k < 2 {
                bail!("--k must be at least 2");
            }
            Scheme::KFold { k: a.k, val: a.val }
        }
        other => bail!("--scheme must be holdout or kfold, not '{other}'"),
    };
    let c = Cohort::open(
        &cohort,
        LoadOptions {
            read_shapes: false,
            deep: false,
        },
    )?;
    let labels: Vec<usize> = c.patients.iter().map(|p| p.label).collect();
    check_scheme(&labels, scheme).map_err(|e| anyhow::anyhow!("{}: {e}", cohort.display()))?;
    let splits = make_splits(&labels, scheme, a.seed);
    let mut label_of: HashMap<String, String> = HashMap::new();
    for p in &c.patients {
        let name = c.label_map.names[p.label].clone();
        label_of.insert(p.case_id.clone(), name.clone());
        for s in &p.slides {
            label_of.insert(s.slide_id.clone(), name.clone());
        }
    }
    for (k, split) in splits.iter().enumerate() {
        let mut parts: BTreeMap<Part, Vec<String>> = BTreeMap::new();
        for (i, part) in split {
            let p = &c.patients[*i];
            // Slide ids, as CLAM lists them; a patient without slides by case id.
            if p.slides.is_empty() {
                parts.entry(*part).or_default().push(p.case_id.clone());
            }
            for s in &p.slides {
                parts.entry(*part).or_default().push(s.slide_id.clone());
            }
        }
        gimp_io::splits::write_clam_split(&out, k, &parts, &c.label_map.names, &|s| {
            label_of.get(s).cloned()
        })?;
        let count = |part| split.values().filter(|p| **p == part).count();
        println!(
            "split {k}: train {} / val {} / test {} patients -> {}",
            count(Part::Train),
            count(Part::Val),
            count(Part::Test),
            out.join(format!("splits_{k}.csv")).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(path: PathBuf, cohort: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let files = if path.is_dir() {
        gimp_cohort::config::split_files_in(&path)?
    } else {
        vec![path.clone()]
    };
    let mut problems: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    match cohort {
        Some(cp) => {
            let c = Cohort::open(
                &cp,
                LoadOptions {
                    read_shapes: false,
                    deep: false,
                },
            )?;
            let index: HashMap<String, usize> = c
                .patients
                .iter()
                .enumerate()
                .map(|(i, p)| (p.case_id.clone(), i))
                .collect();
            let owner: HashMap<String, usize> = c
                .patients
                .iter()
                .enumerate()
                .flat_map(|(i, p)| p.slides.iter().map(move |s| (s.slide_id.clone(), i)))
                .collect();
            let mut folds = Vec::new();
            for f in &files {
                let (fold, p) = resolve_split(f, &c.patients, &index, &owner)?;
                problems.extend(p);
                folds.push(fold);
            }
            let overlap = test_overlap(&folds);
            if overlap > 0 {
                warnings.push(format!(
                    "{overlap} patient(s) are in the test part of more than one split (repeated sub-sampling, not k-fold)"
                ));
            }
        }
        None => {
            for f in &files {
                let (_, p) = check_split_standalone(f)?;
                problems.extend(p);
            }
        }
    }
    if json {
        println!(
            "{}",
            serde_json::json!({ "files": files, "leaks": problems, "warnings": warnings })
        );
    } else {
        for w in &warnings {
            println!("warning: {w}");
        }
        if problems.is_empty() {
            println!("no leaks in {} file(s)", files.len());
        } else {
            for p in &problems {
                println!("problem: {p}");
            }
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
