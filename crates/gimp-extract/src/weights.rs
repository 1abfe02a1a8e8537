//! An encoder's weights by parameter name, taken out one tensor at a time as `f32` (so the file's
//! copy is freed as the network's is built), with errors that name the file, the tensor and the
//! shape that was expected.

use candle_core::{DType, Tensor};
use gimp_io::{DataError, ErrorKind, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub struct Params {
    map: BTreeMap<String, Tensor>,
    path: PathBuf,
    encoder: &'static str,
}

impl Params {
    /// `map` as read from `path` for encoder `encoder` (named in errors).
    pub fn new(map: BTreeMap<String, Tensor>, path: &Path, encoder: &'static str) -> Self {
        Self {
            map,
            path: path.to_path_buf(),
            encoder,
        }
    }

    pub fn keys(&self) -> BTreeSet<String> {
        self.map.keys().cloned().collect()
    }

    /// Shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.map.get(name).map(|t| t.dims().to_vec())
    }

    /// Tensor `name` with its shape, as `f32` (half-precision files are widened).
    pub fn take_any(&mut self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let t = self.map.remove(name).ok_or_else(|| {
            DataError::new(
                ErrorKind::Missing,
                &self.path,
                format!("no tensor '{name}' ({} weights expected)", self.encoder),
            )
        })?;
        let shape = t.dims().to_vec();
        let data = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| {
                DataError::new(
                    ErrorKind::Unsupported,
                    &self.path,
                    format!("tensor '{name}' cannot be read as f32: {e}"),
                )
            })?;
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(DataError::new(
                ErrorKind::NonFinite,
                &self.path,
                format!("tensor '{name}' holds {} at flat index {i}", data[i]),
            ));
        }
        Ok((shape, data))
    }

    /// Tensor `name`, which must have shape `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let (got, data) = self.take_any(name)?;
        if got != shape {
            return Err(self.shape_error(name, &got, &format!("{shape:?}")));
        }
        Ok(data)
    }

    pub fn shape_error(&self, name: &str, got: &[usize], expected: &str) -> DataError {
        DataError::new(
            ErrorKind::Shape,
            &self.path,
            format!(
                "tensor '{name}' has shape {got:?}; {} expects {expected}",
                self.encoder
            ),
        )
    }

    /// Renames tensor `from` to `to` (for files whose names differ from timm's).
    pub fn rename(&mut self, from: &str, to: &str) {
        if let Some(t) = self.map.remove(from) {
            self.map.insert(to.to_string(), t);
        }
    }

    /// Renames every tensor whose name starts with `prefix` to the rest of its name (a tower
    /// saved inside a larger model: `visual.trunk.blocks.0…` → `blocks.0…`).
    pub fn strip_prefix(&mut self, prefix: &str) {
        let names: Vec<String> = self
            .map
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        for name in names {
            self.rename(&name, &name[prefix.len()..]);
        }
    }

    /// Removes tensor `name` as it is, for callers that combine tensors.
    pub fn remove(&mut self, name: &str) -> Option<Tensor> {
        self.map.remove(name)
    }

    pub fn insert(&mut self, name: String, t: Tensor) {
        self.map.insert(name, t);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
