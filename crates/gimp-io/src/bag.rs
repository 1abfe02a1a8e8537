//! A slide's bag of patch features, as every reader returns it.

use crate::error::{DataError, ErrorKind, Result};
use std::path::Path;
use std::sync::Arc;

/// Largest bag a reader will allocate unless the caller raises it: 16 GiB of f32 is far above any
/// real slide (150,000 patches × 1024 × 4 B = 0.6 GiB) and far below an OOM kill on a workstation.
pub const DEFAULT_MAX_BAG_BYTES: u64 = 16 << 30;

/// Patch features of one slide, row-major `[n, d]`, with the level-0 top-left corner of each patch
/// when the file stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Bag {
    pub n: usize,
    pub d: usize,
    pub features: Vec<f32>,
    pub coords: Option<Vec<[i64; 2]>>,
}

impl Bag {
    /// Builds a bag after checking that it is non-empty, rectangular, finite and that the
    /// coordinates (if any) have one row per patch. `path` is only used in error messages.
    pub fn from_parts(
        path: &Path,
        n: usize,
        d: usize,
        features: Vec<f32>,
        coords: Option<Vec<[i64; 2]>>,
    ) -> Result<Self> {
        check_dims(path, n, d)?;
        if features.len() != n * d {
            return Err(DataError::new(
                ErrorKind::Shape,
                path,
                format!(
                    "expected {n} × {d} = {} values, found {}",
                    n * d,
                    features.len()
                ),
            ));
        }
        check_finite(path, &features, d)?;
        if let Some(c) = &coords {
            if c.len() != n {
                return Err(DataError::new(
                    ErrorKind::Mismatch,
                    path,
                    format!("'coords' has {} rows but 'features' has {n}", c.len()),
                ));
            }
        }
        Ok(Self {
            n,
            d,
            features,
            coords,
        })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.d..(i + 1) * self.d]
    }
}

/// A bag that can be read a window of rows at a time: inference on a whole slide embeds each
/// window as it is read, so a 150,000-patch bag (0.6 GB of 1024-d features) is never held whole
/// (`docs/DESIGN.md` §42). An HDF5 feature file reads only the window's chunks
/// ([`crate::h5::FeatureRows`]); a bag already in memory copies its rows.
pub trait BagRows {
    /// Patches and values per patch.
    fn dims(&self) -> (usize, usize);

    /// Rows `first .. first + out.len() / d` into `out` (`d` values each), each value checked
    /// to be finite.
    fn read_rows(&self, first: usize, out: &mut [f32]) -> Result<()>;

    /// Every row, `[n, d]` row-major: for the models that need the bag whole.
    fn read_all(&self) -> Result<Vec<f32>> {
        let (n, d) = self.dims();
        let mut all = vec![0f32; n * d];
        self.read_rows(0, &mut all)?;
        Ok(all)
    }

    /// A handle to the same rows that a training step's graph can keep until its backward
    /// pass, which reads the bag a second time instead of holding it (`docs/DESIGN.md` §42);
    /// `None` for a reader that cannot be shared (the bag is then read whole).
    fn shared(&self) -> Option<SharedRows> {
        None
    }
}

/// A row reader that can be kept past the call that received it ([`BagRows::shared`]).
pub type SharedRows = Arc<dyn BagRows + Send + Sync>;

/// The rows `rows` (each below the source's patch count) of a shared reader, in that order:
/// a random subset of a bag (`--max-patches`) read without copying the bag.
#[derive(Clone)]
pub struct SelectedRows {
    source: SharedRows,
    rows: Arc<[usize]>,
}

impl SelectedRows {
    /// Fails when a row is outside the source.
    pub fn new(source: SharedRows, rows: Vec<usize>) -> Result<Self> {
        let (n, d) = source.dims();
        check_dims(Path::new("(selected rows)"), rows.len(), d)?;
        if let Some(&bad) = rows.iter().find(|&&r| r >= n) {
            return Err(DataError::new(
                ErrorKind::Shape,
                Path::new("(selected rows)"),
                format!("row {bad} of a bag of {n} patches"),
            ));
        }
        Ok(Self {
            source,
            rows: rows.into(),
        })
    }
}

