//! A memory-mapped feature store: each bag converted once into a flat file, then read by
//! `mmap` with no parsing.
//!
//! CLAM writes features with one row per HDF5 chunk, so reading a 150,000-patch bag means
//! decoding 150,000 chunks through a B-tree; training reads every bag every epoch. The cache file
//! is a 64-byte header followed by the raw little-endian f32 features and the i64 coordinates.
//! It records the source file's size and modification time and is rebuilt when they change.

use crate::{Cohort, CohortFile};
use gimp_io::{feature_file, Bag, DataError, ErrorKind, Result};
use memmap2::Mmap;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"GIMPBAG1";
const HEADER: usize = 64;

/// A bag read through the cache; the data stays in the page cache, not on the heap.
pub struct CachedBag {
    mmap: Mmap,
    pub n: usize,
    pub d: usize,
    has_coords: bool,
}

impl CachedBag {
    pub fn features(&self) -> &[f32] {
        bytemuck::cast_slice(&self.mmap[HEADER..HEADER + self.n * self.d * 4])
    }

    pub fn coords(&self) -> Option<&[i64]> {
        if !self.has_coords {
            return None;
        }
        let start = HEADER + self.n * self.d * 4;
        Some(bytemuck::cast_slice(&self.mmap[start..start + self.n * 16]))
    }

    /// Copies into an owned [`Bag`].
    pub fn to_bag(&self, path: &Path) -> Result<Bag> {
        let coords = self
            .coords()
            .map(|c| c.chunks_exact(2).map(|p| [p[0], p[1]]).collect());
        Bag::from_parts(path, self.n, self.d, self.features().to_vec(), coords)
    }
}

/// Size and modification time of the source, the cache key.
fn stamp(source: &Path) -> Result<(u64, u64)> {
    let meta = std::fs::metadata(source).map_err(|e| DataError::io(source, e))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    Ok((meta.len(), mtime))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The one rule for where a cohort's feature cache lives (`cohort cache` writes there, training
/// reads from there): `[features] cache_dir` resolved against the cohort file's folder, or
/// `{features.dir}/.gimp-cache` without it. `None` when the cohort has no `[features]` section:
/// then no slide has a feature file and there is nothing to cache.
pub fn location(file: &CohortFile) -> Option<PathBuf> {
    let f = file.config.features.as_ref()?;
    Some(match &f.cache_dir {
        Some(d) => file.resolve(d),
        None => file.resolve(&f.dir).join(".gimp-cache"),
    })
}

/// The cache folder.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
}

