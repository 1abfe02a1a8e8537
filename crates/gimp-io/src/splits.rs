//! Split files of the reference tools, read into one form, and CLAM's layout written back.
//!
//! * CLAM `splits_{k}.csv`: header `,train,val,test`, columns of slide ids padded with empty cells;
//! * CLAM `splits_{k}_bool.csv`: index = slide id, `True`/`False` per part (one `True` a row);
//! * MCAT/PORPOISE `splits_{k}.csv`: header `,train,val`, case ids, no test column;
//! * TransMIL `fold{k}.csv`: `,train,train_label,val,val_label,test,test_label`.
//!
//! Ids are kept as written: the cohort resolves each one as a slide id or a case id.

use crate::atomic::write_atomic;
use crate::error::{csv_error, DataError, ErrorKind, Result};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    Train,
    Val,
    Test,
}

impl Part {
    pub const ALL: [Part; 3] = [Part::Train, Part::Val, Part::Test];

    pub fn name(self) -> &'static str {
        match self {
            Part::Train => "train",
            Part::Val => "val",
            Part::Test => "test",
        }
    }
}

impl std::str::FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Part::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| format!("unknown part '{s}', expected train, val or test"))
    }
}

/// Which tool's layout a split file has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitFormat {
    Clam,
    ClamBool,
    Mcat,
    Transmil,
}

/// One split: ids in each part, as listed, with the 1-based line each came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SplitFile {
    pub parts: BTreeMap<Part, Vec<(String, u64)>>,
}

impl SplitFile {
    pub fn ids(&self, part: Part) -> impl Iterator<Item = &str> {
        self.parts
            .get(&part)
            .into_iter()
            .flatten()
            .map(|(s, _)| s.as_str())
    }
}

/// Detects the layout from the header.
pub fn detect_format(path: &Path, header: &[String]) -> Result<SplitFormat> {
    let h: Vec<&str> = header.iter().map(|s| s.trim()).collect();
    let tail = if h.first() == Some(&"") {
        &h[1..]
    } else {
        &h[..]
    };
    match tail {
        ["train", "val", "test"] => {
            // Both CLAM files share this header; the bool file's cells are True/False.
            Ok(SplitFormat::Clam)
        }
        ["train", "val"] => Ok(SplitFormat::Mcat),
        ["train", "train_label", "val", "val_label", "test", "test_label"] => Ok(SplitFormat::Transmil),
        _ => Err(DataError::new(
            ErrorKind::Malformed,
            path,
            format!(
                "unrecognised split header '{}': expected ',train,val,test' (CLAM), ',train,val' (MCAT) or ',train,train_label,val,val_label,test,test_label' (TransMIL)",
                header.join(",")
            ),
        )
        .at("line 1")),
    }
}

fn is_bool_cell(s: &str) -> bool {
    matches!(
        s.trim(),
        "True" | "False" | "true" | "false" | "1" | "0" | "1.0" | "0.0"
    )
}

