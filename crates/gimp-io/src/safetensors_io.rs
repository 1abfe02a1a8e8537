//! safetensors files: a bag is the tensor named `features` (or the only tensor), with `coords`
//! when present.

use crate::bag::{check_size, Bag};
use crate::error::{DataError, ErrorKind, Result};
use safetensors::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;

/// A named f32 tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn to_f32(path: &Path, name: &str, view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>> {
    let b = view.data();
    let out = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::I64 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::I32 => b
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        other => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("dtype {other:?} is not supported"),
            )
            .at(format!("tensor '{name}'")))
        }
    };
    Ok(out)
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| DataError::io(path, e))
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    SafeTensors::deserialize(bytes)
        .map_err(|e| DataError::malformed(path, format!("not a safetensors file: {e}")))
}

/// Reads every tensor of a safetensors file as f32.
pub fn read_all(path: &Path) -> Result<HashMap<String, NamedTensor>> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(path, &name, &view)?;
        out.insert(
            name,
            NamedTensor {
                shape: view.shape().to_vec(),
                data,
            },
        );
    }
    Ok(out)
}

/// Reads a bag: tensor `features` (or the only tensor) `[N, D]`, and `coords` `[N, 2]` if present.
pub fn read_bag(path: &Path, max_bytes: u64) -> Result<Bag> {
    let bytes = read_file(path)?;
    let st = parse(path, &bytes)?;
    let names = st.names();
    let feat_name = if names.iter().any(|n| *n == "features") {
        "features".to_string()
    } else if names.len() == 1 {
        names[0].to_string()
    } else {
        return Err(DataError::new(
            ErrorKind::Missing,
            path,
            format!("no tensor named 'features' among {names:?}"),
        ));
    };
    let view = st
        .tensor(&feat_name)
        .map_err(|e| DataError::malformed(path, e.to_string()))?;
    let (n, d) = match view.shape() {
        [n, d] => (*n, *d),
        [1, n, d] => (*n, *d),
        other => {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                format!("expected [N, D], found {other:?}"),
            )
            .at(format!("tensor '{feat_name}'")))
        }
    };
    check_size(path, n as u64, d as u64, 4, max_bytes)?;
    let features = to_f32(path, &feat_name, &view)?;
    let coords = match st.tensor("coords") {
        Ok(c) => {
            if c.shape().len() != 2 || c.shape()[1] != 2 {
                return Err(DataError::new(
                    ErrorKind::Shape,
                    path,
                    format!("expected [N, 2], found {:?}", c.shape()),
                )
                .at("tensor 'coords'"));
            }
            let v = to_f32(path, "coords", &c)?;
            Some(
                v.chunks_exact(2)
                    .map(|p| [p[0] as i64, p[1] as i64])
                    .collect(),
            )
        }
        Err(_) => None,
    };
    Bag::from_parts(path, n, d, features, coords)
}

/// Writes named f32 tensors (with optional string metadata) atomically.
pub fn write_f32(
    path: &Path,
    tensors: &[(&str, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, d)| {
            let mut b = Vec::with_capacity(d.len() * 4);
            for v in d.iter() {
                b.extend_from_slice(&v.to_le_bytes());
            }
            (n.to_string(), b, s.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| {
                    DataError::new(ErrorKind::Shape, path, e.to_string())
                        .at(format!("tensor '{n}'"))
                })
        })
        .collect::<Result<_>>()?;
    let out = safetensors::serialize(views, &metadata)
        .map_err(|e| DataError::new(ErrorKind::Io, path, e.to_string()))?;
    crate::atomic::write_bytes_atomic(path, &out)
}
