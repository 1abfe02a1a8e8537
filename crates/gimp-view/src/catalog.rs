//! The slides a viewer shows: slide files given directly or found in the folders given, and the
//! prediction records (`*.prediction.json`, from `gimp-rs predict --slide`) in those folders,
//! joined by slide id. A record whose slide is not among them brings its own (the path it
//! recorded). A slide that cannot be opened, or a record that cannot be read, stays in the list
//! with its error, and the others work as usual.
//!
//! Starting reads no slide: the list is file names and records, so a folder of hundreds of
//! 40× slides is served at once. A slide is opened on its first use (its header and tile tables,
//! and its smallest level read whole to find a damaged file), its levels and properties are kept,
//! and at most [`OPEN_SLIDES`] readers stay open; a damaged slide's error is known from then on.

use crate::dzi::Pyramid;
use gimp_io::{DataError, ErrorKind};
use gimp_predict::record::{self, PatchScore, SlidePrediction};
use gimp_slide::{batch, Level, Properties, SlideReader};
use lru::LruCache;
use serde::Serialize;
use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// Slides kept open at once. An open slide holds its reader's decoded-tile cache and tile
/// tables (tens of MB for a 40× resection), so a folder of hundreds of slides keeps only the
/// ones being looked at; one closed again is reopened (its header, in milliseconds) on its
/// next use.
pub const OPEN_SLIDES: usize = 8;

/// What is known of a slide once it was opened: kept when the reader is closed again.
#[derive(Debug, Clone)]
pub struct SlideMeta {
    pub levels: Vec<Level>,
    pub properties: Properties,
}

pub struct SlideEntry {
    pub id: String,
    pub path: PathBuf,
    /// Set by the first attempt to open the slide: its levels and properties, or why it cannot
    /// be shown. Unset: not opened yet (the catalog opens nothing when it starts).
    meta: OnceLock<Result<SlideMeta, String>>,
    /// Held while the slide is being opened, so concurrent first requests open it once.
    opening: Mutex<()>,
    /// The record and the folder it lies in (its files are relative to it).
    pub record: Option<Result<(SlidePrediction, PathBuf), String>>,
    scores: OnceLock<Result<Arc<Vec<PatchScore>>, String>>,
}

impl SlideEntry {
    fn new(id: String, path: PathBuf) -> Self {
        Self {
            id,
            path,
            meta: OnceLock::new(),
            opening: Mutex::new(()),
            record: None,
            scores: OnceLock::new(),
        }
    }

    /// An entry that cannot be shown, for a reason known without opening anything.
    fn broken(id: String, path: PathBuf, why: String) -> Self {
        let e = Self::new(id, path);
        let _ = e.meta.set(Err(why));
        e
    }

    /// The slide's levels and properties, `None` until it was opened once.
    pub fn meta(&self) -> Option<&Result<SlideMeta, String>> {
        self.meta.get()
    }

    /// Whether the slide was opened (successfully or not) at least once.
    pub fn opened(&self) -> bool {
        self.meta.get().is_some()
    }

    /// The Deep Zoom geometry, once the slide was opened.
    pub fn pyramid(&self) -> Option<Pyramid> {
        let l0 = *self.meta.get()?.as_ref().ok()?.levels.first()?;
        Some(Pyramid::new(l0.width, l0.height))
    }

    pub fn prediction(&self) -> Option<&(SlidePrediction, PathBuf)> {
        self.record.as_ref()?.as_ref().ok()
    }

    /// The per-patch scores of the record (read once, on first use).
    pub fn scores(&self) -> Option<Result<Arc<Vec<PatchScore>>, String>> {
        let (rec, dir) = self.prediction()?;
        let file = rec.scores_csv.as_ref()?;
        Some(
            self.scores
                .get_or_init(|| {
                    crate::files::resolve(dir, file)
                        .map_err(|_| format!("{}: missing", dir.join(file).display()))
                        .and_then(|p| record::read_scores(&p).map_err(|e| e.to_string()))
                        .map(Arc::new)
                })
                .clone(),
        )
    }

    /// The first error known to keep the slide or its prediction from being shown (a slide not
    /// opened yet has none known).
    pub fn error(&self) -> Option<String> {
        match (self.meta.get(), &self.record) {
            (Some(Err(e)), _) => Some(e.clone()),
            (_, Some(Err(e))) => Some(e.clone()),
            _ => None,
        }
    }
}

pub struct Catalog {
    /// The folders given (canonical): `/files/` serves only under them.
    pub roots: Vec<PathBuf>,
    pub slides: Vec<SlideEntry>,
    /// The slides open now, by index, least recently used first out.
    open: Mutex<LruCache<usize, Arc<dyn SlideReader>>>,
}

#[derive(Serialize)]
pub struct SlideSummary<'a> {
    pub index: usize,
    pub id: &'a str,
    pub has_prediction: bool,
    pub predicted_class: Option<&'a str>,
    /// Whether the slide was opened yet: `error` is only known for those that were.
    pub opened: bool,
    pub error: Option<String>,
}

