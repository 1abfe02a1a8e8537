//! Progress from a long call to Python, and where Ctrl-C is noticed.
//!
//! The library reports progress through callbacks (`gimp_train::trainer::OnProgress`, the
//! extractor's per-batch count, the generator's per-slide count). Each report takes the GIL
//! back briefly, runs Python's pending signal handlers (`Python::check_signals`: Ctrl-C raises
//! `KeyboardInterrupt` there), and passes a dict to the user's callback. A Python exception from
//! either ends the call: see [`crate::boundary::Interrupt`].

use crate::boundary::Interrupt;
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// One report: a stage, how far it is, and the running loss when training.
pub struct Step<'a> {
    pub stage: &'a str,
    pub epoch: Option<usize>,
    pub epochs: Option<usize>,
    pub step: usize,
    pub steps: usize,
    pub loss: Option<f64>,
}

/// The `progress=` argument of a long call: `None`/`True` → `gimp_rs.TextProgress()` on
/// `sys.stderr`, `False` → nothing, a callable → called with each report's dict.
pub struct Reporter {
    callback: Option<Py<PyAny>>,
}

impl Reporter {
    pub fn new(py: Python<'_>, arg: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let callback = match arg {
            None => Some(default_callback(py)?),
            Some(a) if a.is_instance_of::<pyo3::types::PyBool>() => match a.is_truthy()? {
                true => Some(default_callback(py)?),
                false => None,
            },
            Some(a) if a.is_callable() => Some(a.clone().unbind()),
            Some(a) => {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "progress: expected a callable, True, False or None, got {}",
                    a.get_type().name()?
                )))
            }
        };
        Ok(Self { callback })
    }

    /// Called from library code with the GIL released: checks for Ctrl-C and tells the
    /// callback. Unwinds with [`Interrupt`] when either raises.
    pub fn report(&self, s: &Step<'_>) {
        let outcome = Python::attach(|py| -> PyResult<()> {
            py.check_signals()?;
            let Some(cb) = &self.callback else {
                return Ok(());
            };
            let d = PyDict::new(py);
            d.set_item("stage", s.stage)?;
            d.set_item("epoch", s.epoch)?;
            d.set_item("epochs", s.epochs)?;
            d.set_item("step", s.step)?;
            d.set_item("steps", s.steps)?;
            d.set_item("loss", s.loss)?;
            cb.call1(py, (d,))?;
            Ok(())
        });
        if let Err(e) = outcome {
            std::panic::resume_unwind(Box::new(Interrupt(e)));
        }
    }

    /// A training loop's report.
    pub fn training(&self, p: &gimp_train::trainer::Progress) {
        self.report(&Step {
            stage: p.stage,
            epoch: Some(p.epoch),
            epochs: Some(p.epochs),
            step: p.step,
            steps: p.steps,
            loss: Some(p.loss),
        })
    }

    /// Ends the callback's display (`close()` when it has one: the text progress ends its line)
    /// whether the call succeeded or not, and passes the call's outcome on.
    pub fn finish<T>(&self, py: Python<'_>, outcome: PyResult<T>) -> PyResult<T> {
        let closed = match &self.callback {
            Some(cb) => {
                let cb = cb.bind(py);
                match cb.hasattr("close") {
                    Ok(true) => cb.call_method0("close").map(|_| ()),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            None => Ok(()),
        };
        let value = outcome?;
        closed?;
        Ok(value)
    }
}

fn default_callback(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("gimp_rs._progress")?
        .getattr("TextProgress")?
        .call0()?
        .unbind())
}
