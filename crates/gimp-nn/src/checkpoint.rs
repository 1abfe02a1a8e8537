//! Checkpoints: one safetensors file holding the weights (by the reference parameter names), the
//! model's config as readable JSON, the class names, and the data preprocessing statistics
//! (gene order, train-split means and standard deviations) that must be re-applied at inference.
//! Written atomically (temporary name, fsync, rename), so a crash never leaves half a checkpoint.

use candle_core::{Device, Tensor};
use gimp_io::expression::{ExpressionTransform, UnknownTransform};
use gimp_io::{DataError, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FORMAT: &str = "gimp-rs checkpoint 1";
const META_KEY: &str = "gimp";

/// Expression preprocessing fitted on the training split (`docs/DESIGN.md` §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Transform before z-scoring.
    pub transform: ExpressionTransform,
    pub genes: Vec<String>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub arch: String,
    pub config: serde_json::Value,
    pub classes: Vec<String>,
    pub weights: BTreeMap<String, Tensor>,
    pub preprocessing: Option<Preprocessing>,
    /// Free-form provenance (seed, cohort, code version, epoch).
    pub info: BTreeMap<String, String>,
}

fn err(path: &Path, kind: ErrorKind, msg: impl Into<String>) -> DataError {
    DataError::new(kind, path, msg)
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let mut data: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        for (name, t) in &self.weights {
            let v = t
                .to_dtype(candle_core::DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| err(path, ErrorKind::Value, format!("tensor '{name}': {e}")))?;
            data.push((name.clone(), t.dims().to_vec(), v));
        }
        // One metadata entry holding an ordered JSON object: safetensors keeps metadata in a
        // HashMap, whose order would make two saves of the same model differ byte for byte.
        let mut header = serde_json::Map::new();
        header.insert("format".into(), FORMAT.into());
        header.insert("arch".into(), self.arch.clone().into());
        header.insert("config".into(), self.config.clone());
        header.insert(
            "classes".into(),
            serde_json::to_value(&self.classes).unwrap_or_default(),
        );
        header.insert(
            "info".into(),
            serde_json::to_value(&self.info).unwrap_or_default(),
        );
        if let Some(p) = &self.preprocessing {
            if p.genes.len() != p.mean.len() || p.mean.len() != p.std.len() {
                return Err(err(
                    path,
                    ErrorKind::Shape,
                    "preprocessing: genes, mean and std differ in length",
                ));
            }
            data.push((
                "preprocessing.mean".into(),
                vec![p.mean.len()],
                p.mean.clone(),
            ));
            data.push(("preprocessing.std".into(), vec![p.std.len()], p.std.clone()));
            header.insert("transform".into(), p.transform.name().into());
            header.insert(
                "genes".into(),
                serde_json::to_value(&p.genes).unwrap_or_default(),
            );
        }
        let meta = HashMap::from([(
            META_KEY.to_string(),
            serde_json::Value::Object(header).to_string(),
        )]);
        let refs: Vec<(&str, Vec<usize>, &[f32])> = data
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
            .collect();
        gimp_io::safetensors_io::write_f32(path, &refs, Some(meta))
    }

    pub fn load(path: &Path) -> Result<Self, DataError> {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| DataError::malformed(path, format!("not a safetensors file: {e}")))?;
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        let header: serde_json::Value = match meta.get(META_KEY).map(|s| serde_json::from_str(s)) {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                return Err(err(
                    path,
                    ErrorKind::Malformed,
                    format!("metadata '{META_KEY}': {e}"),
                ))
            }
            None => serde_json::Value::Null,
        };
        if header.get("format").and_then(|v| v.as_str()) != Some(FORMAT) {
            return Err(err(
                path,
                ErrorKind::Unsupported,
                "not a gimp-rs checkpoint (no 'gimp' metadata); to run reference weights use `gimp-rs model run --arch NAME --weights FILE`",
            ));
        }
        let field = |k: &str| {
            header.get(k).cloned().ok_or_else(|| {
                err(
                    path,
                    ErrorKind::Missing,
                    format!("metadata field '{k}' missing"),
                )
            })
        };
        let parse = |k: &str, v: serde_json::Value| {
            err(
                path,
                ErrorKind::Malformed,
                format!("metadata field '{k}': {v}"),
            )
        };
        let config = field("config")?;
        let classes: Vec<String> = serde_json::from_value(field("classes")?)
            .map_err(|e| parse("classes", e.to_string().into()))?;
        let info: BTreeMap<String, String> = header
            .get("info")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let arch = field("arch")?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| parse("arch", "not a string".into()))?;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| DataError::malformed(path, format!("tensors unreadable: {e}")))?;
        let preprocessing = match (
            tensors.remove("preprocessing.mean"),
            tensors.remove("preprocessing.std"),
        ) {
            (Some(m), Some(s)) => {
                let v = |t: Tensor, name: &str| {
                    t.to_vec1::<f32>()
                        .map_err(|e| err(path, ErrorKind::Malformed, format!("{name}: {e}")))
                };
                let genes: Vec<String> = serde_json::from_value(field("genes")?)
                    .map_err(|e| parse("genes", e.to_string().into()))?;
                let p = Preprocessing {
                    transform: field("transform")?
                        .as_str()
                        .unwrap_or("none")
                        .parse()
                        .map_err(|e: UnknownTransform| parse("transform", e.to_string().into()))?,
                    genes,
                    mean: v(m, "preprocessing.mean")?,
                    std: v(s, "preprocessing.std")?,
                };
                if p.genes.len() != p.mean.len() {
                    return Err(err(
                        path,
                        ErrorKind::Shape,
                        format!(
                            "{} gene names for {} statistics",
                            p.genes.len(),
                            p.mean.len()
                        ),
                    ));
                }
                Some(p)
            }
            _ => None,
        };
        Ok(Self {
            arch,
            config,
            classes,
            weights: tensors.into_iter().collect(),
            preprocessing,
            info,
        })
    }
}