impl BagRows for SelectedRows {
    fn dims(&self) -> (usize, usize) {
        (self.rows.len(), self.source.dims().1)
    }

    fn read_rows(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let (n, d) = self.dims();
        let count = window_rows(Path::new("(selected rows)"), first, out.len(), n, d)?;
        for (dst, &r) in out
            .chunks_exact_mut(d)
            .zip(&self.rows[first..first + count])
        {
            self.source.read_rows(r, dst)?;
        }
        Ok(())
    }

    fn shared(&self) -> Option<SharedRows> {
        Some(Arc::new(self.clone()))
    }
}

impl BagRows for Bag {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.d)
    }

    fn read_rows(&self, first: usize, out: &mut [f32]) -> Result<()> {
        let count = window_rows(
            Path::new("(bag in memory)"),
            first,
            out.len(),
            self.n,
            self.d,
        )?;
        out.copy_from_slice(&self.features[first * self.d..(first + count) * self.d]);
        Ok(())
    }

    fn read_all(&self) -> Result<Vec<f32>> {
        Ok(self.features.clone())
    }
}

/// The number of rows a [`BagRows::read_rows`] call asks for (`len` values from row `first`),
/// after checking that they are whole rows inside a bag of `n` × `d`; `path` names the bag.
pub fn window_rows(path: &Path, first: usize, len: usize, n: usize, d: usize) -> Result<usize> {
    let count = len / d.max(1);
    match count * d == len && first.checked_add(count).is_some_and(|end| end <= n) {
        true => Ok(count),
        false => Err(DataError::new(
            ErrorKind::Shape,
            path,
            format!("{len} values from row {first} are not whole rows of a bag of {n} × {d}"),
        )),
    }
}

/// Level-0 top-left corners of a bag's patches, one `[x, y]` per row.
pub type Coords = Vec<[i64; 2]>;

/// Rejects a bag with no patches or no values per patch.
pub fn check_dims(path: &Path, n: usize, d: usize) -> Result<()> {
    if n == 0 {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the bag has no patches (0 feature rows)",
        ));
    }
    if d == 0 {
        return Err(DataError::new(ErrorKind::Shape, path, "feature width is 0"));
    }
    Ok(())
}

/// Rejects NaN and infinities, naming the first bad row and column.
pub fn check_finite(path: &Path, values: &[f32], width: usize) -> Result<()> {
    check_finite_from(path, values, width, 0)
}

/// [`check_finite`] for rows that start at row `first` of the bag.
pub fn check_finite_from(path: &Path, values: &[f32], width: usize, first: usize) -> Result<()> {
    if let Some(pos) = values.iter().position(|v| !v.is_finite()) {
        let (row, col) = match (pos.checked_div(width), pos.checked_rem(width)) {
            (Some(r), Some(c)) => (first + r, c),
            _ => (first + pos, 0),
        };
        return Err(DataError::new(
            ErrorKind::NonFinite,
            path,
            format!("value {} is not a finite number", values[pos]),
        )
        .at(format!("row {row}, column {col}")));
    }
    Ok(())
}

/// Refuses to allocate a bag larger than `max_bytes`, computed from the header before reading.
pub fn check_size(path: &Path, n: u64, d: u64, elem: u64, max_bytes: u64) -> Result<()> {
    let bytes = n.checked_mul(d).and_then(|v| v.checked_mul(elem));
    match bytes {
        Some(b) if b <= max_bytes => Ok(()),
        _ => Err(DataError::new(
            ErrorKind::TooLarge,
            path,
            format!(
                "a [{n}, {d}] bag needs more than the {} MiB limit; raise the limit if this is intended",
                max_bytes >> 20
            ),
        )),
    }
}
