//! The malformed-input corpus (tests/data/bad, written by tools/make_bad_inputs.py): every file
//! gives an error of the expected kind whose message names the file and the field or line —
//! and nothing panics.

use gimp_io::expression::{self, Orientation};
use gimp_io::{dataset, feature_file, h5, splits, DataError, ErrorKind, DEFAULT_MAX_BAG_BYTES};
use std::path::{Path, PathBuf};

fn bad(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/bad")
        .join(name)
}

type Reader = fn(&Path) -> Result<(), DataError>;

fn bag(p: &Path) -> Result<(), DataError> {
    feature_file::read_bag(p, DEFAULT_MAX_BAG_BYTES).map(drop)
}
fn shape(p: &Path) -> Result<(), DataError> {
    feature_file::bag_shape(p).map(drop)
}
fn patches(p: &Path) -> Result<(), DataError> {
    h5::read_patches(p).map(drop)
}
fn dataset_csv(p: &Path) -> Result<(), DataError> {
    dataset::read_dataset_csv(p).map(drop)
}
fn split(p: &Path) -> Result<(), DataError> {
    splits::read_split(p).map(drop)
}
fn matrix(p: &Path) -> Result<(), DataError> {
    expression::read_matrix(p, Orientation::Auto).map(drop)
}
fn complete_matrix(p: &Path) -> Result<(), DataError> {
    expression::read_matrix(p, Orientation::Auto)?.require_complete(p)
}
fn star(p: &Path) -> Result<(), DataError> {
    expression::read_gdc_star(p, "fpkm_unstranded").map(drop)
}
fn legacy(p: &Path) -> Result<(), DataError> {
    expression::read_gdc_legacy(p).map(drop)
}
fn sheet(p: &Path) -> Result<(), DataError> {
    expression::read_sample_sheet(p).map(drop)
}
fn state_dict(p: &Path) -> Result<(), DataError> {
    gimp_io::pt::read_state_dict(p).map(drop)
}
fn signatures(p: &Path) -> Result<(), DataError> {
    gimp_io::pathways::read_pathways(p).map(drop)
}

