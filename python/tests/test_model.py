"""Model.load and predict: equal to `gimp-rs predict` on the same checkpoint and files; bad
arguments are ValueErrors naming the argument."""

from __future__ import annotations

import json
import subprocess
import warnings

import numpy as np
import pytest

import gimp_rs
from conftest import gimp_rs_binary


def a_test_patient(cohort_toml):
    c = gimp_rs.Cohort.load(cohort_toml)
    test = c.split(0)["test"]
    for i in test:
        files = [p for _, p in c.slides[i] if p is not None]
        if len(files) == 1:
            return c, int(i), files[0]
    raise AssertionError("no test patient with one slide")


def matrix_row(path, sample):
    samples, genes, values = gimp_rs.read_expression(path)
    return genes, values[samples.index(sample)]


def test_predict_equals_the_cli(cohort_toml, gimp_checkpoint):
    c, i, slide = a_test_patient(cohort_toml)
    matrix = cohort_toml.parent / "expression" / "matrix.tsv.gz"
    case = c.patients[i]
    genes, row = matrix_row(matrix, case)

    model = gimp_rs.Model.load(gimp_checkpoint)
    assert model.arch == "gimp" and model.input == "multimodal"
    assert model.classes == c.classes and model.transform == "log2p1"
    assert "arch='gimp', input='multimodal', classes=['LUAD', 'LUSC']" in repr(model)
    features, coords = gimp_rs.read_features(slide)
    p = model.predict(features=features, expression=row, genes=genes)

    cli = subprocess.run(
        [
            str(gimp_rs_binary()),
            "predict",
            "--checkpoint", str(gimp_checkpoint),
            "--features", str(slide),
            "--expression", str(matrix),
            "--sample", case,
            "--top", str(len(features)),
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0, cli.stderr
    want = json.loads(cli.stdout)
    np.testing.assert_allclose(p.probabilities, want["probabilities"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(p.logits, want["logits"], rtol=1e-6, atol=1e-6)
    assert p.predicted == want["predicted"] and p.predicted_class == want["predicted_class"]
    assert p.modalities == want["modalities"] == ["slides", "expression"]
    assert p.warning is None
    # Every patch's attention, with its coordinates, as the CLI lists them.
    assert p.attention is not None and p.attention.shape == (len(features),)
    scores = {t["row"]: t["score"] for t in want["top_patches"]}
    np.testing.assert_allclose([scores[k] for k in range(len(features))], p.attention, rtol=1e-6)
    first = want["top_patches"][0]
    assert [first["x"], first["y"]] == coords[first["row"]].tolist()
    assert p.embedding.dtype == np.float32 and p.embedding.ndim == 1


def test_expression_in_model_order_or_by_name(cohort_toml, gimp_checkpoint):
    _, i, slide = a_test_patient(cohort_toml)
    c = gimp_rs.Cohort.load(cohort_toml)
    genes, values = c.expression()
    model = gimp_rs.Model.load(gimp_checkpoint)
    features, _ = gimp_rs.read_features(slide)
    by_name = model.predict(features=features, expression=values[i], genes=genes)
    order = [genes.index(g) for g in model.genes]
    in_order = model.predict(features=features, expression=values[i][order])
    np.testing.assert_array_equal(by_name.probabilities, in_order.probabilities)
    shuffled = np.random.default_rng(0).permutation(len(genes))
    again = model.predict(
        features=features, expression=values[i][shuffled], genes=[genes[k] for k in shuffled]
    )
    np.testing.assert_array_equal(again.probabilities, by_name.probabilities)


def test_one_modality_answers_with_a_warning(cohort_toml, gimp_checkpoint):
    _, _, slide = a_test_patient(cohort_toml)
    model = gimp_rs.Model.load(gimp_checkpoint)
    features, _ = gimp_rs.read_features(slide)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p = model.predict(features=features)
    assert p.modalities == ["slides"] and p.warning
    assert any("fine-tuned with both modalities" in str(x.message) for x in w)
    assert abs(float(p.probabilities.sum()) - 1) < 1e-5


def test_bad_arguments_name_the_argument(cohort_toml, gimp_checkpoint):
    _, _, slide = a_test_patient(cohort_toml)
    model = gimp_rs.Model.load(gimp_checkpoint)
    features, _ = gimp_rs.read_features(slide)
    cases = [
        (dict(features=features.astype(np.float64)), "features: expected a numpy float32"),
        (dict(features=features[0]), "features: expected a numpy float32 array of shape"),
        (dict(features=features.tolist()), "features: expected"),
        (dict(features=features[:, :8].copy()), "features: the model reads 16-d features"),
        (dict(features=features[:0]), "features: expected a non-empty"),
        (dict(expression=np.zeros(5, np.float32)), "expression: expected 200 values"),
        (dict(expression=np.zeros(200, np.int64)), "expression: expected a numpy float32"),
        (dict(expression=np.zeros(2, np.float32), genes=["a"]), "genes: 1 names for 2"),
        (dict(expression=np.zeros(1, np.float32), genes=["nope"]), "genes: gene '.*' of the model is missing"),
        (dict(genes=["a"]), "genes: given without expression"),
        (dict(), "gimp .*give features= and/or expression="),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            model.predict(**kwargs)
    # A non-contiguous view is read correctly.
    wide = np.zeros((features.shape[0], 32), np.float32)
    wide[:, ::2] = features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(
            model.predict(features=wide[:, ::2]).probabilities,
            model.predict(features=features).probabilities,
        )


def test_loading_what_is_not_a_checkpoint(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(gimp_rs.DataError):
        gimp_rs.Model.load(tmp_path / "x.npy")
    with pytest.raises(gimp_rs.GimpError, match="unknown"):
        gimp_rs.Model.from_weights("no_such_arch", tmp_path / "x.npy")
