//! CLAM / TRIDENT HDF5 files, through the pure-Rust `hdf5-pure` crate (no libhdf5 needed).
//!
//! * features: `features` f32 `[N, D]` + `coords` int32/int64 `[N, 2]`, no attributes (CLAM
//!   `extract_features_fp.py`);
//! * patches: `coords` `[N, 2]` with the patching parameters as attributes **on the dataset**
//!   (CLAM `create_patches_fp.py`; TRIDENT adds `patch_size_level0` and magnifications).

use crate::atomic::write_bytes_atomic;
use crate::bag::{check_size, Bag};
use crate::error::{DataError, ErrorKind, Result};
use hdf5_pure::{AttrValue, DType, File, FileBuilder, MaxExtent};
use std::collections::HashMap;
use std::path::Path;

fn h5_err(path: &Path, what: &str, err: hdf5_pure::Error) -> DataError {
    DataError::malformed(path, format!("{what}: {err}"))
}

fn open(path: &Path) -> Result<File> {
    if !path.exists() {
        return Err(DataError::new(ErrorKind::Io, path, "file does not exist"));
    }
    File::open_streaming(path).map_err(|e| h5_err(path, "not a readable HDF5 file", e))
}

fn dataset(file: &File, path: &Path, name: &str) -> Result<hdf5_pure::Dataset> {
    file.dataset(name).map_err(|_| {
        let have = file.root().datasets().unwrap_or_default().join(", ");
        DataError::new(
            ErrorKind::Missing,
            path,
            format!("no dataset '{name}' (the file has: [{have}])"),
        )
    })
}

fn shape2(ds: &hdf5_pure::Dataset, path: &Path, name: &str) -> Result<(u64, u64)> {
    let shape = ds
        .shape()
        .map_err(|e| h5_err(path, &format!("dataset '{name}' shape"), e))?;
    match shape.as_slice() {
        [n, d] => Ok((*n, *d)),
        other => Err(DataError::new(
            ErrorKind::Shape,
            path,
            format!("expected a 2-D array, found shape {other:?}"),
        )
        .at(format!("dataset '{name}'"))),
    }
}

/// Reads the shape `[N, D]` of the `features` dataset without reading the data.
pub fn feature_shape(path: &Path) -> Result<(usize, usize)> {
    let file = open(path)?;
    let ds = dataset(&file, path, "features")?;
    let (n, d) = shape2(&ds, path, "features")?;
    Ok((n as usize, d as usize))
}

/// Refuses a dataset whose chunks (from the layout message) or whole size would need more than
/// `max_bytes` to read: the reader allocates a whole chunk at a time, and a damaged header can
/// claim gigabyte chunks for a tiny array (found by fuzzing).
fn check_storage(
    ds: &hdf5_pure::Dataset,
    path: &Path,
    name: &str,
    elem: u64,
    max_bytes: u64,
) -> Result<()> {
    let shape = ds
        .shape()
        .map_err(|e| h5_err(path, &format!("dataset '{name}' shape"), e))?;
    let total = shape
        .iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d))
        .unwrap_or(u64::MAX);
    let chunk = match ds.chunk_shape() {
        Ok(Some(c)) => c
            .iter()
            .try_fold(elem.max(8), |acc, &d| acc.checked_mul(d.max(1)))
            .unwrap_or(u64::MAX),
        _ => 0,
    };
    // Every stored chunk must lie inside the file: the reader reads whole spans between chunk
    // addresses, and a damaged index pointing past the end would make it allocate that span.
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(u64::MAX);
    if let Ok(chunks) = ds.chunks() {
        if let Some(bad) = chunks.iter().find(|c| {
            c.address
                .checked_add(c.storage_size)
                .is_none_or(|end| end > file_len)
        }) {
            return Err(DataError::malformed(
                path,
                format!(
                    "a chunk of {} bytes at offset {} lies outside the {file_len}-byte HDF5 file \
                     (truncated or damaged)",
                    bad.storage_size, bad.address
                ),
            )
            .at(format!("dataset '{name}'")));
        }
    }
    let need = total.max(chunk);
    if need > max_bytes {
        return Err(DataError::new(
            ErrorKind::TooLarge,
            path,
            format!(
                "reading it would need {need} bytes (data {total}, one chunk {chunk}), over the \
                 {max_bytes}-byte limit"
            ),
        )
        .at(format!("dataset '{name}'")));
    }
    Ok(())
}

/// Coordinates are at most a few million rows; no real file needs more than this to read them.
const MAX_COORD_BYTES: u64 = 1 << 30;

