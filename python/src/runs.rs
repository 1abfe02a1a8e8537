//! The long calls: writing a synthetic cohort, training (GiMP's three stages or any compared
//! system), evaluating a checkpoint, the paper's experiments and feature extraction. Each is
//! the library call the matching `gimp-rs` command makes, with progress sent to Python.

use crate::boundary::{detached, Failure};
use crate::cohort;
use crate::io::choice;
use crate::progress::{Reporter, Step};
use crate::values;
use gimp_io::expression::ExpressionTransform;
use gimp_train::config::{
    Preset, SupervisedConfig, SupervisedOverrides, TaskConfig, TrainingRecipe,
};
use gimp_train::experiment as exp;
use gimp_train::task::StageResult;
use gimp_train::trainer::Control;
use gimp_train::{run_record, stages, supervised, Prepared, RunConfig};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(synth, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(experiment, m)?)?;
    m.add_function(wrap_pyfunction!(extract, m)?)?;
    m.add_function(wrap_pyfunction!(architectures, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    Ok(())
}

/// Writes a synthetic image–omic cohort (CLAM feature files, GDC and matrix expression,
/// splits, per-patch ground truth) into `out`, as `gimp-rs synth` does; the same seed gives the
/// same bytes. `size="demo"` is the demo's 160 patients with 256-d features; `patients`,
/// `patches` (min, max per slide), `dim` and `genes` override the size. `out` must be empty or
/// absent unless `force`.
///
/// Returns `{"cohort": path of cohort.toml, "patients", "slides", "patches"}`.
#[pyfunction]
#[pyo3(signature = (out, *, difficulty = "paper", size = "demo", seed = 0, patients = None,
    patches = None, dim = None, genes = None, pt = false, force = false, progress = None))]
#[allow(clippy::too_many_arguments)]
fn synth(
    py: Python<'_>,
    out: PathBuf,
    difficulty: &str,
    size: &str,
    seed: u64,
    patients: Option<usize>,
    patches: Option<(usize, usize)>,
    dim: Option<usize>,
    genes: Option<usize>,
    pt: bool,
    force: bool,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let d = gimp_synth::Difficulty::parse(difficulty).ok_or_else(|| {
        PyValueError::new_err(format!(
            "difficulty: expected 'easy', 'paper' or 'hard', not '{difficulty}'"
        ))
    })?;
    let s = gimp_synth::Size::parse(size).ok_or_else(|| {
        PyValueError::new_err(format!("size: expected 'demo' or 'paper', not '{size}'"))
    })?;
    let mut cfg = gimp_synth::SynthConfig::new(d, s, seed);
    if let Some(v) = patients {
        cfg.n_patients = v;
    }
    if let Some((lo, hi)) = patches {
        cfg.patches_min = lo;
        cfg.patches_max = hi;
    }
    if let Some(v) = dim {
        cfg.d_in = v;
    }
    if let Some(v) = genes {
        cfg.n_genes = v;
    }
    cfg.write_pt = pt;
    if let Err(m) = cfg.validate() {
        return Err(PyValueError::new_err(m));
    }
    let not_empty = out.exists()
        && std::fs::read_dir(&out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
    if not_empty && !force {
        return Err(PyValueError::new_err(format!(
            "out: {} is not empty (pass force=True to write into it)",
            out.display()
        )));
    }
    let rep = Reporter::new(py, progress)?;
    let r = detached(py, || {
        Ok(gimp_synth::generate(&cfg, &out, &|done, total| {
            rep.report(&Step {
                stage: "synth",
                epoch: None,
                epochs: None,
                step: done,
                steps: total,
                loss: None,
            })
        })?)
    });
    let r = rep.finish(py, r)?;
    values::to_py(
        py,
        &json!({
            "cohort": r.out.join("cohort.toml"),
            "patients": r.patients,
            "slides": r.slides,
            "patches": r.patches,
        }),
    )
}

/// The first option of `train` that only the compared systems have (GiMP's stages are
/// configured by `preset` and `config`), if one was given.
fn compared_only(o: &SupervisedOverrides) -> Option<&'static str> {
    [
        (o.epochs.is_some(), "epochs"),
        (o.lr.is_some(), "lr"),
        (o.weight_decay.is_some(), "weight_decay"),
        (o.patience.is_some(), "patience"),
        (o.stop_epoch.is_some(), "stop_epoch"),
        (o.max_patches.is_some(), "max_patches"),
        (o.accumulate.is_some(), "accumulate"),
        (o.select.on.is_some(), "select"),
        (o.linear_start.is_some(), "linear_start"),
    ]
    .into_iter()
    .find_map(|(given, name)| given.then_some(name))
}

