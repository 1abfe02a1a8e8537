"""Training, evaluation, experiments and extraction from Python: progress, Ctrl-C, exceptions
from callbacks, panics at the boundary, and the metrics."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time

import h5py
import numpy as np
import pytest

import gimp_rs
from conftest import REPO


def test_gimp_training_result_and_run_folder(gimp_checkpoint):
    run = gimp_checkpoint.parent.parent
    for stage in ("genes", "pretrain", "finetune"):
        assert (run / stage / "model.safetensors").is_file()
        assert (run / stage / "metrics.json").is_file()
        assert (run / stage / "log.jsonl").is_file()
    assert (run / "config.toml").is_file() and (run / "run.json").is_file()


def test_a_compared_system_trains_and_evaluates(cohort_toml, tmp_path):
    reports = []
    r = gimp_rs.train(cohort_toml, tmp_path / "abmil", "abmil", epochs=2, progress=reports.append)
    assert r["arch"] == "abmil" and r["best_epoch"] in (0, 1)
    assert set(r["test"]) >= {"accuracy", "roc_auc", "balanced_accuracy", "macro_f1", "confusion"}
    assert reports and {p["stage"] for p in reports} == {"train"}
    last = reports[-1]
    assert last["epoch"] == 1 and last["epochs"] == 2 and last["step"] == last["steps"]
    assert isinstance(last["loss"], float)
    e = gimp_rs.evaluate(cohort_toml, r["checkpoint"])
    assert e["split"] == "test"
    assert e["overall"]["accuracy"] == r["test"]["accuracy"]


def test_text_progress_writes_one_line_per_epoch(cohort_toml, tmp_path):
    out = io.StringIO()
    # Without the linear start (docs/DESIGN.md §43) the refit trains at least one epoch.
    gimp_rs.train(cohort_toml, tmp_path / "snn", "snn", epochs=2, linear_start=False,
                  progress=gimp_rs.TextProgress(out))
    # SNN chooses its epoch count by 3 inner folds (docs/DESIGN.md §41): one line per epoch of
    # each inner fit ("select"), then of the refit ("train").
    lines = out.getvalue().split("\n")
    assert lines[-1] == "" and len(lines) == 3 * 2 + 2 + 1, lines
    last = [line.split("\r")[-1] for line in lines[:-1]]
    assert all(line.startswith("select epoch ") for line in last[:6]), last
    assert last[-1].startswith("train epoch 2/2 ["), last


def test_selection_and_linear_start_are_options(cohort_toml, tmp_path):
    # A linear start's weights are the checkpoint's and its choice of epochs is recorded.
    r = gimp_rs.train(cohort_toml, tmp_path / "ls", "snn", epochs=2, progress=False)
    chosen = json.loads((tmp_path / "ls" / "selection.json").read_text())
    assert 0 <= chosen["epochs"] <= 2 and r["best_epoch"] <= 1
    # Off: one training with the settings given, no selection record.
    gimp_rs.train(cohort_toml, tmp_path / "off", "snn", epochs=2, select=False,
                  linear_start=False, progress=False)
    assert not (tmp_path / "off" / "selection.json").exists()
    with pytest.raises(ValueError, match="linear_start: gimp's stages"):
        gimp_rs.train(cohort_toml, tmp_path, "gimp", linear_start=True, progress=False)


def test_bad_training_arguments(cohort_toml, tmp_path):
    with pytest.raises(ValueError, match="arch: .*no_such"):
        gimp_rs.train(cohort_toml, tmp_path, "no_such", progress=False)
    with pytest.raises(ValueError, match="epochs: gimp's stages are set by preset= and config="):
        gimp_rs.train(cohort_toml, tmp_path, "gimp", epochs=3, progress=False)
    with pytest.raises(ValueError, match="finetune.modalities"):
        gimp_rs.train(
            cohort_toml, tmp_path, config={"finetune": {"modalities": "smell"}}, progress=False
        )
    with pytest.raises(ValueError, match="preset"):
        gimp_rs.train(cohort_toml, tmp_path, preset="huge", progress=False)
    with pytest.raises(ValueError, match="progress"):
        gimp_rs.train(cohort_toml, tmp_path, "abmil", progress=3)
    with pytest.raises(gimp_rs.GimpError, match="no split 5"):
        gimp_rs.train(cohort_toml, tmp_path, "abmil", fold=5, progress=False)


def test_an_exception_in_the_progress_callback_stops_training(cohort_toml, tmp_path):
    calls = []

    def boom(p):
        calls.append(p)
        if len(calls) == 3:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        gimp_rs.train(cohort_toml, tmp_path, "abmil", epochs=50, progress=boom)
    assert len(calls) == 3


def test_ctrl_c_interrupts_training_within_a_second_and_it_resumes(cohort_toml, tmp_path):
    # Python keeps SIGINT ignored when it starts ignored (a job put in the background by a
    # non-interactive shell): set its handler, or the signal below would never arrive.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            gimp_rs.train(cohort_toml, tmp_path, "abmil", epochs=100_000, patience=0, progress=False)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert time.monotonic() - start < 2.0
    # The interrupted run left its resumable state, as a killed process would.
    assert (tmp_path / "state.safetensors").is_file()
    assert not (tmp_path / "model.safetensors").exists()
    done = len((tmp_path / "log.jsonl").read_text().splitlines())
    assert done >= 1
    r = gimp_rs.train(
        cohort_toml, tmp_path, "abmil", epochs=done + 1, patience=0, resume=True, progress=False
    )
    log = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == list(range(done + 1))
    assert r["checkpoint"].endswith("model.safetensors")


def test_a_rust_panic_is_an_internal_error_and_the_interpreter_goes_on():
    with pytest.raises(gimp_rs.InternalError, match="a bug; please report it.*kaboom"):
        gimp_rs._native._panic_for_tests("kaboom")
    assert issubclass(gimp_rs.InternalError, gimp_rs.GimpError)
    # Still working afterwards.
    assert gimp_rs.accuracy(np.array([1, 0]), np.array([1, 1]))["value"] == 0.5


def test_an_experiment_runs_its_rows(cohort_toml, tmp_path):
    r = gimp_rs.experiment(
        "table1", cohort_toml, tmp_path, rows=["majority", "logreg", "abmil"], epochs=1,
        progress=False,
    )
    assert r["ran"] == r["runs"] == 3
    assert "| " in r["markdown"] and (tmp_path / "table1.md").is_file()
    assert [row["row"] for row in r["rows"]] == ["majority", "logreg", "abmil"]
    again = gimp_rs.experiment(
        "table1", cohort_toml, tmp_path, rows=["majority", "logreg", "abmil"], epochs=1,
        progress=False,
    )
    assert again["ran"] == 0, "finished runs are skipped"
    with pytest.raises(ValueError, match="no row 'nope'"):
        gimp_rs.experiment("table1", cohort_toml, tmp_path, rows=["nope"], progress=False)


def test_extraction_from_the_real_slide(tmp_path):
    fixture = REPO / "crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors"
    slide = REPO / "data/slides/cmu_small_region.svs"
    coords = np.array([[1024, 256], [1024, 512], [1280, 512], [1024, 768]], np.int64)
    (tmp_path / "patches").mkdir()
    with h5py.File(tmp_path / "patches" / "cmu_small_region.h5", "w") as f:
        d = f.create_dataset("coords", data=coords)
        d.attrs["patch_level"] = 0
        d.attrs["patch_size"] = 256
    reports = []
    r = gimp_rs.extract(
        [slide], tmp_path / "patches", fixture, tmp_path / "out", batch=2, progress=reports.append
    )
    assert r == {"done": ["cmu_small_region"], "skipped": [], "failed": {}}
    assert [p["step"] for p in reports] == [2, 4] and reports[0]["stage"] == "extract"
    features, got_coords = gimp_rs.read_features(tmp_path / "out/h5_files/cmu_small_region.h5")
    np.testing.assert_array_equal(got_coords, coords)
    torchvision, _ = gimp_rs.read_features(fixture)
    # Our pixels are within one grey level of OpenSlide's: the CLI's test bound on the features.
    scale = np.abs(torchvision).max()
    assert np.abs(features - torchvision).max() / scale < 1e-3
    again = gimp_rs.extract([slide], tmp_path / "patches", fixture, tmp_path / "out", progress=False)
    assert again["skipped"] == ["cmu_small_region"]


def test_metrics_match_their_definitions():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    r = gimp_rs.report(y, p)
    assert r["n"] == 5 and r["accuracy"]["value"] == pytest.approx(0.6)
    assert r["confusion"] == [[1, 1], [1, 2]]
    # ROC-AUC by counting: positive scores above negative ones (ties count one half).
    pos, neg = p[y == 1, 1], p[y == 0, 1]
    auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert r["roc_auc"]["value"] == pytest.approx(auc)
    assert r["roc_auc"]["low"] <= auc <= r["roc_auc"]["high"]
    assert gimp_rs.roc_auc(y, p, seed=1) == gimp_rs.roc_auc(y, p.astype(np.float32), seed=1)
    a = gimp_rs.accuracy(y, p.argmax(1))
    assert a["value"] == pytest.approx(0.6) and 0 < a["low"] < 0.6 < a["high"] < 1
    d = gimp_rs.delong(y == 1, p[:, 1], p[:, 1])
    assert d["difference"] == 0
    with pytest.raises(ValueError, match="labels: expected a 1-D numpy integer array"):
        gimp_rs.report(y.astype(float), p)
    with pytest.raises(ValueError, match=r"labels\[2\]: class 2"):
        gimp_rs.report(np.array([0, 1, 2, 0, 1]), p)
    with pytest.raises(ValueError, match="probabilities: 4 rows for 5 labels"):
        gimp_rs.report(y, p[:4])


def test_long_calls_release_the_gil(cohort_toml, tmp_path):
    """While a thread trains, the main thread keeps running Python code."""
    finished = threading.Event()

    def work():
        try:
            gimp_rs.train(cohort_toml, tmp_path, "abmil", epochs=3, patience=0, progress=False)
        finally:
            finished.set()

    t = threading.Thread(target=work)
    t.start()
    stamps = []
    while not finished.is_set():
        stamps.append(time.monotonic())
        sum(range(1000))  # pure Python: runs only while this thread holds the GIL
    t.join()
    # Had training held the GIL, the loop would have stalled for all of it.
    longest_stall = np.diff(stamps).max()
    assert longest_stall < 0.25 * (stamps[-1] - stamps[0]), (longest_stall, stamps[-1] - stamps[0])