fn read_coords(file: &File, path: &Path, expected_rows: Option<u64>) -> Result<Vec<[i64; 2]>> {
    let ds = dataset(file, path, "coords")?;
    let (n, w) = shape2(&ds, path, "coords")?;
    check_storage(&ds, path, "coords", 8, MAX_COORD_BYTES)?;
    if w != 2 {
        return Err(DataError::new(
            ErrorKind::Shape,
            path,
            format!("expected [N, 2] (x, y), found [{n}, {w}]"),
        )
        .at("dataset 'coords'"));
    }
    if let Some(rows) = expected_rows {
        if rows != n {
            return Err(DataError::new(
                ErrorKind::Mismatch,
                path,
                format!("'coords' has {n} rows but 'features' has {rows}"),
            ));
        }
    }
    let dtype = ds
        .dtype()
        .map_err(|e| h5_err(path, "dataset 'coords' type", e))?;
    let flat: Vec<i64> = match dtype {
        DType::I32 | DType::I16 | DType::I8 | DType::U8 | DType::U16 | DType::U32 => ds
            .read_i64()
            .map_err(|e| h5_err(path, "dataset 'coords'", e))?,
        DType::I64 => ds
            .read_i64()
            .map_err(|e| h5_err(path, "dataset 'coords'", e))?,
        other => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("coordinates must be integers, found {other}"),
            )
            .at("dataset 'coords'"))
        }
    };
    if flat.len() as u64 != n * 2 {
        return Err(DataError::malformed(path, "dataset 'coords' is truncated"));
    }
    Ok(flat.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
}

/// Reads a CLAM feature file: `features` (f32, or f64 converted) and, when present, `coords`.
pub fn read_features(path: &Path, max_bytes: u64) -> Result<Bag> {
    let (rows, coords) = open_feature_rows(path, max_bytes)?;
    let features = rows.window(0, rows.n)?;
    Bag::from_parts(path, rows.n, rows.d, features, coords)
}

/// A CLAM feature file's `features`, read a window of rows at a time ([`crate::bag::BagRows`]):
/// only the chunks a window overlaps are read, so inference on a whole slide never holds the
/// file's bag whole. The shape, type and chunk sizes are checked on opening, each window's
/// values as they are read.
pub struct FeatureRows {
    path: std::path::PathBuf,
    features: hdf5_pure::Dataset,
    n: usize,
    d: usize,
    f64: bool,
}

/// Opens `path`'s `features` for reading by rows, with its `coords` when present. `max_bytes`
/// bounds the bag as [`read_features`] does.
pub fn open_feature_rows(
    path: &Path,
    max_bytes: u64,
) -> Result<(FeatureRows, Option<crate::bag::Coords>)> {
    let file = open(path)?;
    let ds = dataset(&file, path, "features")?;
    let (n, d) = shape2(&ds, path, "features")?;
    check_size(path, n, d, 4, max_bytes)?;
    check_storage(&ds, path, "features", 8, max_bytes.saturating_mul(2))?;
    crate::bag::check_dims(path, n as usize, d as usize)?;
    let f64 = match ds
        .dtype()
        .map_err(|e| h5_err(path, "dataset 'features' type", e))?
    {
        DType::F32 => false,
        DType::F64 => true,
        other => {
            return Err(DataError::new(
                ErrorKind::Unsupported,
                path,
                format!("features must be float32 or float64, found {other}"),
            )
            .at("dataset 'features'"))
        }
    };
    let coords = match file.dataset("coords").is_ok() {
        true => Some(read_coords(&file, path, Some(n))?),
        false => None,
    };
    let rows = FeatureRows {
        path: path.to_path_buf(),
        features: ds,
        n: n as usize,
        d: d as usize,
        f64,
    };
    Ok((rows, coords))
}

impl crate::bag::BagRows for FeatureRows {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.d)
    }

    fn read_rows(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let count = crate::bag::window_rows(&self.path, first, out.len(), self.n, self.d)?;
        out.copy_from_slice(&self.window(first, count)?);
        Ok(())
    }

    fn read_all(&self) -> Result<Vec<f32>> {
        self.window(0, self.n)
    }
}

impl FeatureRows {
    /// Rows `first .. first + count` (within the bag), decoded to f32 and checked finite.
    fn window(&self, first: usize, count: usize) -> Result<Vec<f32>> {
        let (start, rows) = (first as u64, count as u64);
        let values = match self.f64 {
            false => self.features.read_f32_rows(start, rows),
            true => self
                .features
                .read_f64_rows(start, rows)
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
        }
        .map_err(|e| {
            h5_err(
                &self.path,
                "dataset 'features' could not be read (truncated?)",
                e,
            )
        })?;
        if values.len() != count * self.d {
            return Err(DataError::malformed(
                &self.path,
                format!(
                    "rows {first}..{} gave {} values, expected {}",
                    first + count,
                    values.len(),
                    count * self.d
                ),
            )
            .at("dataset 'features'"));
        }
        crate::bag::check_finite_from(&self.path, &values, self.d, first)?;
        Ok(values)
    }
}