impl Catalog {
    pub fn open(inputs: &[PathBuf]) -> gimp_io::Result<Self> {
        let mut roots = Vec::new();
        let mut slide_paths = Vec::new();
        let mut records = Vec::new();
        for p in inputs {
            if p.is_dir() {
                roots.push(p.canonicalize().map_err(|e| DataError::io(p, e))?);
                match batch::slide_files(std::slice::from_ref(p)) {
                    Ok(found) => slide_paths.extend(found),
                    Err(e) if e.kind == ErrorKind::Empty => {}
                    Err(e) => return Err(e),
                }
                records.extend(record_files(p)?);
            } else if p.is_file() {
                if p.to_string_lossy().ends_with(record::SUFFIX) {
                    records.push(p.clone());
                } else {
                    slide_paths.push(p.clone());
                }
            } else {
                return Err(DataError::new(
                    ErrorKind::Io,
                    p,
                    "no such slide file or folder",
                ));
            }
        }
        slide_paths.sort();
        slide_paths.dedup();
        let mut by_id: BTreeMap<String, SlideEntry> = BTreeMap::new();
        for p in slide_paths {
            let id = batch::slide_id(&p);
            by_id
                .entry(id.clone())
                .or_insert_with(|| SlideEntry::new(id, p));
        }
        records.sort();
        for r in records {
            let dir = r.parent().unwrap_or(Path::new(".")).to_path_buf();
            let name = r
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let id_from_name = name.trim_end_matches(record::SUFFIX).to_string();
            match SlidePrediction::read(&r) {
                Ok(rec) => {
                    let e = by_id.entry(rec.slide_id.clone()).or_insert_with(|| {
                        SlideEntry::new(rec.slide_id.clone(), rec.slide.clone())
                    });
                    e.record = Some(Ok((rec, dir)));
                }
                Err(err) => {
                    let e = by_id.entry(id_from_name.clone()).or_insert_with(|| {
                        SlideEntry::broken(
                            id_from_name.clone(),
                            r.clone(),
                            "the slide of an unreadable prediction record".into(),
                        )
                    });
                    e.record = Some(Err(err.to_string()));
                }
            }
        }
        if by_id.is_empty() {
            let place = inputs.first().map_or(Path::new(""), |p| p.as_path());
            return Err(DataError::new(
                ErrorKind::Empty,
                place,
                format!(
                    "no slides ({}) and no prediction records (*{}) found",
                    batch::SLIDE_EXTENSIONS.join(", "),
                    record::SUFFIX
                ),
            ));
        }
        Ok(Self {
            roots,
            slides: by_id.into_values().collect(),
            open: Mutex::new(LruCache::new(
                NonZeroUsize::new(OPEN_SLIDES).expect("OPEN_SLIDES > 0"),
            )),
        })
    }

    /// The reader of slide `k`, opened now if it is not open (the first time, its smallest
    /// level is read whole to find a damaged file; [`readable`]). `None`: no such index.
    pub fn reader(&self, k: usize) -> Option<Result<Arc<dyn SlideReader>, String>> {
        let e = self.slides.get(k)?;
        if let Some(Err(err)) = e.meta.get() {
            return Some(Err(err.clone()));
        }
        if let Some(r) = self.open_slides().get(&k) {
            return Some(Ok(r.clone()));
        }
        let _opening = e.opening.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.open_slides().get(&k) {
            return Some(Ok(r.clone()));
        }
        let first_time = !e.opened();
        let opened = gimp_slide::open(&e.path)
            .map_err(|err| err.to_string())
            .and_then(|s| {
                if first_time {
                    readable(s.as_ref())?;
                }
                Ok(Arc::<dyn SlideReader>::from(s))
            });
        let _ = e
            .meta
            .set(opened.as_ref().map_err(Clone::clone).map(|s| SlideMeta {
                levels: s.levels().to_vec(),
                properties: s.properties().clone(),
            }));
        if let Ok(s) = &opened {
            self.open_slides().put(k, s.clone());
        }
        Some(opened)
    }

    /// The reader of slide `k` when it is open now (never opens: no file is touched).
    pub fn open_reader(&self, k: usize) -> Option<Arc<dyn SlideReader>> {
        self.open_slides().get(&k).cloned()
    }

    /// How many slides are open now (at most [`OPEN_SLIDES`]).
    pub fn open_count(&self) -> usize {
        self.open_slides().len()
    }

    fn open_slides(&self) -> MutexGuard<'_, LruCache<usize, Arc<dyn SlideReader>>> {
        // Every update is one call on the map: a panic elsewhere cannot leave it half-changed.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn summaries(&self) -> Vec<SlideSummary<'_>> {
        self.slides
            .iter()
            .enumerate()
            .map(|(index, s)| SlideSummary {
                index,
                id: &s.id,
                has_prediction: s.prediction().is_some(),
                predicted_class: s
                    .prediction()
                    .and_then(|(r, _)| r.predicted_class.as_deref()),
                opened: s.opened(),
                error: s.error(),
            })
            .collect()
    }
}

/// Reads the slide's smallest level whole (when it is at most 16 megapixels): a file cut short
/// loses its last-written levels first, and its error is better shown at once than as tiles
/// that never come.
fn readable(s: &dyn SlideReader) -> Result<(), String> {
    let n = s.levels().len();
    let Some(l) = s.levels().last() else {
        return Err(format!("{}: no levels", s.path().display()));
    };
    if l.width * l.height > 1 << 24 {
        return Ok(());
    }
    s.read_region(0, 0, n - 1, l.width as u32, l.height as u32)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn record_files(dir: &Path) -> gimp_io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = e.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_file() && path.to_string_lossy().ends_with(record::SUFFIX) {
            out.push(path);
        }
    }
    Ok(out)
}
