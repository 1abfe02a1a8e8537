//! Reading the files users already have: feature files (CLAM/TRIDENT HDF5, `torch.save`
//! tensors, npy, safetensors), expression matrices and GDC download folders.

use crate::arrays;
use crate::boundary::{detached, Failure};
use numpy::PyArray2;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::path::PathBuf;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read_features, m)?)?;
    m.add_function(wrap_pyfunction!(read_expression, m)?)?;
    m.add_function(wrap_pyfunction!(read_gdc_folder, m)?)?;
    m.add_function(wrap_pyfunction!(read_mcat_table, m)?)?;
    Ok(())
}

/// A value with a fixed set of spellings (`"log2p1"`), or a `ValueError` naming the argument.
pub fn choice<T: std::str::FromStr>(name: &str, s: &str) -> PyResult<T>
where
    T::Err: std::fmt::Display,
{
    s.parse()
        .map_err(|e| PyValueError::new_err(format!("{name}: {e}")))
}

type Features<'py> = (Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyArray2<i64>>>);

/// Reads a slide's patch features from any format gimp-rs reads, chosen by extension: CLAM and
/// TRIDENT `.h5` (`features` and `coords`), `torch.save`d `.pt`/`.pth` tensors, `.npy` and
/// `.safetensors` (`features`, optional `coords`).
///
/// Returns `(features, coords)`: float32 `[N, D]` and int64 `[N, 2]` (each patch's level-0
/// top-left x, y), or `None` when the file stores no coordinates. A float64 or Fortran-ordered
/// file is converted as the trainer converts it. The arrays own the memory the reader filled;
/// nothing is copied on the way to Python.
///
/// Raises `DataError` (with `.path` and the dataset or field at fault) for a missing, truncated
/// or malformed file, NaN or infinite features, or an empty bag.
#[pyfunction]
fn read_features(py: Python<'_>, path: PathBuf) -> PyResult<Features<'_>> {
    let bag = detached(py, move || {
        Ok(gimp_io::feature_file::read_bag(
            &path,
            gimp_io::DEFAULT_MAX_BAG_BYTES,
        )?)
    })?;
    let coords = bag.coords.map(|c| arrays::coords(py, c)).transpose()?;
    Ok((arrays::matrix(py, bag.features, bag.n, bag.d)?, coords))
}

type Matrix<'py> = (Vec<String>, Vec<String>, Bound<'py, PyArray2<f32>>);

/// Reads an expression matrix (CSV or TSV, optionally gzipped; the first column holds the ids).
///
/// `orientation` is `"auto"` (Ensembl-like ids or many more rows than columns mean genes in
/// rows), `"samples_by_genes"` or `"genes_by_samples"`. Returns `(samples, genes, values)` with
/// values float32 `[samples, genes]`; a missing cell (empty, `NA`, `.`) is NaN.
#[pyfunction]
#[pyo3(signature = (path, orientation = "auto"))]
fn read_expression<'py>(
    py: Python<'py>,
    path: PathBuf,
    orientation: &str,
) -> PyResult<Matrix<'py>> {
    let orientation: gimp_io::expression::Orientation =
        serde_json::from_value(serde_json::Value::String(orientation.into())).map_err(|_| {
            PyValueError::new_err(format!(
                "orientation: expected 'auto', 'samples_by_genes' or 'genes_by_samples', not '{orientation}'"
            ))
        })?;
    let m = detached(py, move || {
        Ok(gimp_io::expression::read_matrix(&path, orientation)?)
    })?;
    let (s, g) = (m.n_samples(), m.n_genes());
    Ok((m.samples, m.genes, arrays::matrix(py, m.values, s, g)?))
}

type Gdc<'py> = (
    Vec<String>,
    Vec<String>,
    Bound<'py, PyArray2<f32>>,
    Vec<String>,
);

/// Builds a cases × genes matrix from a GDC download folder and its sample sheet, as a cohort's
/// `[expression] gdc_dir` does: files are found as `dir/{File ID}/{File Name}` or
/// `dir/{File Name}`, STAR files give the `star_column` column (legacy HTSeq FPKM files their
/// one value), per case the primary-tumour sample is kept, and gene versions are ignored.
///
/// Returns `(cases, genes, values, notes)`: values float32 `[cases, genes]`, and a note for each
/// case where one of several samples was chosen.
#[pyfunction]
#[pyo3(signature = (dir, sample_sheet, star_column = String::from("fpkm_unstranded")))]
fn read_gdc_folder<'py>(
    py: Python<'py>,
    dir: PathBuf,
    sample_sheet: PathBuf,
    star_column: String,
) -> PyResult<Gdc<'py>> {
    let (m, notes) = detached(py, move || -> Result<_, Failure> {
        Ok(gimp_io::expression::read_gdc_folder(
            &dir,
            &sample_sheet,
            &star_column,
        )?)
    })?;
    let (s, g) = (m.n_samples(), m.n_genes());
    let values = arrays::matrix(py, m.values, s, g)?;
    Ok((m.samples, m.genes, values, notes))
}

/// Reads an MCAT/PORPOISE wide table (`tcga_*_all_clean.csv`, or the `.csv.zip` they ship) as
/// a cohort's `[expression] mcat_table` does: one row per case (its first), the genomic columns
/// whose suffix is one of `types` (`"rnaseq"`, `"cnv"`, `"mut"`), named with their suffix.
///
/// Returns `(cases, columns, values)` with values float32 `[cases, columns]`.
#[pyfunction]
#[pyo3(signature = (path, types = vec![String::from("rnaseq")]))]
fn read_mcat_table<'py>(
    py: Python<'py>,
    path: PathBuf,
    types: Vec<String>,
) -> PyResult<Matrix<'py>> {
    let types: Vec<gimp_io::expression::OmicType> = types
        .iter()
        .map(|t| {
            serde_json::from_value(serde_json::Value::String(t.clone())).map_err(|_| {
                PyValueError::new_err(format!(
                    "types: expected 'rnaseq', 'cnv' or 'mut', not '{t}'"
                ))
            })
        })
        .collect::<PyResult<_>>()?;
    let m = detached(py, move || {
        Ok(gimp_io::expression::read_mcat_table(&path, &types)?)
    })?;
    let (s, g) = (m.n_samples(), m.n_genes());
    Ok((m.samples, m.genes, arrays::matrix(py, m.values, s, g)?))
}
