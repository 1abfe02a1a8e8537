//! Joining a cohort's files by patient (`case_id`), with every problem collected rather than the
//! first one thrown, so `gimp-rs cohort check` can list them all at once.

use crate::config::{CohortFile, Imputation};
use crate::listing::list_some;
use crate::split::Fold;
use crate::split::{
    check_classes, check_events, resolve_split, test_overlap, PartCounts, PatientIds, Scheme,
};
use crate::survival::class_and_survival_strata;
use gimp_io::dataset::{self, DatasetTable, LabelMap};
use gimp_io::expression::{self, strip_version, ExpressionMatrix};
use gimp_io::splits::Part;
use gimp_io::{feature_file, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// One slide of a patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Slide {
    pub slide_id: String,
    /// The feature file, if one was found.
    pub path: Option<PathBuf>,
    /// `[N, D]` from the file header, when read.
    pub shape: Option<(usize, usize)>,
}

/// One patient: the unit of labels, splits and prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Patient {
    pub case_id: String,
    pub label: usize,
    pub slides: Vec<Slide>,
    /// Row of [`Cohort::expression`], if the patient has expression.
    pub expression_row: Option<usize>,
}

impl Patient {
    pub fn has_slides(&self) -> bool {
        self.slides.iter().any(|s| s.path.is_some())
    }

    pub fn has_expression(&self) -> bool {
        self.expression_row.is_some()
    }

    /// Total patches over the patient's slides (bags are concatenated in slide order).
    pub fn n_patches(&self) -> usize {
        self.slides
            .iter()
            .filter_map(|s| s.shape)
            .map(|s| s.0)
            .sum()
    }
}

/// What `cohort check` reports besides the data: errors make the cohort unusable, warnings are
/// worth reading.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Diagnostics {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Where the expression rows came from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ExpressionInfo {
    pub sources: Vec<String>,
    pub imputed_values: usize,
}

#[derive(Debug, Clone)]
pub struct Cohort {
    pub file: CohortFile,
    pub table: DatasetTable,
    pub label_map: LabelMap,
    pub patients: Vec<Patient>,
    /// Samples × genes, rows referenced by [`Patient::expression_row`].
    pub expression: Option<ExpressionMatrix>,
    pub expression_info: ExpressionInfo,
    pub folds: Vec<Fold>,
    /// Feature width shared by every slide, when slides exist and agree.
    pub feature_dim: Option<usize>,
    /// The encoders recorded on the feature files (`encoder` attribute of gimp-rs's `.h5`
    /// files) with their file counts; files that record none count under "not recorded".
    pub feature_encoders: Vec<(String, usize)>,
    pub diagnostics: Diagnostics,
    /// Each patient's survival outcome (by index into [`Cohort::patients`]) when the cohort file
    /// has a `[survival]` section.
    pub survival: Option<Vec<crate::survival::Outcome>>,
}

/// How much to read when assembling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Read each feature file's header for `[N, D]`.
    pub read_shapes: bool,
    /// Read every bag completely (finds NaN values and truncated data; slow on big cohorts).
    pub deep: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            read_shapes: true,
            deep: false,
        }
    }
}

/// How `feature_encoders` counts files that record no encoder.
pub const NOT_RECORDED: &str = "not recorded";

fn short_hash(h: &str) -> &str {
    &h[..h.len().min(12)]
}

impl Cohort {
    /// Reads the cohort file at `path`, then [`Cohort::load`]s it.
    pub fn open(path: &std::path::Path, opts: LoadOptions) -> Result<Self> {
        Self::load(CohortFile::load(path)?, opts)
    }

    /// The feature cache folder: see [`crate::cache::location`].
    pub fn cache_dir(&self) -> Option<PathBuf> {
        crate::cache::location(&self.file)
    }

