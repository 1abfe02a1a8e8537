//! Survival end to end on a tiny cohort (`docs/DESIGN.md` §34): the supervised trainer (SNN,
//! ABMIL, the Cox loss), GiMP's three stages, the checkpoint's survival head, evaluation and a
//! two-row survival experiment. The cohort is a tiny synthetic one with survival columns written
//! here: class 1 dies early, class 0 late, every fourth patient censored.

use gimp_cohort::{Cohort, CohortFile, LoadOptions};
use gimp_io::expression::ExpressionTransform;
use gimp_io::splits::Part;
use gimp_nn::survival::SurvivalLoss;
use gimp_synth::{Difficulty, Size, SynthConfig};
use gimp_train::config::{TaskConfig, TaskKind};
use gimp_train::stages;
use gimp_train::supervised::{self, SupervisedConfig};
use gimp_train::task::{ClassLoss, Task};
use gimp_train::trainer::Control;
use gimp_train::{Prepared, RunConfig};
use std::path::Path;

/// A time for a case: class 1 within 3–10 months, class 0 within 20–35, spread by the case's
/// name so the times are distinct.
fn time_of(case: &str, label: &str, class1: &str) -> f64 {
    let h = case
        .bytes()
        .fold(7u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    let spread = (h % 1000) as f64 / 1000.0;
    match label == class1 {
        true => 3.0 + 7.0 * spread,
        false => 20.0 + 15.0 * spread,
    }
}

fn survival_cohort(dir: &Path, bins: usize) -> Cohort {
    let mut s = SynthConfig::new(Difficulty::Easy, Size::Demo, 5);
    s.n_patients = 32;
    s.patches_min = 12;
    s.patches_max = 30;
    s.d_in = 16;
    s.n_genes = 60;
    s.missing_expression = 0.0;
    s.missing_slide = 0.0;
    // This test writes its own outcomes (a clear class signal) in place of the generator's.
    s.survival = None;
    gimp_synth::generate(&s, dir, &|_, _| {}).unwrap();
    let csv = std::fs::read_to_string(dir.join("dataset.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (case, label) = (col("case_id"), col("label"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let class1 = rows.iter().map(|r| r[label]).max().unwrap().to_string();
    let mut cases: Vec<&str> = rows.iter().map(|r| r[case]).collect();
    cases.dedup();
    let mut out = format!("{},survival_months,censorship\n", header.join(","));
    for r in &rows {
        let k = cases.iter().position(|c| *c == r[case]).unwrap();
        let censored = usize::from(k % 4 == 3);
        let t = time_of(r[case], r[label], &class1);
        out.push_str(&format!("{},{t:.3},{censored}\n", r.join(",")));
    }
    std::fs::write(dir.join("dataset.csv"), out).unwrap();
    let toml = dir.join("cohort.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(&format!(
        "\n[survival]\ntime_column = \"survival_months\"\ncensorship_column = \"censorship\"\nbins = {bins}\n"
    ));
    std::fs::write(&toml, text).unwrap();
    Cohort::load(CohortFile::load(&toml).unwrap(), LoadOptions::default()).unwrap()
}

fn supervised_config(arch: &str, task: TaskConfig, epochs: usize) -> SupervisedConfig {
    let mut c = SupervisedConfig::defaults(gimp_models::registry::find(arch).unwrap()).unwrap();
    c.set_task(task);
    c.epochs = epochs;
    c.early_stopping = None;
    c
}

fn tiny_gimp(task: TaskConfig) -> RunConfig {
    let mut c = RunConfig::demo();
    c.model.dim = 16;
    c.model.heads = 2;
    c.model.landmarks = 8;
    c.model.fragment = 10;
    c.model.groups = 2;
    c.genes.epochs = 1;
    c.pretrain.epochs = 1;
    c.pretrain.window = 16;
    c.pretrain.batch = 8;
    c.finetune.epochs = 1;
    c.finetune.max_patches = Some(20);
    c.set_task(task);
    // Gene-stage selection (§41) has its own tests (tests/selection.rs).
    c.genes.selection = None;
    c
}

#[test]
fn supervised_models_train_and_evaluate_for_survival() {
    let d = tempfile::tempdir().unwrap();
    let cohort = survival_cohort(&d.path().join("cohort"), 4);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let nll = TaskConfig::survival(SurvivalLoss::Nll);
    // SNN (expression batches of 32) and ABMIL (one patient a step) with MCAT's likelihood.
    for (arch, epochs) in [("snn", 2), ("abmil", 1)] {
        let dir = d.path().join(arch);
        let r = supervised::train(
            &data,
            &supervised_config(arch, nll, epochs),
            &dir,
            Control::default(),
            &|_| {},
        )
        .unwrap();
        assert!(
            r.figures.test_report().is_none(),
            "{arch}: no classification report"
        );
        let t = r.figures.test_survival().unwrap();
        assert!(t.cindex.value >= 0.0 && t.cindex.value <= 1.0, "{arch}");
        assert!(
            t.events > 0 && t.integrated_brier.is_some(),
            "{arch}: {t:?}"
        );
        let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), epochs);
        assert!(log.contains("val_cindex") && !log.contains("val_accuracy"));
        // The checkpoint records the head: four bins, their edges, the loss.
        let ckpt = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
        assert_eq!(ckpt.info["task"], "survival");
        assert_eq!(ckpt.classes.len(), 4);
        let m = gimp_train::evaluate::load(&ckpt).unwrap();
        let head = m.survival.clone().unwrap();
        assert_eq!(
            (head.loss, head.width(), head.unit.as_str()),
            (SurvivalLoss::Nll, 4, "months")
        );
        let e = gimp_train::evaluate::evaluate_survival(&m, &data, Part::Test, 0).unwrap();
        // The same model on the same patients: evaluation repeats the trainer's test c-index.
        assert!(
            (e.scores.cindex.value - t.cindex.value).abs() < 1e-9,
            "{arch}"
        );
        assert!(e.scores.cindex.low <= e.scores.cindex.value);
        assert_eq!(e.predictions.probs[0].len(), 4);
    }
}

