//! Where Rust meets Python: the exception classes, the conversion of every library error into
//! one of them (with the message the CLI prints), and [`detached`], which runs library code with
//! the GIL released and turns a panic into `InternalError` instead of letting it unwind into
//! the interpreter.

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

create_exception!(
    gimp_rs,
    GimpError,
    PyException,
    "Base class of every error gimp_rs raises for a problem with the data, a model or a run. \
     The message is the one the gimp-rs command prints."
);
create_exception!(
    gimp_rs,
    DataError,
    GimpError,
    "A file is missing, unreadable or not what it should be. Attributes: `path` (the file), \
     `location` (line, row, column, dataset or field as text, or None), `line` (1-based line \
     number, or None), `field` (the column, dataset or field named, or None) and `kind` \
     ('io', 'malformed', 'missing', 'shape', 'non_finite', 'empty', 'duplicate', 'unknown', \
     'unsupported', 'mismatch', 'value', 'too_large')."
);
create_exception!(
    gimp_rs,
    CohortError,
    DataError,
    "`Cohort.check()` found errors: `errors` and `warnings` list every problem as \
     `gimp-rs cohort check` prints it (each names its file and line); `path` is the cohort file."
);
create_exception!(
    gimp_rs,
    ModelError,
    GimpError,
    "A model cannot be built or run: weights that do not fit the architecture, an input the \
     model does not read, a tensor operation that failed."
);
create_exception!(
    gimp_rs,
    InternalError,
    GimpError,
    "A bug in gimp-rs: Rust code panicked. The call was stopped at the boundary and the \
     interpreter is unaffected; please report the message."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("GimpError", py.get_type::<GimpError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("CohortError", py.get_type::<CohortError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("InternalError", py.get_type::<InternalError>())?;
    m.add_function(wrap_pyfunction!(_panic_for_tests, m)?)?;
    Ok(())
}

/// Why a call failed, built without the GIL and turned into a Python exception after it.
#[derive(Debug)]
pub enum Failure {
    /// A file's problem (`DataError`).
    Data(gimp_io::DataError),
    /// A cohort with errors (`CohortError`).
    Cohort {
        path: PathBuf,
        errors: Vec<String>,
        warnings: Vec<String>,
    },
    /// A model's problem (`ModelError`).
    Model(String),
    /// Anything else the library reports (`GimpError`).
    Other(String),
    /// A bad argument (`ValueError`), for checks that need the library's answer.
    Argument(String),
}

impl From<gimp_io::DataError> for Failure {
    fn from(e: gimp_io::DataError) -> Self {
        Failure::Data(e)
    }
}

impl From<candle_core::Error> for Failure {
    fn from(e: candle_core::Error) -> Self {
        Failure::Model(e.to_string())
    }
}

impl From<gimp_train::error::TrainError> for Failure {
    fn from(e: gimp_train::error::TrainError) -> Self {
        use gimp_train::error::TrainError;
        match e {
            TrainError::Io(d) => Failure::Data(d),
            TrainError::Tensor(t) => Failure::Model(t.to_string()),
            other => Failure::Other(other.to_string()),
        }
    }
}

/// The line number and the named field of a [`gimp_io::DataError`]'s location
/// (`"line 12, column 'age'"` → 12 and `"column 'age'"`; `"dataset 'coords'"` → none and itself).
fn split_location(location: &str) -> (Option<u64>, Option<String>) {
    let Some(rest) = location.strip_prefix("line ") else {
        return (None, Some(location.to_string()));
    };
    let (number, field) = match rest.split_once(", ") {
        Some((n, f)) => (n, Some(f.to_string())),
        None => (rest, None),
    };
    (number.trim().parse().ok(), field)
}

fn kind_name(k: gimp_io::ErrorKind) -> &'static str {
    use gimp_io::ErrorKind as K;
    match k {
        K::Io => "io",
        K::Malformed => "malformed",
        K::Missing => "missing",
        K::Shape => "shape",
        K::NonFinite => "non_finite",
        K::Empty => "empty",
        K::Duplicate => "duplicate",
        K::Unknown => "unknown",
        K::Unsupported => "unsupported",
        K::Mismatch => "mismatch",
        K::Value => "value",
        K::TooLarge => "too_large",
    }
}

impl Failure {
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        match self {
            Failure::Data(e) => {
                let err = DataError::new_err(e.to_string());
                let (line, field) = match &e.location {
                    Some(l) => split_location(l),
                    None => (None, None),
                };
                let v = err.value(py);
                let set = || -> PyResult<()> {
                    v.setattr("path", e.path.to_string_lossy().into_owned())?;
                    v.setattr("location", e.location.clone())?;
                    v.setattr("line", line)?;
                    v.setattr("field", field)?;
                    v.setattr("kind", kind_name(e.kind))?;
                    Ok(())
                };
                match set() {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }
            Failure::Cohort {
                path,
                errors,
                warnings,
            } => {
                let msg = format!(
                    "{}: the cohort has {} error(s):\n  - {}",
                    path.display(),
                    errors.len(),
                    errors.join("\n  - ")
                );
                let err = CohortError::new_err(msg);
                let v = err.value(py);
                let set = || -> PyResult<()> {
                    v.setattr("path", path.to_string_lossy().into_owned())?;
                    v.setattr("location", None::<String>)?;
                    v.setattr("line", None::<u64>)?;
                    v.setattr("field", None::<String>)?;
                    v.setattr("kind", "cohort")?;
                    v.setattr("errors", errors)?;
                    v.setattr("warnings", warnings)?;
                    Ok(())
                };
                match set() {
                    Ok(()) => err,
                    Err(e) => e,
                }
            }
            Failure::Model(m) => ModelError::new_err(m),
            Failure::Other(m) => GimpError::new_err(m),
            Failure::Argument(m) => PyValueError::new_err(m),
        }
    }
}

/// The panic payload that carries a Python exception (`KeyboardInterrupt` from Ctrl-C, or an
/// exception raised by a progress callback) out of library code, from a progress report back
/// to [`detached`]. The library's long calls have no way to stop early except returning from
/// their progress callback, so the report unwinds: every library write is atomic and training
/// state is saved at the end of each epoch, so an interrupted call leaves what a killed process
/// would, and `resume=True` continues it. `resume_unwind` does not run the panic hook, so
/// nothing is printed.
pub struct Interrupt(pub PyErr);

/// Runs `f` with the GIL released. A `Failure` becomes its exception class, an [`Interrupt`]
/// its Python exception, and any other panic `InternalError`: no Rust panic reaches the
/// interpreter.
pub fn detached<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    T: Send,
    F: FnOnce() -> Result<T, Failure> + Send,
{
    match py.detach(move || catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(failure)) => Err(failure.into_pyerr(py)),
        Err(payload) => Err(from_panic(payload)),
    }
}

fn from_panic(payload: Box<dyn Any + Send>) -> PyErr {
    match payload.downcast::<Interrupt>() {
        Ok(i) => i.0,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_string());
            InternalError::new_err(format!(
                "internal error in gimp-rs (a bug; please report it): {msg}"
            ))
        }
    }
}

/// Panics inside Rust code, through the same boundary as every other call. It exists so the
/// test suite can show that a Rust panic becomes `InternalError` and leaves the interpreter
/// running; it is not part of the public API.
#[pyfunction]
fn _panic_for_tests(py: Python<'_>, message: String) -> PyResult<()> {
    detached(py, move || -> Result<(), Failure> { panic!("{message}") })
}
