//! The three stages on a tiny synthetic cohort: they run, write their checkpoints and logs, keep
//! patients with a missing modality, and are deterministic for a seed.

use gimp_cohort::{Cohort, CohortFile, LoadOptions};
use gimp_io::expression::ExpressionTransform;
use gimp_synth::{Difficulty, Size, SynthConfig};
use gimp_train::config::EarlyStopping;
use gimp_train::stages::{self, balanced_batches, window_rows};
use gimp_train::trainer::Control;
use gimp_train::{Prepared, RunConfig};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

fn tiny_cohort(dir: &Path, missing: f64) -> Cohort {
    let mut s = SynthConfig::new(Difficulty::Easy, Size::Demo, 3);
    s.n_patients = 24;
    s.patches_min = 20;
    s.patches_max = 60;
    s.d_in = 16;
    s.n_genes = 100;
    s.missing_expression = missing;
    s.missing_slide = missing;
    gimp_synth::generate(&s, dir, &|_, _| {}).unwrap();
    Cohort::load(
        CohortFile::load(&dir.join("cohort.toml")).unwrap(),
        LoadOptions::default(),
    )
    .unwrap()
}

/// The supervised trainer's defaults for a registered architecture.
fn defaults(arch: &str) -> gimp_train::supervised::SupervisedConfig {
    let arch = gimp_models::registry::find(arch).unwrap();
    gimp_train::supervised::SupervisedConfig::defaults(arch).unwrap()
}

fn tiny_config() -> RunConfig {
    let mut c = RunConfig::demo();
    c.model.dim = 16;
    c.model.heads = 2;
    c.model.landmarks = 8;
    c.model.fragment = 10;
    c.model.groups = 2;
    c.genes.epochs = 2;
    c.pretrain.epochs = 2;
    c.pretrain.window = 32;
    c.pretrain.batch = 4;
    c.finetune.epochs = 2;
    c.finetune.max_patches = Some(40);
    // Gene-stage selection (§41) has its own tests (tests/selection.rs).
    c.genes.selection = None;
    c
}

#[test]
fn balanced_batches_have_two_of_each_class() {
    let labels: Vec<usize> = (0..30).map(|i| usize::from(i % 3 == 0)).collect();
    let idx: Vec<usize> = (0..30).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let b = balanced_batches(&idx, &labels, 8, 2, &mut rng);
    assert_eq!(b.len(), 4);
    for batch in &b {
        for c in 0..2 {
            assert!(batch.iter().filter(|&&i| labels[i] == c).count() >= 2);
        }
    }
}

#[test]
fn windows_repeat_short_bags() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let w = window_rows(5, 12, &mut rng);
    assert_eq!(w.len(), 12);
    assert!(w.iter().all(|&r| r < 5));
    // Consecutive rows stay consecutive modulo the bag (the bag repeated end to end).
    assert!(w.windows(2).all(|p| p[1] == (p[0] + 1) % 5));
    let w = window_rows(100, 10, &mut rng);
    assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
}

