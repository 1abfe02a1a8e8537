//! The CLAM dataset CSV, `case_id,slide_id,label` (+ any extra columns), and label maps.

use crate::atomic::write_atomic;
use crate::error::{csv_error, csv_line, DataError, ErrorKind, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Slide-file extensions stripped from `slide_id` (MCAT/PORPOISE tables keep `.svs`; CLAM ids
/// are file stems).
const SLIDE_EXTENSIONS: [&str; 7] = [".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif"];

/// The slide id as CLAM uses it: the slide file name without its extension.
pub fn normalise_slide_id(id: &str) -> &str {
    let lower = id.to_ascii_lowercase();
    for ext in SLIDE_EXTENSIONS {
        if lower.ends_with(ext) && id.len() > ext.len() {
            return &id[..id.len() - ext.len()];
        }
    }
    id
}

/// One row of the dataset CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRow {
    pub case_id: String,
    /// `None` for a patient listed without a slide (expression only).
    pub slide_id: Option<String>,
    pub label: String,
    pub extra: BTreeMap<String, String>,
    /// 1-based line in the file, for messages.
    pub line: u64,
}

/// The dataset CSV, one row per slide.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DatasetTable {
    pub rows: Vec<DatasetRow>,
    pub extra_columns: Vec<String>,
}

impl DatasetTable {
    /// Label of every case; the CSV has been checked to give each case one label.
    pub fn case_labels(&self) -> BTreeMap<String, String> {
        self.rows
            .iter()
            .map(|r| (r.case_id.clone(), r.label.clone()))
            .collect()
    }

    /// Slides of every case, in file order.
    pub fn case_slides(&self) -> BTreeMap<String, Vec<String>> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &self.rows {
            let e = out.entry(r.case_id.clone()).or_default();
            if let Some(s) = &r.slide_id {
                e.push(s.clone());
            }
        }
        out
    }
}

/// Which columns of a label table hold what, and which labels to keep. The defaults read CLAM's
/// `case_id,slide_id,label`; other tables (a clinical sheet with `sample` and `subtype`) name
/// their own columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub case: String,
    pub slide: String,
    pub label: String,
    /// Keep only rows with these labels (others are dropped and counted); `None` keeps all.
    pub keep: Option<Vec<String>>,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            case: "case_id".into(),
            slide: "slide_id".into(),
            label: "label".into(),
            keep: None,
        }
    }
}

/// Reads a dataset CSV with CLAM's column names.
pub fn read_dataset_csv(path: &Path) -> Result<DatasetTable> {
    read_dataset_csv_with(path, &Columns::default()).map(|(t, _)| t)
}

/// Reads a label table. Checks: the case and label columns exist; no empty case id or label; no
/// slide id twice; one label per case. Returns the table and the number of rows dropped by
/// `columns.keep`.
pub fn read_dataset_csv_with(path: &Path, columns: &Columns) -> Result<(DatasetTable, usize)> {
    let text = crate::text::read_text(path)?;
    let first = text.lines().next().unwrap_or("");
    let delim = crate::text::sniff_delimiter(path, first);
    let mut rdr = crate::text::csv_reader(&text, delim, false);
    let headers = rdr.headers().map_err(|e| csv_error(path, e))?.clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let header_list = headers.iter().collect::<Vec<_>>().join(",");
    let missing = |name: &str| {
        DataError::new(
            ErrorKind::Missing,
            path,
            format!("no '{name}' column (header: {header_list})"),
        )
        .at("line 1")
    };
    let case_col = col(&columns.case).ok_or_else(|| missing(&columns.case))?;
    let label_col = col(&columns.label).ok_or_else(|| missing(&columns.label))?;
    let slide_col = col(&columns.slide);
    let mut dropped = 0usize;
    let extra_columns: Vec<(usize, String)> = headers
        .iter()
        .enumerate()
        .filter(|(i, h)| {
            *i != case_col && *i != label_col && Some(*i) != slide_col && !h.trim().is_empty()
        })
        .map(|(i, h)| (i, h.trim().to_string()))
        .collect();
    let mut rows = Vec::new();
    let mut seen_slides: HashMap<String, u64> = HashMap::new();
    let mut case_label: HashMap<String, (String, u64)> = HashMap::new();
    for rec in rdr.records() {
        let rec = rec.map_err(|e| csv_error(path, e))?;
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        let get = |i: usize| rec.get(i).unwrap_or("").trim().to_string();
        let case_id = get(case_col);
        let label = get(label_col);
        if let Some(keep) = &columns.keep {
            if !keep.contains(&label) {
                dropped += 1;
                continue;
            }
        }
        if case_id.is_empty() {
            return Err(DataError::new(ErrorKind::Value, path, "empty case_id").at(csv_line(&rec)));
        }
        if label.is_empty() {
            return Err(DataError::new(
                ErrorKind::Value,
                path,
                format!("empty label for case '{case_id}'"),
            )
            .at(csv_line(&rec)));
        }
        let slide_id = slide_col
            .map(get)
            .filter(|s| !s.is_empty())
            .map(|s| normalise_slide_id(&s).to_string());
        if let Some(s) = &slide_id {
            if let Some(prev) = seen_slides.insert(s.clone(), line) {
                return Err(DataError::new(
                    ErrorKind::Duplicate,
                    path,
                    format!("slide_id '{s}' already appears on line {prev}"),
                )
                .at(format!("line {line}")));
            }
        }
        match case_label.get(&case_id) {
            Some((l, prev)) if *l != label => {
                return Err(DataError::new(
                    ErrorKind::Mismatch,
                    path,
                    format!("case '{case_id}' has label '{label}' here but '{l}' on line {prev}"),
                )
                .at(format!("line {line}")));
            }
            Some(_) => {}
            None => {
                case_label.insert(case_id.clone(), (label.clone(), line));
            }
        }
        let extra = extra_columns
            .iter()
            .map(|(i, h)| (h.clone(), get(*i)))
            .collect();
        rows.push(DatasetRow {
            case_id,
            slide_id,
            label,
            extra,
            line,
        });
    }
    if rows.is_empty() {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the dataset has no rows",
        ));
    }
    let extra_columns = extra_columns.into_iter().map(|(_, h)| h).collect();
    Ok((
        DatasetTable {
            rows,
            extra_columns,
        },
        dropped,
    ))
}

