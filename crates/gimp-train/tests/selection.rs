//! Model selection inside the training part (`docs/DESIGN.md` §41) on a tiny synthetic cohort:
//! it never reads the test part, the chosen values are recorded in the checkpoint, the log and
//! `selection.json`, and the paper recipe keeps the paper's settings.

use gimp_cohort::{Cohort, CohortFile, LoadOptions};
use gimp_io::expression::ExpressionTransform;
use gimp_synth::{Difficulty, Size, SynthConfig};
use gimp_train::config::{
    SelectOverrides, Selection, SupervisedConfig, SupervisedOverrides, TaskConfig, TrainingRecipe,
};
use gimp_train::selection::{self, Curve};
use gimp_train::supervised;
use gimp_train::trainer::Control;
use gimp_train::Prepared;
use std::cell::RefCell;
use std::path::Path;

fn tiny_cohort(dir: &Path) -> Cohort {
    let mut s = SynthConfig::new(Difficulty::Easy, Size::Demo, 3);
    s.n_patients = 30;
    s.patches_min = 4;
    s.patches_max = 8;
    s.d_in = 8;
    s.n_genes = 80;
    s.missing_expression = 0.0;
    s.missing_slide = 0.0;
    gimp_synth::generate(&s, dir, &|_, _| {}).unwrap();
    Cohort::load(
        CohortFile::load(&dir.join("cohort.toml")).unwrap(),
        LoadOptions::default(),
    )
    .unwrap()
}

fn build(arch: &str, recipe: TrainingRecipe, o: &SupervisedOverrides) -> SupervisedConfig {
    let arch = gimp_models::registry::find(arch).unwrap();
    SupervisedConfig::build(arch, 1, 0, recipe, TaskConfig::default(), o).unwrap()
}

/// Trains `cfg` on `data` and on a copy whose test patients' labels are all changed, checks that
/// the two checkpoints' weights are the same to the bit, and returns the first run's result.
fn blind_to_test_labels(
    data: &Prepared,
    cfg: &SupervisedConfig,
    dir: &Path,
) -> gimp_train::task::StageResult {
    let run = |data: &Prepared, dir: &Path| {
        supervised::train(data, cfg, dir, Control::default(), &|_| {}).unwrap()
    };
    let a = run(data, &dir.join("a"));
    let mut flipped = data.clone();
    for &i in &data.test {
        flipped.patients[i].label = (flipped.patients[i].label + 1) % data.classes.len();
    }
    let b = run(&flipped, &dir.join("b"));
    let ckpt = |p: &Path| gimp_nn::checkpoint::Checkpoint::load(p).unwrap();
    let (ca, cb) = (ckpt(&a.checkpoint), ckpt(&b.checkpoint));
    for (name, t) in &ca.weights {
        assert_eq!(values(t), values(&cb.weights[name]), "{name}");
    }
    a
}

