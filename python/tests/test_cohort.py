"""Cohorts: patients, labels, splits and bags as arrays; check() with the CLI's errors."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import gimp_rs
from conftest import gimp_rs_binary


def test_patients_labels_splits_and_bags(cohort_toml):
    c = gimp_rs.Cohort.load(cohort_toml)
    assert len(c) == 30 and len(c.patients) == 30
    assert c.classes == ["LUAD", "LUSC"]
    assert c.labels.dtype == np.int64 and set(c.labels.tolist()) == {0, 1}
    assert c.feature_dim == 16 and c.n_folds == 1
    assert c.errors == []
    assert repr(c) == f"Cohort('{cohort_toml}': 30 patients, classes ['LUAD', 'LUSC'], 1 fold(s), 0 error(s))"
    s = c.split(0)
    parts = [set(s[k].tolist()) for k in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    # A patient's bag is its slides' feature files concatenated.
    i = next(k for k, slides in enumerate(c.slides) if any(p for _, p in slides))
    features, coords = c.bag(i)
    files = [p for _, p in c.slides[i] if p is not None]
    parts = [gimp_rs.read_features(p) for p in files]
    np.testing.assert_array_equal(features, np.concatenate([f for f, _ in parts]))
    np.testing.assert_array_equal(coords, np.concatenate([k for _, k in parts]))
    # By case id too, and negative indices as in Python.
    np.testing.assert_array_equal(c.bag(c.patients[i])[0], features)
    np.testing.assert_array_equal(c.bag(i - len(c))[0], features)
    genes, values = c.expression()
    assert len(genes) == 200 and values.shape == (30, 200)
    summary = c.check()
    assert summary["patients"] == 30 and summary["feature_dim"] == 16


def test_bad_indices_and_arguments(cohort_toml):
    c = gimp_rs.Cohort.load(cohort_toml)
    with pytest.raises(IndexError, match="patient"):
        c.bag(30)
    with pytest.raises(KeyError, match="no case id"):
        c.bag("nobody")
    with pytest.raises(ValueError, match="patient"):
        c.bag(1.5)
    with pytest.raises(IndexError, match="no split 3"):
        c.split(3)


def test_check_raises_the_errors_the_cli_prints(cohort_copy):
    root = cohort_copy.parent
    # A feature file that is not HDF5 and a split naming a patient the labels do not have.
    victim = sorted((root / "features").rglob("*.h5"))[0]
    victim.write_bytes(b"this is not an HDF5 file")
    split = root / "splits" / "splits_0.csv"
    lines = split.read_text().splitlines()
    lines.append(f"{len(lines) - 1},NOT-A-PATIENT,,")
    split.write_text("\n".join(lines) + "\n")

    c = gimp_rs.Cohort.load(cohort_copy)
    assert c.errors, "the broken cohort loads, with its errors listed"
    with pytest.raises(gimp_rs.CohortError) as e:
        c.check()
    err = e.value
    assert isinstance(err, gimp_rs.DataError)
    assert err.path == str(cohort_copy)
    assert any(str(victim) in m for m in err.errors), err.errors
    assert any("NOT-A-PATIENT" in m and "splits_0.csv" in m for m in err.errors), err.errors

    cli = subprocess.run(
        [str(gimp_rs_binary()), "cohort", "check", str(cohort_copy), "--json"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1
    report = json.loads(cli.stdout)
    assert err.errors == report["errors"]
    assert err.warnings == report["warnings"]
    assert c.summary()["errors"] == report["errors"]


def test_a_labels_csv_error_names_file_and_line(cohort_copy):
    csv = cohort_copy.parent / "dataset.csv"
    # As many fields as the header (the synthetic cohort's survival columns get valid values).
    width = len(csv.read_text().splitlines()[0].split(","))
    row = ["TCGA-XX-0000", "TCGA-XX-0000-01Z", "NOT_A_CLASS"] + ["1"] * (width - 3)
    csv.write_text(csv.read_text() + ",".join(row) + "\n")
    with pytest.raises(gimp_rs.DataError) as e:
        gimp_rs.Cohort.load(cohort_copy)
    err = e.value
    assert err.path == str(csv) and err.kind == "unknown"
    assert err.line == len(csv.read_text().splitlines()) and err.field is None
    assert str(err).startswith(f"{csv}: line {err.line}: label 'NOT_A_CLASS' is not in the label map")