    /// Loads and joins a cohort. Returns `Err` only when nothing can be joined (unreadable cohort
    /// file or dataset CSV); every other problem goes into [`Cohort::diagnostics`].
    pub fn load(file: CohortFile, opts: LoadOptions) -> Result<Self> {
        let csv_path = file.resolve(&file.config.labels.csv);
        let (table, dropped) =
            dataset::read_dataset_csv_with(&csv_path, &file.config.labels.columns())?;
        let label_map = match &file.config.labels.label_map {
            Some(m) => LabelMap::explicit(&file.path, m)?,
            None => LabelMap::derive(table.rows.iter().map(|r| r.label.as_str())),
        };
        dataset::check_labels(&csv_path, &table, &label_map)?;
        let mut diag = Diagnostics::default();
        // Survival values are read strictly: a bad one is an error naming its line.
        let survival_config = file.config.survival.clone();
        if dropped > 0 {
            diag.warnings.push(format!(
                "{dropped} row(s) of {} have a label outside `keep` and are left out",
                csv_path.display()
            ));
        }

        // Patients in order of first appearance in the CSV.
        let mut patients: Vec<Patient> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut slide_owner: HashMap<String, usize> = HashMap::new();
        for r in &table.rows {
            let i = *index.entry(r.case_id.clone()).or_insert_with(|| {
                patients.push(Patient {
                    case_id: r.case_id.clone(),
                    label: label_map.index(&r.label).unwrap_or(0),
                    slides: Vec::new(),
                    expression_row: None,
                });
                patients.len() - 1
            });
            if let Some(s) = &r.slide_id {
                slide_owner.insert(s.clone(), i);
                patients[i].slides.push(Slide {
                    slide_id: s.clone(),
                    path: None,
                    shape: None,
                });
            }
        }

        let mut encoders = BTreeMap::new();
        let feature_dim =
            Self::attach_features(&file, &mut patients, opts, &mut diag, &mut encoders);
        let feature_encoders = Self::check_encoders(encoders, &mut diag);
        let (expression, expression_info) =
            Self::attach_expression(&file, &mut patients, &index, &mut diag);
        let folds = Self::attach_splits(&file, &patients, &index, &slide_owner, &mut diag);

        let neither: Vec<String> = patients
            .iter()
            .filter(|p| !p.has_slides() && !p.has_expression())
            .map(|p| p.case_id.clone())
            .collect();
        if !neither.is_empty() {
            diag.errors.push(format!(
                "{} patient(s) have neither slide features nor expression: {}",
                neither.len(),
                list_some(&neither)
            ));
        }
        let survival = match &survival_config {
            Some(config) => {
                let cases: Vec<String> = patients.iter().map(|p| p.case_id.clone()).collect();
                Some(crate::survival::read_outcomes(
                    &csv_path, &file.path, &table, config, &cases,
                )?)
            }
            None => None,
        };
        Ok(Self {
            file,
            table,
            label_map,
            patients,
            expression,
            expression_info,
            folds,
            feature_dim,
            feature_encoders,
            diagnostics: diag,
            survival,
        })
    }

    /// Slides of one cohort must come from one encoder: features of two encoders (or one
    /// encoder's two sets of weights) of the same width would train without complaint and
    /// mean nothing.
    fn check_encoders(
        encoders: BTreeMap<String, Vec<PathBuf>>,
        diag: &mut Diagnostics,
    ) -> Vec<(String, usize)> {
        let recorded: Vec<&String> = encoders.keys().filter(|k| *k != NOT_RECORDED).collect();
        if recorded.len() > 1 {
            let detail: Vec<String> = encoders
                .iter()
                .map(|(e, files)| {
                    let names: Vec<String> =
                        files.iter().map(|f| f.display().to_string()).collect();
                    format!("{e} in {} file(s): {}", files.len(), list_some(&names))
                })
                .collect();
            diag.errors.push(format!(
                "the slides' features come from different encoders: {}",
                detail.join("; ")
            ));
        } else if !recorded.is_empty() && encoders.contains_key(NOT_RECORDED) {
            let files: Vec<String> = encoders[NOT_RECORDED]
                .iter()
                .map(|f| f.display().to_string())
                .collect();
            diag.warnings.push(format!(
                "{} feature file(s) record no encoder (the others: {}), so they cannot be checked: {}",
                files.len(),
                recorded[0],
                list_some(&files)
            ));
        }
        encoders
            .into_iter()
            .map(|(e, files)| (e, files.len()))
            .collect()
    }