/// Writes a dataset CSV in CLAM's column order.
pub fn write_dataset_csv(path: &Path, table: &DatasetTable) -> Result<()> {
    write_atomic(path, |w| {
        let mut wr = csv::Writer::from_writer(w);
        let mut header = vec!["case_id", "slide_id", "label"];
        header.extend(table.extra_columns.iter().map(String::as_str));
        wr.write_record(&header)?;
        for r in &table.rows {
            let mut rec = vec![
                r.case_id.as_str(),
                r.slide_id.as_deref().unwrap_or(""),
                r.label.as_str(),
            ];
            for c in &table.extra_columns {
                rec.push(r.extra.get(c).map(String::as_str).unwrap_or(""));
            }
            wr.write_record(&rec)?;
        }
        wr.flush()?;
        Ok(())
    })
}

/// Class names in index order. Either given explicitly (name → index, indices 0..C−1 each once) or
/// derived: the sorted distinct labels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LabelMap {
    pub names: Vec<String>,
}

impl LabelMap {
    pub fn derive<'a>(labels: impl IntoIterator<Item = &'a str>) -> Self {
        let set: BTreeSet<&str> = labels.into_iter().collect();
        Self {
            names: set.into_iter().map(str::to_string).collect(),
        }
    }

    /// Builds a map from `name → index`; `path` names the file it came from, for errors.
    pub fn explicit(path: &Path, map: &BTreeMap<String, i64>) -> Result<Self> {
        let c = map.len();
        if c < 2 {
            return Err(DataError::new(
                ErrorKind::Value,
                path,
                "a label map needs at least two classes",
            )
            .at("label_map"));
        }
        let mut names = vec![String::new(); c];
        for (name, &idx) in map {
            if idx < 0 || idx as usize >= c || !names[idx as usize].is_empty() {
                return Err(DataError::new(
                    ErrorKind::Value,
                    path,
                    format!(
                        "label '{name}' has index {idx}; indices must be 0..{} each used once",
                        c - 1
                    ),
                )
                .at("label_map"));
            }
            names[idx as usize] = name.clone();
        }
        Ok(Self { names })
    }

    pub fn index(&self, label: &str) -> Option<usize> {
        self.names.iter().position(|n| n == label)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Checks that every label of the dataset is in the map, naming the first line that is not.
pub fn check_labels(path: &Path, table: &DatasetTable, map: &LabelMap) -> Result<()> {
    for r in &table.rows {
        if map.index(&r.label).is_none() {
            return Err(DataError::new(
                ErrorKind::Unknown,
                path,
                format!(
                    "label '{}' is not in the label map {:?}",
                    r.label, map.names
                ),
            )
            .at(format!("line {}", r.line)));
        }
    }
    Ok(())
}
