//! The cohort file: where a cohort's labels, features, expression and splits are.
//!
//! ```toml
//! name = "nsclc"
//! [labels]
//! csv = "dataset.csv"                 # case_id,slide_id,label (+ extra columns)
//! # case_column / slide_column / label_column rename them; keep = ["A", "B"] filters labels
//! label_map = { LUAD = 0, LUSC = 1 }  # optional; default: sorted distinct labels
//! [features]
//! dir = "features"                    # h5_files/, pt_files/ or a flat folder
//! formats = ["h5", "pt"]              # search order
//! [expression]
//! matrix = "expression/matrix.tsv.gz" # and/or a GDC download:
//! gdc_dir = "expression/gdc"
//! sample_sheet = "expression/gdc/gdc_sample_sheet.tsv"
//! [splits]
//! files = ["splits/splits_0.csv"]
//! [survival]                          # optional: time and event columns of the label table
//! time_column = "survival_months"     # see crate::survival
//! ```
//!
//! Relative paths are relative to the cohort file's folder.

use gimp_io::expression::{OmicType, Orientation};
use gimp_io::{DataError, ErrorKind, FeatureFormat, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CohortConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub labels: LabelsConfig,
    #[serde(default)]
    pub features: Option<FeaturesConfig>,
    #[serde(default)]
    pub expression: Option<ExpressionConfig>,
    #[serde(default)]
    pub splits: Option<SplitsConfig>,
    /// Survival columns of the label table (`crate::survival`); absent for a cohort without
    /// survival outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survival: Option<crate::survival::SurvivalConfig>,
    /// Free-form provenance (the synthetic generator records its parameters here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<toml::Table>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LabelsConfig {
    pub csv: PathBuf,
    /// Column names, for label tables that are not CLAM's `case_id,slide_id,label`.
    #[serde(default = "default_case_column")]
    pub case_column: String,
    #[serde(default = "default_slide_column")]
    pub slide_column: String,
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Keep only patients with these labels (e.g. two subtypes of a larger table).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_map: Option<BTreeMap<String, i64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeaturesConfig {
    pub dir: PathBuf,
    #[serde(default = "default_formats")]
    pub formats: Vec<FeatureFormat>,
    /// Folder of the memory-mapped feature cache, relative to the cohort file's folder like every
    /// path here (default: `{dir}/.gimp-cache`); see [`crate::cache::location`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

fn default_case_column() -> String {
    "case_id".into()
}

fn default_slide_column() -> String {
    "slide_id".into()
}

fn default_label_column() -> String {
    "label".into()
}

impl LabelsConfig {
    /// CLAM's columns, all labels kept.
    pub fn clam(csv: impl Into<PathBuf>, label_map: Option<BTreeMap<String, i64>>) -> Self {
        Self {
            csv: csv.into(),
            case_column: default_case_column(),
            slide_column: default_slide_column(),
            label_column: default_label_column(),
            keep: None,
            label_map,
        }
    }

    pub fn columns(&self) -> gimp_io::dataset::Columns {
        gimp_io::dataset::Columns {
            case: self.case_column.clone(),
            slide: self.slide_column.clone(),
            label: self.label_column.clone(),
            keep: self.keep.clone(),
        }
    }
}

fn default_formats() -> Vec<FeatureFormat> {
    vec![
        FeatureFormat::H5,
        FeatureFormat::Pt,
        FeatureFormat::Safetensors,
        FeatureFormat::Npy,
    ]
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Imputation {
    /// A missing value is an error (`docs/DESIGN.md` §3).
    #[default]
    None,
    /// Replace by the gene's mean over the samples that have it, and report the count.
    Mean,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct ExpressionConfig {
    /// A plain matrix, CSV/TSV, optionally gzipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<PathBuf>,
    #[serde(default)]
    pub orientation: Orientation,
    /// A folder of GDC files (STAR augmented counts or legacy HTSeq FPKM) ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gdc_dir: Option<PathBuf>,
    /// ... and the GDC sample sheet mapping them to cases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_sheet: Option<PathBuf>,
    /// Column of STAR files to use.
    #[serde(default = "default_star_column")]
    pub star_column: String,
    /// An MCAT/PORPOISE wide table (`tcga_*_all_clean.csv(.zip)`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcat_table: Option<PathBuf>,
    #[serde(default = "default_mcat_types")]
    pub mcat_types: Vec<OmicType>,
    #[serde(default)]
    pub impute: Imputation,
}

fn default_star_column() -> String {
    "fpkm_unstranded".to_string()
}

fn default_mcat_types() -> Vec<OmicType> {
    vec![OmicType::Rnaseq]
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SplitsConfig {
    /// Split files (any supported layout), one per fold.
    #[serde(default)]
    pub files: Vec<PathBuf>,
    /// Or a folder: every `splits_{k}.csv` / `fold{k}.csv` in it, by k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

/// A parsed cohort file with its paths made absolute.
#[derive(Debug, Clone)]
pub struct CohortFile {
    pub path: PathBuf,
    pub config: CohortConfig,
}

impl CohortFile {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let config: CohortConfig = toml::from_str(&text).map_err(|e| {
            let loc = e
                .span()
                .map(|s| format!("line {}", text[..s.start].matches('\n').count() + 1));
            let mut err = DataError::malformed(path, e.message().to_string());
            err.location = loc;
            err
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            config,
        })
    }

    /// Resolves a path of the config against the cohort file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    /// Split files in fold order.
    pub fn split_files(&self) -> Result<Vec<PathBuf>> {
        let Some(s) = &self.config.splits else {
            return Ok(Vec::new());
        };
        let mut files: Vec<PathBuf> = s.files.iter().map(|f| self.resolve(f)).collect();
        if let Some(dir) = &s.dir {
            let dir = self.resolve(dir);
            files.extend(split_files_in(&dir)?);
        }
        Ok(files)
    }
}

/// `splits_{k}.csv` or `fold{k}.csv` files of a folder, sorted by k (bool and descriptor files
/// are CLAM's companions and are skipped).
pub fn split_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let k = name
            .strip_prefix("splits_")
            .or_else(|| name.strip_prefix("fold"))
            .and_then(|r| r.strip_suffix(".csv"))
            .and_then(|k| k.parse::<u64>().ok());
        if let Some(k) = k {
            found.push((k, e.path()));
        }
    }
    if found.is_empty() {
        return Err(DataError::new(
            ErrorKind::Missing,
            dir,
            "no split files (splits_{k}.csv or fold{k}.csv) in this folder",
        ));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}