    fn attach_features(
        file: &CohortFile,
        patients: &mut [Patient],
        opts: LoadOptions,
        diag: &mut Diagnostics,
        encoders: &mut BTreeMap<String, Vec<PathBuf>>,
    ) -> Option<usize> {
        let fc = file.config.features.as_ref()?;
        let dir = file.resolve(&fc.dir);
        if !dir.is_dir() {
            diag.errors
                .push(format!("features folder {} does not exist", dir.display()));
            return None;
        }
        let mut missing = Vec::new();
        let mut dims: BTreeMap<usize, Vec<PathBuf>> = BTreeMap::new();
        for p in patients.iter_mut() {
            for s in p.slides.iter_mut() {
                let Some(path) = feature_file::locate(&dir, &s.slide_id, &fc.formats) else {
                    missing.push(format!("{} (case {})", s.slide_id, p.case_id));
                    continue;
                };
                if opts.deep {
                    match feature_file::read_bag(&path, gimp_io::DEFAULT_MAX_BAG_BYTES) {
                        Ok(b) => s.shape = Some((b.n, b.d)),
                        Err(e) => {
                            diag.errors.push(e.to_string());
                            continue;
                        }
                    }
                } else if opts.read_shapes {
                    match feature_file::bag_shape(&path) {
                        Ok((0, _)) => {
                            diag.errors.push(format!(
                                "{}: the bag has no patches (0 feature rows)",
                                path.display()
                            ));
                            continue;
                        }
                        Ok(shape) => s.shape = Some(shape),
                        Err(e) => {
                            diag.errors.push(e.to_string());
                            continue;
                        }
                    }
                }
                if let Some((_, d)) = s.shape {
                    dims.entry(d).or_default().push(path.clone());
                }
                if opts.read_shapes || opts.deep {
                    let is_h5 = path
                        .extension()
                        .is_some_and(|e| e.eq_ignore_ascii_case("h5"));
                    let encoder = if is_h5 {
                        match gimp_io::h5::read_provenance(&path) {
                            Ok(p) => p.map(|p| {
                                format!(
                                    "{} (weights sha256 {})",
                                    p.encoder,
                                    short_hash(&p.weights_sha256)
                                )
                            }),
                            Err(e) => {
                                diag.errors.push(e.to_string());
                                None
                            }
                        }
                    } else {
                        None
                    };
                    encoders
                        .entry(encoder.unwrap_or_else(|| NOT_RECORDED.to_string()))
                        .or_default()
                        .push(path.clone());
                }
                s.path = Some(path);
            }
        }
        if !missing.is_empty() {
            diag.warnings.push(format!(
                "{} slide(s) have no feature file in {}: {}",
                missing.len(),
                dir.display(),
                list_some(&missing)
            ));
        }
        let majority = dims.iter().max_by_key(|(_, v)| v.len()).map(|(d, _)| *d);
        if dims.len() > 1 {
            for (d, files) in &dims {
                if Some(*d) != majority {
                    let names: Vec<String> =
                        files.iter().map(|f| f.display().to_string()).collect();
                    diag.errors.push(format!(
                        "feature width {d} in {} file(s), but {} in most: {}",
                        files.len(),
                        majority.unwrap_or(0),
                        list_some(&names)
                    ));
                }
            }
        }
        majority
    }