/// GiMP's run file: `config` (a path to a TOML run file, or a dict of the same fields) over
/// `preset`, as `gimp-rs pretrain/finetune --config` reads it.
fn run_config(preset: Preset, config: Option<&Bound<'_, PyAny>>) -> PyResult<RunConfig> {
    let Some(c) = config else {
        return Ok(RunConfig::preset(preset));
    };
    let (text, name) = if let Ok(path) = c.extract::<PathBuf>() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Failure::Data(gimp_io::DataError::io(&path, e)).into_pyerr(c.py()))?;
        (text, path.display().to_string())
    } else {
        let mut v = values::from_py(c, "config")?;
        if let Some(o) = v.as_object_mut() {
            o.entry("preset")
                .or_insert_with(|| json!(preset_name(preset)));
        }
        let text =
            toml::to_string(&v).map_err(|e| PyValueError::new_err(format!("config: {e}")))?;
        (text, "config".to_string())
    };
    RunConfig::from_toml(&text).map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

fn preset_name(p: Preset) -> &'static str {
    match p {
        Preset::Paper => "paper",
        Preset::Demo => "demo",
    }
}

fn write_metrics(r: &StageResult) -> Result<(), Failure> {
    if let Some(dir) = r.checkpoint.parent() {
        let text = serde_json::to_string_pretty(r).map_err(|e| Failure::Other(e.to_string()))?;
        gimp_io::atomic::write_bytes_atomic(&dir.join("metrics.json"), text.as_bytes())?;
    }
    Ok(())
}

fn create_dir(out: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out).map_err(|e| Failure::Data(gimp_io::DataError::io(out, e)))
}

/// Trains a model on split `fold` of a cohort and writes its run folder, as the CLI does.
///
/// `arch="gimp"` runs GiMP's three stages (gene pre-training, masked patch modelling +
/// gene-induced triplets, fine-tuning) into `out/genes`, `out/pretrain` and `out/finetune`,
/// configured by `preset` (`"paper"` or `"demo"`) and `config` (a TOML run file's path, or a
/// dict of its fields such as `{"finetune": {"epochs": 5}}`). Any other architecture
/// (`architectures()`) trains with its reference defaults, changed by `epochs`, `lr`,
/// `weight_decay`, `patience` (0: no early stopping), `stop_epoch`, `max_patches`,
/// `accumulate`, `select` (model selection inside the training part, docs/DESIGN.md §41: on by
/// default for SNN and GroupMSA) and `linear_start` (a gene model starting as the task's linear
/// model, §43: on by default for SNN and GroupMSA), into `out`.
///
/// `resume=True` continues an interrupted run from its last completed epoch (Ctrl-C interrupts
/// one as a kill would). Progress goes to `progress` (see `TextProgress`).
///
/// Returns `{"arch", "checkpoint", "best_epoch", "val", "test", "stages"}`: the final
/// checkpoint, its validation and test metrics, and every stage's result.
#[pyfunction]
#[pyo3(signature = (cohort, out, arch = "gimp", *, preset = "paper", config = None, seed = None,
    fold = None, resume = false, transform = None, epochs = None, lr = None, weight_decay = None,
    patience = None, stop_epoch = None, max_patches = None, accumulate = None, select = None,
    linear_start = None, progress = None))]