/// How rows are chunked when writing. CLAM writes one row per chunk (it appends batch by batch to
/// a resizable dataset); `Clam` reproduces that byte layout, `Rows(k)` is the faster choice for
/// files only this tool reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunking {
    Clam,
    Rows(u64),
}

/// Which encoder made a feature file: attributes `encoder` and `encoder_weights_sha256` of its
/// `features` dataset (gimp-rs writes them; CLAM and TRIDENT files have none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureProvenance {
    /// The encoder's registry name (TRIDENT's: `uni_v1`, `virchow2`, …).
    pub encoder: String,
    /// SHA-256 of the weights file, lower-case hex.
    pub weights_sha256: String,
}

/// Writes a CLAM feature file (`features` f32 [N, D], `coords` int32 [N, 2], resizable along N).
pub fn write_features(path: &Path, bag: &Bag, chunking: Chunking) -> Result<()> {
    write_features_with(path, bag, chunking, None)
}

/// [`write_features`], recording the encoder on the `features` dataset when given.
pub fn write_features_with(
    path: &Path,
    bag: &Bag,
    chunking: Chunking,
    provenance: Option<&FeatureProvenance>,
) -> Result<()> {
    let n = bag.n as u64;
    let d = bag.d as u64;
    let rows = match chunking {
        Chunking::Clam => 1,
        Chunking::Rows(k) => k.clamp(1, n.max(1)),
    };
    let mut b = FileBuilder::new();
    let ds = b
        .create_dataset("features")
        .with_f32_data(&bag.features)
        .with_shape(&[n, d])
        .with_maxshape(&[MaxExtent::Unlimited, MaxExtent::Fixed(d)])
        .with_chunks(&[rows, d]);
    if let Some(p) = provenance {
        ds.set_attr("encoder", AttrValue::String(p.encoder.clone()));
        ds.set_attr(
            "encoder_weights_sha256",
            AttrValue::String(p.weights_sha256.clone()),
        );
    }
    if let Some(coords) = &bag.coords {
        let mut flat = Vec::with_capacity(coords.len() * 2);
        for c in coords {
            for v in c {
                flat.push(i32::try_from(*v).map_err(|_| {
                    DataError::new(
                        ErrorKind::Value,
                        path,
                        format!("coordinate {v} does not fit CLAM's int32 'coords'"),
                    )
                })?);
            }
        }
        b.create_dataset("coords")
            .with_i32_data(&flat)
            .with_shape(&[n, 2])
            .with_maxshape(&[MaxExtent::Unlimited, MaxExtent::Fixed(2)])
            .with_chunks(&[rows, 2]);
    }
    let bytes = b
        .finish()
        .map_err(|e| h5_err(path, "could not encode HDF5", e))?;
    write_bytes_atomic(path, &bytes)
}

/// The encoder recorded on a feature file's `features` dataset; `None` when the file records
/// none (CLAM's and TRIDENT's files).
pub fn read_provenance(path: &Path) -> Result<Option<FeatureProvenance>> {
    let file = open(path)?;
    let ds = dataset(&file, path, "features")?;
    let attrs = ds
        .attrs()
        .map_err(|e| h5_err(path, "attributes of 'features'", e))?;
    let text = |k: &str| attrs.get(k).and_then(|v| v.as_str().map(str::to_string));
    Ok(text("encoder").map(|encoder| FeatureProvenance {
        encoder,
        weights_sha256: text("encoder_weights_sha256").unwrap_or_default(),
    }))
}

/// Patching parameters stored as attributes of `coords` in CLAM and TRIDENT patch files.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PatchAttrs {
    /// Patch side in pixels at `patch_level` (CLAM) or at the target magnification (TRIDENT).
    pub patch_size: Option<i64>,
    pub patch_level: Option<i64>,
    pub downsample: Option<[f64; 2]>,
    pub level_dim: Option<[i64; 2]>,
    /// TRIDENT: patch side in level-0 pixels.
    pub patch_size_level0: Option<i64>,
    pub level0_magnification: Option<f64>,
    pub target_magnification: Option<f64>,
    pub overlap: Option<i64>,
    pub name: Option<String>,
}

