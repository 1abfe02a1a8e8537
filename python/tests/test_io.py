"""Feature files and expression tables written by h5py, numpy, torch and safetensors, read back
through gimp_rs; bad files and bad arguments."""

from __future__ import annotations

import gzip

import h5py
import numpy as np
import pytest

import gimp_rs
from conftest import REPO

REFERENCE = REPO / "crates/gimp-io/tests/data/reference"


def expected_features() -> np.ndarray:
    """The values tools/make_reference_fixtures.py wrote into every reference feature file."""
    return np.loadtxt(REFERENCE / "features_expected.txt", dtype=np.float32, ndmin=2)


def test_clam_h5_written_by_h5py_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.standard_normal((37, 24)).astype(np.float32)
    coords = rng.integers(0, 100_000, size=(37, 2)).astype(np.int64)
    path = tmp_path / "slide.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=features)
        f.create_dataset("coords", data=coords)
    got, got_coords = gimp_rs.read_features(path)
    assert got.dtype == np.float32 and got.shape == (37, 24)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, features)
    assert got_coords is not None and got_coords.dtype == np.int64
    np.testing.assert_array_equal(got_coords, coords)


def test_npy_written_by_numpy_round_trips_any_order_and_float_width(tmp_path):
    features = np.arange(60, dtype=np.float64).reshape(12, 5) / 7
    for name, arr in [
        ("c32.npy", features.astype(np.float32)),
        ("f64.npy", np.asfortranarray(features)),
    ]:
        np.save(tmp_path / name, arr)
        got, coords = gimp_rs.read_features(tmp_path / name)
        assert coords is None
        np.testing.assert_allclose(got, features.astype(np.float32), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", ["clam_features.h5", "features.pt", "features_f64.pt", "features.npy", "features.safetensors"]
)
def test_reference_files_from_torch_h5py_numpy_and_safetensors(name):
    got, _ = gimp_rs.read_features(REFERENCE / name)
    np.testing.assert_allclose(got, expected_features(), rtol=1e-6, atol=1e-7)


def test_a_truncated_h5_is_a_data_error_naming_the_file(tmp_path):
    src = tmp_path / "ok.h5"
    with h5py.File(src, "w") as f:
        f.create_dataset("features", data=np.ones((50, 8), np.float32))
    bad = tmp_path / "truncated.h5"
    bad.write_bytes(src.read_bytes()[:700])
    with pytest.raises(gimp_rs.DataError) as e:
        gimp_rs.read_features(bad)
    assert e.value.path == str(bad)
    assert str(bad) in str(e.value)
    assert isinstance(e.value, gimp_rs.GimpError)


def test_nan_features_and_unknown_extensions_are_data_errors(tmp_path):
    a = np.ones((4, 3), np.float32)
    a[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", a)
    with pytest.raises(gimp_rs.DataError) as e:
        gimp_rs.read_features(tmp_path / "nan.npy")
    assert e.value.kind == "non_finite"
    (tmp_path / "x.txt").write_text("1 2 3\n")
    with pytest.raises(gimp_rs.DataError) as e:
        gimp_rs.read_features(tmp_path / "x.txt")
    assert e.value.kind == "unsupported"
    with pytest.raises(gimp_rs.DataError) as e:
        gimp_rs.read_features(tmp_path / "absent.h5")
    assert e.value.kind == "io"


def test_expression_matrix_with_missing_cells(tmp_path):
    p = tmp_path / "expr.tsv.gz"
    with gzip.open(p, "wt") as f:
        f.write("sample\tENSG01\tENSG02\tENSG03\n")
        f.write("TCGA-A\t1.5\t2\t3\n")
        f.write("TCGA-B\tNA\t5\t6.25\n")
    samples, genes, values = gimp_rs.read_expression(p)
    assert samples == ["TCGA-A", "TCGA-B"]
    assert genes == ["ENSG01", "ENSG02", "ENSG03"]
    assert values.dtype == np.float32 and values.shape == (2, 3)
    assert np.isnan(values[1, 0])
    np.testing.assert_array_equal(values[0], [1.5, 2, 3])
    # Genes in rows, said explicitly.
    q = tmp_path / "t.csv"
    q.write_text("gene,s1,s2\ng1,1,2\ng2,3,4\ng3,5,6\n")
    samples, genes, values = gimp_rs.read_expression(q, "genes_by_samples")
    assert samples == ["s1", "s2"] and genes == ["g1", "g2", "g3"]
    np.testing.assert_array_equal(values, [[1, 3, 5], [2, 4, 6]])


def test_a_bad_expression_cell_names_the_line_and_column(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("sample\tg1\tg2\nA\t1\t2\nB\t3\tabc\n")
    with pytest.raises(gimp_rs.DataError) as e:
        gimp_rs.read_expression(p)
    err = e.value
    assert err.path == str(p)
    assert err.line == 3
    assert err.field == "column 'g2'"
    assert "line 3" in str(err) and "'abc' is not a number" in str(err)


def test_gdc_folder_of_the_synthetic_cohort(cohort_toml):
    gdc = cohort_toml.parent / "expression" / "gdc"
    sheets = list(gdc.glob("*sample_sheet*"))
    assert sheets, "the synthetic cohort writes a GDC sample sheet"
    cases, genes, values, _ = gimp_rs.read_gdc_folder(gdc, sheets[0])
    assert len(cases) == values.shape[0] > 0 and len(genes) == values.shape[1] == 200
    assert np.isfinite(values).all()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="orientation"):
        gimp_rs.read_expression("x.tsv", "sideways")
    with pytest.raises(TypeError):
        gimp_rs.read_features(12)


def test_every_file_of_the_bad_input_corpus_is_a_data_error():
    """The repository's bad-input corpus (and the fuzzers' finds): each reader raises
    DataError for each file it cannot read; nothing crashes."""
    bad = REPO / "crates/gimp-io/tests/data/bad"
    files = sorted(bad.iterdir())
    assert len(files) > 30
    readable = {("read_expression", "matrix_missing_value.tsv")}  # valid: NaN where missing
    for f in files:
        for read in (gimp_rs.read_features, gimp_rs.read_expression):
            if (read.__name__, f.name) in readable:
                read(f)
                continue
            with pytest.raises(gimp_rs.DataError) as e:
                read(f)
            assert e.value.path == str(f), (read.__name__, f.name)


def test_mcat_wide_table(tmp_path):
    p = tmp_path / "tcga_luad_all_clean.csv"
    p.write_text(
        ",case_id,slide_id,label,age,TP53_rnaseq,EGFR_rnaseq,TP53_cnv,KRAS_mut\n"
        "0,TCGA-1,TCGA-1-01Z,LUAD,60,1.5,2.5,-1,0\n"
        "1,TCGA-1,TCGA-1-02Z,LUAD,60,1.5,2.5,-1,0\n"
        "2,TCGA-2,TCGA-2-01Z,LUSC,70,3.0,4.0,1,1\n"
    )
    cases, columns, values = gimp_rs.read_mcat_table(p)
    assert cases == ["TCGA-1", "TCGA-2"] and columns == ["TP53_rnaseq", "EGFR_rnaseq"]
    np.testing.assert_array_equal(values, [[1.5, 2.5], [3.0, 4.0]])
    _, columns, values = gimp_rs.read_mcat_table(p, ["cnv", "mut"])
    assert columns == ["TP53_cnv", "KRAS_mut"]
    np.testing.assert_array_equal(values, [[-1, 0], [1, 1]])
    with pytest.raises(ValueError, match="types: expected"):
        gimp_rs.read_mcat_table(p, ["methylation"])