#[allow(clippy::too_many_arguments)]
fn train(
    py: Python<'_>,
    cohort: &Bound<'_, PyAny>,
    out: PathBuf,
    arch: &str,
    preset: &str,
    config: Option<&Bound<'_, PyAny>>,
    seed: Option<u64>,
    fold: Option<usize>,
    resume: bool,
    transform: Option<&str>,
    epochs: Option<usize>,
    lr: Option<f64>,
    weight_decay: Option<f64>,
    patience: Option<usize>,
    stop_epoch: Option<usize>,
    max_patches: Option<usize>,
    accumulate: Option<usize>,
    select: Option<bool>,
    linear_start: Option<bool>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    let transform: Option<ExpressionTransform> =
        transform.map(|t| choice("transform", t)).transpose()?;
    let control = Control {
        resume,
        ..Control::default()
    };
    let options = SupervisedOverrides {
        epochs,
        lr,
        weight_decay,
        patience,
        stop_epoch,
        max_patches,
        accumulate,
        select: gimp_train::config::SelectOverrides {
            on: select,
            ..Default::default()
        },
        linear_start,
        ..Default::default()
    };
    let info = gimp_models::registry::lookup(arch)
        .map_err(|e| PyValueError::new_err(format!("arch: {e}")))?;
    let rep = Reporter::new(py, progress)?;
    let on = |p: &gimp_train::trainer::Progress| rep.training(p);
    let result = if matches!(info.training, gimp_models::Training::GimpStages) {
        if let Some(name) = compared_only(&options) {
            return Err(PyValueError::new_err(format!(
                "{name}: {arch}'s stages are set by preset= and config=, e.g. config={{\"finetune\": {{\"epochs\": 5}}}}"
            )));
        }
        let mut cfg = run_config(choice("preset", preset)?, config)?;
        if let Some(s) = seed {
            cfg.seed = s;
        }
        if let Some(f) = fold {
            cfg.fold = f;
        }
        if let Some(t) = transform {
            cfg.model.transform = t;
        }
        let c = cohort::resolve(py, cohort)?;
        detached(py, || {
            let data = Prepared::new(&c, cfg.fold, cfg.model.transform)?;
            run_record::write(&out, &c.file.path, &cfg, &data)?;
            let r = stages::train_gimp(&data, &cfg, &out, control, &on)?;
            let mut stages = serde_json::Map::new();
            for (name, s) in [
                ("genes", r.genes.as_ref()),
                ("pretrain", r.pretrain.as_ref()),
                ("finetune", Some(&r.finetune)),
            ] {
                if let Some(s) = s {
                    write_metrics(s)?;
                    stages.insert(name.into(), json!(s));
                }
            }
            let finetune = json!(r.finetune);
            Ok(json!({
                "arch": info.name,
                "checkpoint": r.finetune.checkpoint,
                "best_epoch": r.finetune.best_epoch,
                "val": finetune["val"],
                "test": finetune["test"],
                "stages": stages,
            }))
        })
    } else {
        if config.is_some() {
            return Err(PyValueError::new_err(format!(
                "config: a run file configures GiMP; {arch} takes epochs=, lr=, ... instead"
            )));
        }
        let cfg = SupervisedConfig::build(
            info,
            seed.unwrap_or(0),
            fold.unwrap_or(0),
            TrainingRecipe::Reference,
            TaskConfig::default(),
            &options,
        )
        .map_err(|e| PyValueError::new_err(format!("arch: {e}")))?;
        let c = cohort::resolve(py, cohort)?;
        let transform = transform.unwrap_or(ExpressionTransform::Log2p1);
        detached(py, || {
            let data = Prepared::new(&c, cfg.fold, transform)?;
            create_dir(&out)?;
            let r = supervised::train(&data, &cfg, &out, control, &on)?;
            write_metrics(&r)?;
            let figures = json!(r);
            Ok(json!({
                "arch": cfg.arch,
                "checkpoint": r.checkpoint,
                "best_epoch": r.best_epoch,
                "val": figures["val"],
                "test": figures["test"],
                "stages": { "train": r },
            }))
        })
    };
    let result = rep.finish(py, result)?;
    values::to_py(py, &result)
}

/// Metrics of a checkpoint on a part of a split (`"test"`, `"val"` or `"train"`; `fold`
/// defaults to the one it was trained on), overall and by which modalities each patient has,
/// as `gimp-rs evaluate --json`: accuracy with a Wilson interval, balanced accuracy, ROC-AUC
/// with a bootstrap interval (seeded by `seed`), macro F1 and the confusion matrix.
#[pyfunction]
#[pyo3(signature = (cohort, checkpoint, *, split = "test", fold = None, seed = 0))]
fn evaluate(
    py: Python<'_>,
    cohort: &Bound<'_, PyAny>,
    checkpoint: PathBuf,
    split: &str,
    fold: Option<usize>,
    seed: u64,
) -> PyResult<Py<PyAny>> {
    let part: gimp_io::splits::Part = choice("split", split)?;
    let c = cohort::resolve(py, cohort)?;
    let e = detached(py, move || {
        let ckpt = gimp_nn::checkpoint::Checkpoint::load(&checkpoint)?;
        let data = Prepared::for_checkpoint(&c, fold, &ckpt)?;
        let m = gimp_train::evaluate::load(&ckpt)?;
        Ok(gimp_train::evaluate::evaluate_checkpoint(
            &m, &data, part, seed,
        )?)
    })?;
    values::serialised(py, &e)
}

