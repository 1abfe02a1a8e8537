//! A trained model (a gimp-rs checkpoint, or the reference code's weights with an architecture)
//! and `predict`: the same computation as `gimp-rs predict`.

use crate::arrays;
use crate::boundary::{detached, Failure};
use crate::values;
use candle_core::{Device, Tensor};
use gimp_models::registry::{self, Loaded};
use gimp_models::{ArchInfo, BagInput};
use gimp_nn::checkpoint::{Checkpoint, Preprocessing};
use gimp_nn::Mode;
use gimp_train::evaluate::ModelSource;
use numpy::PyArray1;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Prediction>()?;
    Ok(())
}

/// A model ready to run on one patient at a time.
///
/// `Model.load("run/finetune/model.safetensors")` reads a gimp-rs checkpoint (any architecture,
/// with its classes and expression preprocessing); `Model.from_weights("transmil", "w.pt")`
/// reads the reference code's weights by their parameter names. `predict()` releases the GIL.
#[pyclass(module = "gimp_rs", frozen)]
pub struct Model {
    arch: &'static ArchInfo,
    weights: BTreeMap<String, Tensor>,
    config: Option<serde_json::Value>,
    classes: Option<Vec<String>>,
    preprocessing: Option<Preprocessing>,
    training: Option<serde_json::Value>,
    info: BTreeMap<String, String>,
    path: PathBuf,
}

/// What `Model.predict` returns for one patient.
#[pyclass(module = "gimp_rs", frozen, get_all)]
pub struct Prediction {
    /// Class probabilities (softmax of the logits over the checkpoint's temperature), float32 `[C]`.
    probabilities: Py<PyArray1<f32>>,
    /// Class scores, float32 `[C]`.
    logits: Py<PyArray1<f32>>,
    /// Index of the most probable class.
    predicted: usize,
    /// Its name, when the model knows its classes (a gimp-rs checkpoint).
    predicted_class: Option<String>,
    /// One score per patch, aligned with the rows of `features` (attention for the MIL models,
    /// CLS attention for TransMIL and GiMP), float32 `[N]`; None without slide features or for
    /// a model without per-patch scores.
    attention: Option<Py<PyArray1<f32>>>,
    /// The representation the classifier reads (CLS_pat for GiMP), float32 `[E]`.
    embedding: Py<PyArray1<f32>>,
    /// The modalities the answer used: "slides", "expression".
    modalities: Vec<&'static str>,
    /// Set when a model fine-tuned on both modalities answered without one (it may be near
    /// chance; also issued as a Python warning).
    warning: Option<String>,
    /// A survival checkpoint's risk score (higher: earlier event; docs/DESIGN.md §34); None for
    /// a classifier, whose `probabilities` are the answer.
    risk: Option<f64>,
    /// A survival checkpoint's survival curve, `P(no event by the end of bin k)` per time bin
    /// (`Model.classes` names the bins), float64 `[K]`; None for a classifier or a Cox model.
    survival: Option<Py<PyArray1<f64>>>,
}

#[pymethods]
impl Prediction {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Prediction(predicted={}{}, probabilities={}, modalities={})",
            self.predicted,
            self.predicted_class
                .as_ref()
                .map(|c| format!(" ('{c}')"))
                .unwrap_or_default(),
            self.probabilities.bind(py),
            values::py_list(&self.modalities)
        )
    }
}

impl Model {
    fn build(&self) -> Result<Loaded, Failure> {
        // Built per call: a model holds its parameters in a single-threaded store, and the call
        // runs with the GIL released. Building is cheap (the weights are shared, not read again).
        let mut loaded = registry::load(self.arch, self.weights.clone(), self.config.clone())
            .map_err(|e| Failure::Model(format!("loading {}: {e}", self.path.display())))?;
        // A temperature stored by `gimp-rs calibrate`.
        loaded.temperature = registry::temperature(&self.info)
            .map_err(|e| Failure::Model(format!("{}: {e}", self.path.display())))?;
        // A survival head recorded by a survival run.
        loaded.survival = gimp_models::SurvivalHead::from_info(&self.info)
            .map_err(|e| Failure::Model(format!("{}: {e}", self.path.display())))?;
        Ok(loaded)
    }

    fn feature_width(&self) -> Option<u64> {
        self.config.as_ref().and_then(feature_width)
    }

