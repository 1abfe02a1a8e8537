//! NumPy `.npy` arrays (`np.save(features)`), through the `npyz` crate.

use crate::bag::{check_size, Bag};
use crate::error::{DataError, ErrorKind, Result};
use npyz::{DType, NpyFile, TypeChar, WriterBuilder};
use std::path::Path;

/// Reads a 2-D float array `[N, D]` as a bag (f32 or f64, little or big endian, C or Fortran order).
pub fn read_bag(path: &Path, max_bytes: u64) -> Result<Bag> {
    check_header(path)?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let npy = NpyFile::new(std::io::BufReader::new(file))
        .map_err(|e| DataError::malformed(path, format!("not a .npy file: {e}")))?;
    let shape: Vec<u64> = npy.shape().to_vec();
    let (n, d) = match shape.as_slice() {
        [n, d] => (*n, *d),
        other => {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                format!("expected a 2-D array [N, D], found shape {other:?}"),
            ))
        }
    };
    check_size(path, n, d, 4, max_bytes)?;
    let fortran = npy.order() == npyz::Order::Fortran;
    let values: Vec<f32> = match npy.dtype() {
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 4 => {
            npy.into_vec::<f32>().map_err(|e| {
                DataError::malformed(path, format!("data unreadable (truncated?): {e}"))
            })?
        }
        DType::Plain(ts) if ts.type_char() == TypeChar::Float && ts.size_field() == 8 => npy
            .into_vec::<f64>()
            .map_err(|e| DataError::malformed(path, format!("data unreadable (truncated?): {e}")))?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!(
                    "features must be float32 or float64, found dtype {}",
                    other.descr()
                ),
            ))
        }
    };
    let (n, d) = (n as usize, d as usize);
    let features = if fortran {
        let mut out = vec![0f32; n * d];
        for j in 0..d {
            for i in 0..n {
                out[i * d + j] = values[j * n + i];
            }
        }
        out
    } else {
        values
    };
    Bag::from_parts(path, n, d, features, None)
}

/// NumPy writes the header as one Python dict literal (`{'descr': …, 'fortran_order': …,
/// 'shape': (…), }`). npyz's parser backtracks exponentially on deeply nested brackets (found by
/// fuzzing: 100 bytes of `[` took minutes), so anything else is refused before it parses.
fn check_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let mut head = [0u8; 12];
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let got = f.read(&mut head).map_err(|e| DataError::io(path, e))?;
    if got < 10 || &head[..6] != b"\x93NUMPY" {
        return Err(DataError::malformed(
            path,
            "not a .npy file (no \\x93NUMPY magic)",
        ));
    }
    let (len, start) = match head[6] {
        1 => (u16::from_le_bytes([head[8], head[9]]) as usize, 10),
        2 | 3 if got >= 12 => (
            u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize,
            12,
        ),
        v => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!(".npy format version {v} is not supported (1, 2, 3 are)"),
            ))
        }
    };
    if len > 1 << 16 {
        return Err(DataError::malformed(
            path,
            format!(".npy header of {len} bytes (NumPy writes a few hundred)"),
        ));
    }
    let mut header = vec![0u8; len];
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut skip = vec![0u8; start];
    f.read_exact(&mut skip)
        .and_then(|_| f.read_exact(&mut header))
        .map_err(|_| DataError::malformed(path, "the .npy header is truncated"))?;
    let text = String::from_utf8_lossy(&header);
    let depth = text.chars().fold((0i32, 0i32), |(d, max), c| match c {
        '{' | '[' | '(' => (d + 1, max.max(d + 1)),
        '}' | ']' | ')' => (d - 1, max),
        _ => (d, max),
    });
    if !text.trim_start().starts_with('{') || depth.1 > 4 {
        return Err(DataError::malformed(
            path,
            "the .npy header is not a NumPy dict literal ({'descr': …, 'fortran_order': …, 'shape': (…)})",
        ));
    }
    Ok(())
}

/// Writes a bag's features as a little-endian float32 `.npy` file.
pub fn write_bag(path: &Path, bag: &Bag) -> Result<()> {
    crate::atomic::write_atomic(path, |w| {
        let mut writer = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[bag.n as u64, bag.d as u64])
            .writer(w)
            .begin_nd()?;
        writer.extend(bag.features.iter().copied())?;
        writer.finish()
    })
}