fn values(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Every part an inner fit sees is made of the split's training and validation patients only,
/// its inner validation fold is disjoint from its training part, and its expression statistics
/// are those of its own training patients.
#[test]
fn inner_fits_never_see_the_test_part() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("c"));
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = build("snn", TrainingRecipe::Reference, &Default::default());
    cfg.epochs = 2;
    let sel = Selection {
        folds: 3,
        lr: vec![1e-3, 1e-4],
        weight_decay: Vec::new(),
        genes: vec![20, 40],
    };
    let seen = RefCell::new(Vec::new());
    let fit = |part: &Prepared, c: &SupervisedConfig, k: usize| {
        for i in part.train.iter().chain(&part.val) {
            assert!(!data.test.contains(i), "test patient {i} in inner fold {k}");
        }
        assert!(part.test.is_empty());
        assert!(part.val.iter().all(|i| !part.train.contains(i)));
        // z-scores of the inner training patients: mean 0 over them, gene by gene.
        let p = part.preprocessing.as_ref().unwrap();
        let g = p.genes.len();
        for j in (0..g).step_by(17) {
            let m: f64 = part
                .train
                .iter()
                .map(|&i| part.patients[i].expression.as_ref().unwrap()[j] as f64)
                .sum::<f64>()
                / part.train.len() as f64;
            assert!(
                m.abs() < 1e-4,
                "gene {j}: mean {m} over the inner training part"
            );
        }
        seen.borrow_mut()
            .push((k, c.lr, c.genes.clone(), part.val.clone()));
        // A made-up curve that peaks at epoch 2 for lr 1e-4 with 40 genes.
        let peak = c.lr < 5e-4 && c.genes == gimp_train::config::GeneSelection::TopVariance(40);
        Ok::<_, gimp_train::error::TrainError>(Curve {
            start: None,
            epochs: vec![(0.5, 1.0), (if peak { 0.9 } else { 0.6 }, 0.8), (0.55, 0.9)],
            figure_name: "val_accuracy",
        })
    };
    let chosen = selection::choose(&data, &cfg, &sel, &fit).unwrap();
    let seen = seen.into_inner();
    assert_eq!(seen.len(), 3 * 4, "3 inner folds × 4 candidates");
    // The inner validation folds cover train + validation once.
    let mut covered: Vec<usize> = seen[..3].iter().flat_map(|s| s.3.clone()).collect();
    covered.sort_unstable();
    assert_eq!(covered, selection::training_part(&data));
    let c = chosen.chosen.as_ref().unwrap();
    assert_eq!((c.epochs, c.lr), (2, 1e-4));
    assert_eq!(c.genes, gimp_train::config::GeneSelection::TopVariance(40));
    assert_eq!((chosen.epochs, chosen.lr), (2, 1e-4));
    assert!(chosen.early_stopping.is_none());
    assert_eq!(c.candidates.len(), 4);
    // The final fit trains on train + validation, statistics of those, the test part as it was.
    let whole = selection::refit_part(&data).unwrap();
    assert_eq!(whole.train, selection::training_part(&data));
    assert!(whole.val.is_empty());
    assert_eq!(whole.test, data.test);
}

/// End to end: the test part's labels do not change what is chosen or trained; the choice is
/// in the checkpoint's settings, `selection.json` and the last line of `log.jsonl`, and the
/// final fit ran the chosen epochs.
#[test]
fn selection_is_recorded_and_blind_to_test_labels() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("c"));
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    // Without the linear start (its own test below), so that the chosen fit trains.
    let o = SupervisedOverrides {
        epochs: Some(3),
        select: SelectOverrides {
            lr: Some(vec![1e-3, 3e-4]),
            ..Default::default()
        },
        linear_start: Some(false),
        ..Default::default()
    };
    let cfg = build("snn", TrainingRecipe::Reference, &o);
    let a = blind_to_test_labels(&data, &cfg, d.path());
    let json = |dir: &str| {
        let text = std::fs::read_to_string(d.path().join(dir).join("selection.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()
    };
    assert_eq!(json("a"), json("b"), "the test labels changed the choice");
    let ca = gimp_nn::checkpoint::Checkpoint::load(&a.checkpoint).unwrap();
    let chosen = json("a");
    let epochs = chosen["epochs"].as_u64().unwrap() as usize;
    assert!((1..=3).contains(&epochs));
    assert_eq!(chosen["candidates"].as_array().unwrap().len(), 2);
    assert_eq!(chosen["figure_name"], "val_accuracy");
    // The checkpoint's settings are the chosen ones, with the record.
    let training: serde_json::Value = serde_json::from_str(&ca.info["training"]).unwrap();
    assert_eq!(training["chosen"], chosen);
    assert_eq!(training["epochs"].as_u64().unwrap() as usize, epochs);
    assert_eq!(training["lr"], chosen["lr"]);
    assert_eq!(ca.info["epochs_run"], epochs.to_string());
    // log.jsonl: the final fit's epochs, then the selection.
    let log = std::fs::read_to_string(d.path().join("a/log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), epochs + 1);
    assert_eq!(lines[epochs]["selection"], chosen);
    assert!(!d.path().join("a/selection").exists(), "inner runs removed");
    // No validation part is left: the final fit trained on it.
    assert!(a.figures.val.is_none());
}

/// A gene model's linear start (`docs/DESIGN.md` §43) is the task's linear model fitted on the
/// refit's patients, kept frozen through training, and blind to the test labels like the rest.
#[test]
fn a_linear_start_is_the_tasks_linear_model_frozen_and_blind_to_test_labels() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("c"));
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let o = SupervisedOverrides {
        epochs: Some(3),
        ..Default::default()
    };
    let cfg = build("snn", TrainingRecipe::Reference, &o);
    assert!(cfg.linear_start && cfg.selection.is_some());
    let a = blind_to_test_labels(&data, &cfg, d.path());
    let ca = gimp_nn::checkpoint::Checkpoint::load(&a.checkpoint).unwrap();
    let whole = selection::refit_part(&data)
        .unwrap()
        .with_genes(&cfg.genes)
        .unwrap();
    let task = gimp_train::task::Task::new(&cfg.task, &whole).unwrap();
    let expected = task.linear_start(&whole, &whole.train, cfg.seed).unwrap();
    assert_eq!(expected.len(), 2);
    for (name, t) in &expected {
        assert_eq!(values(t), values(&ca.weights[name]), "{name}");
    }
    let chosen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("a/selection.json")).unwrap())
            .unwrap();
    assert!(chosen["epochs"].as_u64().unwrap() <= 3);
}