#[test]
fn three_stages_run_and_are_deterministic() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let cfg = tiny_config();
    let run = d.path().join("run");
    let g = stages::pretrain_genes(&data, &cfg, &run.join("genes"), Control::default(), &|_| {})
        .unwrap();
    assert!(g.figures.test_report().is_some() && g.checkpoint.is_file());
    let p = stages::pretrain(
        &data,
        &cfg,
        Some(&g.checkpoint),
        &run.join("pretrain"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let log = std::fs::read_to_string(run.join("pretrain/log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 2);
    assert!(log.contains("reconstruction_loss") && log.contains("triplet_loss"));
    let f1 = stages::finetune(
        &data,
        &cfg,
        Some(&p.checkpoint),
        None,
        &run.join("ft1"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let f2 = stages::finetune(
        &data,
        &cfg,
        Some(&p.checkpoint),
        None,
        &run.join("ft2"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let t = f1.figures.test_report().unwrap();
    assert_eq!(t.n, data.test.len());
    let same = std::fs::read(&f1.checkpoint).unwrap() == std::fs::read(&f2.checkpoint).unwrap();
    assert!(same, "two fine-tuning runs with one seed differ");
    // The fine-tuned checkpoint carries the expression preprocessing and the classes.
    let ck = gimp_nn::checkpoint::Checkpoint::load(&f1.checkpoint).unwrap();
    assert_eq!(ck.arch, "gimp");
    assert_eq!(ck.preprocessing.unwrap().genes.len(), 100);
    assert_eq!(ck.classes, vec!["LUAD", "LUSC"]);
}

#[test]
fn patients_with_a_missing_modality_are_kept() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.2);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    assert!(data.patients.iter().any(|p| p.expression.is_none()));
    assert!(data.patients.iter().any(|p| p.slides.is_empty()));
    let mut cfg = tiny_config();
    cfg.genes.epochs = 1;
    cfg.pretrain.epochs = 1;
    cfg.finetune.epochs = 1;
    let run = d.path().join("run");
    let p = stages::pretrain(
        &data,
        &cfg,
        None,
        &run.join("pretrain"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let f = stages::finetune(
        &data,
        &cfg,
        Some(&p.checkpoint),
        None,
        &run.join("ft"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    // Every test patient is evaluated, whichever modalities they have.
    assert_eq!(f.figures.test_report().unwrap().n, data.test.len());
}

#[test]
fn run_files_override_presets() {
    let c = RunConfig::from_toml(
        "preset = \"demo\"\nseed = 7\n[pretrain]\nmpm = false\ntriplet = \"image_only\"\n",
    )
    .unwrap();
    assert_eq!(c.seed, 7);
    assert!(!c.pretrain.mpm);
    assert_eq!(c.pretrain.triplet, gimp_train::config::Triplet::ImageOnly);
    assert_eq!(c.model.dim, RunConfig::demo().model.dim);
    assert!(RunConfig::from_toml("preset = \"nope\"").is_err());
    assert!(RunConfig::from_toml("[pretrain]\nwindoww = 3\n")
        .unwrap_err()
        .contains("windoww"));
    let p = RunConfig::paper();
    assert_eq!(
        (
            p.model.dim,
            p.pretrain.window,
            p.pretrain.mask_ratio,
            p.pretrain.margin
        ),
        (512, 6000, 0.5, 0.8)
    );
    assert_eq!(
        (p.pretrain.epochs, p.finetune.epochs, p.finetune.lr),
        (100, 70, 1e-4)
    );
}

#[test]
fn an_interrupted_and_resumed_run_ends_with_the_same_weights() {
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = tiny_config();
    cfg.finetune.epochs = 3;
    cfg.pretrain.epochs = 3;
    let run = d.path().join("run");
    // Uninterrupted.
    let p = stages::pretrain(
        &data,
        &cfg,
        None,
        &run.join("pre_a"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let a = stages::finetune(
        &data,
        &cfg,
        Some(&p.checkpoint),
        None,
        &run.join("a"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    // Stopped after one epoch (pre-training) and two epochs (fine-tuning), then resumed.
    let stop = |n| Control {
        resume: false,
        stop_after: Some(n),
        ephemeral: false,
    };
    let resume = Control {
        resume: true,
        stop_after: None,
        ephemeral: false,
    };
    let e = stages::pretrain(&data, &cfg, None, &run.join("pre_b"), stop(1), &|_| {}).unwrap_err();
    assert!(matches!(e, gimp_train::error::TrainError::Stopped(1)));
    let pb = stages::pretrain(&data, &cfg, None, &run.join("pre_b"), resume, &|_| {}).unwrap();
    let same = std::fs::read(&p.checkpoint).unwrap() == std::fs::read(&pb.checkpoint).unwrap();
    assert!(same, "resumed pre-training differs");
    assert!(stages::finetune(
        &data,
        &cfg,
        Some(&pb.checkpoint),
        None,
        &run.join("b"),
        stop(2),
        &|_| {}
    )
    .is_err());
    let b = stages::finetune(
        &data,
        &cfg,
        Some(&pb.checkpoint),
        None,
        &run.join("b"),
        resume,
        &|_| {},
    )
    .unwrap();
    let same = std::fs::read(&a.checkpoint).unwrap() == std::fs::read(&b.checkpoint).unwrap();
    assert!(same, "resumed fine-tuning differs");
    assert_eq!(a.best_epoch, b.best_epoch);
    assert_eq!(
        std::fs::read_to_string(run.join("b/log.jsonl"))
            .unwrap()
            .lines()
            .count(),
        3
    );
}

#[test]
fn every_baseline_trains_with_the_same_trainer() {
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    for arch in [
        "abmil", "dsmil", "clam_sb", "clam_mb", "transmil", "snn", "porpoise", "pathomic", "mcat",
        "mgca", "biovil", "refers", "mean_mil",
    ] {
        let mut cfg = defaults(arch);
        cfg.epochs = 1;
        cfg.self_supervised.epochs = 1;
        cfg.self_supervised.batch = 8;
        let r = train(
            &data,
            &cfg,
            &d.path().join(arch),
            Control::default(),
            &|_| {},
        )
        .unwrap();
        assert_eq!(
            r.figures.test_report().unwrap().n,
            data.test.len(),
            "{arch}"
        );
        let ck = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
        assert_eq!(ck.arch, arch);
        // The image–omic adaptations pre-train first and keep that stage's weights and log.
        let pre = d.path().join(arch).join("pretrain");
        let pretrains = gimp_models::registry::find(arch).unwrap().self_supervised();
        assert_eq!(pre.join("model.safetensors").is_file(), pretrains, "{arch}");
        if pretrains {
            let log = std::fs::read_to_string(pre.join("log.jsonl")).unwrap();
            assert!(log.contains("train_loss"), "{arch}");
        }
    }
    // GiMP is trained by its own stages: the supervised trainer refuses it by its ArchInfo.
    let gimp = gimp_models::registry::find("gimp").unwrap();
    let e = gimp_train::supervised::SupervisedConfig::defaults(gimp)
        .err()
        .unwrap();
    assert!(e.to_string().contains("its own stages"), "{e}");
}

/// The tables list the paper's rows in the paper's order; rows the paper lacks come where they
/// cannot be mistaken for its own.
#[test]
fn experiment_tables_have_the_papers_rows_in_order() {
    use gimp_train::config::TaskConfig;
    use gimp_train::experiment::rows;
    let keys = |t| -> Vec<&str> {
        rows(t, &[], &TaskConfig::default())
            .unwrap()
            .iter()
            .map(|r| r.key)
            .collect()
    };
    assert_eq!(
        keys("table1"),
        [
            "majority",
            "logreg",
            "abmil",
            "dsmil",
            "clam_sb",
            "clam_mb",
            "transmil",
            "gimp_image_only",
            "snn",
            "group_msa",
            "porpoise",
            "pathomic",
            "mcat",
            "agg_groupmsa",
            "mgca",
            "biovil",
            "refers",
            "gimp",
            "tangle_probe",
            "tangle",
            "survpath",
            "mmp"
        ]
    );
    assert_eq!(
        keys("table2"),
        [
            "agg_snn",
            "agg_groupmsa",
            "agg_mpm",
            "agg_triplet",
            "agg_groupmsa_triplet",
            "gimp",
            "agg_snn_full"
        ]
    );
}

#[test]
fn experiment_rows_plan_run_skip_and_summarise() {
    use gimp_train::config::TaskConfig;
    use gimp_train::experiment::{execute, plan, rows, summarise};
    use gimp_train::summary::markdown;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    assert!(rows("table3", &[], &TaskConfig::default()).is_err());
    assert!(rows("table2", &["nope".into()], &TaskConfig::default()).is_err());
    let chosen = rows(
        "table1",
        &["abmil".into(), "gimp".into()],
        &TaskConfig::default(),
    )
    .unwrap();
    let out = d.path().join("exp");
    let runs = plan(&out, &chosen, 1, 2);
    assert_eq!(runs.len(), 4);
    assert!(runs.iter().all(|r| !r.done));
    let mut cfg = tiny_config();
    cfg.genes.epochs = 1;
    cfg.pretrain.epochs = 1;
    cfg.finetune.epochs = 1;
    for run in &runs {
        let row = chosen.iter().find(|r| r.key == run.row).unwrap();
        let once = gimp_train::experiment::Compared {
            overrides: gimp_train::config::SupervisedOverrides {
                epochs: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        execute(row, &data, &cfg, &once, run, &|_| {}).unwrap();
    }
    let again = plan(&out, &chosen, 1, 2);
    assert!(
        again.iter().all(|r| r.done),
        "finished runs are recognised and skipped"
    );
    let s = summarise(&chosen, &again).unwrap();
    assert_eq!(s.len(), 2);
    assert!(s.iter().all(|r| r.runs == 2 && r.accuracy.0.is_finite()));
    let total: usize = s[0].confusion.iter().flatten().sum();
    assert_eq!(
        total,
        2 * data.test.len(),
        "pooled confusion over both seeds"
    );
    assert!(markdown(&s, &data.classes, Default::default()).contains("| ABMIL | 2 |"));
    // The two rows compared on their paired runs and pooled predictions.
    let c = gimp_train::experiment::compare(&out, "abmil", "gimp").unwrap();
    assert_eq!(c.runs.len(), 2);
    assert_eq!(c.patients, data.test.len());
    let d = c.delong.unwrap();
    assert!(
        (0.0..=1.0).contains(&d.p) && (0.0..=1.0).contains(&c.p_paired),
        "{c:?}"
    );
    assert!(gimp_train::experiment::compare(&out, "abmil", "nope").is_err());
    // Pooled over both seeds, each test patient counts once in the intervals.
    for r in &s {
        let pooled = r.pooled.as_ref().unwrap();
        assert_eq!(pooled.n, data.test.len(), "{}", r.row);
        assert!(pooled.accuracy.low <= pooled.accuracy.value, "{}", r.row);
    }
}

/// The compared systems' trainer is deterministic too: the same seed gives byte-identical
/// checkpoints and identical test metrics (a model with a pre-training stage included).
#[test]
fn the_common_trainer_is_deterministic_for_a_seed() {
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    for arch in ["dsmil", "biovil"] {
        let mut cfg = defaults(arch);
        cfg.epochs = 2;
        cfg.self_supervised.epochs = 1;
        cfg.self_supervised.batch = 8;
        let run = |k: usize| {
            let dir = d.path().join(format!("{arch}{k}"));
            let r = train(&data, &cfg, &dir, Control::default(), &|_| {}).unwrap();
            let bytes = std::fs::read(&r.checkpoint).unwrap();
            let test = r.figures.test_report().cloned().unwrap();
            (bytes, test.accuracy.value, test.roc_auc.map(|a| a.value))
        };
        assert_eq!(run(1), run(2), "{arch}");
    }
}

/// MCAT's gene groups come from a signatures.csv when given (genes found by name), a table
/// naming none of the cohort's genes is a clear error, and SurvPath takes a compositions table.
#[test]
fn mcat_takes_its_gene_groups_from_signatures() {
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let genes = data.preprocessing.as_ref().unwrap().genes.clone();
    let sig = d.path().join("signatures.csv");
    let strip = gimp_io::expression::strip_version;
    std::fs::write(
        &sig,
        format!(
            "Oncogenes,Cytokines\n{},{}\n{},NOT_A_GENE\n,{}\n",
            strip(&genes[3]),
            strip(&genes[10]),
            strip(&genes[7]),
            strip(&genes[42])
        ),
    )
    .unwrap();
    let mut cfg = defaults("mcat");
    cfg.epochs = 1;
    cfg.signatures = Some(sig.clone());
    let r = train(
        &data,
        &cfg,
        &d.path().join("mcat"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let ck = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
    assert_eq!(ck.config["groups"], serde_json::json!([[3, 7], [10, 42]]));
    std::fs::write(&sig, "Oncogenes\nNOT_A_GENE\n").unwrap();
    let e = train(
        &data,
        &cfg,
        &d.path().join("mcat2"),
        Control::default(),
        &|_| {},
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("none of its gene symbols"), "{e}");
    // SurvPath's compositions layout (a row per gene, a 0/1 column per pathway) through the same
    // flag: each pathway's genes ordered by symbol, a pathway of absent genes dropped.
    let comps = d.path().join("hallmarks_comps.csv");
    std::fs::write(
        &comps,
        format!(
            ",HALLMARK_A,HALLMARK_B,HALLMARK_EMPTY\n{},1,0,0\n{},0,1,0\n{},1,1,0\nNOT_A_GENE,0,0,1\n",
            strip(&genes[12]),
            strip(&genes[5]),
            strip(&genes[2])
        ),
    )
    .unwrap();
    let mut cfg = defaults("survpath");
    cfg.epochs = 1;
    cfg.signatures = Some(comps);
    let r = train(
        &data,
        &cfg,
        &d.path().join("survpath"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let ck = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
    assert_eq!(ck.config["groups"], serde_json::json!([[2, 12], [2, 5]]));
}

/// Runs a stage twice in fresh folders — uninterrupted, and stopped after `stop` epochs then
/// resumed — and returns both checkpoints' bytes.
fn interrupted_and_resumed<F>(dir: &Path, stop: usize, stage: F) -> (Vec<u8>, Vec<u8>)
where
    F: Fn(&Path, Control) -> gimp_train::error::Result<gimp_train::task::StageResult>,
{
    let whole = stage(&dir.join("whole"), Control::default()).unwrap();
    let cut = dir.join("cut");
    let stopped = Control {
        resume: false,
        stop_after: Some(stop),
        ephemeral: false,
    };
    let e = stage(&cut, stopped).expect_err("the stage stops");
    assert!(
        matches!(e, gimp_train::error::TrainError::Stopped(n) if n == stop),
        "{e}"
    );
    let resumed = Control {
        resume: true,
        stop_after: None,
        ephemeral: false,
    };
    let done = stage(&cut, resumed).unwrap();
    (
        std::fs::read(whole.checkpoint).unwrap(),
        std::fs::read(done.checkpoint).unwrap(),
    )
}

/// Every stage the one loop runs — GiMP's three, a compared system stepping every patient, one
/// accumulating gradients over patients, and an image–omic adaptation interrupted in its
/// self-supervised stage and in its fine-tuning — resumes to byte-identical weights.
#[test]
fn every_stage_resumes_to_identical_weights() {
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.1);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = tiny_config();
    cfg.genes.epochs = 3;
    cfg.pretrain.epochs = 3;
    cfg.finetune.epochs = 3;
    let (a, b) = interrupted_and_resumed(&d.path().join("genes"), 1, |dir, ctl| {
        stages::pretrain_genes(&data, &cfg, dir, ctl, &|_| {})
    });
    assert!(a == b, "gene pre-training");
    let (a, b) = interrupted_and_resumed(&d.path().join("pretrain"), 2, |dir, ctl| {
        stages::pretrain(&data, &cfg, None, dir, ctl, &|_| {})
    });
    assert!(a == b, "GiMP pre-training");
    let (a, b) = interrupted_and_resumed(&d.path().join("finetune"), 1, |dir, ctl| {
        stages::finetune(&data, &cfg, None, None, dir, ctl, &|_| {})
    });
    assert!(a == b, "fine-tuning");
    for (arch, stop, self_supervised_epochs) in [
        ("abmil", 2, 0),
        ("snn", 1, 0),
        ("mgca", 1, 2),
        ("mgca", 2, 1),
    ] {
        let mut c = defaults(arch);
        c.epochs = 3;
        c.max_patches = Some(30);
        c.self_supervised.epochs = self_supervised_epochs;
        c.self_supervised.batch = 8;
        let dir = d.path().join(format!("{arch}-{stop}"));
        let (a, b) =
            interrupted_and_resumed(&dir, stop, |dir, ctl| train(&data, &c, dir, ctl, &|_| {}));
        assert!(a == b, "{arch} stopped after epoch {stop}");
    }
}

/// Early stopping ends training once the validation loss has not improved for `patience`
/// epochs (never before `stop_epoch`), exactly where the logged losses say it should, and a
/// resumed finished run trains no further.
#[test]
fn early_stopping_follows_the_validation_loss() {
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = defaults("abmil");
    cfg.epochs = 40;
    cfg.lr = 5e-3;
    cfg.early_stopping = Some(EarlyStopping {
        patience: 2,
        stop_epoch: 2,
    });
    let dir = d.path().join("abmil");
    let r = train(&data, &cfg, &dir, Control::default(), &|_| {}).unwrap();
    let losses: Vec<f64> = std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["val_loss"]
                .as_f64()
                .unwrap()
        })
        .collect();
    // Replay CLAM's rule on the logged losses: an equal loss resets the counter; stop once it
    // reaches the patience after an epoch whose 0-based index is above stop_epoch.
    let (mut lowest, mut since, mut expected) = (f64::INFINITY, 0, cfg.epochs);
    for (e, &l) in losses.iter().enumerate() {
        if l <= lowest {
            (lowest, since) = (l, 0);
        } else {
            since += 1;
        }
        if e > 2 && since >= 2 {
            expected = e + 1;
            break;
        }
    }
    assert!(
        expected < cfg.epochs,
        "validation loss never stalled: {losses:?}"
    );
    assert_eq!(losses.len(), expected, "{losses:?}");
    let ck = gimp_nn::checkpoint::Checkpoint::load(&r.checkpoint).unwrap();
    assert_eq!(ck.info["epochs_run"], expected.to_string());
    // Resuming the finished run trains nothing more and gives the same weights.
    let resumed = Control {
        resume: true,
        stop_after: None,
        ephemeral: false,
    };
    let before = std::fs::read(&r.checkpoint).unwrap();
    train(&data, &cfg, &dir, resumed, &|_| {}).unwrap();
    assert_eq!(std::fs::read(&r.checkpoint).unwrap(), before);
}

/// The bad run-file corpus (tests/data/bad_run_files): every choice of a run file is a type, so
/// each file's error names the field, the value and the values allowed (its `# expect:` line).
#[test]
fn bad_run_files_name_the_field_and_the_choices() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad_run_files");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: no '# expect:' line", path.display()));
        let err = RunConfig::from_toml(&text)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()));
        for part in expect.split(" | ") {
            assert!(
                err.contains(part),
                "{}: '{err}' lacks '{part}'",
                path.display()
            );
        }
        n += 1;
    }
    assert!(n >= 10, "only {n} files in the corpus");
    let c =
        RunConfig::from_toml("[finetune.early_stopping]\npatience = 3\nstop_epoch = 10").unwrap();
    assert_eq!(
        c.finetune.early_stopping,
        Some(EarlyStopping {
            patience: 3,
            stop_epoch: 10
        })
    );
}

/// `--recipe paper` trains every compared system as the paper says it trained all rows, and one
/// experiment folder never mixes two recipes.
#[test]
fn the_paper_recipe_is_one_configuration_for_every_row() {
    use gimp_train::config::TaskConfig;
    use gimp_train::experiment::TrainingRecipe::{Paper, Reference};
    use gimp_train::experiment::{claim_recipe, planned_epochs, rows, Compared};
    let table1 = rows("table1", &[], &TaskConfig::default()).unwrap();
    let abmil = table1.iter().find(|r| r.key == "abmil").unwrap();
    let snn = table1.iter().find(|r| r.key == "snn").unwrap();
    let base = RunConfig::paper();
    let epochs = |row, recipe| {
        let o = Compared {
            recipe,
            ..Default::default()
        };
        planned_epochs(row, &base, &o).unwrap()
    };
    // SNN's 20 epochs, trained on 3 inner folds and once more on all (§41).
    assert_eq!((epochs(abmil, Reference), epochs(snn, Reference)), (50, 80));
    assert_eq!((epochs(abmil, Paper), epochs(snn, Paper)), (70, 70));
    let d = tempfile::tempdir().unwrap();
    claim_recipe(d.path(), Paper, &TaskConfig::default()).unwrap();
    claim_recipe(d.path(), Paper, &TaskConfig::default()).unwrap();
    let e = claim_recipe(d.path(), Reference, &TaskConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("paper recipe"), "{e}");
}

/// `--memory-limit`: a training set whose largest bag's step would need more than the limit is
/// refused before any step, with the figure and the bag size that would fit; a limit it fits
/// trains; a model without an estimate says so.
#[test]
fn a_bag_over_the_memory_limit_is_refused_before_training() {
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = defaults("transmil");
    cfg.epochs = 1;
    // The estimate's constant alone is above 0.1 GB: every bag is refused.
    cfg.memory_limit_gb = Some(0.1);
    let dir = d.path().join("refused");
    let err = train(&data, &cfg, &dir, Control::default(), &|_| {})
        .expect_err("refused")
        .to_string();
    assert!(err.contains("needs an estimated"), "{err}");
    assert!(err.contains("--memory-limit 0.1 GB"), "{err}");
    assert!(
        !dir.join("train/model.safetensors").exists(),
        "nothing is trained"
    );
    cfg.memory_limit_gb = Some(64.0);
    train(
        &data,
        &cfg,
        &d.path().join("fits"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let mut other = defaults("dsmil");
    other.memory_limit_gb = Some(64.0);
    let err = train(
        &data,
        &other,
        &d.path().join("dsmil"),
        Control::default(),
        &|_| {},
    )
    .expect_err("no estimate")
    .to_string();
    assert!(err.contains("no memory estimate"), "{err}");
}

/// Gene selection is fitted on the training split, stored in the checkpoint and re-applied when
/// the checkpoint is evaluated on the full cohort; a gene list names the line of a missing gene.
#[test]
fn selected_genes_are_stored_and_reapplied() {
    use gimp_io::splits::Part;
    use gimp_nn::checkpoint::Checkpoint;
    use gimp_train::config::GeneSelection;
    use gimp_train::evaluate;
    use gimp_train::supervised::train;
    let d = tempfile::tempdir().unwrap();
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.0);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let p = data.preprocessing.clone().unwrap();
    let mut cfg = defaults("snn");
    cfg.epochs = 2;
    cfg.genes = GeneSelection::TopVariance(30);
    let r = train(
        &data,
        &cfg,
        &d.path().join("snn"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let ckpt = Checkpoint::load(&r.checkpoint).unwrap();
    let kept = ckpt.preprocessing.clone().unwrap();
    assert_eq!(kept.genes.len(), 30);
    // The 30 largest training-split standard deviations, in the matrix's order.
    let mut sds = p.std.clone();
    sds.sort_by(|a, b| b.total_cmp(a));
    assert!(kept.std.iter().all(|s| *s >= sds[29]));
    let order: Vec<usize> = kept
        .genes
        .iter()
        .map(|g| p.genes.iter().position(|h| h == g).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    // Evaluating the checkpoint on the whole cohort re-applies the subset: the test report is
    // the one training wrote.
    let again = Prepared::for_checkpoint(&cohort, None, &ckpt).unwrap();
    assert_eq!(again.n_genes(), 30);
    let m = evaluate::load(&ckpt).unwrap();
    let e = evaluate::evaluate(&m, &again, Part::Test, 0).unwrap();
    assert_eq!(
        e.overall.accuracy.value,
        r.figures.test_report().unwrap().accuracy.value
    );

    // A list: a header line, a comment, a duplicate; the file's order is kept.
    let list = d.path().join("genes.txt");
    let (a, b) = (&p.genes[7], &p.genes[3]);
    std::fs::write(&list, format!("gene\n# two genes\n{a}\n{b},x\n{a}\n")).unwrap();
    let sel: GeneSelection = list.to_str().unwrap().parse().unwrap();
    let picked = data.clone().with_genes(&sel).unwrap();
    assert_eq!(
        picked.preprocessing.unwrap().genes,
        vec![a.clone(), b.clone()]
    );
    assert_eq!(picked.patients[0].expression.as_ref().unwrap().len(), 2);
    std::fs::write(&list, format!("{a}\nNOT_A_GENE\n")).unwrap();
    let e = data.clone().with_genes(&sel).err().unwrap().to_string();
    assert!(e.contains("genes.txt:2") && e.contains("NOT_A_GENE"), "{e}");
    assert!("0".parse::<GeneSelection>().is_err());
    assert!("no-such-file".parse::<GeneSelection>().is_err());
}

/// Stages whose largest bag reaches 4,096 patches train memory first; smaller bags (or bags
/// capped below it by `--max-patches`) keep the fast path.
#[test]
fn whole_bags_switch_to_memory_first_training() {
    let d = tempfile::tempdir().unwrap();
    let small = tiny_cohort(&d.path().join("small"), 0.0);
    let data = Prepared::new(&small, 0, ExpressionTransform::Log2p1).unwrap();
    assert!(data.whole_bag_mode(&data.train, None).unwrap().is_none());
    let mut s = SynthConfig::new(Difficulty::Easy, Size::Demo, 5);
    s.n_patients = 8;
    s.patches_min = 4_200;
    s.patches_max = 4_300;
    s.d_in = 4;
    s.n_genes = 20;
    let dir = d.path().join("big");
    gimp_synth::generate(&s, &dir, &|_, _| {}).unwrap();
    let big = Cohort::load(
        CohortFile::load(&dir.join("cohort.toml")).unwrap(),
        LoadOptions::default(),
    )
    .unwrap();
    let data = Prepared::new(&big, 0, ExpressionTransform::Log2p1).unwrap();
    let (_, n) = data.largest_bag(&data.train, None).unwrap().unwrap();
    assert!(n >= 4_200, "{n}");
    assert!(data.whole_bag_mode(&data.train, None).unwrap().is_some());
    assert!(data
        .whole_bag_mode(&data.train, Some(1_000))
        .unwrap()
        .is_none());
}

/// Largest absolute difference between two checkpoints' tensors of the same names.
fn largest_weight_difference(a: &Path, b: &Path) -> f32 {
    let a = gimp_nn::checkpoint::Checkpoint::load(a).unwrap().weights;
    let b = gimp_nn::checkpoint::Checkpoint::load(b).unwrap().weights;
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .map(|(k, x)| {
            let d = (x - &b[k]).unwrap().abs().unwrap().flatten_all().unwrap();
            d.max(0).unwrap().to_scalar::<f32>().unwrap()
        })
        .fold(0.0, f32::max)
}

#[test]
fn pretraining_windows_one_at_a_time_follow_the_batch_gradient() {
    use gimp_train::config::WindowGradients;
    assert!(WindowGradients::Auto.one_at_a_time(8, 6_000));
    assert!(!WindowGradients::Auto.one_at_a_time(4, 32));
    assert!(!WindowGradients::Together.one_at_a_time(8, 6_000));
    assert!(WindowGradients::OneAtATime.one_at_a_time(1, 1));
    let d = tempfile::tempdir().unwrap();
    // Some patients without a slide or without expression: their windows take the learned
    // "missing" embeddings, which the triplet gradient must reach as well.
    let cohort = tiny_cohort(&d.path().join("cohort"), 0.15);
    let data = Prepared::new(&cohort, 0, ExpressionTransform::Log2p1).unwrap();
    let mut cfg = tiny_config();
    let g = stages::pretrain_genes(
        &data,
        &cfg,
        &d.path().join("genes"),
        Control::default(),
        &|_| {},
    )
    .unwrap();
    let run = |name: &str, cfg: &RunConfig| {
        stages::pretrain(
            &data,
            cfg,
            Some(&g.checkpoint),
            &d.path().join(name),
            Control::default(),
            &|_| {},
        )
        .unwrap()
        .checkpoint
    };
    cfg.pretrain.window_gradients = WindowGradients::Together;
    let together = run("together", &cfg);
    cfg.pretrain.window_gradients = WindowGradients::OneAtATime;
    let one = run("one", &cfg);
    // The epochs' losses: the same forward passes, on weights that differ by rounding.
    let losses = |name: &str| -> Vec<f64> {
        let log = std::fs::read_to_string(d.path().join(name).join("log.jsonl")).unwrap();
        log.lines()
            .flat_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                ["triplet_loss", "reconstruction_loss"].map(|k| v[k].as_f64().unwrap())
            })
            .collect()
    };
    let (a, b) = (losses("together"), losses("one"));
    assert_eq!(a.len(), 4);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
    // The weights agree to rounding, far closer than to a run whose steps differ.
    let rounding = largest_weight_difference(&together, &one);
    cfg.pretrain.window_gradients = WindowGradients::Together;
    cfg.pretrain.lr *= 2.0;
    let other = run("other", &cfg);
    let steps = largest_weight_difference(&together, &other);
    eprintln!("largest weight difference: one at a time {rounding}, twice the rate {steps}");
    assert!(rounding <= 1e-5, "one at a time is {rounding} away");
    assert!(steps > 1000.0 * rounding.max(1e-8), "{steps} vs {rounding}");
}
