//! The `gimp-rs` binary as a user runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn gimp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gimp-rs"))
        .args(args)
        .output()
        .expect("run gimp-rs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn synth_small(out: &Path, seed: &str) -> Output {
    gimp(&[
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        seed,
        "--patients",
        "30",
        "--patches",
        "20,80",
        "--dim",
        "16",
        "--genes",
        "200",
        "--gdc-fraction",
        "0.2",
        "--pt",
    ])
}

/// The repository root (real data in `data/`, see data/README.md).
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every subcommand — found from the help texts themselves, so a new one is covered — prints
/// its help, and every argument and option in it says what it is and what it accepts (a line
/// with only a default is not a description).
#[test]
fn every_subcommand_has_help() {
    let mut todo: Vec<Vec<String>> = vec![Vec::new()];
    let (mut seen, mut undocumented) = (Vec::new(), Vec::new());
    while let Some(path) = todo.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let o = gimp(&args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let text = stdout(&o);
        assert!(text.contains("Usage"), "{args:?}");
        let lines: Vec<&str> = text.lines().collect();
        let mut section = "";
        for (k, line) in lines.iter().enumerate() {
            if !line.starts_with(' ') && line.ends_with(':') {
                section = line;
                continue;
            }
            let indent = line.len() - line.trim_start().len();
            let entry = (2..=6).contains(&indent);
            match section {
                "Commands:" if indent == 2 => {
                    let name = line.split_whitespace().next().unwrap_or("help");
                    if name != "help" {
                        let mut sub = path.clone();
                        sub.push(name.to_string());
                        todo.push(sub);
                    }
                }
                "Arguments:" | "Options:" if entry => {
                    let head = line.trim_start();
                    if head.starts_with("-h, --help") || head.starts_with("-V, --version") {
                        continue;
                    }
                    // The description follows on the same line after two spaces, or on the
                    // next, indented further.
                    let same = head.split_once("  ").map(|(_, d)| d).unwrap_or("");
                    let next = lines
                        .get(k + 1)
                        .filter(|l| l.len() - l.trim_start().len() > 6 && !l.trim().is_empty());
                    let description = format!("{same} {}", next.map_or("", |l| l.trim()));
                    let without_defaults = description
                        .split('[')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string();
                    if without_defaults.is_empty() {
                        undocumented.push(format!("gimp-rs {} {head}", path.join(" ")));
                    }
                }
                _ => {}
            }
        }
        seen.push(path.join(" "));
    }
    assert!(
        seen.len() >= 30,
        "only {} commands found: {seen:?}",
        seen.len()
    );
    for expected in [
        "train",
        "experiment compare",
        "evaluate",
        "model run",
        "view",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not found: {seen:?}"
        );
    }
    assert!(
        undocumented.is_empty(),
        "arguments without a description:\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn synth_is_byte_identical_for_a_seed_and_checks_clean() {
    let d = tempfile::tempdir().unwrap();
    let (a, b) = (d.path().join("a"), d.path().join("b"));
    assert!(synth_small(&a, "4").status.success());
    assert!(synth_small(&b, "4").status.success());
    let diff = Command::new("diff")
        .args(["-r", a.to_str().unwrap(), b.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", stdout(&diff));
    // Refuses to overwrite without --force.
    let again = synth_small(&a, "4");
    assert!(!again.status.success() && stderr(&again).contains("not empty"));

    let toml = a.join("cohort.toml");
    let o = gimp(&[
        "cohort",
        "check",
        toml.to_str().unwrap(),
        "--json",
        "--deep",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["patients"], 30);
    assert_eq!(v["feature_dim"], 16);
    assert_eq!(v["expression"]["genes"], 200);
    assert_eq!(v["errors"].as_array().unwrap().len(), 0);
    let o = gimp(&["cohort", "cache", toml.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(a.join("features/.gimp-cache").is_dir());
}

#[test]
fn cohort_check_reports_errors_with_exit_code_1() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("c");
    assert!(synth_small(&a, "1").status.success());
    // Corrupt one feature file and name an unknown patient in the split.
    let h5s: Vec<PathBuf> = std::fs::read_dir(a.join("features/h5_files"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    std::fs::write(&h5s[0], b"not hdf5").unwrap();
    let split = a.join("splits/splits_0.csv");
    let mut text = std::fs::read_to_string(&split).unwrap();
    text.push_str("99,,,NOBODY-01Z\n");
    std::fs::write(&split, text).unwrap();
    let o = gimp(&["cohort", "check", a.join("cohort.toml").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains(h5s[0].file_name().unwrap().to_str().unwrap())
            && out.contains("not a readable HDF5 file"),
        "{out}"
    );
    assert!(out.contains("'NOBODY-01Z' (line"), "{out}");
    let o = gimp(&["cohort", "check", "/nonexistent/cohort.toml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/cohort.toml"));
}

#[test]
fn split_writes_clam_layout_and_check_finds_leaks() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("c");
    assert!(synth_small(&a, "2").status.success());
    let toml = a.join("cohort.toml");
    let out = d.path().join("folds");
    let o = gimp(&[
        "split",
        toml.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--scheme",
        "kfold",
        "--k",
        "3",
        "--seed",
        "7",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for k in 0..3 {
        for suffix in ["", "_bool", "_descriptor"] {
            assert!(out.join(format!("splits_{k}{suffix}.csv")).is_file());
        }
    }
    let o = gimp(&[
        "split",
        "check",
        out.to_str().unwrap(),
        "--cohort",
        toml.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stdout(&o));
    assert!(stdout(&o).contains("no leaks in 3 file(s)"));
    // The synthetic cohort's own split, with one slide moved to test while its patient trains.
    let f = a.join("splits/splits_0.csv");
    let text = std::fs::read_to_string(&f).unwrap();
    let first_train = text
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .nth(1)
        .unwrap()
        .to_string();
    let leaked = format!("{text}999,,,{first_train}\n");
    let bad = d.path().join("leaky.csv");
    std::fs::write(&bad, leaked).unwrap();
    let o = gimp(&["split", "check", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!("'{first_train}' is in test and also in train")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn gene_only_logistic_regression_on_real_leukemia_expression() {
    let data = repo().join("data/all-leukemia");
    let d = tempfile::tempdir().unwrap();
    // Reference figures (data/README.md): scikit-learn, C = 0.1, standardised, 5-fold:
    // lineage B vs T 1.000; BCR/ABL vs NEG 0.828.
    for (column, keep, low, high) in [
        ("lineage", "", 0.98, 1.0),
        ("mol.biol", "keep = [\"BCR/ABL\", \"NEG\"]\n", 0.74, 0.92),
    ] {
        let toml = d.path().join(format!("{column}.toml"));
        std::fs::write(
            &toml,
            format!(
                "[labels]\ncsv = \"{}\"\ncase_column = \"sample\"\nlabel_column = \"{column}\"\n{keep}[expression]\nmatrix = \"{}\"\n",
                data.join("labels.csv").display(),
                data.join("expression.csv.gz").display()
            ),
        )
        .unwrap();
        let o = gimp(&[
            "baseline",
            "logreg",
            toml.to_str().unwrap(),
            "--kfold",
            "5",
            "--transform",
            "none",
            "--json",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let acc = v["test_accuracy_mean"].as_f64().unwrap();
        assert!(
            (low..=high).contains(&acc),
            "{column}: 5-fold accuracy {acc}"
        );
    }
}

#[test]
fn model_run_reproduces_the_reference_code_on_its_state_dicts() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gimp-models/tests/fixtures");
    for arch in ["transmil", "clam_sb", "clam_mb", "abmil"] {
        let w = fixtures.join(format!("{arch}_weights.safetensors"));
        let bag = fixtures.join(format!("{arch}_bag.h5"));
        let o = gimp(&[
            "model",
            "run",
            "--arch",
            arch,
            "--weights",
            w.to_str().unwrap(),
            "--features",
            bag.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{arch}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let got: Vec<f64> = v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let io = candle_core::safetensors::load(
            fixtures.join(format!("{arch}_io.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let want: Vec<f32> = io["logits"].to_vec1().unwrap();
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - *w as f64).abs() < 1e-4 * (w.abs() as f64).max(1.0),
                "{arch}: {got:?} vs {want:?}"
            );
        }
        let p: f64 = v["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert!((p - 1.0).abs() < 1e-5);
        assert_eq!(v["top_patches"].as_array().unwrap().len(), 10);
    }
    // Wrong architecture for the weights: a clear error, exit 2.
    let w = fixtures.join("abmil_weights.safetensors");
    let bag = fixtures.join("abmil_bag.h5");
    let o = gimp(&[
        "model",
        "run",
        "--arch",
        "transmil",
        "--weights",
        w.to_str().unwrap(),
        "--features",
        bag.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("_fc1.0.weight"), "{}", stderr(&o));
}

#[test]
fn the_model_docs_are_the_registry() {
    let o = gimp(&["model", "list", "--markdown"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let docs =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/MODELS.md"))
            .unwrap();
    assert!(
        docs.contains(&stdout(&o)),
        "docs/MODELS.md is out of date: regenerate its table with `gimp-rs model list --markdown`"
    );
}

#[test]
fn model_run_reads_torch_state_dicts_and_lightning_checkpoints() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gimp-models/tests/fixtures");
    for (arch, weights, reference) in [
        (
            "clam_sb",
            "clam_sb_state_dict.pt",
            "clam_sb_weights.safetensors",
        ),
        ("abmil", "abmil_lightning.ckpt", "abmil_weights.safetensors"),
    ] {
        let bag = fixtures.join(format!("{arch}_bag.h5"));
        let run = |w: &str| {
            let o = gimp(&[
                "model",
                "run",
                "--arch",
                arch,
                "--weights",
                fixtures.join(w).to_str().unwrap(),
                "--features",
                bag.to_str().unwrap(),
            ]);
            assert!(o.status.success(), "{w}: {}", stderr(&o));
            let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
            v["logits"].clone()
        };
        assert_eq!(run(weights), run(reference), "{weights}");
    }
}

/// Kills every kind of training stage (`pretrain-genes`, `pretrain`, `finetune`, `train` of a
/// compared system, and one with a self-supervised stage first) with SIGKILL at several points of
/// its run, resumes each time, and checks that the final checkpoint is byte for byte the one of
/// an uninterrupted run, that each epoch is logged once and that no half-written file is ever
/// left behind.
#[test]
fn training_killed_with_sigkill_resumes_to_identical_weights() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("c");
    assert!(synth_small(&c, "8").status.success());
    let toml = c.join("cohort.toml");
    let run_file = d.path().join("run.toml");
    std::fs::write(
        &run_file,
        "preset = \"demo\"\n[model]\ndim = 16\nheads = 2\nlandmarks = 8\nfragment = 10\ngroups = 4\n[genes]\nepochs = 6\n[genes.selection]\nfolds = 0\n[pretrain]\nepochs = 6\nwindow = 32\nbatch = 4\n[finetune]\nepochs = 6\n",
    )
    .unwrap();
    let cohort = toml.to_str().unwrap();
    let gimp = ["--config", run_file.to_str().unwrap()];
    /// A stage to kill: its arguments, the first state file a run writes, the checkpoint, and
    /// the logs with their epoch counts.
    type Stage<'a> = (
        &'a str,
        Vec<&'a str>,
        &'a str,
        &'a str,
        Vec<(&'a str, usize)>,
    );
    // Every kind of stage the training loop runs.
    let stages: [Stage; 5] = [
        (
            "gene pre-training",
            [&["pretrain-genes", cohort][..], &gimp].concat(),
            "genes/state.safetensors",
            "genes/model.safetensors",
            vec![("genes/log.jsonl", 6)],
        ),
        (
            "GiMP pre-training",
            [&["pretrain", cohort][..], &gimp].concat(),
            "pretrain/state.safetensors",
            "pretrain/model.safetensors",
            vec![("pretrain/log.jsonl", 6)],
        ),
        (
            "fine-tuning",
            [&["finetune", cohort][..], &gimp].concat(),
            "finetune/state.safetensors",
            "finetune/model.safetensors",
            vec![("finetune/log.jsonl", 6)],
        ),
        (
            "a compared system",
            vec!["train", cohort, "--arch", "clam_sb", "--epochs", "6"],
            "state.safetensors",
            "model.safetensors",
            vec![("log.jsonl", 6)],
        ),
        (
            "a self-supervised stage, then fine-tuning",
            vec![
                "train",
                cohort,
                "--arch",
                "mgca",
                "--epochs",
                "4",
                "--pretrain-epochs",
                "4",
                "--pretrain-batch",
                "8",
            ],
            "pretrain/state.safetensors",
            "model.safetensors",
            vec![("pretrain/log.jsonl", 4), ("log.jsonl", 4)],
        ),
    ];
    for (name, args, first_state, model, logs) in stages {
        let stage = |out: &Path, resume: bool| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_gimp-rs"));
            cmd.args(&args).args(["--out", out.to_str().unwrap()]);
            if resume {
                cmd.arg("--resume");
            }
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            cmd
        };
        let dir = d.path().join(name.replace(' ', "_"));
        let reference = dir.join("reference");
        assert!(
            stage(&reference, false).status().unwrap().success(),
            "{name}"
        );
        let expected = std::fs::read(reference.join(model)).unwrap();

        let out = dir.join("killed");
        let state = out.join(first_state);
        let mut kills = 0;
        // Kill at increasing delays after the first state appears, until a run gets to the end.
        for delay_ms in [0u64, 150, 400, 900, 2000] {
            let mut child = stage(&out, true).spawn().unwrap();
            let t0 = std::time::Instant::now();
            while !state.exists() && t0.elapsed() < std::time::Duration::from_secs(60) {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL on Unix
                kills += 1;
            }
            let _ = child.wait();
            // Whatever the moment of the kill, every file under its real name is complete (a
            // kill during a write leaves only the writer's temporary file).
            for e in walk(&out) {
                let file = e.file_name().unwrap().to_string_lossy().into_owned();
                if file.ends_with(".safetensors") {
                    let bytes = std::fs::read(&e).unwrap();
                    assert!(
                        safetensors::SafeTensors::deserialize(&bytes).is_ok(),
                        "{name}: corrupt {}",
                        e.display()
                    );
                }
            }
        }
        assert!(kills > 0, "{name}: the run was never interrupted");
        let o = stage(&out, true).output().unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        // The finished run removed the temporary files the killed writers left.
        let left: Vec<_> = walk(&out)
            .into_iter()
            .filter(|e| e.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{name}: temporary files left: {left:?}");
        let got = std::fs::read(out.join(model)).unwrap();
        assert!(
            got == expected,
            "{name}: after {kills} SIGKILL(s) and resumes the weights differ from an uninterrupted run"
        );
        for (log, epochs) in logs {
            let text = std::fs::read_to_string(out.join(log)).unwrap();
            assert_eq!(
                text.lines().count(),
                epochs,
                "{name}: each epoch logged once:\n{text}"
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// The real slide through the whole chain: segmentation and patches, features with the
/// fixture's ResNet weights (equal to torchvision's on OpenSlide's pixels of the same patches),
/// a resumed extraction that skips the finished slide, and a heatmap of CLAM-SB's attention.
#[test]
fn the_real_slide_goes_from_pixels_to_features_to_a_heatmap() {
    let slide = repo().join("data/slides/cmu_small_region.svs");
    let weights =
        repo().join("crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors");
    let d = tempfile::tempdir().unwrap();
    let out = d.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    let o = gimp(&["slide", "info", &s(&slide), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let info: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(info["magnification"], 20.0);
    assert_eq!(info["levels"][0]["width"], 2220);

    // Segmentation + patching: the default preset finds no region as large as a_t = 16 reference
    // patches on this small region and says so; bwh_biopsy's a_t = 1 does.
    let o = gimp(&["patch", &s(&slide), "--out", &s(&out.join("p16"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("lower --a-t"), "{}", stderr(&o));
    let o = gimp(&[
        "patch",
        &s(&slide),
        "--out",
        &s(out),
        "--preset",
        "bwh_biopsy",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pfile = out.join("patches/cmu_small_region.h5");
    // Deterministic: a second, forced run writes the same bytes.
    let first = std::fs::read(&pfile).unwrap();
    let args = [
        "patch",
        &s(&slide),
        "--out",
        &s(out),
        "--preset",
        "bwh_biopsy",
        "--overwrite",
    ];
    let o = gimp(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&pfile).unwrap(),
        first,
        "patching is not deterministic"
    );
    let patches = gimp_io::h5::read_patches(&pfile).unwrap();
    assert!(patches.coords.len() > 20);
    assert_eq!(patches.attrs.patch_size, Some(256));
    assert_eq!(patches.attrs.patch_level, Some(0));
    assert_eq!(patches.attrs.level0_patch_size(), Some(256.0));
    assert!(out.join("masks/cmu_small_region.png").is_file());
    assert!(std::fs::read_to_string(out.join("process_list.csv"))
        .unwrap()
        .contains("cmu_small_region,processed,"));

    // Features of the fixture's four patches, read from the slide by our reader.
    let fixdir = out.join("fixture_patches");
    let fixture_coords = vec![[1024, 256], [1024, 512], [1280, 512], [1024, 768]];
    let mut attrs = patches.attrs.clone();
    attrs.name = Some("cmu_small_region".into());
    gimp_io::h5::write_patches(
        &fixdir.join("cmu_small_region.h5"),
        &gimp_io::h5::PatchFile {
            coords: fixture_coords.clone(),
            attrs,
        },
    )
    .unwrap();
    let fout = out.join("fixture_features");
    let o = gimp(&[
        "extract",
        &s(&slide),
        "--patches",
        &s(&fixdir),
        "--weights",
        &s(&weights),
        "--out",
        &s(&fout),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Deterministic, whatever the batch size: a forced re-run in batches of 3 writes the same bytes.
    let ffile = fout.join("h5_files/cmu_small_region.h5");
    let first = std::fs::read(&ffile).unwrap();
    let args = [
        "extract",
        &s(&slide),
        "--patches",
        &s(&fixdir),
        "--weights",
        &s(&weights),
        "--out",
        &s(&fout),
        "--overwrite",
        "--batch",
        "3",
    ];
    let o = gimp(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&ffile).unwrap(),
        first,
        "extraction is not deterministic"
    );
    let bag =
        gimp_io::h5::read_features(&fout.join("h5_files/cmu_small_region.h5"), 1 << 30).unwrap();
    assert_eq!((bag.n, bag.d), (4, 128));
    assert_eq!(bag.coords.as_deref(), Some(&fixture_coords[..]));
    let bytes = std::fs::read(&weights).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let expected: Vec<f32> = st
        .tensor("features")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = bag
        .features
        .iter()
        .zip(&expected)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!(
        "features from our pixels vs torchvision on OpenSlide's: rel err {:.2e}",
        err / scale
    );
    // The same pixels (libjpeg-turbo's decoder), so only float arithmetic differs.
    assert!(err / scale < 1e-5, "relative error {}", err / scale);

    // All tissue patches, with .pt; a second run skips the finished slide.
    let o = gimp(&[
        "extract",
        &s(&slide),
        "--patches",
        &s(&out.join("patches")),
        "--weights",
        &s(&weights),
        "--out",
        &s(out),
        "--pt",
        "--batch",
        "16",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("patches/s"));
    let feats = out.join("h5_files/cmu_small_region.h5");
    let bag = gimp_io::h5::read_features(&feats, 1 << 30).unwrap();
    assert_eq!(bag.n, patches.coords.len());
    assert_eq!(bag.coords.as_deref(), Some(&patches.coords[..]));
    let pt = gimp_io::pt::read_tensor(&out.join("pt_files/cmu_small_region.pt"), 1 << 30).unwrap();
    assert_eq!(pt.shape, vec![bag.n, 128]);
    let o = gimp(&[
        "extract",
        &s(&slide),
        "--patches",
        &s(&out.join("patches")),
        "--weights",
        &s(&weights),
        "--out",
        &s(out),
        "--pt",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("done already"), "{}", stderr(&o));

    // Heatmap of CLAM-SB (reference weights) on these features, aligned with coords.
    let clam = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gimp-models/tests/fixtures/clam_sb_weights.safetensors");
    let hout = out.join("heatmaps");
    let o = gimp(&[
        "heatmap",
        "--arch",
        "clam_sb",
        "--weights",
        &s(&clam),
        "--features",
        &s(&feats),
        "--patches",
        &s(&pfile),
        "--slide",
        &s(&slide),
        "--out",
        &s(&hout),
        "--downsample",
        "8",
        "--qupath",
        "--top",
        "3",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The patches for QuPath: one detection each, the 3 highest scores as "Top patch".
    let qp = std::fs::read_to_string(hout.join("cmu_small_region.qupath.geojson")).unwrap();
    let qp: serde_json::Value = serde_json::from_str(&qp).unwrap();
    let objects = qp["features"].as_array().unwrap();
    assert_eq!(objects.len(), bag.n);
    let top = objects
        .iter()
        .filter(|o| o["properties"]["classification"]["name"] == "Top patch")
        .count();
    assert_eq!(top, 3);
    let csv = std::fs::read_to_string(hout.join("cmu_small_region.scores.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), bag.n);
    for (r, c) in rows.iter().zip(&patches.coords) {
        let f: Vec<&str> = r.split(',').collect();
        assert_eq!(
            (f[1].parse::<i64>().unwrap(), f[2].parse::<i64>().unwrap()),
            (c[0], c[1])
        );
    }
    let png = std::fs::read(hout.join("cmu_small_region.heatmap.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    assert!(hout.join("cmu_small_region.scores.h5").is_file());
}

/// An experiment split across two machines (two processes at once here, one by `--shard`, one
/// by Slurm's array variables): each runs its share of the runs, together they run every run
/// once, and the tables any machine then writes hold all of them.
#[test]
fn an_experiment_sharded_over_two_processes_runs_every_run_once() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("c");
    assert!(synth_small(&c, "5").status.success());
    let toml = c.join("cohort.toml");
    let out = d.path().join("exp");
    let args = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gimp-rs"));
        cmd.args(["experiment", "table1", toml.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .args(["--rows", "abmil,snn", "--seeds", "2", "--epochs", "1"])
            .args(extra)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SLURM_ARRAY_TASK_COUNT");
        cmd
    };
    let mut first = args(&["--shard", "0/2"]).spawn().unwrap();
    let second = args(&[])
        .env("SLURM_ARRAY_TASK_ID", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(first.wait().unwrap().success());
    // Four runs (two rows × two seeds), each finished exactly once by one of the shards.
    let mut finished = Vec::new();
    for row in ["abmil", "snn"] {
        for seed in 0..2 {
            let dir = out.join(row).join("fold0").join(format!("seed{seed}"));
            assert!(dir.join("metrics.json").is_file(), "{}", dir.display());
            finished.push(dir);
        }
    }
    assert_eq!(finished.len(), 4);
    let o = args(&["--summarise"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let table = std::fs::read_to_string(out.join("table1.md")).unwrap();
    assert!(
        table.contains("| ABMIL | 2 |") && table.contains("| SNN | 2 |"),
        "{table}"
    );
    let bad = args(&["--shard", "2/2"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("'2/2'"), "{}", stderr(&bad));
}

/// `predict` says which modalities it used, and warns when a model fine-tuned on both answers
/// without one; a model fine-tuned for it (`modality_subsets`, or the image-only part) does not.
/// `calibrate` then stores a temperature that `evaluate` reports and writes its diagram with.
#[test]
fn predict_names_its_modalities_and_warns_about_a_missing_one() {
    let d = tempfile::tempdir().unwrap();
    let c = d.path().join("c");
    assert!(synth_small(&c, "9").status.success());
    let toml = c.join("cohort.toml");
    let slide = std::fs::read_dir(c.join("features/h5_files"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    for (name, modalities, subsets, warns) in [
        ("both", "both", false, true),
        ("subsets", "both", true, false),
        ("image", "image", false, false),
    ] {
        let run_file = d.path().join(format!("{name}.toml"));
        std::fs::write(
            &run_file,
            format!("preset = \"demo\"\n[model]\ndim = 16\nheads = 2\nlandmarks = 8\nfragment = 10\ngroups = 4\n[genes]\nepochs = 1\n[pretrain]\nepochs = 0\n[finetune]\nepochs = 1\nmodalities = \"{modalities}\"\nmodality_subsets = {subsets}\n"),
        )
        .unwrap();
        let out = d.path().join(name);
        let o = gimp(&[
            "finetune",
            toml.to_str().unwrap(),
            "--config",
            run_file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let ckpt = out.join("finetune/model.safetensors");
        let o = gimp(&[
            "predict",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--features",
            slide.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(v["modalities"], serde_json::json!(["slides"]));
        assert_eq!(v.get("warning").is_some(), warns, "{name}: {v}");
        assert_eq!(
            stderr(&o).contains("warning: gimp was fine-tuned"),
            warns,
            "{name}"
        );
    }
    let ckpt = d.path().join("subsets/finetune/model.safetensors");
    let calibrated = d.path().join("calibrated.safetensors");
    let o = gimp(&[
        "calibrate",
        toml.to_str().unwrap(),
        "--checkpoint",
        ckpt.to_str().unwrap(),
        "--out",
        calibrated.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fit: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let t = fit["temperature"].as_f64().unwrap();
    assert!(
        fit["nll_after"].as_f64() <= fit["nll_before"].as_f64(),
        "{fit}"
    );
    let stem = d.path().join("rel");
    let o = gimp(&[
        "evaluate",
        toml.to_str().unwrap(),
        "--checkpoint",
        calibrated.to_str().unwrap(),
        "--reliability",
        stem.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!((e["temperature"].as_f64().unwrap() - t).abs() < 1e-9, "{e}");
    assert!(e["overall"]["ece"].as_f64().is_some(), "{e}");
    assert!(stem.with_extension("png").is_file() && stem.with_extension("svg").is_file());
}

/// A survival cohort in MCAT's layout (expression only): `split` balances events over the folds'
/// test parts, `cohort check` reports events and follow-up per part, and a bad value stops it
/// with its line.
#[test]
fn survival_cohort_splits_on_events_and_reports_follow_up() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let mut labels = String::from("case_id,slide_id,label,survival_months,censorship\n");
    let mut expr = String::from("case_id,G1,G2\n");
    for i in 0..40 {
        // Events on every third patient and on the long-lived half's even ones: 0/1 mixed.
        let censored = if i % 3 == 0 || (i >= 20 && i % 2 == 0) {
            0
        } else {
            1
        };
        let class = if i % 2 == 0 { "A" } else { "B" };
        let time = 2.0 + (i * 7 % 40) as f64 * 1.5;
        labels.push_str(&format!("p{i},,{class},{time},{censored}.0\n"));
        expr.push_str(&format!("p{i},{},{}\n", i as f64 * 0.1, (i % 5) as f64));
    }
    std::fs::write(dir.join("dataset.csv"), &labels).unwrap();
    std::fs::write(dir.join("expr.csv"), &expr).unwrap();
    let toml = dir.join("cohort.toml");
    std::fs::write(
        &toml,
        "[labels]\ncsv = \"dataset.csv\"\n[expression]\nmatrix = \"expr.csv\"\n\
         orientation = \"samples_by_genes\"\n[survival]\n",
    )
    .unwrap();
    let out = dir.join("folds");
    let o = gimp(&[
        "split",
        toml.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--scheme",
        "kfold",
        "--k",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let with_splits = dir.join("with-splits.toml");
    std::fs::write(
        &with_splits,
        "[labels]\ncsv = \"dataset.csv\"\n[expression]\nmatrix = \"expr.csv\"\n\
         orientation = \"samples_by_genes\"\n[survival]\n[splits]\ndir = \"folds\"\n",
    )
    .unwrap();
    let o = gimp(&["cohort", "check", with_splits.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let events = v["survival"]["all"]["events"].as_u64().unwrap();
    assert_eq!(events, labels.matches(",0.0\n").count() as u64);
    let folds = v["survival"]["splits"].as_array().unwrap();
    assert_eq!(folds.len(), 4);
    // Stratified dealing: each test part holds a quarter of the events, give or take the strata.
    for parts in folds {
        let test_events = parts[2]["events"].as_u64().unwrap();
        assert!(
            (test_events as f64 - events as f64 / 4.0).abs() <= 2.0,
            "{parts}"
        );
    }
    let o = gimp(&["cohort", "check", with_splits.to_str().unwrap()]);
    assert!(stdout(&o).contains("survival test "), "{}", stdout(&o));
    std::fs::write(dir.join("dataset.csv"), labels.replace("p7,,B,", "p7,,B,-")).unwrap();
    let o = gimp(&["cohort", "check", with_splits.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line 9") && stderr(&o).contains("survival_months"),
        "{}",
        stderr(&o)
    );
}

/// `survival metrics` on the scikit-survival fixture's tied cohort (written as CSV files) gives
/// the library's values, which equal scikit-survival's, and draws the Kaplan–Meier figure.
#[test]
fn survival_metrics_from_a_csv_equal_scikit_survival() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../gimp-metrics/tests/fixtures/survival.json"),
    )
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let case = &v["cases"][0];
    let column = |k: &str| case[k].as_array().unwrap().clone();
    let d = tempfile::tempdir().unwrap();
    let write = |name: &str,
                 time: &[serde_json::Value],
                 event: &[serde_json::Value],
                 risk: Option<&[serde_json::Value]>| {
        let mut s = String::from(if risk.is_some() {
            "time,event,risk\n"
        } else {
            "time,event\n"
        });
        for i in 0..time.len() {
            let e = if event[i].as_bool().unwrap() { 1 } else { 0 };
            match risk {
                Some(r) => s.push_str(&format!("{},{e},{}\n", time[i], r[i])),
                None => s.push_str(&format!("{},{e}\n", time[i])),
            }
        }
        let p = d.path().join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    let test = write(
        "test.csv",
        &column("time"),
        &column("event"),
        Some(&column("risk")),
    );
    let train = write(
        "train.csv",
        &column("train_time"),
        &column("train_event"),
        None,
    );
    let times: Vec<String> = column("times").iter().map(|t| t.to_string()).collect();
    let stem = d.path().join("km");
    let o = gimp(&[
        "survival",
        "metrics",
        test.to_str().unwrap(),
        "--train",
        train.to_str().unwrap(),
        "--times",
        &times.join(","),
        "--plot",
        stem.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let close = |a: &serde_json::Value, b: &serde_json::Value| {
        (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-9
    };
    assert!(
        close(&r["harrell"]["cindex"], &case["harrell"]["cindex"]),
        "{r}"
    );
    assert_eq!(r["harrell"]["tied_time"], case["harrell"]["tied_time"]);
    assert!(close(&r["uno"]["Ok"], &case["uno"]), "{r}");
    assert!(
        close(&r["dynamic_auc"]["Ok"]["mean"], &case["mean_auc"]),
        "{r}"
    );
    assert!(
        close(
            &r["logrank_halves"]["statistic"],
            &case["logrank_two"]["statistic"]
        ),
        "{r}"
    );
    assert!(stem.with_extension("png").is_file() && stem.with_extension("svg").is_file());
    // A bad row names its line.
    std::fs::write(&test, "time,event,risk\n1,1,0.5\n2,yes,0.1\n").unwrap();
    let o = gimp(&["survival", "metrics", test.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line 3") && stderr(&o).contains("'event'"),
        "{}",
        stderr(&o)
    );
}

/// A checkpoint records the width and encoder of its training features; every command that runs
/// it on features checks them first and names the file, what it holds and what was expected.
#[test]
fn commands_refuse_features_of_another_width_or_encoder_before_running() {
    let d = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let c16 = d.path().join("c16");
    assert!(synth_small(&c16, "3").status.success());
    let c24 = d.path().join("c24");
    let o = gimp(&[
        "synth",
        "--out",
        &s(&c24),
        "--seed",
        "4",
        "--patients",
        "30",
        "--patches",
        "20,40",
        "--dim",
        "24",
        "--genes",
        "200",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let run = d.path().join("run");
    let o = gimp(&[
        "train",
        &s(&c16.join("cohort.toml")),
        "--arch",
        "clam_sb",
        "--epochs",
        "1",
        "--out",
        &s(&run),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpt = run.join("model.safetensors");
    let o = gimp(&["model", "info", &s(&ckpt)]);
    assert!(
        stdout(&o).contains(r#"features      {"width":16,"encoder":null}"#),
        "{}",
        stdout(&o)
    );
    let wide = std::fs::read_dir(c24.join("features/h5_files"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let hout = d.path().join("maps");
    for args in [
        vec![
            "model",
            "run",
            "--checkpoint",
            &s(&ckpt),
            "--features",
            &s(&wide),
        ],
        vec![
            "predict",
            "--checkpoint",
            &s(&ckpt),
            "--features",
            &s(&wide),
        ],
        vec![
            "heatmap",
            "--checkpoint",
            &s(&ckpt),
            "--features",
            &s(&wide),
            "--patch-size-level0",
            "256",
            "--out",
            &s(&hout),
        ],
    ] {
        let o = gimp(&args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
        for part in [
            wide.to_str().unwrap(),
            "24-wide",
            "16-wide",
            "model.safetensors",
        ] {
            assert!(e.contains(part), "{args:?}: {e} lacks {part}");
        }
        assert!(!e.contains("backtrace") && !e.contains("linear:"), "{e}");
    }
    let tsv = d.path().join("e.tsv");
    for cmd in [vec!["evaluate"], vec!["embed", "--out", &s(&tsv)]] {
        let c = c24.join("cohort.toml");
        let o = gimp(&[&cmd[..], &["--checkpoint", &s(&ckpt), &s(&c)]].concat());
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{cmd:?}: {e}");
        assert!(
            e.contains("24-wide") && e.contains("16-wide") && e.contains(".h5"),
            "{cmd:?}: {e}"
        );
    }
    // The slide pipeline checks the encoder against the checkpoint before reading any slide.
    let o = gimp(&[
        "predict",
        "--checkpoint",
        &s(&ckpt),
        "--slide",
        &s(&repo().join("data/slides/cmu_small_region.svs")),
        "--encoder-weights",
        &s(&repo()
            .join("crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors")),
        "--out",
        &s(&d.path().join("p")),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("resnet50_trunc") && e.contains("16-wide"), "{e}");
    assert!(
        !d.path().join("p").exists(),
        "nothing written before the check"
    );
}

/// `predict --slide`: segmentation, patches, features, the model, scores aligned with the
/// coordinates, the heatmap and the record `view` reads, with each stage's time; a rerun reuses
/// the patches and features.
#[test]
fn predict_takes_a_raw_slide_to_probabilities_scores_and_a_heatmap() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("pred");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let args = [
        "predict".to_string(),
        "--arch".into(),
        "clam_sb".into(),
        "--weights".into(),
        s(&repo().join("crates/gimp-models/tests/fixtures/clam_sb_weights.safetensors")),
        "--slide".into(),
        s(&repo().join("data/slides")),
        "--encoder-weights".into(),
        s(&repo()
            .join("crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors")),
        "--preset".into(),
        "bwh_biopsy".into(),
        "--out".into(),
        s(&out),
        "--top".into(),
        "5".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = gimp(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let records: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let r = &records[0];
    assert_eq!(r["slide_id"], "cmu_small_region");
    // 46 on OpenSlide's pixels (52 when JPEG tiles were decoded within 1 of them: the 64× overview
    // of this small region has regions at bwh_biopsy's thresholds).
    assert_eq!(r["n_patches"], 46);
    assert_eq!(r["top_patches"].as_array().unwrap().len(), 5);
    let p: Vec<f64> = serde_json::from_value(r["probabilities"].clone()).unwrap();
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5);
    let stages: Vec<&str> = r["times"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(stages.len(), 4, "{stages:?}");
    assert!(
        stderr(&o).contains("segmentation + patching"),
        "{}",
        stderr(&o)
    );
    for f in [
        "cmu_small_region.prediction.json",
        "cmu_small_region.scores.csv",
        "cmu_small_region.scores.h5",
        "cmu_small_region.heatmap.png",
        "patches/cmu_small_region.h5",
        "h5_files/cmu_small_region.h5",
        "masks/cmu_small_region.tissue.png",
        "cmu_small_region.qupath.geojson",
        "contours_geojson/cmu_small_region.geojson",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // For QuPath: tissue, 46 scored detections (the 5 top ones a class of their own) carrying the
    // prediction; `export qupath` makes the same file from the record.
    let qp = out.join("cmu_small_region.qupath.geojson");
    let fc: serde_json::Value = serde_json::from_slice(&std::fs::read(&qp).unwrap()).unwrap();
    let objects = fc["features"].as_array().unwrap();
    let class = |o: &serde_json::Value| o["properties"]["classification"]["name"].clone();
    let detections: Vec<_> = objects
        .iter()
        .filter(|o| o["properties"]["objectType"] == "detection")
        .collect();
    assert_eq!(detections.len(), 46);
    assert_eq!(
        detections
            .iter()
            .filter(|o| class(o) == "Top patch")
            .count(),
        5
    );
    let m = &detections[0]["properties"]["measurements"];
    assert_eq!(m["predicted class"], r["predicted"]);
    let name = format!("P({})", r["predicted_class"].as_str().unwrap());
    assert!(m[&name].is_number(), "{m}");
    assert!(objects.iter().any(|o| class(o) == "Tissue"));
    let again = d.path().join("again.geojson");
    let o = gimp(&[
        "export",
        "qupath",
        "--prediction",
        &s(&out.join("cmu_small_region.prediction.json")),
        "--top",
        "5",
        "--out",
        &s(&again),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&qp).unwrap());
    // Scores: one row per patch, in the feature file's order, the top patch first in the record.
    let csv = std::fs::read_to_string(out.join("cmu_small_region.scores.csv")).unwrap();
    assert_eq!(csv.lines().count(), 47);
    let top = &r["top_patches"][0];
    let line = csv
        .lines()
        .nth(top["row"].as_u64().unwrap() as usize + 1)
        .unwrap();
    assert!(
        line.starts_with(&format!("{},{},{},", top["row"], top["x"], top["y"])),
        "{line}"
    );
    assert!(
        line.ends_with(",1"),
        "the top patch is the 100th percentile: {line}"
    );
    // The same answer from `model run` on the features it wrote.
    let o = gimp(&[
        "model",
        "run",
        "--arch",
        "clam_sb",
        "--weights",
        args[4],
        "--features",
        &s(&out.join("h5_files/cmu_small_region.h5")),
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["probabilities"], r["probabilities"]);
    // A rerun reuses patches and features.
    let before = std::fs::metadata(out.join("h5_files/cmu_small_region.h5"))
        .unwrap()
        .modified()
        .unwrap();
    let o = gimp(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let after = std::fs::metadata(out.join("h5_files/cmu_small_region.h5"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);
}

#[test]
fn extract_runs_a_vit_encoder_from_a_weights_file_in_tridents_layout() {
    let slide = repo().join("data/slides/cmu_small_region.svs");
    let d = tempfile::tempdir().unwrap();
    let out = d.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // --list names every encoder with its width and input size.
    let o = gimp(&["extract", "--list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in gimp_extract::encoders::names() {
        assert!(stdout(&o).contains(name), "{}", stdout(&o));
    }
    let virchow = stdout(&o)
        .lines()
        .find(|l| l.starts_with("virchow2 "))
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    assert_eq!(
        virchow.as_deref(),
        Some("virchow2 2560 224"),
        "{}",
        stdout(&o)
    );
    // UNI's narrow test network, without the fixture's test tensors: a weights file as a user has.
    let fixture = repo().join("crates/gimp-extract/tests/fixtures/vit_uni_v1.safetensors");
    let weights: std::collections::HashMap<String, candle_core::Tensor> =
        gimp_io::weights::read(&fixture)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("test."))
            .collect();
    let wfile = out.join("uni.safetensors");
    candle_core::safetensors::save(&weights, &wfile).unwrap();
    let pdir = out.join("patches");
    gimp_io::h5::write_patches(
        &pdir.join("cmu_small_region.h5"),
        &gimp_io::h5::PatchFile {
            coords: vec![[1024, 256], [1024, 512], [1280, 512]],
            attrs: gimp_io::h5::PatchAttrs {
                patch_size: Some(256),
                patch_level: Some(0),
                ..Default::default()
            },
        },
    )
    .unwrap();
    let args = |enc: &str| {
        vec![
            "extract".to_string(),
            s(&slide),
            "--patches".into(),
            s(&pdir),
            "--encoder".into(),
            enc.into(),
            "--weights".into(),
            s(&wfile),
            "--out".into(),
            s(out),
        ]
    };
    let run = |enc: &str| {
        let a = args(enc);
        gimp(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let o = run("uni_v1");
    assert!(o.status.success(), "{}", stderr(&o));
    let ffile = out.join("features_uni_v1/cmu_small_region.h5");
    let bag = gimp_io::h5::read_features(&ffile, 1 << 30).unwrap();
    // UNI's output is its embedding width (the fixture's, not the published 1024).
    assert_eq!((bag.n, bag.d), (3, weights["norm.bias"].dims()[0]));
    assert!(bag.features.iter().all(|v| v.is_finite()));
    let prov = gimp_io::h5::read_provenance(&ffile).unwrap().unwrap();
    assert_eq!(prov.encoder, "uni_v1");
    assert_eq!(
        prov.weights_sha256,
        gimp_io::weights::sha256_hex(&wfile).unwrap()
    );
    // Done already: the file records this encoder and these weights.
    let o = run("uni_v1");
    assert!(stderr(&o).contains("done already"), "{}", stderr(&o));
    // The wrong encoder for the file: the error lists what is missing and names the right one.
    let o = run("virchow2");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("missing [reg_token]"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--encoder uni_v1"), "{}", stderr(&o));
}

/// `baseline cox` on a small synthetic cohort (which has survival times by default): k folds
/// whose test parts cover every patient once, a c-index per fold that `survival metrics`
/// reproduces from the written scores, and clear errors without outcomes or a validation part.
#[test]
fn cox_baseline_on_the_synthetic_survival_cohort() {
    let d = tempfile::tempdir().unwrap();
    let a = d.path().join("c");
    assert!(synth_small(&a, "4").status.success());
    let toml = a.join("cohort.toml");
    let scores = d.path().join("scores");
    let o = gimp(&[
        "baseline",
        "cox",
        toml.to_str().unwrap(),
        "--kfold",
        "3",
        "--penalty",
        "1,100",
        // Half of each stratum's training patients: the 30 patients' strata are small.
        "--val",
        "0.5",
        "--scores",
        scores.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let folds = v["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 3);
    let tested: u64 = folds
        .iter()
        .map(|f| f["test_patients"].as_u64().unwrap())
        .sum();
    assert_eq!(tested, 30, "the test parts cover the cohort once");
    for f in folds {
        // The penalty is chosen by inner cross-validation over train + validation (§41), and
        // the model refitted on them: 20 of the 30 patients, never the test part.
        assert_eq!(f["chosen_by"], "inner_cv");
        assert_eq!(f["inner_cindex"].as_array().unwrap().len(), 2);
        assert!(f["val_cindex"].as_array().unwrap().is_empty());
        assert_eq!(
            f["train"].as_u64().unwrap() + f["test_patients"].as_u64().unwrap(),
            30
        );
        assert!(f["converged"].as_bool().unwrap(), "{f}");
    }
    // The choice on the validation part, as before: one fit per penalty on the training part.
    let o = gimp(&[
        "baseline",
        "cox",
        toml.to_str().unwrap(),
        "--kfold",
        "3",
        "--penalty",
        "1,100",
        "--val",
        "0.5",
        "--choose",
        "validation",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for f in v["folds"].as_array().unwrap() {
        assert_eq!(f["chosen_by"], "validation");
        assert_eq!(f["val_cindex"].as_array().unwrap().len(), 2);
        assert!(f["train"].as_u64().unwrap() + f["test_patients"].as_u64().unwrap() < 30);
    }
    let first = folds[0]["test"]["cindex"].as_f64().unwrap();
    let o = gimp(&[
        "survival",
        "metrics",
        scores.join("split0_test.csv").to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!((m["harrell"]["cindex"].as_f64().unwrap() - first).abs() < 1e-12);
    let o = gimp(&[
        "baseline",
        "cox",
        toml.to_str().unwrap(),
        "--kfold",
        "3",
        "--penalty",
        "10",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("test c-index over 3 splits"),
        "{}",
        stdout(&o)
    );
    // Several penalties and no validation part: inner cross-validation of the training part
    // chooses (the default), the validation rule cannot.
    let no_val = |choose: &str| {
        gimp(&[
            "baseline",
            "cox",
            toml.to_str().unwrap(),
            "--kfold",
            "3",
            "--val",
            "0",
            "--choose",
            choose,
        ])
    };
    let o = no_val("cv");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = no_val("validation");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("validation part"), "{}", stderr(&o));
    // A cohort without outcomes.
    let plain = d.path().join("plain");
    let o = gimp(&[
        "synth",
        "--out",
        plain.to_str().unwrap(),
        "--patients",
        "20",
        "--patches",
        "5,10",
        "--dim",
        "4",
        "--genes",
        "100",
        "--no-survival",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = gimp(&[
        "baseline",
        "cox",
        plain.join("cohort.toml").to_str().unwrap(),
        "--penalty",
        "1",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("[survival]"), "{}", stderr(&o));
}

/// A synthetic cohort with survival columns (the first row's class dies early, the other late,
/// every fourth patient censored) and a `[survival]` section.
fn survival_cohort(dir: &Path) -> PathBuf {
    let o = gimp(&[
        "synth",
        "--out",
        dir.to_str().unwrap(),
        "--seed",
        "6",
        "--patients",
        "30",
        "--patches",
        "10,30",
        "--dim",
        "16",
        "--genes",
        "60",
        // Outcomes with a clear class signal are written below in place of the generator's.
        "--no-survival",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(dir.join("dataset.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap().to_string();
    let cols: Vec<&str> = header.split(',').collect();
    let (case, label) = (
        cols.iter().position(|c| *c == "case_id").unwrap(),
        cols.iter().position(|c| *c == "label").unwrap(),
    );
    let mut out = format!("{header},survival_months,censorship\n");
    let mut cases: Vec<String> = Vec::new();
    let mut first_label: Option<String> = None;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        let first = first_label.get_or_insert_with(|| f[label].to_string());
        if !cases.iter().any(|c| c == f[case]) {
            cases.push(f[case].to_string());
        }
        let k = cases.iter().position(|c| c == f[case]).unwrap();
        let early = f[label] == first.as_str();
        let t = if early { 4.0 } else { 24.0 } + (k % 7) as f64 * 1.3 + k as f64 * 0.01;
        out.push_str(&format!("{l},{t:.2},{}\n", usize::from(k % 4 == 3)));
    }
    std::fs::write(dir.join("dataset.csv"), out).unwrap();
    let toml = dir.join("cohort.toml");
    let mut text = std::fs::read_to_string(&toml).unwrap();
    text.push_str(
        "\n[survival]\ntime_column = \"survival_months\"\ncensorship_column = \"censorship\"\n",
    );
    std::fs::write(&toml, text).unwrap();
    toml
}

#[test]
fn a_survival_model_trains_evaluates_and_answers_with_a_risk() {
    let d = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let toml = survival_cohort(&d.path().join("c"));
    let run = d.path().join("run");
    let o = gimp(&[
        "train",
        &s(&toml),
        "--arch",
        "abmil",
        "--task",
        "survival",
        "--epochs",
        "1",
        "--out",
        &s(&run),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("Harrell's c-index"), "{}", stdout(&o));
    let ckpt = run.join("model.safetensors");
    let o = gimp(&["evaluate", &s(&toml), "--checkpoint", &s(&ckpt)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("Uno's c-index") && text.contains("integrated Brier"),
        "{text}"
    );
    for ext in ["png", "svg"] {
        assert!(run.join(format!("kaplan-meier-test.{ext}")).is_file());
    }
    let h5 = std::fs::read_dir(d.path().join("c/features/h5_files"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = gimp(&[
        "model",
        "run",
        "--checkpoint",
        &s(&ckpt),
        "--features",
        &s(&h5),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["risk"].is_f64(), "{v}");
    assert_eq!(v["survival"].as_array().unwrap().len(), 4);
    // A survival model has no class probabilities to calibrate.
    let o = gimp(&["calibrate", &s(&toml), "--checkpoint", &s(&ckpt)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("survival model"), "{}", stderr(&o));
    // Cox with one patient a step is refused by name before training.
    let o = gimp(&[
        "train",
        &s(&toml),
        "--arch",
        "abmil",
        "--loss",
        "cox",
        "--accumulate",
        "1",
        "--out",
        &s(&d.path().join("cox")),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("accumulate"), "{}", stderr(&o));
}

/// QuPath out and in, and the slide's scale, on the repository's slide: `patch` writes the tissue
/// outlines as QuPath annotations, `export qupath` adds the patches as detections with scores
/// (QuPath's layout, checked field by field), `--roi` keeps only patches inside a drawn polygon
/// with a hole and a MultiPolygon, `--exclude` keeps exactly the others, a region outside the
/// slide is an error naming the feature; `--mpp` drives the patch size, a doubtful mpp is warned
/// about, a slide without a scale is an error naming the flags.
#[test]
fn qupath_geojson_out_and_in_and_the_slides_scale() {
    let slide = repo().join("data/slides/cmu_small_region.svs");
    let d = tempfile::tempdir().unwrap();
    let out = d.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let patch = |dir: &str, extra: &[&str]| {
        let mut args = vec![
            "patch".to_string(),
            s(&slide),
            "--out".into(),
            s(&out.join(dir)),
        ];
        args.extend(["--preset", "bwh_biopsy"].iter().map(|a| a.to_string()));
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
        gimp(&args)
    };
    let coords = |dir: &str| {
        gimp_io::h5::read_patches(&out.join(dir).join("patches/cmu_small_region.h5"))
            .unwrap()
            .coords
    };
    let o = patch("all", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = coords("all");

    // Out: tissue annotations + patch detections with scores, in QuPath's layout.
    let contours = out.join("all/contours_geojson/cmu_small_region.geojson");
    let mut csv = String::from("row,x,y,score,percentile\n");
    for (i, c) in all.iter().enumerate() {
        let score = i as f32 / all.len() as f32;
        csv += &format!("{i},{},{},{score},{score}\n", c[0], c[1]);
    }
    let scores = out.join("s.scores.csv");
    std::fs::write(&scores, csv).unwrap();
    let qp = out.join("cmu.geojson");
    let o = gimp(&[
        "export",
        "qupath",
        "--patches",
        &s(&out.join("all/patches/cmu_small_region.h5")),
        "--contours",
        &s(&contours),
        "--scores",
        &s(&scores),
        "--top",
        "5",
        "--out",
        &s(&qp),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let fc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&qp).unwrap()).unwrap();
    assert_eq!(fc["type"], "FeatureCollection");
    let (mut tissue, mut patches, mut top) = (0, 0, 0);
    for f in fc["features"].as_array().unwrap() {
        assert_eq!(f["type"], "Feature");
        assert_eq!(f["geometry"]["type"], "Polygon");
        for ring in f["geometry"]["coordinates"].as_array().unwrap() {
            let r = ring.as_array().unwrap();
            assert!(r.len() >= 4 && r[0] == r[r.len() - 1], "ring not closed");
            // Level-0 pixels: tissue inside the slide; a patch square may hang over its edge
            // (read as black, as OpenSlide does), by less than a patch.
            let slack = if f["properties"]["objectType"] == "detection" {
                256.0
            } else {
                0.0
            };
            for p in r {
                let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
                assert!(
                    (0.0..=2220.0 + slack).contains(&x) && (0.0..=2967.0 + slack).contains(&y),
                    "{x}, {y}"
                );
            }
        }
        let p = &f["properties"];
        let class = p["classification"]["name"].as_str().unwrap();
        assert_eq!(p["classification"]["color"].as_array().unwrap().len(), 3);
        match (p["objectType"].as_str().unwrap(), class) {
            ("annotation", "Tissue") => tissue += 1,
            ("detection", c) => {
                assert!(
                    p["measurements"]["score"].is_number()
                        && p["measurements"]["percentile"].is_number()
                );
                patches += 1;
                top += (c == "Top patch") as usize;
            }
            other => panic!("unexpected object {other:?}"),
        }
    }
    assert!(tissue >= 1);
    assert_eq!((patches, top), (all.len(), 5));

    // In: a rectangle with a hole plus a MultiPolygon of two squares, around the patches' middle.
    let (xs, ys): (Vec<i64>, Vec<i64>) = all.iter().map(|c| (c[0] + 128, c[1] + 128)).unzip();
    let (x0, x1) = (*xs.iter().min().unwrap(), *xs.iter().max().unwrap());
    let (y0, y1) = (*ys.iter().min().unwrap(), *ys.iter().max().unwrap());
    let (mx, my) = ((x0 + x1) / 2, (y0 + y1) / 2);
    let rect = |a: i64, b: i64, c: i64, d: i64| {
        format!("[[{a},{b}],[{c},{b}],[{c},{d}],[{a},{d}],[{a},{b}]]")
    };
    let roi_text = format!(
        r#"{{"type":"FeatureCollection","features":[
          {{"type":"Feature","geometry":{{"type":"Polygon","coordinates":[{},{}]}},"properties":{{"objectType":"annotation"}}}},
          {{"type":"Feature","geometry":{{"type":"MultiPolygon","coordinates":[[{}],[{}]]}},"properties":{{}}}}]}}"#,
        rect(x0 - 1, y0 - 1, mx, my),
        rect(x0 + 200, y0 + 200, x0 + 500, y0 + 500),
        rect(mx + 1, my + 1, mx + 400, my + 400),
        rect(mx + 500, y0, x1 + 1, y0 + 300),
    );
    let inside = |x: i64, y: i64| {
        let r = |a: i64, b: i64, c: i64, d: i64| x > a && x < c && y > b && y < d;
        // A point on the hole's edge is on the polygon's boundary: not inside.
        let hole = x >= x0 + 200 && x <= x0 + 500 && y >= y0 + 200 && y <= y0 + 500;
        (r(x0 - 1, y0 - 1, mx, my) && !hole)
            || r(mx + 1, my + 1, mx + 400, my + 400)
            || r(mx + 500, y0, x1 + 1, y0 + 300)
    };
    let roi = out.join("roi.geojson");
    std::fs::write(&roi, roi_text).unwrap();
    let o = patch("roi", &["--roi", &s(&roi)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = patch("ex", &["--exclude", &s(&roi)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (kept, left) = (coords("roi"), coords("ex"));
    let want: Vec<[i64; 2]> = all
        .iter()
        .copied()
        .filter(|c| inside(c[0] + 128, c[1] + 128))
        .collect();
    assert!(!want.is_empty() && want.len() < all.len());
    assert_eq!(kept, want);
    assert_eq!(kept.len() + left.len(), all.len());
    assert!(left.iter().all(|c| !inside(c[0] + 128, c[1] + 128)));

    // A region outside the slide: the slide fails, the error names the file and the feature.
    let bad = out.join("bad.geojson");
    std::fs::write(&bad, format!(
        r#"[{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":[{}]}},"properties":{{}}}},
            {{"type":"Feature","id":"far","geometry":{{"type":"Polygon","coordinates":[{}]}},"properties":{{"name":"Tumor"}}}}]"#,
        rect(0, 0, 100, 100), rect(5000, 0, 6000, 100))).unwrap();
    let o = patch("bad", &["--roi", &s(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.contains("bad.geojson: feature 1 (id \"far\", \"Tumor\"): spans x 5000…6000"),
        "{e}"
    );
    assert!(!out.join("bad/patches/cmu_small_region.h5").exists());
    // Regions that hold no patch centre: an error, not an empty patch file.
    std::fs::write(
        &bad,
        format!(
            r#"{{"type":"Polygon","coordinates":[{}]}}"#,
            rect(1, 1, 3, 3)
        ),
    )
    .unwrap();
    let o = patch("none", &["--roi", &s(&bad)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&format!(
            "none of the {} tissue patches has its centre inside --roi",
            all.len()
        )),
        "{}",
        stderr(&o)
    );

    // Scale: --mpp 0.25 makes level 0 a 40× scan (patches of 512 px at level 0 for 20×).
    let o = patch("mpp", &["--mpp", "0.25"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = gimp_io::h5::read_patches(&out.join("mpp/patches/cmu_small_region.h5")).unwrap();
    assert_eq!(p.attrs.patch_size_level0, Some(512));
    let o = gimp(&["slide", "info", &s(&slide), "--json", "--mpp", "250"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("warning")
            && stderr(&o).contains("250 µm per pixel is far from every objective"),
        "{}",
        stderr(&o)
    );
    let info: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(
        (info["mpp"][0].as_f64(), info["mpp_source"].as_str()),
        (Some(250.0), Some("user"))
    );
    let bare = repo().join("crates/gimp-slide/tests/fixtures/stripped.tif");
    let o = gimp(&["patch", &s(&bare), "--out", &s(&out.join("bare"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("stripped.tif")
            && stderr(&o).contains("--level0-magnification (e.g. 40) or --mpp"),
        "{}",
        stderr(&o)
    );
    let o = gimp(&[
        "patch",
        &s(&slide),
        "--out",
        &s(&out.join("neg")),
        "--mpp=-1",
    ]);
    assert!(
        stderr(&o).contains("--mpp must be a positive number"),
        "{}",
        stderr(&o)
    );
}

/// `view` stops cleanly on Ctrl-C: SIGINT to the running server ends it with exit code 0 and
/// `stopped` on stderr (not killed by the signal, not an error).
#[cfg(unix)]
#[test]
fn view_stops_with_exit_code_zero_on_ctrl_c() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gimp-rs"))
        .args(["view", "--port", "0"])
        .arg(repo().join("data/slides"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on http://"), "{line}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("stopped"), "{err}");
}

/// DICOM WSI series (gimp-slide's fixtures: wsidicomizer's conversion of a 384 × 288 crop of the
/// real slide, one series folder per transfer syntax) through every command that reads slides:
/// `slide info` on a folder and on one file, `patch` on the folder of series, `extract` and
/// `predict --slide` (as far as segmentation: the crop is too small for its presets) on one folder.
#[test]
fn dicom_series_go_through_info_patch_extract_and_predict() {
    let dicom = repo().join("crates/gimp-slide/tests/fixtures/dicom");
    let weights =
        repo().join("crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors");
    let d = tempfile::tempdir().unwrap();
    let out = d.path();
    let s = |p: &Path| p.to_str().unwrap().to_string();

    for slide in [dicom.join("jpeg2000"), dicom.join("jpeg/level2.dcm")] {
        let o = gimp(&["slide", "info", &s(&slide), "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let info: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        assert_eq!(info["vendor"], "dicom");
        assert_eq!(info["levels"].as_array().unwrap().len(), 3);
        assert_eq!(info["levels"][0]["width"], 384);
        assert!((info["mpp"][0].as_f64().unwrap() - 0.499).abs() < 1e-9);
    }
    let o = gimp(&["slide", "info", &s(&dicom.join("jpeg"))]);
    assert!(stdout(&o).contains("dicom"), "{}", stdout(&o));

    // Patching every series in the folder (small patches: the crop is 384 × 288).
    let o = gimp(&[
        "patch",
        &s(&dicom),
        "--out",
        &s(out),
        "--preset",
        "bwh_biopsy",
        "--a-t",
        "0.05",
        "--patch-size",
        "64",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let list = std::fs::read_to_string(out.join("process_list.csv")).unwrap();
    for id in ["jpeg", "jpeg2000", "uncompressed"] {
        assert!(list.contains(&format!("{id},processed,")), "{list}");
    }
    let patches = gimp_io::h5::read_patches(&out.join("patches/uncompressed.h5")).unwrap();
    assert!(!patches.coords.is_empty());

    let o = gimp(&[
        "extract",
        &s(&dicom.join("uncompressed")),
        "--patches",
        &s(&out.join("patches")),
        "--weights",
        &s(&weights),
        "--out",
        &s(out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (n, dim) = gimp_io::h5::feature_shape(&out.join("h5_files/uncompressed.h5")).unwrap();
    // The fixture's narrow ResNet (base width 8) gives 128 features.
    assert_eq!((n, dim), (patches.coords.len(), 128));

    let pred = out.join("pred");
    let o = gimp(&[
        "predict",
        "--arch",
        "clam_sb",
        "--weights",
        &s(&repo().join("crates/gimp-models/tests/fixtures/clam_sb_weights.safetensors")),
        "--slide",
        &s(&dicom.join("jpeg")),
        "--encoder-weights",
        &s(&weights),
        "--preset",
        "bwh_biopsy",
        "--patch-size",
        "64",
        "--out",
        &s(&pred),
    ]);
    // The crop's tissue (0.15 of CLAM's 512² reference patches) is below every preset's area
    // filter, and `predict` has no --a-t: the series was read, segmented and refused by name.
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("jpeg") && e.contains("no tissue patches"), "{e}");
    assert!(pred.join("masks/jpeg.png").is_file(), "{e}");
}
