//! `torch.save` files holding one bare tensor — what CLAM writes to `pt_files/{slide_id}.pt` and
//! what most published feature sets (TransMIL, MCAT, PORPOISE) ship.
//!
//! A `.pt` is a zip archive: `{stem}/data.pkl` (a pickle describing a
//! `torch._utils._rebuild_tensor_v2` call) and `{stem}/data/{key}` (the raw little-endian
//! storage). `candle_core::pickle::read_all` returns *no tensors* for such a file (it only walks
//! state dicts), so this module runs candle's lower-level pickle machine itself and reads the
//! storage with the tensor's own offset and strides.

use crate::atomic::write_bytes_atomic;
use crate::bag::{check_size, Bag};
use crate::error::{DataError, ErrorKind, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::DType;
use std::io::{Cursor, Read, Write};
use std::path::Path;

/// A dense tensor read from a `.pt` file, converted to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct PtTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

fn zip_err(path: &Path, e: zip::result::ZipError) -> DataError {
    DataError::malformed(
        path,
        format!("not a torch zip archive (torch.save since PyTorch 1.6): {e}"),
    )
}

/// Runs candle's pickle machine, turning any panic inside it (it indexes tuples without checks)
/// into an error so a hostile or truncated file cannot crash the program.
fn unpickle(path: &Path, bytes: &[u8]) -> Result<Object> {
    let run = crate::guard::catch_quietly(|| -> std::result::Result<Object, String> {
        let mut stack = Stack::empty();
        let mut reader = std::io::BufReader::new(bytes);
        stack.read_loop(&mut reader).map_err(|e| e.to_string())?;
        stack.finalize().map_err(|e| e.to_string())
    });
    match run {
        Ok(Ok(obj)) => Ok(obj),
        Ok(Err(msg)) => {
            Err(DataError::malformed(path, format!("bad pickle: {msg}")).at("data.pkl"))
        }
        Err(_) => Err(
            DataError::malformed(path, "bad pickle: inconsistent object structure").at("data.pkl"),
        ),
    }
}

fn describe(obj: &Object) -> String {
    match obj {
        Object::Dict(items) => {
            let keys: Vec<String> = items
                .iter()
                .take(8)
                .map(|(k, _)| match k {
                    Object::Unicode(s) => format!("'{s}'"),
                    other => format!("{other:?}").chars().take(20).collect(),
                })
                .collect();
            format!(
                "a dict with {} entries (keys: {})",
                items.len(),
                keys.join(", ")
            )
        }
        Object::List(items) => format!("a list of {} items", items.len()),
        Object::Build { .. } => "a pickled Python object (a model or module?)".to_string(),
        _ => "not a tensor".to_string(),
    }
}

type Archive = zip::ZipArchive<std::io::BufReader<std::fs::File>>;

/// Opens the archive and decodes the pickle's description of the one tensor it holds.
fn describe_tensor(path: &Path) -> Result<(Archive, candle_core::pickle::TensorInfo)> {
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        if matches!(e, zip::result::ZipError::InvalidArchive(_)) {
            DataError::malformed(
                path,
                "not a zip archive: a legacy (PyTorch < 1.6) or truncated .pt file; re-save it with a current torch.save",
            )
        } else {
            zip_err(path, e)
        }
    })?;
    let pkl_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or_else(|| {
            DataError::new(ErrorKind::Missing, path, "the archive has no '*/data.pkl'")
        })?;
    let dir = pkl_name.trim_end_matches(".pkl").to_string();
    let mut pkl = Vec::new();
    zip.by_name(&pkl_name)
        .map_err(|e| zip_err(path, e))?
        .read_to_end(&mut pkl)
        .map_err(|e| DataError::malformed(path, format!("cannot read data.pkl: {e}")))?;
    let obj = unpickle(path, &pkl)?;
    let what = describe(&obj);
    let info = crate::guard::catch_quietly(|| {
        obj.into_tensor_info(Object::Unicode("tensor".into()), Path::new(&dir))
    });
    let info = match info {
        Ok(Ok(Some(info))) => info,
        Ok(Ok(None)) => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("expected one bare tensor (torch.save(features)), found {what}"),
            ))
        }
        Ok(Err(e)) => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("tensor description not understood: {e}"),
            ))
        }
        Err(_) => {
            return Err(
                DataError::malformed(path, "tensor description is inconsistent").at("data.pkl"),
            )
        }
    };
    Ok((zip, info))
}

