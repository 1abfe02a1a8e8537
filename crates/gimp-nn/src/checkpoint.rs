//! Checkpoints: one safetensors file holding the weights (by the reference parameter names), the
//! model's config as readable JSON, the class names, and the data preprocessing statistics
//! (gene order, train-split means and standard deviations) that must be re-applied at inference.
//! Written atomically (temporary name, fsync, rename), so a crash never leaves half a checkpoint.

use candle_core::{Device, Tensor};
use gimp_io::{DataError, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub const FORMAT: &str = "gimp-rs checkpoint 1";

/// Expression preprocessing fitted on the training split (`gimp.md` §1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// Transform before z-scoring: `log2p1` or `none`.
    pub transform: String,
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
        let mut meta = HashMap::new();
        meta.insert("gimp.format".to_string(), FORMAT.to_string());
        meta.insert("gimp.arch".to_string(), self.arch.clone());
        meta.insert(
            "gimp.config".to_string(),
            serde_json::to_string_pretty(&self.config).unwrap_or_default(),
        );
        meta.insert(
            "gimp.classes".to_string(),
            serde_json::to_string(&self.classes).unwrap_or_default(),
        );
        meta.insert(
            "gimp.info".to_string(),
            serde_json::to_string_pretty(&self.info).unwrap_or_default(),
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
            meta.insert("gimp.transform".into(), p.transform.clone());
            meta.insert("gimp.genes".into(), p.genes.join("\n"));
        }
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
        if meta.get("gimp.format").map(String::as_str) != Some(FORMAT) {
            return Err(err(
                path,
                ErrorKind::Unsupported,
                "not a gimp-rs checkpoint (no 'gimp.format' metadata); to run reference weights use `gimp-rs model run --arch NAME --weights FILE`",
            ));
        }
        let get = |k: &str| {
            meta.get(k)
                .cloned()
                .ok_or_else(|| err(path, ErrorKind::Missing, format!("metadata '{k}' missing")))
        };
        let config: serde_json::Value =
            serde_json::from_str(&get("gimp.config")?).map_err(|e| {
                err(
                    path,
                    ErrorKind::Malformed,
                    format!("metadata 'gimp.config': {e}"),
                )
            })?;
        let classes: Vec<String> = serde_json::from_str(&get("gimp.classes")?).map_err(|e| {
            err(
                path,
                ErrorKind::Malformed,
                format!("metadata 'gimp.classes': {e}"),
            )
        })?;
        let info: BTreeMap<String, String> = meta
            .get("gimp.info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default();
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
                let genes: Vec<String> =
                    get("gimp.genes")?.split('\n').map(str::to_string).collect();
                let p = Preprocessing {
                    transform: get("gimp.transform")?,
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
            arch: get("gimp.arch")?,
            config,
            classes,
            weights: tensors.into_iter().collect(),
            preprocessing,
            info,
        })
    }
}