impl PatchAttrs {
    /// Side of a patch in level-0 pixels: TRIDENT's attribute, else CLAM's
    /// `patch_size × downsample`.
    pub fn level0_patch_size(&self) -> Option<f64> {
        if let Some(s) = self.patch_size_level0 {
            return Some(s as f64);
        }
        match (self.patch_size, self.downsample) {
            (Some(s), Some([dx, _])) => Some(s as f64 * dx),
            (Some(s), None) if self.patch_level == Some(0) => Some(s as f64),
            _ => None,
        }
    }
}

/// A patch-coordinate file: level-0 top-left corners and how they were made.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchFile {
    pub coords: Vec<[i64; 2]>,
    pub attrs: PatchAttrs,
}

fn attr_i64(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<i64> {
    let v = attrs.get(key)?;
    v.as_i64()
        .or_else(|| v.to_i64s().and_then(|a| a.first().copied()))
        .or_else(|| v.as_f64().map(|f| f as i64))
}

fn attr_f64(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<f64> {
    let v = attrs.get(key)?;
    v.as_f64()
        .or_else(|| v.to_f64s().and_then(|a| a.first().copied()))
        .or_else(|| v.as_i64().map(|i| i as f64))
}

fn attr_pair_f64(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<[f64; 2]> {
    let v = attrs.get(key)?.to_f64s()?;
    (v.len() == 2).then(|| [v[0], v[1]])
}

fn attr_pair_i64(attrs: &HashMap<String, AttrValue>, key: &str) -> Option<[i64; 2]> {
    let v = attrs.get(key)?.to_i64s()?;
    (v.len() == 2).then(|| [v[0], v[1]])
}

/// Reads a CLAM or TRIDENT patch file.
pub fn read_patches(path: &Path) -> Result<PatchFile> {
    let file = open(path)?;
    let coords = read_coords(&file, path, None)?;
    let ds = dataset(&file, path, "coords")?;
    let attrs = ds
        .attrs()
        .map_err(|e| h5_err(path, "attributes of 'coords'", e))?;
    let attrs = PatchAttrs {
        patch_size: attr_i64(&attrs, "patch_size"),
        patch_level: attr_i64(&attrs, "patch_level"),
        downsample: attr_pair_f64(&attrs, "downsample"),
        level_dim: attr_pair_i64(&attrs, "level_dim")
            .or_else(|| attr_pair_i64(&attrs, "downsampled_level_dim")),
        patch_size_level0: attr_i64(&attrs, "patch_size_level0"),
        level0_magnification: attr_f64(&attrs, "level0_magnification"),
        target_magnification: attr_f64(&attrs, "target_magnification"),
        overlap: attr_i64(&attrs, "overlap"),
        name: attrs
            .get("name")
            .and_then(|v| v.as_str().map(str::to_string)),
    };
    if attrs.patch_size.is_none() && attrs.patch_size_level0.is_none() {
        return Err(DataError::new(
            ErrorKind::Missing,
            path,
            "attributes of 'coords' name no patch size ('patch_size' or 'patch_size_level0')",
        )
        .at("dataset 'coords'"));
    }
    Ok(PatchFile { coords, attrs })
}

/// Writes a patch file with CLAM's attributes (and TRIDENT's, when set), readable by both tools.
pub fn write_patches(path: &Path, patches: &PatchFile) -> Result<()> {
    let n = patches.coords.len() as u64;
    let flat: Vec<i64> = patches.coords.iter().flat_map(|c| [c[0], c[1]]).collect();
    let a = &patches.attrs;
    let mut b = FileBuilder::new();
    let ds = b
        .create_dataset("coords")
        .with_i64_data(&flat)
        .with_shape(&[n, 2])
        .with_maxshape(&[MaxExtent::Unlimited, MaxExtent::Fixed(2)])
        .with_chunks(&[1, 2]);
    if let Some(v) = a.patch_size {
        ds.set_attr("patch_size", AttrValue::I64(v));
    }
    if let Some(v) = a.patch_level {
        ds.set_attr("patch_level", AttrValue::I64(v));
    }
    if let Some(v) = a.downsample {
        ds.set_attr("downsample", AttrValue::F64Array(v.to_vec()));
    }
    if let Some(v) = a.level_dim {
        ds.set_attr("downsampled_level_dim", AttrValue::I64Array(v.to_vec()));
        ds.set_attr("level_dim", AttrValue::I64Array(v.to_vec()));
    }
    if let Some(v) = a.patch_size_level0 {
        ds.set_attr("patch_size_level0", AttrValue::I64(v));
    }
    if let Some(v) = a.level0_magnification {
        ds.set_attr("level0_magnification", AttrValue::F64(v));
    }
    if let Some(v) = a.target_magnification {
        ds.set_attr("target_magnification", AttrValue::F64(v));
    }
    if let Some(v) = a.overlap {
        ds.set_attr("overlap", AttrValue::I64(v));
    }
    if let Some(v) = &a.name {
        ds.set_attr("name", AttrValue::String(v.clone()));
    }
    let bytes = b
        .finish()
        .map_err(|e| h5_err(path, "could not encode HDF5", e))?;
    write_bytes_atomic(path, &bytes)
}

/// Writes per-patch scores as CLAM's heatmap step saves them: `attention_scores` f32 [N, 1]
/// and `coords` int64 [N, 2] (level-0 top-left corners), rows aligned.
pub fn write_scores(path: &Path, coords: &[[i64; 2]], scores: &[f32]) -> Result<()> {
    if coords.len() != scores.len() {
        return Err(DataError::new(
            ErrorKind::Mismatch,
            path,
            format!("{} coordinates for {} scores", coords.len(), scores.len()),
        ));
    }
    let n = scores.len() as u64;
    let flat: Vec<i64> = coords.iter().flat_map(|c| [c[0], c[1]]).collect();
    let mut b = FileBuilder::new();
    b.create_dataset("attention_scores")
        .with_f32_data(scores)
        .with_shape(&[n, 1]);
    b.create_dataset("coords")
        .with_i64_data(&flat)
        .with_shape(&[n, 2]);
    let bytes = b
        .finish()
        .map_err(|e| h5_err(path, "could not encode HDF5", e))?;
    write_bytes_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encoder_is_recorded_on_the_features_and_read_back() {
        let d = tempfile::tempdir().unwrap();
        let bag =
            Bag::from_parts(d.path(), 2, 3, vec![0.5; 6], Some(vec![[0, 0], [256, 0]])).unwrap();
        let plain = d.path().join("plain.h5");
        write_features(&plain, &bag, Chunking::Clam).unwrap();
        assert_eq!(read_provenance(&plain).unwrap(), None);
        let p = FeatureProvenance {
            encoder: "uni_v1".into(),
            weights_sha256: "ab".repeat(32),
        };
        let tagged = d.path().join("tagged.h5");
        write_features_with(&tagged, &bag, Chunking::Clam, Some(&p)).unwrap();
        assert_eq!(read_provenance(&tagged).unwrap(), Some(p));
        assert_eq!(
            read_features(&tagged, 1 << 20).unwrap().features,
            bag.features
        );
    }

    #[test]
    fn feature_rows_read_windows_of_the_whole_bag_and_name_a_bad_row() {
        use crate::bag::BagRows;
        let d = tempfile::tempdir().unwrap();
        let (n, w) = (37, 5);
        let values: Vec<f32> = (0..n * w).map(|i| i as f32 * 0.25 - 3.0).collect();
        let coords: Vec<[i64; 2]> = (0..n as i64).map(|i| [i * 256, 512]).collect();
        let bag = Bag::from_parts(d.path(), n, w, values.clone(), Some(coords.clone())).unwrap();
        for (name, chunking) in [("clam.h5", Chunking::Clam), ("rows.h5", Chunking::Rows(8))] {
            let path = d.path().join(name);
            write_features(&path, &bag, chunking).unwrap();
            let (rows, c) = open_feature_rows(&path, 1 << 20).unwrap();
            assert_eq!(rows.dims(), (n, w));
            assert_eq!(c.as_deref(), Some(coords.as_slice()));
            let mut out = vec![0f32; 10 * w];
            rows.read_rows(13, &mut out).unwrap();
            assert_eq!(out, values[13 * w..23 * w]);
            assert_eq!(rows.read_all().unwrap(), values);
            assert!(rows.read_rows(30, &mut out).is_err(), "past the last row");
        }
        // A bad value is named by its row in the bag, not in the window.
        let mut bad = values;
        bad[21 * w + 2] = f32::NAN;
        let bag = Bag {
            features: bad,
            ..bag
        };
        let path = d.path().join("nan.h5");
        write_features(&path, &bag, Chunking::Rows(8)).unwrap();
        let (rows, _) = open_feature_rows(&path, 1 << 20).unwrap();
        let mut out = vec![0f32; 10 * w];
        let e = rows.read_rows(16, &mut out).unwrap_err().to_string();
        assert!(e.contains("row 21, column 2"), "{e}");
        assert!(e.contains("nan.h5"), "{e}");
    }
}