    fn attach_expression(
        file: &CohortFile,
        patients: &mut [Patient],
        index: &HashMap<String, usize>,
        diag: &mut Diagnostics,
    ) -> (Option<ExpressionMatrix>, ExpressionInfo) {
        let mut info = ExpressionInfo::default();
        let Some(ec) = &file.config.expression else {
            return (None, info);
        };
        let mut sources: Vec<(String, ExpressionMatrix)> = Vec::new();
        fn load(
            sources: &mut Vec<(String, ExpressionMatrix)>,
            diag: &mut Diagnostics,
            label: String,
            r: Result<ExpressionMatrix>,
        ) {
            match r {
                Ok(m) => sources.push((label, m)),
                Err(e) => diag.errors.push(e.to_string()),
            }
        }
        if let Some(m) = &ec.matrix {
            let p = file.resolve(m);
            load(
                &mut sources,
                diag,
                p.display().to_string(),
                expression::read_matrix(&p, ec.orientation),
            );
        }
        match (&ec.gdc_dir, &ec.sample_sheet) {
            (Some(d), Some(s)) => {
                let (d, s) = (file.resolve(d), file.resolve(s));
                match expression::read_gdc_folder(&d, &s, &ec.star_column) {
                    Ok((m, notes)) => {
                        diag.warnings.extend(notes);
                        sources.push((d.display().to_string(), m));
                    }
                    Err(e) => diag.errors.push(e.to_string()),
                }
            }
            (None, None) => {}
            _ => diag.errors.push(format!(
                "{}: [expression] needs both gdc_dir and sample_sheet to read GDC files",
                file.path.display()
            )),
        }
        if let Some(t) = &ec.mcat_table {
            let p = file.resolve(t);
            load(
                &mut sources,
                diag,
                p.display().to_string(),
                expression::read_mcat_table(&p, &ec.mcat_types),
            );
        }
        if sources.is_empty() {
            return (None, info);
        }
        // Merge: genes compared without version suffixes; the first source fixes the gene order.
        let genes: Vec<String> = sources[0]
            .1
            .genes
            .iter()
            .map(|g| strip_version(g).to_string())
            .collect();
        let mut merged = ExpressionMatrix {
            samples: Vec::new(),
            genes: genes.clone(),
            values: Vec::new(),
        };
        let mut unknown = Vec::new();
        for (label, m) in &sources {
            let pos: HashMap<&str, usize> = m
                .genes
                .iter()
                .enumerate()
                .map(|(i, g)| (strip_version(g), i))
                .collect();
            let map: Vec<Option<usize>> =
                genes.iter().map(|g| pos.get(g.as_str()).copied()).collect();
            let absent = map.iter().filter(|m| m.is_none()).count();
            if absent > 0 {
                diag.errors.push(format!(
                    "{label}: {absent} of the {} genes of {} are missing (first: '{}')",
                    genes.len(),
                    sources[0].0,
                    genes[map.iter().position(|m| m.is_none()).unwrap_or(0)]
                ));
                continue;
            }
            for (i, s) in m.samples.iter().enumerate() {
                let Some(&pi) = index.get(s) else {
                    unknown.push(s.clone());
                    continue;
                };
                if patients[pi].expression_row.is_some() {
                    diag.warnings.push(format!(
                        "case {s}: expression found in several sources, keeping the first"
                    ));
                    continue;
                }
                let row = m.row(i);
                merged
                    .values
                    .extend(map.iter().map(|j| row[j.unwrap_or(0)]));
                patients[pi].expression_row = Some(merged.samples.len());
                merged.samples.push(s.clone());
            }
            info.sources.push(label.clone());
        }
        if !unknown.is_empty() {
            diag.warnings.push(format!(
                "{} expression sample(s) are not in the dataset CSV and are ignored: {}",
                unknown.len(),
                list_some(&unknown)
            ));
        }
        match ec.impute {
            Imputation::None => {
                if let Err(e) = merged.require_complete(&file.path) {
                    diag.errors.push(e.message);
                }
            }
            Imputation::Mean => {
                info.imputed_values = merged.impute_missing();
                if info.imputed_values > 0 {
                    diag.warnings.push(format!(
                        "{} missing expression value(s) imputed by the gene mean",
                        info.imputed_values
                    ));
                }
            }
        }
        if merged.samples.is_empty() {
            diag.warnings
                .push("no expression sample matches a case_id of the dataset".to_string());
            return (None, info);
        }
        (Some(merged), info)
    }

    fn attach_splits(
        file: &CohortFile,
        patients: &[Patient],
        index: &HashMap<String, usize>,
        slide_owner: &HashMap<String, usize>,
        diag: &mut Diagnostics,
    ) -> Vec<Fold> {
        let files = match file.split_files() {
            Ok(f) => f,
            Err(e) => {
                diag.errors.push(e.to_string());
                return Vec::new();
            }
        };
        let ids = PatientIds {
            case_ids: patients.iter().map(|p| p.case_id.clone()).collect(),
            by_case: index.clone(),
            by_slide: slide_owner.clone(),
        };
        let mut folds = Vec::new();
        for path in files {
            match resolve_split(&path, &ids) {
                Ok((fold, problems)) => {
                    diag.errors.extend(problems);
                    let unassigned = patients.len() - fold.part.len();
                    if unassigned > 0 {
                        diag.warnings.push(format!(
                            "{}: {unassigned} patient(s) of the cohort are in no part of this split",
                            path.display()
                        ));
                    }
                    folds.push(fold);
                }
                Err(e) => diag.errors.push(e.to_string()),
            }
        }
        if folds.len() > 1 {
            let overlap = test_overlap(&folds);
            if overlap > 0 {
                diag.warnings.push(format!(
                    "{overlap} patient(s) are in the test part of more than one split: these are repeated random sub-samples (as CLAM makes them), not k folds with disjoint test sets"
                ));
            }
        }
        folds
    }

