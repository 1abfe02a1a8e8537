//! Results the library describes with serde (metrics reports, stage results, cohort summaries)
//! become plain Python dicts, lists and numbers, so they print, compare and go into pandas.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use pyo3::IntoPyObjectExt;
use serde_json::Value;

pub fn to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => b.into_py_any(py)?,
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_py_any(py)?,
            (None, Some(u)) => u.into_py_any(py)?,
            _ => n.as_f64().unwrap_or(f64::NAN).into_py_any(py)?,
        },
        Value::String(s) => s.into_py_any(py)?,
        Value::Array(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py(py, x)?)?;
            }
            l.into_any().unbind()
        }
        Value::Object(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any().unbind()
        }
    })
}

/// Any serialisable result as a Python object.
pub fn serialised(py: Python<'_>, v: &impl serde::Serialize) -> PyResult<Py<PyAny>> {
    let value = serde_json::to_value(v)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
    to_py(py, &value)
}

/// A Python dict of settings (`{"finetune": {"epochs": 5}}`) as JSON, to merge into a run file.
pub fn from_py(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<Value> {
    let json = obj.py().import("json")?;
    let text: String = json
        .call_method1("dumps", (obj,))
        .map_err(|e| {
            pyo3::exceptions::PyValueError::new_err(format!(
                "{name}: expected a dict of plain values (str, int, float, bool, lists, dicts): {e}"
            ))
        })?
        .extract()?;
    serde_json::from_str(&text)
        .map_err(|e| pyo3::exceptions::PyValueError::new_err(format!("{name}: {e}")))
}

/// Strings as Python prints a list of them (`['LUAD', 'LUSC']`), for `__repr__`.
pub fn py_list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| {
            format!(
                "'{}'",
                s.as_ref().replace('\\', "\\\\").replace('\'', "\\'")
            )
        })
        .collect();
    format!("[{}]", quoted.join(", "))
}