/// Reads any supported split file.
pub fn read_split(path: &Path) -> Result<(SplitFormat, SplitFile)> {
    let text = crate::text::read_text(path)?;
    let first = text.lines().next().unwrap_or("");
    let delim = crate::text::sniff_delimiter(path, first);
    let mut rdr = crate::text::csv_reader(&text, delim, true);
    let header: Vec<String> = rdr
        .headers()
        .map_err(|e| csv_error(path, e))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut format = detect_format(path, &header)?;
    let records: Vec<csv::StringRecord> = rdr
        .records()
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| csv_error(path, e))?;
    let lead = usize::from(header.first().map(|s| s.trim().is_empty()).unwrap_or(false));
    if format == SplitFormat::Clam {
        let all_bool = !records.is_empty()
            && records
                .iter()
                .all(|r| (lead..lead + 3).all(|i| is_bool_cell(r.get(i).unwrap_or(""))));
        if all_bool && lead == 1 {
            format = SplitFormat::ClamBool;
        }
    }
    let mut split = SplitFile::default();
    for p in Part::ALL {
        split.parts.insert(p, Vec::new());
    }
    let columns: Vec<(Part, usize)> = match format {
        SplitFormat::Clam => vec![
            (Part::Train, lead),
            (Part::Val, lead + 1),
            (Part::Test, lead + 2),
        ],
        SplitFormat::Mcat => vec![(Part::Train, lead), (Part::Val, lead + 1)],
        SplitFormat::Transmil => vec![
            (Part::Train, lead),
            (Part::Val, lead + 2),
            (Part::Test, lead + 4),
        ],
        SplitFormat::ClamBool => vec![],
    };
    for rec in &records {
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if format == SplitFormat::ClamBool {
            let id = rec.get(0).unwrap_or("").trim();
            if id.is_empty() {
                return Err(DataError::new(ErrorKind::Value, path, "empty slide id")
                    .at(format!("line {line}")));
            }
            let flags: Vec<bool> = (1..4)
                .map(|i| {
                    matches!(
                        rec.get(i).unwrap_or("").trim(),
                        "True" | "true" | "1" | "1.0"
                    )
                })
                .collect();
            let n_true = flags.iter().filter(|f| **f).count();
            if n_true != 1 {
                return Err(DataError::new(
                    ErrorKind::Value,
                    path,
                    format!("'{id}' is marked True in {n_true} parts; exactly one expected"),
                )
                .at(format!("line {line}")));
            }
            let part = Part::ALL[flags.iter().position(|f| *f).unwrap_or(0)];
            split
                .parts
                .entry(part)
                .or_default()
                .push((id.to_string(), line));
            continue;
        }
        for (part, col) in &columns {
            let id = rec.get(*col).unwrap_or("").trim();
            if !id.is_empty() {
                let id = crate::dataset::normalise_slide_id(id).to_string();
                split.parts.entry(*part).or_default().push((id, line));
            }
        }
    }
    if split.parts.values().all(Vec::is_empty) {
        return Err(DataError::new(
            ErrorKind::Empty,
            path,
            "the split lists no ids",
        ));
    }
    Ok((format, split))
}

/// Writes CLAM's `splits_{k}.csv` (ids per column, padded), `splits_{k}_bool.csv` and
/// `splits_{k}_descriptor.csv` (counts per class) into `dir`.
///
/// `parts` maps each part to its slide ids; `label_of` gives a slide's class name.
pub fn write_clam_split(
    dir: &Path,
    k: usize,
    parts: &BTreeMap<Part, Vec<String>>,
    class_names: &[String],
    label_of: &dyn Fn(&str) -> Option<String>,
) -> Result<()> {
    let get = |p: Part| parts.get(&p).cloned().unwrap_or_default();
    let (train, val, test) = (get(Part::Train), get(Part::Val), get(Part::Test));
    let rows = train.len().max(val.len()).max(test.len());
    write_atomic(&dir.join(format!("splits_{k}.csv")), |w| {
        let mut wr = csv::Writer::from_writer(w);
        wr.write_record(["", "train", "val", "test"])?;
        for i in 0..rows {
            let cell = |v: &Vec<String>| v.get(i).cloned().unwrap_or_default();
            wr.write_record([i.to_string(), cell(&train), cell(&val), cell(&test)])?;
        }
        wr.flush()
    })?;
    write_atomic(&dir.join(format!("splits_{k}_bool.csv")), |w| {
        let mut wr = csv::Writer::from_writer(w);
        wr.write_record(["", "train", "val", "test"])?;
        for (part, ids) in [
            (Part::Train, &train),
            (Part::Val, &val),
            (Part::Test, &test),
        ] {
            for id in ids {
                let flag = |p: Part| if p == part { "True" } else { "False" };
                wr.write_record([
                    id.as_str(),
                    flag(Part::Train),
                    flag(Part::Val),
                    flag(Part::Test),
                ])?;
            }
        }
        wr.flush()
    })?;
    write_atomic(&dir.join(format!("splits_{k}_descriptor.csv")), |w| {
        let mut wr = csv::Writer::from_writer(w);
        wr.write_record(["", "train", "val", "test"])?;
        for name in class_names {
            let count = |ids: &Vec<String>| {
                ids.iter()
                    .filter(|s| label_of(s).as_deref() == Some(name.as_str()))
                    .count()
                    .to_string()
            };
            wr.write_record([name.clone(), count(&train), count(&val), count(&test)])?;
        }
        wr.flush()
    })
}