/// Runs the paper's Table 1 (`"table1"`: the compared systems and GiMP) or Table 2
/// (`"table2"`: GiMP's ablations) on `folds` split files × `seeds` seeds, as
/// `gimp-rs experiment` does: runs already finished in `out` are skipped, and `out/{table}.md`
/// and `.csv` summarise every finished run. `rows` limits the rows (their keys); `preset` sets
/// GiMP's rows, `recipe` the compared systems' training (`"reference"` or `"paper"`), `epochs`
/// their epochs.
///
/// Returns `{"markdown": the table, "ran": runs trained now, "runs": runs in the plan,
/// "rows": each row's summary}`.
#[pyfunction]
#[pyo3(signature = (table, cohort, out, *, folds = 1, seeds = 1, rows = None, preset = "paper",
    recipe = "reference", epochs = None, pretrain_epochs = None, patience = None,
    stop_epoch = None, transform = None, progress = None))]
#[allow(clippy::too_many_arguments)]
fn experiment(
    py: Python<'_>,
    table: &str,
    cohort: &Bound<'_, PyAny>,
    out: PathBuf,
    folds: usize,
    seeds: usize,
    rows: Option<Vec<String>>,
    preset: &str,
    recipe: &str,
    epochs: Option<usize>,
    pretrain_epochs: Option<usize>,
    patience: Option<usize>,
    stop_epoch: Option<usize>,
    transform: Option<&str>,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    // The Python experiment runs classification tables (`gimp-rs experiment --task survival`
    // runs survival ones).
    let task = TaskConfig::default();
    let table_rows = exp::rows(table, &rows.unwrap_or_default(), &task)
        .map_err(|e| PyValueError::new_err(format!("table/rows: {e}")))?;
    let mut base = RunConfig::preset(choice("preset", preset)?);
    if let Some(t) = transform {
        base.model.transform = choice("transform", t)?;
    }
    let compared = exp::Compared {
        recipe: choice("recipe", recipe)?,
        overrides: SupervisedOverrides {
            epochs,
            pretrain_epochs,
            patience,
            stop_epoch,
            ..Default::default()
        },
    };
    let c = cohort::resolve(py, cohort)?;
    if c.folds.len() < folds {
        return Err(PyValueError::new_err(format!(
            "folds: the cohort lists {} split file(s) but {folds} were asked",
            c.folds.len()
        )));
    }
    let rep = Reporter::new(py, progress)?;
    let table = table.to_string();
    let outcome = detached(py, || {
        let plan = exp::plan(&out, &table_rows, folds, seeds);
        exp::claim_recipe(&out, compared.recipe, &task)?;
        let ran = exp::execute_pending(
            &c,
            &table_rows,
            &plan,
            &base,
            &compared,
            &|_, _| {},
            &|_| {},
            &|p| rep.training(p),
        )?;
        let plan = exp::plan(&out, &table_rows, folds, seeds);
        let md = exp::write_summary(
            &out,
            &table,
            &table_rows,
            &plan,
            &c.label_map.names,
            compared.recipe,
            &task,
        )?;
        let summary = exp::summarise(&table_rows, &plan)?;
        Ok((md, ran, plan.len(), summary))
    });
    let (md, ran, runs, summary) = rep.finish(py, outcome)?;
    values::to_py(
        py,
        &json!({ "markdown": md, "ran": ran, "runs": runs, "rows": summary }),
    )
}

