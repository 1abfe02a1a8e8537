//! The summary `gimp-rs cohort check` prints, as a table for people and JSON for scripts.

use crate::cohort::{class_counts, Cohort};
use crate::survival::{Outcome, OutcomeSummary, TimeUnit};
use gimp_io::splits::Part;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ClassCount {
    pub name: String,
    pub patients: usize,
    pub slides: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Modalities {
    pub slides_and_expression: usize,
    pub slides_only: usize,
    pub expression_only: usize,
    pub neither: usize,
}

/// Patches per patient (bags of one patient's slides concatenated).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BagSizes {
    pub min: usize,
    pub p25: usize,
    pub median: usize,
    pub p75: usize,
    pub max: usize,
    pub total: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SplitSummary {
    pub file: String,
    pub format: String,
    /// Patients per class in each part, in label-map order.
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
    pub unassigned: usize,
}

/// Survival outcomes overall and in the train, validation and test parts of every split.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SurvivalSummary {
    pub unit: TimeUnit,
    pub all: OutcomeSummary,
    /// Per split, `[train, val, test]`.
    pub splits: Vec<[OutcomeSummary; 3]>,
}

impl SurvivalSummary {
    fn of(c: &Cohort, outcomes: &[Outcome]) -> Self {
        let unit = c
            .file
            .config
            .survival
            .as_ref()
            .map(|s| s.unit)
            .unwrap_or_default();
        let part = |f: &crate::split::Fold, part: Part| {
            let members: Vec<Outcome> = f.patients(part).iter().map(|&i| outcomes[i]).collect();
            OutcomeSummary::of(&members)
        };
        Self {
            unit,
            all: OutcomeSummary::of(outcomes),
            splits: c
                .folds
                .iter()
                .map(|f| {
                    [
                        part(f, Part::Train),
                        part(f, Part::Val),
                        part(f, Part::Test),
                    ]
                })
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ExpressionSummary {
    pub samples: usize,
    pub genes: usize,
    pub sources: Vec<String>,
    pub imputed_values: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub cohort: String,
    pub patients: usize,
    pub slides: usize,
    pub classes: Vec<ClassCount>,
    pub modalities: Modalities,
    pub feature_dim: Option<usize>,
    /// Encoders recorded on the feature files, with file counts.
    pub feature_encoders: Vec<(String, usize)>,
    pub bag_sizes: Option<BagSizes>,
    pub expression: Option<ExpressionSummary>,
    pub splits: Vec<SplitSummary>,
    /// Events, censoring and follow-up, overall and per split part, when the cohort has
    /// survival outcomes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub survival: Option<SurvivalSummary>,
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

fn quantile(sorted: &[usize], q: f64) -> usize {
    let pos = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[pos]
}

impl Summary {
    pub fn of(c: &Cohort) -> Self {
        let nc = c.label_map.len();
        let classes = c
            .label_map
            .names
            .iter()
            .enumerate()
            .map(|(k, name)| ClassCount {
                name: name.clone(),
                patients: c.patients.iter().filter(|p| p.label == k).count(),
                slides: c
                    .patients
                    .iter()
                    .filter(|p| p.label == k)
                    .map(|p| p.slides.len())
                    .sum(),
            })
            .collect();
        let count = |f: &dyn Fn(bool, bool) -> bool| {
            c.patients
                .iter()
                .filter(|p| f(p.has_slides(), p.has_expression()))
                .count()
        };
        let modalities = Modalities {
            slides_and_expression: count(&|s, e| s && e),
            slides_only: count(&|s, e| s && !e),
            expression_only: count(&|s, e| !s && e),
            neither: count(&|s, e| !s && !e),
        };
        let mut sizes: Vec<usize> = c
            .patients
            .iter()
            .filter(|p| p.slides.iter().any(|s| s.shape.is_some()))
            .map(|p| p.n_patches())
            .collect();
        sizes.sort_unstable();
        let bag_sizes = (!sizes.is_empty()).then(|| BagSizes {
            min: sizes[0],
            p25: quantile(&sizes, 0.25),
            median: quantile(&sizes, 0.5),
            p75: quantile(&sizes, 0.75),
            max: sizes[sizes.len() - 1],
            total: sizes.iter().sum(),
        });
        let splits = c
            .folds
            .iter()
            .map(|f| SplitSummary {
                file: f.file.display().to_string(),
                format: format!("{:?}", f.format).to_lowercase(),
                train: class_counts(&c.patients, f.patients(Part::Train).into_iter(), nc),
                val: class_counts(&c.patients, f.patients(Part::Val).into_iter(), nc),
                test: class_counts(&c.patients, f.patients(Part::Test).into_iter(), nc),
                unassigned: c.patients.len() - f.part.len(),
            })
            .collect();
        let expression = c.expression.as_ref().map(|m| ExpressionSummary {
            samples: m.n_samples(),
            genes: m.n_genes(),
            sources: c.expression_info.sources.clone(),
            imputed_values: c.expression_info.imputed_values,
        });
        Self {
            cohort: c.file.path.display().to_string(),
            patients: c.patients.len(),
            slides: c.patients.iter().map(|p| p.slides.len()).sum(),
            classes,
            modalities,
            feature_dim: c.feature_dim,
            feature_encoders: c.feature_encoders.clone(),
            bag_sizes,
            expression,
            splits,
            survival: c.survival.as_ref().map(|o| SurvivalSummary::of(c, o)),
            errors: c.diagnostics.errors.clone(),
            warnings: c.diagnostics.warnings.clone(),
        }
    }

    /// A plain-text report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "cohort   {}", self.cohort);
        let _ = writeln!(s, "patients {}   slides {}", self.patients, self.slides);
        let _ = writeln!(s, "\nclass                 patients   slides");
        for c in &self.classes {
            let _ = writeln!(s, "  {:<20}{:>8}{:>9}", c.name, c.patients, c.slides);
        }
        let m = &self.modalities;
        let _ = writeln!(
            s,
            "\nmodalities  slides+expression {}   slides only {}   expression only {}   neither {}",
            m.slides_and_expression, m.slides_only, m.expression_only, m.neither
        );
        match (self.feature_dim, &self.bag_sizes) {
            (Some(d), Some(b)) => {
                let _ = writeln!(s, "features    D = {d}; patches per patient min {} / p25 {} / median {} / p75 {} / max {} (total {})", b.min, b.p25, b.median, b.p75, b.max, b.total);
            }
            _ => {
                let _ = writeln!(s, "features    none");
            }
        }
        if !self.feature_encoders.is_empty() {
            let e: Vec<String> = self
                .feature_encoders
                .iter()
                .map(|(e, n)| format!("{e}: {n} file(s)"))
                .collect();
            let _ = writeln!(s, "encoder     {}", e.join("; "));
        }
        match &self.expression {
            Some(e) => {
                let _ = writeln!(
                    s,
                    "expression  {} samples × {} genes from {}",
                    e.samples,
                    e.genes,
                    e.sources.join(", ")
                );
            }
            None => {
                let _ = writeln!(s, "expression  none");
            }
        }
        if let Some(sv) = &self.survival {
            let _ = writeln!(s, "survival    {}", sv.all.render(sv.unit));
        }
        for (k, sp) in self.splits.iter().enumerate() {
            let _ = writeln!(s, "\nsplit {} ({})", sp.file, sp.format);
            let _ = writeln!(
                s,
                "  {:<20}{:>8}{:>8}{:>8}",
                "class", "train", "val", "test"
            );
            for (k, c) in self.classes.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "  {:<20}{:>8}{:>8}{:>8}",
                    c.name, sp.train[k], sp.val[k], sp.test[k]
                );
            }
            if sp.unassigned > 0 {
                let _ = writeln!(s, "  {} patient(s) in no part", sp.unassigned);
            }
            if let Some(parts) = self
                .survival
                .as_ref()
                .and_then(|sv| sv.splits.get(k).map(|p| (sv.unit, p)))
            {
                let (unit, parts) = parts;
                for (name, summary) in ["train", "val", "test"].iter().zip(parts.iter()) {
                    let _ = writeln!(s, "  survival {name:<5} {}", summary.render(unit));
                }
            }
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "\nwarnings ({}):", self.warnings.len());
            for w in &self.warnings {
                let _ = writeln!(s, "  - {w}");
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(s, "\nno errors");
        } else {
            let _ = writeln!(s, "\nerrors ({}):", self.errors.len());
            for e in &self.errors {
                let _ = writeln!(s, "  - {e}");
            }
        }
        s
    }
}
