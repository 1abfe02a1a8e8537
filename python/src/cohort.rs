//! A cohort (`cohort.toml`: labels, slide features, expression and splits joined by patient) as
//! a Python object: its patients, labels, splits and expression as arrays, a patient's bag, and
//! `check()` with the errors `gimp-rs cohort check` reports.

use crate::arrays;
use crate::boundary::{detached, Failure};
use crate::values;
use gimp_cohort::{Cohort as Inner, LoadOptions, Summary};
use gimp_io::splits::Part;
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::{PyIndexError, PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;
use std::sync::Arc;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Cohort>()
}

/// A cohort: the patients of a `cohort.toml` with their labels, slides, expression and splits.
///
/// Load with `Cohort.load("cohort.toml")`. Patients are in the order of the labels CSV; every
/// per-patient array (`labels`, the rows of `expression()`) and every index (`split()`,
/// `bag()`) follows that order. Loading never fails on a problem that `check()` can list (a
/// missing feature file, an unknown split id, ...): those are collected in `errors` and
/// `warnings`. It raises `DataError` only when nothing can be joined (an unreadable cohort file
/// or labels CSV).
#[pyclass(module = "gimp_rs", frozen)]
pub struct Cohort {
    pub inner: Arc<Inner>,
}

/// A patient given as an index into the cohort's order or as a case id.
fn patient_index(c: &Inner, patient: &Bound<'_, PyAny>) -> PyResult<usize> {
    if let Ok(i) = patient.extract::<isize>() {
        let n = c.patients.len() as isize;
        let j = if i < 0 { i + n } else { i };
        return usize::try_from(j)
            .ok()
            .filter(|&j| j < c.patients.len())
            .ok_or_else(|| {
                PyIndexError::new_err(format!(
                    "patient: index {i} is outside the cohort's {n} patients"
                ))
            });
    }
    if let Ok(id) = patient.extract::<String>() {
        return c
            .patients
            .iter()
            .position(|p| p.case_id == id)
            .ok_or_else(|| {
                PyKeyError::new_err(format!("patient: no case id '{id}' in the cohort"))
            });
    }
    Err(PyValueError::new_err(
        "patient: expected an index (int) or a case id (str)",
    ))
}

type Bag<'py> = (Bound<'py, PyArray2<f32>>, Option<Bound<'py, PyArray2<i64>>>);
type Expression<'py> = (Vec<String>, Bound<'py, PyArray2<f32>>);

#[pymethods]
impl Cohort {
    /// Reads `path` (a cohort TOML file; paths inside are relative to it) and joins labels,
    /// feature files, expression and split files by patient. With `deep=True` every feature file
    /// is read completely (finds NaN values and truncated files; slow on big cohorts).
    #[staticmethod]
    #[pyo3(signature = (path, deep = false))]
    fn load(py: Python<'_>, path: PathBuf, deep: bool) -> PyResult<Self> {
        let inner = detached(py, move || {
            Ok(Inner::open(
                &path,
                LoadOptions {
                    read_shapes: true,
                    deep,
                },
            )?)
        })?;
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// The cohort file.
    #[getter]
    fn path(&self) -> PathBuf {
        self.inner.file.path.clone()
    }

    /// Class names; a label is an index into this list.
    #[getter]
    fn classes(&self) -> Vec<String> {
        self.inner.label_map.names.clone()
    }

    /// Case ids, in the cohort's patient order.
    #[getter]
    fn patients(&self) -> Vec<String> {
        self.inner
            .patients
            .iter()
            .map(|p| p.case_id.clone())
            .collect()
    }

    /// Each patient's class index (int64 `[P]`).
    #[getter]
    fn labels<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        arrays::vector(
            py,
            self.inner.patients.iter().map(|p| p.label as i64).collect(),
        )
    }

    /// Each patient's slides: a list of `(slide_id, feature_file or None)` per patient.
    #[getter]
    fn slides(&self) -> Vec<Vec<(String, Option<PathBuf>)>> {
        self.inner
            .patients
            .iter()
            .map(|p| {
                p.slides
                    .iter()
                    .map(|s| (s.slide_id.clone(), s.path.clone()))
                    .collect()
            })
            .collect()
    }

    /// Feature width shared by every slide, or None (no slides, or widths that disagree).
    #[getter]
    fn feature_dim(&self) -> Option<usize> {
        self.inner.feature_dim
    }

    /// Number of split files (folds).
    #[getter]
    fn n_folds(&self) -> usize {
        self.inner.folds.len()
    }

    /// The problems that make the cohort unusable, as `gimp-rs cohort check` prints them.
    #[getter]
    fn errors(&self) -> Vec<String> {
        self.inner.diagnostics.errors.clone()
    }

    /// Problems worth reading that do not stop training.
    #[getter]
    fn warnings(&self) -> Vec<String> {
        self.inner.diagnostics.warnings.clone()
    }