/// (file, reader, expected kind, a fragment the message must contain: the field or line).
const CASES: &[(&str, Reader, ErrorKind, &str)] = &[
    ("truncated.h5", bag, ErrorKind::Malformed, "HDF5"),
    (
        "not_hdf5.h5",
        bag,
        ErrorKind::Malformed,
        "not a readable HDF5 file",
    ),
    (
        "nan_features.h5",
        bag,
        ErrorKind::NonFinite,
        "row 2, column 3",
    ),
    (
        "inf_features.h5",
        bag,
        ErrorKind::NonFinite,
        "row 5, column 0",
    ),
    ("empty_bag.h5", bag, ErrorKind::Empty, "no patches"),
    (
        "features_1d.h5",
        bag,
        ErrorKind::Shape,
        "dataset 'features'",
    ),
    (
        "features_1d.h5",
        shape,
        ErrorKind::Shape,
        "dataset 'features'",
    ),
    (
        "no_features.h5",
        bag,
        ErrorKind::Missing,
        "no dataset 'features'",
    ),
    (
        "coords_mismatch.h5",
        bag,
        ErrorKind::Mismatch,
        "'coords' has 5 rows",
    ),
    ("coords_3cols.h5", bag, ErrorKind::Shape, "dataset 'coords'"),
    (
        "int_features.h5",
        bag,
        ErrorKind::Unsupported,
        "dataset 'features'",
    ),
    (
        "patches_no_size.h5",
        patches,
        ErrorKind::Missing,
        "patch_size",
    ),
    (
        "dict.pt",
        bag,
        ErrorKind::Unsupported,
        "a dict with 1 entries (keys: 'features')",
    ),
    ("legacy.pt", bag, ErrorKind::Malformed, "legacy"),
    ("truncated.pt", bag, ErrorKind::Malformed, "zip"),
    ("pt_3d.pt", bag, ErrorKind::Shape, "[2, 3, 4]"),
    ("not_npy.npy", bag, ErrorKind::Malformed, "not a .npy file"),
    // Found by `bash fuzz/run.sh`: a chunk index claiming 2.6 GB chunks in a 9 KB file (the HDF5
    // reader allocated them), and a .npy header of nested brackets (its parser backtracked for
    // minutes).
    (
        "fuzz_chunk_outside_file.h5",
        bag,
        ErrorKind::Malformed,
        "dataset 'features'",
    ),
    // A pickle on which candle's reader panics (an index past a list): caught, an error.
    (
        "fuzz_pickle_panic.pt",
        state_dict,
        ErrorKind::Unsupported,
        "state_dict",
    ),
    (
        "fuzz_nested_header.npy",
        bag,
        ErrorKind::Malformed,
        "not a NumPy dict literal",
    ),
    ("npy_int.npy", bag, ErrorKind::Unsupported, "dtype"),
    ("npy_1d.npy", bag, ErrorKind::Shape, "[6]"),
    (
        "bad.safetensors",
        bag,
        ErrorKind::Malformed,
        "not a safetensors file",
    ),
    (
        "dataset_ragged.csv",
        dataset_csv,
        ErrorKind::Shape,
        "line 3",
    ),
    (
        "dataset_no_label.csv",
        dataset_csv,
        ErrorKind::Missing,
        "line 1: no 'label' column",
    ),
    (
        "dataset_dup_slide.csv",
        dataset_csv,
        ErrorKind::Duplicate,
        "line 3",
    ),
    (
        "dataset_conflicting_labels.csv",
        dataset_csv,
        ErrorKind::Mismatch,
        "line 3",
    ),
    (
        "dataset_empty_case.csv",
        dataset_csv,
        ErrorKind::Value,
        "line 3",
    ),
    (
        "dataset_empty.csv",
        dataset_csv,
        ErrorKind::Empty,
        "no rows",
    ),
    (
        "split_bad_header.csv",
        split,
        ErrorKind::Malformed,
        "line 1",
    ),
    ("split_bool_two_true.csv", split, ErrorKind::Value, "line 3"),
    ("split_empty.csv", split, ErrorKind::Empty, "no ids"),
    (
        "matrix_nonnumeric.tsv",
        matrix,
        ErrorKind::Value,
        "line 3, column 'ENSG2'",
    ),
    (
        "matrix_dup_gene.tsv",
        matrix,
        ErrorKind::Duplicate,
        "column 'G1'",
    ),
    (
        "matrix_missing_value.tsv",
        complete_matrix,
        ErrorKind::Missing,
        "gene 'G1' has no value for sample 'p2'",
    ),
    ("matrix_one_column.tsv", matrix, ErrorKind::Shape, "line 1"),
    (
        "matrix_truncated.tsv.gz",
        matrix,
        ErrorKind::Malformed,
        "gzip",
    ),
    (
        "star_no_fpkm.tsv",
        star,
        ErrorKind::Missing,
        "fpkm_unstranded",
    ),
    ("star_ragged.tsv", star, ErrorKind::Shape, "line 4"),
    (
        "star_bad_value.tsv",
        star,
        ErrorKind::Value,
        "line 4, column 'fpkm_unstranded'",
    ),
    (
        "legacy_three_cols.FPKM.txt",
        legacy,
        ErrorKind::Shape,
        "line 1",
    ),
    (
        "sample_sheet_missing_col.tsv",
        sheet,
        ErrorKind::Missing,
        "Sample ID",
    ),
    (
        "signatures_ragged.csv",
        signatures,
        ErrorKind::Shape,
        "line 2",
    ),
    ("does_not_exist.h5", bag, ErrorKind::Io, "does not exist"),
];

#[test]
fn every_bad_input_gives_a_clear_error() {
    let mut failures = Vec::new();
    for (name, reader, kind, fragment) in CASES {
        let path = bad(name);
        let outcome = std::panic::catch_unwind(|| reader(&path));
        match outcome {
            Err(_) => failures.push(format!("{name}: PANICKED")),
            Ok(Ok(())) => failures.push(format!("{name}: accepted")),
            Ok(Err(e)) => {
                let msg = e.to_string();
                if std::env::var("SHOW_ERRORS").is_ok() {
                    eprintln!("{msg}");
                }
                if e.kind != *kind {
                    failures.push(format!(
                        "{name}: kind {:?}, expected {kind:?} ({msg})",
                        e.kind
                    ));
                }
                if !msg.contains(name) {
                    failures.push(format!("{name}: message does not name the file: {msg}"));
                }
                if !msg.contains(fragment) {
                    failures.push(format!("{name}: message lacks '{fragment}': {msg}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    assert!(CASES.len() >= 40);
}