/// Features of every patch of every slide by a registered patch encoder (`encoder`, as
/// `gimp-rs extract --list` names them; default CLAM's ResNet50-trunc), as `gimp-rs extract`:
/// `slides` (slide files or folders of them), `patches` (the folder of `{slide_id}.h5` patch
/// files), `weights` (the encoder's weights by the reference's parameter names), written to
/// `out/h5_files/{slide_id}.h5` for ResNet50-trunc (and `out/pt_files/` with `pt=True`), else
/// TRIDENT's `out/features_{encoder}/{slide_id}.h5`, with the encoder's name and the weights'
/// SHA-256 recorded. Slides whose features are complete are skipped unless `overwrite`.
/// `batch` patches go through the network at once; `target_patch_size` resizes patches first
/// (default: the patch file's target size).
///
/// Returns `{"done": [slide ids], "skipped": [...], "failed": {slide id: message}}`.
#[pyfunction]
#[pyo3(signature = (slides, patches, weights, out, *, encoder = "resnet50_trunc", batch = 32,
    target_patch_size = None, pt = false, overwrite = false, progress = None))]
#[allow(clippy::too_many_arguments)]
fn extract(
    py: Python<'_>,
    slides: Vec<PathBuf>,
    patches: PathBuf,
    weights: PathBuf,
    out: PathBuf,
    encoder: &str,
    batch: usize,
    target_patch_size: Option<u32>,
    pt: bool,
    overwrite: bool,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<Py<PyAny>> {
    if batch == 0 {
        return Err(PyValueError::new_err("batch: must be at least 1"));
    }
    let spec = gimp_extract::encoders::find(encoder).ok_or_else(|| {
        PyValueError::new_err(format!(
            "encoder: unknown '{encoder}'; known: {}",
            gimp_extract::encoders::names().join(", ")
        ))
    })?;
    let rep = Reporter::new(py, progress)?;
    let result = detached(py, || {
        use gimp_slide::batch as layout;
        let files = layout::slide_files(&slides)?;
        use gimp_extract::extract::Layout;
        let net = spec.load(&weights)?;
        let sha = gimp_io::weights::sha256_hex(&weights)?;
        let run = gimp_extract::extract::FeatureRun {
            encoder: net.as_ref(),
            weights_sha256: &sha,
            layout: match spec.name {
                "resnet50_trunc" => Layout::Clam,
                _ => Layout::Trident,
            },
            batch,
            input_size: target_patch_size,
            out: &out,
            pt,
        };
        let (mut done, mut skipped, mut failed) = (Vec::new(), Vec::new(), serde_json::Map::new());
        let mut jobs = Vec::new();
        for slide in &files {
            let id = layout::slide_id(slide);
            let pfile = patches.join(format!("{id}.h5"));
            match gimp_io::h5::read_patches(&pfile) {
                Ok(p) if !overwrite && run.is_done(&id, p.coords.len()) => skipped.push(id),
                Ok(p) => jobs.push((slide, id, pfile, p)),
                Err(e) => {
                    failed.insert(id, json!(e.to_string()));
                }
            }
        }
        let total: usize = jobs.iter().map(|j| j.3.coords.len()).sum();
        let mut count = 0;
        for (slide, id, pfile, p) in jobs {
            let r = run.slide(slide, &p, &pfile, |k| {
                count += k;
                rep.report(&Step {
                    stage: "extract",
                    epoch: None,
                    epochs: None,
                    step: count,
                    steps: total,
                    loss: None,
                })
            });
            match r {
                Ok(_) => done.push(id),
                Err(e) => {
                    failed.insert(id, json!(e.to_string()));
                }
            }
        }
        Ok(json!({ "done": done, "skipped": skipped, "failed": failed }))
    });
    let result = rep.finish(py, result)?;
    values::to_py(py, &result)
}

/// The architectures this build knows, as `gimp-rs model list --json`: a list of
/// `{"name", "input", "summary", "reference"}`.
#[pyfunction]
fn architectures(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let v: Vec<_> = gimp_models::REGISTRY
        .iter()
        .map(|a| json!({"name": a.name, "input": a.input, "summary": a.summary, "reference": a.reference}))
        .collect();
    values::to_py(py, &serde_json::Value::Array(v))
}

/// Sets the number of worker threads (default: all cores), as `gimp-rs --threads`. Results are
/// reproducible for a given seed and thread count. Only possible before the first call that
/// computes; raises `GimpError` afterwards.
#[pyfunction]
fn set_threads(n: usize) -> PyResult<()> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n.max(1))
        .build_global()
        .map_err(|e| {
            crate::boundary::GimpError::new_err(format!("cannot set the thread count: {e}"))
        })
}