impl FeatureCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The cache of `cohort`'s features, at [`location`]; `None` without a `[features]` section.
    pub fn of(cohort: &Cohort) -> Option<Self> {
        location(&cohort.file).map(Self::new)
    }

    /// Brings every feature file of `cohort` into the cache, in parallel, calling `done` after
    /// each; returns how many bags the cache holds for the cohort.
    pub fn fill(&self, cohort: &Cohort, done: impl Fn() + Sync) -> Result<usize> {
        let slides: Vec<(&str, &Path)> = cohort
            .patients
            .iter()
            .flat_map(|p| p.slides.iter())
            .filter_map(|s| s.path.as_deref().map(|p| (s.slide_id.as_str(), p)))
            .collect();
        slides.par_iter().try_for_each(|(id, path)| -> Result<()> {
            self.get(path, id, gimp_io::DEFAULT_MAX_BAG_BYTES)?;
            done();
            Ok(())
        })?;
        Ok(slides.len())
    }

    fn entry(&self, slide_id: &str) -> PathBuf {
        self.dir.join(format!("{slide_id}.gbag"))
    }

    /// Opens the cached bag if it is present and still matches its source.
    pub fn open(&self, source: &Path, slide_id: &str) -> Result<Option<CachedBag>> {
        let path = self.entry(slide_id);
        let Ok(file) = std::fs::File::open(&path) else {
            return Ok(None);
        };
        // SAFETY: cache files are written once under a temporary name and renamed into place, and
        // never modified afterwards, so the mapping cannot change under us.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?;
        if mmap.len() < HEADER || &mmap[..8] != MAGIC {
            return Ok(None);
        }
        let (n, d, flags) = (
            read_u64(&mmap, 8) as usize,
            read_u64(&mmap, 16) as usize,
            read_u64(&mmap, 24),
        );
        let (len, mtime) = stamp(source)?;
        if read_u64(&mmap, 32) != len || read_u64(&mmap, 40) != mtime {
            return Ok(None);
        }
        let has_coords = flags & 1 == 1;
        let expect = n
            .checked_mul(d)
            .and_then(|v| v.checked_mul(4))
            .and_then(|v| v.checked_add(HEADER + if has_coords { n * 16 } else { 0 }));
        if expect != Some(mmap.len()) {
            return Ok(None);
        }
        Ok(Some(CachedBag {
            mmap,
            n,
            d,
            has_coords,
        }))
    }

    /// Converts `source` into the cache (atomically) and returns the mapped bag.
    pub fn build(&self, source: &Path, slide_id: &str, max_bytes: u64) -> Result<CachedBag> {
        let bag = feature_file::read_bag(source, max_bytes)?;
        let (len, mtime) = stamp(source)?;
        let target = self.entry(slide_id);
        gimp_io::atomic::write_atomic(&target, |w| {
            let mut header = [0u8; HEADER];
            header[..8].copy_from_slice(MAGIC);
            header[8..16].copy_from_slice(&(bag.n as u64).to_le_bytes());
            header[16..24].copy_from_slice(&(bag.d as u64).to_le_bytes());
            header[24..32].copy_from_slice(&u64::from(bag.coords.is_some()).to_le_bytes());
            header[32..40].copy_from_slice(&len.to_le_bytes());
            header[40..48].copy_from_slice(&mtime.to_le_bytes());
            w.write_all(&header)?;
            w.write_all(bytemuck::cast_slice(&bag.features))?;
            if let Some(c) = &bag.coords {
                let flat: Vec<i64> = c.iter().flat_map(|p| [p[0], p[1]]).collect();
                w.write_all(bytemuck::cast_slice(&flat))?;
            }
            Ok(())
        })?;
        self.open(source, slide_id)?.ok_or_else(|| {
            DataError::new(
                ErrorKind::Io,
                &target,
                "cache entry written but not readable back",
            )
        })
    }

    /// The cached bag, building it first when absent or stale.
    pub fn get(&self, source: &Path, slide_id: &str, max_bytes: u64) -> Result<CachedBag> {
        match self.open(source, slide_id)? {
            Some(b) => Ok(b),
            None => self.build(source, slide_id, max_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::location;
    use crate::CohortFile;
    use std::path::{Path, PathBuf};

    fn file(toml_text: &str) -> CohortFile {
        CohortFile {
            path: PathBuf::from("/data/cohort/cohort.toml"),
            config: toml::from_str(toml_text).unwrap(),
        }
    }

    #[test]
    fn cache_defaults_to_a_folder_in_the_features_folder() {
        let f = file("[labels]\ncsv = \"d.csv\"\n[features]\ndir = \"features\"\n");
        assert_eq!(
            location(&f).unwrap(),
            Path::new("/data/cohort/features/.gimp-cache")
        );
    }

    #[test]
    fn cache_dir_is_relative_to_the_cohort_file_or_absolute() {
        let f = file(
            "[labels]\ncsv = \"d.csv\"\n[features]\ndir = \"/f\"\ncache_dir = \"scratch/c\"\n",
        );
        assert_eq!(location(&f).unwrap(), Path::new("/data/cohort/scratch/c"));
        let f =
            file("[labels]\ncsv = \"d.csv\"\n[features]\ndir = \"f\"\ncache_dir = \"/tmp/c\"\n");
        assert_eq!(location(&f).unwrap(), Path::new("/tmp/c"));
    }

    #[test]
    fn no_features_no_cache() {
        assert_eq!(location(&file("[labels]\ncsv = \"d.csv\"\n")), None);
    }
}