    /// Expression values as the model reads them: in its gene order, transformed and
    /// standardised with its training statistics (what `gimp-rs predict --expression` does).
    fn expression_input(&self, values: Vec<f32>, genes: Option<Vec<String>>) -> PyResult<Vec<f32>> {
        let Some(p) = &self.preprocessing else {
            return Err(PyValueError::new_err(
                "expression: this model has no expression preprocessing (load a gimp-rs checkpoint)",
            ));
        };
        let strip = gimp_io::expression::strip_version;
        let ordered: Vec<f32> = match genes {
            None => {
                if values.len() != p.genes.len() {
                    return Err(PyValueError::new_err(format!(
                        "expression: expected {} values in the model's gene order (Model.genes), got {}; or pass genes= to name them",
                        p.genes.len(),
                        values.len()
                    )));
                }
                values
            }
            Some(names) => {
                if names.len() != values.len() {
                    return Err(PyValueError::new_err(format!(
                        "genes: {} names for {} expression values",
                        names.len(),
                        values.len()
                    )));
                }
                let pos: std::collections::HashMap<&str, usize> = names
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (strip(g), i))
                    .collect();
                p.genes
                    .iter()
                    .map(|g| {
                        pos.get(strip(g)).map(|&i| values[i]).ok_or_else(|| {
                            PyValueError::new_err(format!(
                                "genes: gene '{g}' of the model is missing"
                            ))
                        })
                    })
                    .collect::<PyResult<_>>()?
            }
        };
        if let Some(i) = ordered.iter().position(|v| !v.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "expression: the value of gene '{}' is not finite",
                p.genes[i]
            )));
        }
        let transformed: Vec<f32> = ordered.iter().map(|v| p.transform.apply(*v)).collect();
        Ok(gimp_train::data::standardise(&transformed, p))
    }
}

/// The feature width a slide model reads: `d_in` of its config, at the top (ABMIL, CLAM, ...)
/// or in its patch aggregator (GiMP, TransMIL).
fn feature_width(config: &serde_json::Value) -> Option<u64> {
    config["d_in"]
        .as_u64()
        .or_else(|| config["aggregator"]["d_in"].as_u64())
}

struct Raw {
    logits: Vec<f32>,
    probabilities: Vec<f32>,
    attention: Option<Vec<f32>>,
    embedding: Vec<f32>,
    warning: Option<String>,
    risk: Option<f64>,
    survival: Option<Vec<f64>>,
}