/// The shape of the tensor in a `.pt` file, read from its pickle without loading the storage.
pub fn shape(path: &Path) -> Result<Vec<usize>> {
    Ok(describe_tensor(path)?.1.layout.dims().to_vec())
}

/// Reads the single tensor stored in a `.pt` file.
pub fn read_tensor(path: &Path, max_bytes: u64) -> Result<PtTensor> {
    let (mut zip, info) = describe_tensor(path)?;
    let elem = info.dtype.size_in_bytes();
    let shape: Vec<usize> = info.layout.dims().to_vec();
    let stride: Vec<usize> = info.layout.stride().to_vec();
    let numel: usize = shape.iter().product();
    check_size(path, numel as u64, 1, 4, max_bytes)?;
    let mut raw = Vec::new();
    zip.by_name(&info.path)
        .map_err(|_| {
            DataError::new(
                ErrorKind::Missing,
                path,
                format!("storage '{}' is missing from the archive", info.path),
            )
        })?
        .read_to_end(&mut raw)
        .map_err(|e| {
            DataError::malformed(
                path,
                format!("storage '{}' unreadable (truncated?): {e}", info.path),
            )
        })?;
    let start = info.layout.start_offset() / elem;
    // Highest element index any view position touches, to bound-check before gathering.
    let last = if numel == 0 {
        start
    } else {
        start
            + shape
                .iter()
                .zip(&stride)
                .map(|(s, st)| (s - 1) * st)
                .sum::<usize>()
    };
    if numel > 0 && (last + 1) * elem > raw.len() {
        return Err(DataError::malformed(
            path,
            format!(
                "storage '{}' holds {} bytes, the tensor needs {}",
                info.path,
                raw.len(),
                (last + 1) * elem
            ),
        ));
    }
    let read = |idx: usize| -> Option<f32> {
        let b = &raw[idx * elem..(idx + 1) * elem];
        Some(match info.dtype {
            DType::F32 => f32::from_le_bytes(b.try_into().ok()?),
            DType::F64 => f64::from_le_bytes(b.try_into().ok()?) as f32,
            DType::F16 => half::f16::from_le_bytes(b.try_into().ok()?).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes(b.try_into().ok()?).to_f32(),
            DType::I64 => i64::from_le_bytes(b.try_into().ok()?) as f32,
            DType::U8 => b[0] as f32,
            _ => return None,
        })
    };
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; shape.len()];
    for _ in 0..numel {
        let off = start + index.iter().zip(&stride).map(|(i, s)| i * s).sum::<usize>();
        data.push(read(off).ok_or_else(|| {
            DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("tensor dtype {:?} is not supported", info.dtype),
            )
        })?);
        for axis in (0..shape.len()).rev() {
            index[axis] += 1;
            if index[axis] < shape[axis] {
                break;
            }
            index[axis] = 0;
        }
    }
    Ok(PtTensor { shape, data })
}

/// Reads a `.pt` bag: a float tensor of shape `[N, D]` (a leading batch dimension of 1 is accepted).
pub fn read_bag(path: &Path, max_bytes: u64) -> Result<Bag> {
    let t = read_tensor(path, max_bytes)?;
    let (n, d) = match t.shape.as_slice() {
        [n, d] => (*n, *d),
        [1, n, d] => (*n, *d),
        other => {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                format!("expected features of shape [N, D], found {other:?}"),
            ))
        }
    };
    Bag::from_parts(path, n, d, t.data, None)
}