/// With fewer genes selected than the cohort has, a model with a linear start is given every
/// gene: its linear start is the task's linear model on all of them, its deep part reads the
/// selected ones (the positions recorded in its configuration), and the checkpoint's
/// preprocessing keeps every gene, so evaluation gives it what training did.
#[test]
fn the_linear_start_reads_every_gene_the_deep_part_the_selected_ones() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("c"));
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let genes = gimp_train::config::GeneSelection::TopVariance(30);
    for arch in ["snn", "group_msa"] {
        let mut cfg = build(arch, TrainingRecipe::Reference, &Default::default());
        cfg.selection = None;
        cfg.epochs = 2;
        cfg.genes = genes.clone();
        let r = supervised::train(
            &data,
            &cfg,
            &d.path().join(arch),
            Control::default(),
            &|_| {},
        )
        .unwrap();
        let ckpt = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
        let positions = data.gene_positions(&genes).unwrap().unwrap();
        assert_eq!(positions.len(), 30);
        assert_eq!(ckpt.config["n_genes"], 30, "{arch}");
        assert_eq!(ckpt.config["deep_genes"]["input"], 80, "{arch}");
        let recorded: Vec<usize> =
            serde_json::from_value(ckpt.config["deep_genes"]["positions"].clone()).unwrap();
        assert_eq!(recorded, positions, "{arch}");
        assert_eq!(
            ckpt.preprocessing.as_ref().unwrap().genes.len(),
            80,
            "{arch}"
        );
        let task = gimp_train::task::Task::new(&cfg.task, &data).unwrap();
        let expected = task.linear_start(&data, &data.train, cfg.seed).unwrap();
        for (name, t) in &expected {
            assert_eq!(t.dims(), ckpt.weights[name].dims(), "{arch} {name}");
            assert_eq!(values(t), values(&ckpt.weights[name]), "{arch} {name}");
        }
        if arch == "snn" {
            assert_eq!(ckpt.weights["fc_omic.0.0.weight"].dims()[1], 30);
        }
    }
}