#[test]
fn the_cox_loss_takes_a_step_of_patients_and_skips_units_without_events() {
    let d = tempfile::tempdir().unwrap();
    let cohort = survival_cohort(&d.path().join("cohort"), 4);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let cox = TaskConfig::survival(SurvivalLoss::Cox);
    let mut c = supervised_config("abmil", cox, 1);
    // One patient a step leaves the partial likelihood nothing to compare: set_task made it 32.
    assert_eq!(c.accumulate, gimp_train::config::COX_UNIT);
    c.accumulate = 1;
    let e = supervised::train(
        &data,
        &c,
        &d.path().join("one"),
        Control::default(),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("accumulate") && e.contains("at least 2"), "{e}");
    c.accumulate = 6;
    let r = supervised::train(
        &data,
        &c,
        &d.path().join("abmil"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let ckpt = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
    assert_eq!(ckpt.info["survival_loss"], "cox");
    assert_eq!(ckpt.classes, vec!["log-risk".to_string()]);
    let t = r.figures.test_survival().unwrap();
    assert!(t.integrated_brier.is_none() && t.uno.is_some());
    // A unit of censored patients only has no partial likelihood: no loss, no step.
    let task = Task::new(&cox, &data).unwrap();
    let s = task.survival().unwrap();
    let censored: Vec<usize> = data
        .train
        .iter()
        .copied()
        .filter(|&i| !s.outcome(i).event)
        .take(3)
        .collect();
    assert!(censored.len() >= 2);
    let logits = candle_core::Tensor::zeros(
        (censored.len(), 1),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let none = task
        .unit_loss(&data, &logits, &censored, ClassLoss::CrossEntropy)
        .unwrap();
    assert!(none.is_none());
}

#[test]
fn gimp_stages_train_for_survival() {
    let d = tempfile::tempdir().unwrap();
    let cohort = survival_cohort(&d.path().join("cohort"), 4);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let cfg = tiny_gimp(TaskConfig::survival(SurvivalLoss::Nll));
    let run = stages::train_gimp(
        &data,
        &cfg,
        &d.path().join("gimp"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    assert!(run
        .genes
        .as_ref()
        .unwrap()
        .figures
        .test_survival()
        .is_some());
    let log = std::fs::read_to_string(d.path().join("gimp/pretrain/log.jsonl")).unwrap();
    assert!(log.contains("triplet_loss"));
    let f = &run.finetune;
    assert!(f.figures.test_survival().unwrap().cindex.value.is_finite());
    let ckpt = gimp_nn::checkpoint::Checkpoint::load(&f.checkpoint).unwrap();
    let m = gimp_train::evaluate::load(&ckpt).unwrap();
    assert_eq!(m.survival.unwrap().width(), 4);
    // The triplet groups: every patient with an event by its bin; a censored one only in the
    // last bin.
    let task = Task::new(&cfg.task, &data).unwrap();
    let s = task.survival().unwrap();
    for &i in &data.train {
        let g = task.triplet_group(&data, i, Default::default());
        match (s.outcome(i).event, s.bin(i)) {
            (true, b) => assert_eq!(g, Some(b)),
            (false, 3) => assert_eq!(g, Some(3)),
            (false, _) => assert_eq!(g, None),
        }
    }
    // Cox fine-tuning takes 32 patients a step (set_task) and runs.
    let cox = tiny_gimp(TaskConfig::survival(SurvivalLoss::Cox));
    assert_eq!(cox.finetune.accumulate, gimp_train::config::COX_UNIT);
    let f = stages::finetune(
        &data,
        &cox,
        None,
        None,
        &d.path().join("cox"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    assert!(f.figures.test_survival().is_some());
}

#[test]
fn a_survival_task_needs_a_survival_section_and_names_bad_settings() {
    let d = tempfile::tempdir().unwrap();
    let cohort = survival_cohort(&d.path().join("cohort"), 4);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut plain = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    plain.survival = None;
    let task = TaskConfig::survival(SurvivalLoss::Nll);
    let e = Task::new(&task, &plain).unwrap_err().to_string();
    assert!(e.contains("[survival]"), "{e}");
    assert_eq!(
        Task::new(&TaskConfig::default(), &data)
            .unwrap()
            .width(&data),
        data.classes.len()
    );
    // Run files: typed fields, errors name the field and the choices.
    let c =
        RunConfig::from_toml("preset = \"demo\"\n[task]\nkind = \"survival\"\nloss = \"cox\"\n")
            .unwrap();
    assert_eq!(
        (c.task.kind, c.task.loss),
        (TaskKind::Survival, SurvivalLoss::Cox)
    );
    let e = RunConfig::from_toml("[task]\nloss = \"weibull\"\n").unwrap_err();
    assert!(e.contains("task.loss") && e.contains("nll"), "{e}");
    let e = RunConfig::from_toml("[task]\nkind = \"regression\"\n").unwrap_err();
    assert!(e.contains("task.kind") && e.contains("survival"), "{e}");
    // A run file asking for Cox with one patient a fine-tuning step is refused by name.
    let e = stages::finetune(
        &data,
        &c,
        None,
        None,
        &d.path().join("x"),
        Control::default(),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("finetune.accumulate"), "{e}");
    let mut one = c.clone();
    one.genes.batch = 1;
    let e = stages::pretrain_genes(
        &data,
        &one,
        &d.path().join("g"),
        Control::default(),
        &|_| {},
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("genes.batch"), "{e}");
}

#[test]
fn a_survival_experiment_gives_c_indices_per_row() {
    use gimp_train::experiment::{self, Compared, TrainingRecipe};
    let d = tempfile::tempdir().unwrap();
    let cohort = survival_cohort(&d.path().join("cohort"), 4);
    let mut base = tiny_gimp(TaskConfig::default());
    base.set_task(TaskConfig::survival(SurvivalLoss::Nll));
    let only = ["majority".to_string(), "snn".to_string()];
    let rows = experiment::rows("table1", &only, &base.task).unwrap();
    // The logistic regression is a classifier: a survival table has no such row.
    assert!(experiment::rows("table1", &["logreg".into()], &base.task).is_err());
    let out = d.path().join("exp");
    experiment::claim_recipe(&out, TrainingRecipe::Reference, &base.task).unwrap();
    let e = experiment::claim_recipe(&out, TrainingRecipe::Reference, &TaskConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("survival"), "{e}");
    let runs = experiment::plan(&out, &rows, 1, 1);
    let compared = Compared {
        overrides: gimp_train::config::SupervisedOverrides {
            epochs: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let n = experiment::execute_pending(
        &cohort,
        &rows,
        &runs,
        &base,
        &compared,
        &|_, _| {},
        &|_| {},
        &|_| {},
    )
    .unwrap();
    assert_eq!(n, 2);
    let runs = experiment::plan(&out, &rows, 1, 1);
    let md = experiment::write_summary(
        &out,
        "table1",
        &rows,
        &runs,
        &cohort.label_map.names,
        TrainingRecipe::Reference,
        &base.task,
    )
    .unwrap();
    assert!(md.contains("survival (discrete-time NLL"), "{md}");
    assert!(md.contains("c-index (Harrell)"), "{md}");
    // Every risk tied: the majority row's c-index is exactly ½.
    assert!(
        md.contains("| Majority class | 1 | 0.500 ± 0.000 |"),
        "{md}"
    );
    assert!(md.contains("| SNN | 1 | "), "{md}");
    let csv = std::fs::read_to_string(out.join("table1.csv")).unwrap();
    assert!(csv.lines().next().unwrap().contains("pooled_cindex"));
    // Rows are compared on their test c-indices; DeLong's ROC-AUC test does not apply.
    let c = experiment::compare(&out, "snn", "majority").unwrap();
    assert_eq!((c.metric, c.runs.len()), ("c-index", 1));
    assert_eq!(c.runs[0].3, 0.5);
    assert!(c.delong.is_none());
}