#[pymethods]
impl Model {
    /// Reads a gimp-rs checkpoint (`model.safetensors` of any run): weights, architecture,
    /// config, classes and expression preprocessing. Raises `DataError` for a file that is not
    /// one and `ModelError` when its weights do not build its architecture.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let m = detached(py, move || -> Result<Model, Failure> {
            let c = Checkpoint::load(&path)?;
            let m = Model {
                arch: registry::lookup(&c.arch)?,
                training: c
                    .info
                    .get("training")
                    .and_then(|t| serde_json::from_str(t).ok()),
                weights: c.weights,
                config: Some(c.config),
                classes: Some(c.classes),
                preprocessing: c.preprocessing,
                info: c.info,
                path,
            };
            m.build()?;
            Ok(m)
        })?;
        Ok(m)
    }

    /// The reference code's weights for `arch` (`gimp_rs.architectures()`): safetensors, a
    /// `torch.save`d state dict (.pt/.pth, e.g. CLAM's `s_0_checkpoint.pt`) or a Lightning
    /// checkpoint (.ckpt), by the reference's parameter names; the config comes from the
    /// weights' shapes. Such a model has no class names and no expression preprocessing.
    #[staticmethod]
    fn from_weights(py: Python<'_>, arch: String, path: PathBuf) -> PyResult<Self> {
        detached(py, move || -> Result<Model, Failure> {
            let mut m = Model {
                arch: registry::lookup(&arch)?,
                weights: gimp_io::weights::read(&path)?,
                config: None,
                classes: None,
                preprocessing: None,
                training: None,
                info: BTreeMap::new(),
                path,
            };
            // Kept, so later builds skip deriving it from the shapes again.
            m.config = Some(m.build()?.config);
            Ok(m)
        })
    }

    /// The architecture's name (`"gimp"`, `"abmil"`, ...).
    #[getter]
    fn arch(&self) -> &'static str {
        self.arch.name
    }

    /// What the model reads: `"slide"`, `"expression"` or `"multimodal"`.
    #[getter]
    fn input(&self) -> String {
        format!("{:?}", self.arch.input).to_lowercase()
    }

    /// Class names (None for reference weights).
    #[getter]
    fn classes(&self) -> Option<Vec<String>> {
        self.classes.clone()
    }

    /// The genes the model reads, in its order (None without expression preprocessing).
    #[getter]
    fn genes(&self) -> Option<Vec<String>> {
        self.preprocessing.as_ref().map(|p| p.genes.clone())
    }

    /// The expression transform applied before standardising (`"log2p1"` or `"none"`).
    #[getter]
    fn transform(&self) -> Option<&'static str> {
        self.preprocessing.as_ref().map(|p| p.transform.name())
    }

    /// The architecture's config (widths, heads, ...), as recorded in the checkpoint.
    #[getter]
    fn config(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        values::to_py(py, self.config.as_ref().unwrap_or(&serde_json::Value::Null))
    }

    /// The checkpoint's provenance: stage, best epoch, seed, fold, training settings, version.
    #[getter]
    fn info(&self) -> BTreeMap<String, String> {
        self.info.clone()
    }

    /// Runs the model on one patient: `features` float32 `[N, D]` (a slide's bag, e.g. from
    /// `read_features`) and/or `expression`, the patient's raw expression values (float32
    /// `[G]`, before any transform) in the model's gene order (`Model.genes`) or named by
    /// `genes`. The model's own transform and training-split statistics are applied, as
    /// `gimp-rs predict` does.
    ///
    /// Raises `ValueError` for an argument of the wrong dtype, shape or length, or an input the
    /// model does not read; `ModelError` when the model cannot run on it.
    #[pyo3(signature = (features = None, expression = None, genes = None))]
    fn predict(
        &self,
        py: Python<'_>,
        features: Option<&Bound<'_, PyAny>>,
        expression: Option<&Bound<'_, PyAny>>,
        genes: Option<Vec<String>>,
    ) -> PyResult<Prediction> {
        let name = self.arch.name;
        let bag = features
            .map(|f| arrays::f32_matrix("features", f))
            .transpose()?;
        let expr = match expression {
            Some(e) => Some(self.expression_input(arrays::f32_vector("expression", e)?, genes)?),
            None if genes.is_some() => {
                return Err(PyValueError::new_err("genes: given without expression"))
            }
            None => None,
        };
        if bag.is_some() && !self.arch.input.reads_slides() {
            return Err(PyValueError::new_err(format!(
                "features: {name} reads expression, not slide features"
            )));
        }
        if expr.is_some() && !self.arch.input.reads_expression() {
            return Err(PyValueError::new_err(format!(
                "expression: {name} reads slide features, not expression"
            )));
        }
        if let Some((_, _, d)) = &bag {
            if let Some(want) = self.feature_width() {
                if *d as u64 != want {
                    return Err(PyValueError::new_err(format!(
                        "features: the model reads {want}-d features, got {d}-d"
                    )));
                }
            }
        }
        let (has_bag, has_expr) = (bag.is_some(), expr.is_some());
        let raw = detached(py, || -> Result<Raw, Failure> {
            let source = ModelSource {
                loaded: self.build()?,
                classes: self.classes.clone(),
                preprocessing: self.preprocessing.clone(),
                training: self.training.clone(),
                // The width was checked above; arrays carry no encoder record.
                features: None,
                origin: format!("the {name} model"),
            };
            let bag = bag
                .map(|(v, n, d)| Tensor::from_vec(v, (n, d), &Device::Cpu))
                .transpose()?;
            let expr = expr
                .map(|v| {
                    let g = v.len();
                    Tensor::from_vec(v, g, &Device::Cpu)
                })
                .transpose()?;
            let input = source
                .loaded
                .arch
                .input
                .select(bag.as_ref().map(BagInput::from), expr.as_ref())
                .map_err(|missing| {
                    Failure::Argument(format!(
                        "{name} {missing}: give features= and/or expression="
                    ))
                })?;
            let out = source.loaded.model.forward(&input, &Mode::inference())?;
            let (risk, survival) = match &source.loaded.survival {
                Some(head) => (
                    head.risk(&out.logits)?.first().copied(),
                    head.survival_curve(&out.logits)?,
                ),
                None => (None, None),
            };
            Ok(Raw {
                risk,
                survival,
                logits: out.logits.to_vec1()?,
                probabilities: source.loaded.probabilities(&out.logits)?.to_vec1()?,
                attention: out.attention.map(|a| a.to_vec1()).transpose()?,
                embedding: out.embedding.to_vec1()?,
                warning: source.missing_modality_warning(has_bag, has_expr),
            })
        })?;
        if let Some(w) = &raw.warning {
            let cat = py.get_type::<pyo3::exceptions::PyUserWarning>();
            PyErr::warn(py, &cat, &std::ffi::CString::new(w.as_str())?, 1)?;
        }
        // As `gimp-rs predict` picks it.
        let predicted = raw
            .probabilities
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap_or(0);
        Ok(Prediction {
            predicted,
            predicted_class: self
                .classes
                .as_ref()
                .and_then(|c| c.get(predicted).cloned()),
            probabilities: arrays::vector(py, raw.probabilities).unbind(),
            logits: arrays::vector(py, raw.logits).unbind(),
            attention: raw.attention.map(|a| arrays::vector(py, a).unbind()),
            embedding: arrays::vector(py, raw.embedding).unbind(),
            modalities: [(has_bag, "slides"), (has_expr, "expression")]
                .into_iter()
                .filter_map(|(has, n)| has.then_some(n))
                .collect(),
            warning: raw.warning,
            risk: raw.risk,
            survival: raw.survival.map(|s| arrays::vector(py, s).unbind()),
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "Model(arch='{}', input='{}', classes={}, path='{}')",
            self.arch.name,
            self.input(),
            self.classes
                .as_deref()
                .map_or("None".to_string(), values::py_list),
            self.path.display()
        )
    }
}