    /// Split `fold`: `{"train": idx, "val": idx, "test": idx}`, each an int64 array of patient
    /// indices.
    #[pyo3(signature = (fold = 0))]
    fn split<'py>(&self, py: Python<'py>, fold: usize) -> PyResult<Bound<'py, PyDict>> {
        let f = self.inner.folds.get(fold).ok_or_else(|| {
            PyIndexError::new_err(format!(
                "fold: the cohort has {} split file(s); there is no split {fold}",
                self.inner.folds.len()
            ))
        })?;
        let d = PyDict::new(py);
        for part in Part::ALL {
            let idx: Vec<i64> = f.patients(part).into_iter().map(|i| i as i64).collect();
            d.set_item(part.name(), arrays::vector(py, idx))?;
        }
        Ok(d)
    }

    /// A patient's bag: the features of its slides concatenated in slide order (float32
    /// `[N, D]`) and their coordinates (int64 `[N, 2]`, or None unless every slide has them).
    /// `patient` is an index or a case id. Raises `DataError` when a file cannot be read and
    /// `GimpError` when the patient has no slide features.
    fn bag<'py>(&self, py: Python<'py>, patient: &Bound<'py, PyAny>) -> PyResult<Bag<'py>> {
        let i = patient_index(&self.inner, patient)?;
        let c = self.inner.clone();
        let (features, coords, n, d) = detached(py, move || {
            let p = &c.patients[i];
            let files: Vec<&PathBuf> = p.slides.iter().filter_map(|s| s.path.as_ref()).collect();
            if files.is_empty() {
                return Err(Failure::Other(format!(
                    "patient '{}' has no slide features",
                    p.case_id
                )));
            }
            let (mut features, mut coords, mut n, mut d) = (Vec::new(), Some(Vec::new()), 0, 0);
            for f in files {
                let b = gimp_io::feature_file::read_bag(f, gimp_io::DEFAULT_MAX_BAG_BYTES)?;
                if d != 0 && b.d != d {
                    return Err(Failure::Data(gimp_io::DataError::new(
                        gimp_io::ErrorKind::Mismatch,
                        f,
                        format!("{}-d features; the patient's other slides have {d}", b.d),
                    )));
                }
                d = b.d;
                n += b.n;
                features.extend_from_slice(&b.features);
                coords = match (coords, b.coords) {
                    (Some(mut all), Some(c)) => {
                        all.extend(c);
                        Some(all)
                    }
                    _ => None,
                };
            }
            Ok((features, coords, n, d))
        })?;
        let coords = coords.map(|c| arrays::coords(py, c)).transpose()?;
        Ok((arrays::matrix(py, features, n, d)?, coords))
    }

    /// Each patient's expression as the cohort reads it (missing values imputed when the cohort
    /// asks for it; no transform, no standardisation): `(genes, values)` with values float32
    /// `[P, G]`, a row of NaN for a patient without expression. None without expression.
    fn expression<'py>(&self, py: Python<'py>) -> PyResult<Option<Expression<'py>>> {
        let Some(m) = &self.inner.expression else {
            return Ok(None);
        };
        let g = m.n_genes();
        let c = &self.inner;
        let values = detached(py, || {
            let mut values = Vec::with_capacity(c.patients.len() * g);
            for p in &c.patients {
                match c.expression_of(p) {
                    Some(row) => values.extend_from_slice(row),
                    None => values.extend(std::iter::repeat_n(f32::NAN, g)),
                }
            }
            Ok(values)
        })?;
        let rows = self.inner.patients.len();
        Ok(Some((
            m.genes.clone(),
            arrays::matrix(py, values, rows, g)?,
        )))
    }

    /// What `gimp-rs cohort check --json` prints: patients and slides per class, modalities,
    /// feature width, bag sizes, expression, every split's parts, errors and warnings.
    fn summary(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let s = detached(py, || Ok(Summary::of(&self.inner)))?;
        values::serialised(py, &s)
    }

    /// The summary (see `summary()`) when the cohort has no errors; otherwise raises
    /// `CohortError` whose `errors` and `warnings` list what `gimp-rs cohort check` reports,
    /// each naming its file and line.
    fn check(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let d = &self.inner.diagnostics;
        if !d.errors.is_empty() {
            return Err(Failure::Cohort {
                path: self.inner.file.path.clone(),
                errors: d.errors.clone(),
                warnings: d.warnings.clone(),
            }
            .into_pyerr(py));
        }
        self.summary(py)
    }

    fn __len__(&self) -> usize {
        self.inner.patients.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "Cohort('{}': {} patients, classes {}, {} fold(s), {} error(s))",
            self.inner.file.path.display(),
            self.inner.patients.len(),
            values::py_list(&self.inner.label_map.names),
            self.inner.folds.len(),
            self.inner.diagnostics.errors.len()
        )
    }
}

/// The `cohort` argument of a run: a `Cohort` or the path of a cohort file.
pub fn resolve(py: Python<'_>, cohort: &Bound<'_, PyAny>) -> PyResult<Arc<Inner>> {
    if let Ok(c) = cohort.cast::<Cohort>() {
        return Ok(c.get().inner.clone());
    }
    let path: PathBuf = cohort.extract().map_err(|_| {
        PyValueError::new_err("cohort: expected a Cohort or the path of a cohort.toml")
    })?;
    Ok(Arc::new(detached(py, move || {
        Ok(Inner::open(&path, LoadOptions::default())?)
    })?))
}
