//! numpy in and out. Arrays going out are built from the `Vec` the library returned without a
//! copy (numpy takes ownership of the buffer); arrays coming in are checked for type, dtype and
//! shape, and a wrong one is a `ValueError` that names the argument.

use numpy::prelude::*;
use numpy::{PyArray1, PyArray2, PyArrayDyn, PyUntypedArray};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// `values` (row-major, `rows × cols`) as a `[rows, cols]` array sharing the vector's memory.
pub fn matrix<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
    rows: usize,
    cols: usize,
) -> PyResult<Bound<'py, PyArray2<T>>> {
    PyArray1::from_vec(py, values).reshape([rows, cols])
}

pub fn vector<T: numpy::Element>(py: Python<'_>, values: Vec<T>) -> Bound<'_, PyArray1<T>> {
    PyArray1::from_vec(py, values)
}

/// Patch coordinates `[N, 2]` (x, y of each patch's level-0 top-left corner).
pub fn coords<'py>(py: Python<'py>, c: Vec<[i64; 2]>) -> PyResult<Bound<'py, PyArray2<i64>>> {
    let n = c.len();
    matrix(py, c.into_flattened(), n, 2)
}

fn describe(obj: &Bound<'_, PyAny>) -> String {
    match obj.cast::<PyUntypedArray>() {
        Ok(a) => format!("an array of dtype {} and shape {:?}", a.dtype(), a.shape()),
        Err(_) => format!(
            "a {}",
            obj.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "value".into())
        ),
    }
}

/// A numpy array of `T` with `ndim` dimensions, its values in row-major order and its shape.
fn typed<T: numpy::Element + Copy>(
    name: &str,
    obj: &Bound<'_, PyAny>,
    ndim: usize,
    expected: &str,
) -> PyResult<(Vec<T>, Vec<usize>)> {
    let bad = || {
        PyValueError::new_err(format!(
            "{name}: expected {expected}, got {}",
            describe(obj)
        ))
    };
    let untyped = obj.cast::<PyUntypedArray>().map_err(|_| bad())?;
    if untyped.ndim() != ndim {
        return Err(bad());
    }
    let a = obj.cast::<PyArrayDyn<T>>().map_err(|_| bad())?;
    let ro = a.readonly();
    let view = ro.as_array();
    Ok((view.iter().copied().collect(), view.shape().to_vec()))
}

/// A float32 `[N, D]` array (patch features).
pub fn f32_matrix(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<(Vec<f32>, usize, usize)> {
    let (v, shape) = typed::<f32>(name, obj, 2, "a numpy float32 array of shape [N, D]")?;
    if shape[0] == 0 || shape[1] == 0 {
        return Err(PyValueError::new_err(format!(
            "{name}: expected a non-empty [N, D] array, got shape {shape:?}"
        )));
    }
    Ok((v, shape[0], shape[1]))
}

/// A float32 `[G]` array (expression values).
pub fn f32_vector(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<f32>> {
    Ok(typed::<f32>(name, obj, 1, "a numpy float32 array of shape [G]")?.0)
}

/// Class labels: a 1-D array of integers (any integer dtype), each in `0..n_classes` when given.
pub fn labels(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let expected = "a 1-D numpy integer array of class indices";
    let values: Vec<i64> = match typed::<i64>(name, obj, 1, expected) {
        Ok((v, _)) => v,
        Err(_) => typed::<i32>(name, obj, 1, expected)?
            .0
            .into_iter()
            .map(i64::from)
            .collect(),
    };
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            usize::try_from(v).map_err(|_| {
                PyValueError::new_err(format!(
                    "{name}[{i}]: class indices must not be negative, got {v}"
                ))
            })
        })
        .collect()
}

/// Class probabilities `[N, C]` as float64 rows (float32 or float64 accepted).
pub fn probabilities(name: &str, obj: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<f64>>> {
    let expected = "a numpy float array of shape [N, C]";
    let (v, shape) = match typed::<f64>(name, obj, 2, expected) {
        Ok(r) => r,
        Err(_) => {
            let (v, s) = typed::<f32>(name, obj, 2, expected)?;
            (v.into_iter().map(f64::from).collect(), s)
        }
    };
    if shape[1] < 2 {
        return Err(PyValueError::new_err(format!(
            "{name}: expected at least two classes (columns), got shape {shape:?}"
        )));
    }
    if let Some(i) = v.iter().position(|p| !p.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "{name}: row {} column {} is not finite",
            i / shape[1],
            i % shape[1]
        )));
    }
    Ok(v.chunks(shape[1]).map(|r| r.to_vec()).collect())
}