    /// Writes `splits` of the patients as CLAM split files (`splits_{k}.csv`, `_bool.csv`,
    /// `_descriptor.csv`) in `out`: patients are listed by their slide ids, as CLAM lists them, and a
    /// patient without slides by case id.
    pub fn write_splits(
        &self,
        splits: &[BTreeMap<usize, Part>],
        out: &std::path::Path,
    ) -> Result<Vec<PartCounts>> {
        let c = self;
        let mut label_of: HashMap<String, String> = HashMap::new();
        for p in &c.patients {
            let name = c.label_map.names[p.label].clone();
            label_of.insert(p.case_id.clone(), name.clone());
            for s in &p.slides {
                label_of.insert(s.slide_id.clone(), name.clone());
            }
        }
        let mut counts = Vec::with_capacity(splits.len());
        for (k, split) in splits.iter().enumerate() {
            let mut parts: BTreeMap<Part, Vec<String>> = BTreeMap::new();
            for (i, part) in split {
                let p = &c.patients[*i];
                let ids = parts.entry(*part).or_default();
                if p.slides.is_empty() {
                    ids.push(p.case_id.clone());
                }
                ids.extend(p.slides.iter().map(|s| s.slide_id.clone()));
            }
            gimp_io::splits::write_clam_split(out, k, &parts, &c.label_map.names, &|s| {
                label_of.get(s).cloned()
            })?;
            let count = |part| split.values().filter(|p| **p == part).count();
            counts.push(PartCounts {
                train: count(Part::Train),
                val: count(Part::Val),
                test: count(Part::Test),
            });
        }
        Ok(counts)
    }

    /// What `gimp-rs split` deals a hold-out split or k folds within, checked for `scheme`: in
    /// a survival cohort each class by events and time bins (MCAT's labels), else the classes.
    pub fn split_strata(&self, scheme: Scheme) -> std::result::Result<Vec<usize>, String> {
        let labels: Vec<usize> = self.patients.iter().map(|p| p.label).collect();
        match (&self.survival, &self.file.config.survival) {
            (Some(outcomes), Some(config)) => {
                let strata = class_and_survival_strata(&labels, outcomes, config.bins)?;
                let events: Vec<bool> = outcomes.iter().map(|o| o.event).collect();
                check_events(&events, scheme)?;
                Ok(strata)
            }
            _ => {
                check_classes(&labels, scheme)?;
                Ok(labels)
            }
        }
    }

    /// Who a split file's ids can name in this cohort ([`crate::split::check_split_files`]).
    pub fn patient_ids(&self) -> PatientIds {
        let enumerate = || self.patients.iter().enumerate();
        PatientIds {
            case_ids: self.patients.iter().map(|p| p.case_id.clone()).collect(),
            by_case: enumerate().map(|(i, p)| (p.case_id.clone(), i)).collect(),
            by_slide: enumerate()
                .flat_map(|(i, p)| p.slides.iter().map(move |s| (s.slide_id.clone(), i)))
                .collect(),
        }
    }

    pub fn patient_index(&self) -> HashMap<&str, usize> {
        self.patients
            .iter()
            .enumerate()
            .map(|(i, p)| (p.case_id.as_str(), i))
            .collect()
    }

    /// Expression vector of a patient, if any.
    pub fn expression_of(&self, p: &Patient) -> Option<&[f32]> {
        Some(self.expression.as_ref()?.row(p.expression_row?))
    }
}

/// Class names per patient index, for summaries.
pub fn class_counts(
    patients: &[Patient],
    members: impl Iterator<Item = usize>,
    n_classes: usize,
) -> Vec<usize> {
    let mut c = vec![0; n_classes];
    for i in members {
        if let Some(slot) = c.get_mut(patients[i].label) {
            *slot += 1;
        }
    }
    c
}
