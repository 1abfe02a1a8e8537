//! The slides a viewer shows: slide files given directly or found in the folders given, and the
//! prediction records (`*.prediction.json`, from `gimp-rs predict --slide`) in those folders,
//! joined by slide id. A record whose slide is not among them brings its own (the path it
//! recorded). A slide that cannot be opened, or a record that cannot be read, stays in the list
//! with its error, and the others work as usual.

use crate::dzi::Pyramid;
use gimp_io::{DataError, ErrorKind};
use gimp_predict::record::{self, PatchScore, SlidePrediction};
use gimp_slide::{batch, SlideReader};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

pub struct SlideEntry {
    pub id: String,
    pub path: PathBuf,
    pub slide: Result<Arc<dyn SlideReader>, String>,
    /// The record and the folder it lies in (its files are relative to it).
    pub record: Option<Result<(SlidePrediction, PathBuf), String>>,
    scores: OnceLock<Result<Arc<Vec<PatchScore>>, String>>,
}

impl SlideEntry {
    fn open(id: String, path: PathBuf) -> Self {
        let slide = gimp_slide::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| readable(s.as_ref()).map(|()| Arc::from(s)));
        Self {
            id,
            path,
            slide,
            record: None,
            scores: OnceLock::new(),
        }
    }

    pub fn pyramid(&self) -> Option<Pyramid> {
        let s = self.slide.as_ref().ok()?;
        let l0 = s.levels().first()?;
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

    /// The first error that keeps the slide or its prediction from being shown.
    pub fn error(&self) -> Option<String> {
        match (&self.slide, &self.record) {
            (Err(e), _) => Some(e.clone()),
            (_, Some(Err(e))) => Some(e.clone()),
            _ => None,
        }
    }
}

pub struct Catalog {
    /// The folders given (canonical): `/files/` serves only under them.
    pub roots: Vec<PathBuf>,
    pub slides: Vec<SlideEntry>,
}

#[derive(Serialize)]
pub struct SlideSummary<'a> {
    pub index: usize,
    pub id: &'a str,
    pub has_prediction: bool,
    pub predicted_class: Option<&'a str>,
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
                .or_insert_with(|| SlideEntry::open(id, p));
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
                        SlideEntry::open(rec.slide_id.clone(), rec.slide.clone())
                    });
                    e.record = Some(Ok((rec, dir)));
                }
                Err(err) => {
                    let e = by_id
                        .entry(id_from_name.clone())
                        .or_insert_with(|| SlideEntry {
                            id: id_from_name.clone(),
                            path: r.clone(),
                            slide: Err("the slide of an unreadable prediction record".into()),
                            record: None,
                            scores: OnceLock::new(),
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
        })
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
                error: s.error(),
            })
            .collect()
    }
}

/// Reads the slide's smallest level whole (when it is at most 16 megapixels): a file cut short
/// loses its last-written levels first, and its error is better shown in the slide list than
/// as tiles that never come.
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