/// The paper recipe trains once with the paper's settings, as before; the reference recipe
/// selects for the gene-only models only; `--select off` and a grid are honoured, a bad grid
/// refused.
#[test]
fn paper_recipe_and_overrides() {
    let none = SupervisedOverrides::default();
    for arch in ["snn", "group_msa"] {
        let paper = build(arch, TrainingRecipe::Paper, &none);
        assert!(
            paper.selection.is_none() && paper.chosen.is_none(),
            "{arch}"
        );
        let text = serde_json::to_string(&paper).unwrap();
        assert!(
            !text.contains("selection") && !text.contains("chosen"),
            "{text}"
        );
        assert_eq!(
            (paper.epochs, paper.lr, paper.weight_decay),
            (70, 1e-4, 1e-4)
        );
        let reference = build(arch, TrainingRecipe::Reference, &none);
        assert_eq!(
            reference.selection,
            Some(Selection::default_for_gene_models())
        );
    }
    assert!(build("abmil", TrainingRecipe::Reference, &none)
        .selection
        .is_none());
    let off = SupervisedOverrides {
        select: SelectOverrides {
            on: Some(false),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(build("snn", TrainingRecipe::Reference, &off)
        .selection
        .is_none());
    let grid = SupervisedOverrides {
        select: SelectOverrides {
            folds: Some(4),
            weight_decay: Some(vec![0.0, 1e-3]),
            ..Default::default()
        },
        ..Default::default()
    };
    let s = build("abmil", TrainingRecipe::Reference, &grid)
        .selection
        .unwrap();
    assert_eq!((s.folds, s.weight_decay.clone()), (4, vec![0.0, 1e-3]));
    let bad = SupervisedOverrides {
        select: SelectOverrides {
            folds: Some(1),
            ..Default::default()
        },
        ..Default::default()
    };
    let arch = gimp_models::registry::find("snn").unwrap();
    let e = SupervisedConfig::build(
        arch,
        1,
        0,
        TrainingRecipe::Reference,
        TaskConfig::default(),
        &bad,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("inner folds"), "{e}");
    let both = SupervisedOverrides {
        select: SelectOverrides {
            on: Some(false),
            lr: Some(vec![1e-3]),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(SupervisedConfig::build(
        arch,
        1,
        0,
        TrainingRecipe::Reference,
        TaskConfig::default(),
        &both
    )
    .is_err());
}

/// GiMP's gene stage (§41, issue 25 item 5): the demo preset chooses the encoder's epochs inside
/// the training patients and records it; the paper preset trains as the paper says.
#[test]
fn gimp_gene_stage_selects_off_the_paper_preset() {
    use gimp_train::{stages, RunConfig};
    assert!(RunConfig::paper().genes.selection.is_none());
    let paper_toml = toml::to_string(&RunConfig::paper()).unwrap();
    assert!(!paper_toml.contains("selection"), "{paper_toml}");
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("c"));
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = RunConfig::demo();
    assert_eq!(
        cfg.genes.selection,
        Some(Selection::default_for_gene_models())
    );
    cfg.model.dim = 16;
    cfg.model.heads = 2;
    cfg.model.fragment = 10;
    cfg.model.groups = 2;
    cfg.genes.epochs = 3;
    let dir = d.path().join("genes");
    let r = stages::pretrain_genes(&data, &cfg, &dir, Control::default(), &|_| {}).unwrap();
    let chosen: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("selection.json")).unwrap())
            .unwrap();
    // Inner folds of the training patients only: the validation part is the later stages'.
    assert_eq!(
        chosen["patients"].as_u64().unwrap() as usize,
        data.train.len()
    );
    let epochs = chosen["epochs"].as_u64().unwrap() as usize;
    let ckpt = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
    let training: serde_json::Value = serde_json::from_str(&ckpt.info["training"]).unwrap();
    assert_eq!(training["genes"]["chosen"], chosen);
    assert_eq!(
        training["genes"]["epochs"].as_u64().unwrap() as usize,
        epochs
    );
    assert_eq!(ckpt.info["epochs_run"], epochs.to_string());
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), epochs + 1);
    assert!(log.lines().last().unwrap().contains("\"selection\""));
    // The validation part is still scored (it was neither trained nor selected on).
    assert!(r.figures.val.is_some());
}