/// The pickle `torch.save` writes for one contiguous float32 tensor (protocol 2).
fn tensor_pickle(shape: &[usize]) -> Vec<u8> {
    fn int(p: &mut Vec<u8>, v: usize) {
        if v < 256 {
            p.extend([b'K', v as u8]);
        } else if v < 65536 {
            p.push(b'M');
            p.extend((v as u16).to_le_bytes());
        } else {
            p.push(b'J');
            p.extend((v as i32).to_le_bytes());
        }
    }
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn tuple(p: &mut Vec<u8>, items: &[usize]) {
        p.push(b'(');
        for &v in items {
            int(p, v);
        }
        p.push(b't');
    }
    let numel: usize = shape.iter().product();
    let mut strides = vec![1usize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    let mut p = vec![0x80, 2];
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n");
    p.push(b'(');
    // persistent id: ('storage', torch.FloatStorage, '0', 'cpu', numel)
    p.push(b'(');
    unicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    int(&mut p, numel);
    p.push(b't');
    p.push(b'Q');
    int(&mut p, 0);
    tuple(&mut p, shape);
    tuple(&mut p, &strides);
    p.push(0x89); // False: requires_grad
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.push(b't');
    p.push(b'R');
    p.push(b'.');
    p
}

/// Writes `data` (row-major, `shape`) as `torch.save` would write a float32 tensor, so that
/// `torch.load` in the reference tools reads it.
pub fn write_tensor(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "archive".to_string());
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut buf = Cursor::new(Vec::new());
    {
        let mut zw = zip::ZipWriter::new(&mut buf);
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        let aligned = stored.with_alignment(64);
        let enc = |e: zip::result::ZipError| DataError::new(ErrorKind::Io, path, e.to_string());
        let io = |e: std::io::Error| DataError::io(path, e);
        zw.start_file(format!("{stem}/data.pkl"), aligned)
            .map_err(enc)?;
        zw.write_all(&tensor_pickle(shape)).map_err(io)?;
        zw.start_file(format!("{stem}/byteorder"), aligned)
            .map_err(enc)?;
        zw.write_all(b"little").map_err(io)?;
        zw.start_file(format!("{stem}/data/0"), aligned)
            .map_err(enc)?;
        let mut bytes = Vec::with_capacity(data.len() * 4);
        for v in data {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        zw.write_all(&bytes).map_err(io)?;
        zw.start_file(format!("{stem}/version"), aligned)
            .map_err(enc)?;
        zw.write_all(b"3\n").map_err(io)?;
        zw.finish().map_err(enc)?;
    }
    write_bytes_atomic(path, buf.get_ref())
}

/// Writes a bag's features (not its coordinates, as CLAM does) to a `.pt` file.
pub fn write_bag(path: &Path, bag: &Bag) -> Result<()> {
    write_tensor(path, &[bag.n, bag.d], &bag.features)
}

/// Reads a PyTorch state dict saved with `torch.save`: a plain `state_dict()` (CLAM's
/// `s_{fold}_checkpoint.pt`), or a training checkpoint that holds it under `state_dict`
/// (PyTorch Lightning, TransMIL's trainer). A prefix shared by every name (`model.`, `module.`
/// from `DataParallel`) is removed, so the names are the model's own.
pub fn read_state_dict(
    path: &Path,
) -> Result<std::collections::BTreeMap<String, candle_core::Tensor>> {
    if !path.is_file() {
        return Err(DataError::new(ErrorKind::Io, path, "file does not exist"));
    }
    let attempt = |key: Option<&str>| {
        crate::guard::catch_quietly(|| candle_core::pickle::read_all_with_key(path, key))
            .ok()
            .and_then(|r| r.ok())
            .filter(|v| !v.is_empty())
    };
    let tensors = attempt(Some("state_dict")).or_else(|| attempt(None)).ok_or_else(|| {
        DataError::new(
            ErrorKind::Unsupported,
            path,
            "no tensors found: expected a torch.save'd state_dict (or a checkpoint with a 'state_dict' entry) in the zip format of PyTorch >= 1.6",
        )
    })?;
    let mut map: std::collections::BTreeMap<String, candle_core::Tensor> =
        tensors.into_iter().collect();
    for prefix in ["model.", "module."] {
        if map.keys().all(|k| k.starts_with(prefix)) {
            map = map
                .into_iter()
                .map(|(k, v)| (k[prefix.len()..].to_string(), v))
                .collect();
        }
    }
    Ok(map)
}
