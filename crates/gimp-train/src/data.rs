//! A cohort's split prepared for training: labels, the slide features of each patient (read from
//! the memory-mapped cache on demand, so a 100 GB cohort never has to fit in memory), and the
//! expression standardised with training-split statistics only (`docs/DESIGN.md` §3).

use crate::config::{GeneSelection, Modalities};
use crate::error::{Result, TrainError};
use candle_core::{Device, Tensor};
use gimp_cohort::cache::{CachedBag, FeatureCache};
use gimp_cohort::Cohort;
use gimp_io::bag::{BagRows, SharedRows};
use gimp_io::expression::ExpressionTransform;
use gimp_io::splits::Part;
use gimp_nn::checkpoint::Preprocessing;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Clone)]
pub struct PatientData {
    pub case_id: String,
    pub label: usize,
    /// (slide id, feature file) in slide order.
    pub slides: Vec<(String, PathBuf)>,
    /// Standardised expression.
    pub expression: Option<Vec<f32>>,
}

#[derive(Clone)]
pub struct Prepared {
    /// Transformed (log2p1 or not) but not standardised expression, kept so a checkpoint's own
    /// statistics can be applied (`with_preprocessing`).
    raw: Vec<Option<Vec<f32>>>,
    pub classes: Vec<String>,
    pub patients: Vec<PatientData>,
    pub train: Vec<usize>,
    pub val: Vec<usize>,
    pub test: Vec<usize>,
    pub d_in: Option<usize>,
    pub preprocessing: Option<Preprocessing>,
    /// `None` without a `[features]` section; then no patient has slides to read.
    cache: Option<FeatureCache>,
    /// Every patient's outcome, when the cohort file has a `[survival]` section.
    pub survival: Option<SurvivalData>,
}

/// A survival cohort's outcomes and the settings of its `[survival]` section.
#[derive(Debug, Clone)]
pub struct SurvivalData {
    /// By patient index, as [`Prepared::patients`].
    pub outcomes: Vec<gimp_cohort::survival::Outcome>,
    /// Discrete time bins to fit on the training part (`[survival] bins`).
    pub n_bins: usize,
    pub unit: gimp_cohort::survival::TimeUnit,
}

impl Prepared {
    /// Patient `i`'s expression after the transform, before z-scoring (`None` without
    /// expression): what the linear baseline standardises itself.
    pub fn transformed_expression(&self, i: usize) -> Option<&[f32]> {
        self.raw.get(i)?.as_deref()
    }

    /// The split a checkpoint is evaluated on: `fold` (default: the one it was trained on), with
    /// the checkpoint's own expression transform, gene order and training statistics.
    pub fn for_checkpoint(
        cohort: &Cohort,
        fold: Option<usize>,
        ckpt: &gimp_nn::checkpoint::Checkpoint,
    ) -> Result<Self> {
        let fold = fold
            .or_else(|| ckpt.info.get("fold").and_then(|f| f.parse().ok()))
            .unwrap_or(0);
        let prepared = match &ckpt.preprocessing {
            None => Self::new(cohort, fold, ExpressionTransform::None)?,
            Some(p) => Self::new(cohort, fold, p.transform)?.with_preprocessing(p)?,
        };
        // A GiMP part fine-tuned on one modality (`finetune.modalities`) is evaluated as it was
        // validated: on that modality, the other half being its "missing" embedding.
        let fine_tuned_on = ckpt
            .info
            .get("training")
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|t| t["finetune"]["modalities"].as_str().map(str::to_owned));
        Ok(match fine_tuned_on.as_deref().map(str::parse) {
            Some(Ok(m)) => prepared.only(m),
            _ => prepared,
        })
    }

    /// Only modalities `m` of every patient: the others are treated as missing (a deployment
    /// where they are not available).
    pub fn only(mut self, m: Modalities) -> Self {
        for p in &mut self.patients {
            if !m.expression() {
                p.expression = None;
            }
            if !m.slides() {
                p.slides.clear();
            }
        }
        self
    }

    /// Prepares split `fold` of `cohort`, its expression transformed by `t`.
    pub fn new(cohort: &Cohort, fold: usize, t: ExpressionTransform) -> Result<Self> {
        if !cohort.diagnostics.errors.is_empty() {
            return Err(TrainError::Msg(format!(
                "the cohort has errors (see `gimp-rs cohort check`):\n  - {}",
                cohort.diagnostics.errors.join("\n  - ")
            )));
        }
        let f = cohort.folds.get(fold).ok_or_else(|| {
            TrainError::Msg(format!(
                "the cohort has {} split file(s); there is no split {fold}",
                cohort.folds.len()
            ))
        })?;
        let part = |p: Part| f.patients(p);
        let (train, val, test) = (part(Part::Train), part(Part::Val), part(Part::Test));
        if train.is_empty() || test.is_empty() {
            return Err(TrainError::Msg(format!(
                "split {fold} has no training or no test patients"
            )));
        }
        let raw = |i: usize| -> Option<Vec<f32>> {
            cohort
                .expression_of(&cohort.patients[i])
                .map(|r| t.apply_row(r))
        };
        let rows: Vec<Option<Vec<f32>>> = (0..cohort.patients.len()).map(raw).collect();
        let preprocessing = cohort.expression.as_ref().map(|m| {
            let train_rows: Vec<&[f32]> =
                train.iter().filter_map(|&i| rows[i].as_deref()).collect();
            let g = m.n_genes();
            let n = train_rows.len().max(1) as f64;
            let mut mean = vec![0f64; g];
            for r in &train_rows {
                for (a, v) in mean.iter_mut().zip(r.iter()) {
                    *a += *v as f64;
                }
            }
            mean.iter_mut().for_each(|a| *a /= n);
            let mut var = vec![0f64; g];
            for r in &train_rows {
                for ((a, v), m) in var.iter_mut().zip(r.iter()).zip(&mean) {
                    *a += (*v as f64 - m).powi(2);
                }
            }
            Preprocessing {
                transform: t,
                genes: m.genes.clone(),
                mean: mean.iter().map(|v| *v as f32).collect(),
                std: var.iter().map(|v| (v / n).sqrt() as f32).collect(),
            }
        });
        let patients = cohort
            .patients
            .iter()
            .enumerate()
            .map(|(i, p)| PatientData {
                case_id: p.case_id.clone(),
                label: p.label,
                slides: p
                    .slides
                    .iter()
                    .filter_map(|s| s.path.clone().map(|path| (s.slide_id.clone(), path)))
                    .collect(),
                expression: match (&rows[i], &preprocessing) {
                    (Some(r), Some(pp)) => Some(standardise(r, pp)),
                    _ => None,
                },
            })
            .collect();
        Ok(Self {
            raw: rows,
            classes: cohort.label_map.names.clone(),
            patients,
            train,
            val,
            test,
            d_in: cohort.feature_dim,
            preprocessing,
            cache: FeatureCache::of(cohort),
            survival: match (&cohort.survival, &cohort.file.config.survival) {
                (Some(outcomes), Some(c)) => Some(SurvivalData {
                    outcomes: outcomes.clone(),
                    n_bins: c.bins,
                    unit: c.unit,
                }),
                _ => None,
            },
        })
    }

    /// Applies a trained model's preprocessing (its gene order, transform and training-split
    /// statistics) instead of statistics recomputed from this cohort.
    pub fn with_preprocessing(mut self, p: &Preprocessing) -> Result<Self> {
        let Some(own) = &self.preprocessing else {
            // No expression at all: every patient is a slide-only patient, which a model that
            // reads expression answers without it or leaves out (its `InputKind` decides).
            self.preprocessing = Some(p.clone());
            return Ok(self);
        };
        if own.transform != p.transform {
            return Err(TrainError::Msg(format!(
                "the model expects transform '{}', the run uses '{}'",
                p.transform, own.transform
            )));
        }
        let strip = |g: &String| gimp_io::expression::strip_version(g).to_string();
        let pos: std::collections::HashMap<String, usize> = own
            .genes
            .iter()
            .enumerate()
            .map(|(i, g)| (strip(g), i))
            .collect();
        let map: Vec<usize> = p
            .genes
            .iter()
            .map(|g| {
                pos.get(&strip(g)).copied().ok_or_else(|| {
                    TrainError::Msg(format!(
                        "gene '{g}' of the model is not in the cohort's expression"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        for (pd, raw) in self.patients.iter_mut().zip(&self.raw) {
            pd.expression = raw.as_ref().map(|r| {
                let ordered: Vec<f32> = map.iter().map(|&i| r[i]).collect();
                standardise(&ordered, p)
            });
        }
        self.preprocessing = Some(p.clone());
        Ok(self)
    }

    /// The positions among the cohort's genes of those `selection` picks (chosen on the
    /// training split as [`Self::with_genes`] chooses them); `None` when it keeps every gene or
    /// the cohort has no expression.
    pub fn gene_positions(&self, selection: &GeneSelection) -> Result<Option<Vec<usize>>> {
        let Some(p) = &self.preprocessing else {
            return Ok(None);
        };
        let keep = selection.pick(p)?;
        Ok((keep.len() != p.genes.len()).then_some(keep))
    }

    /// Keeps only the genes `selection` picks, chosen on the training split (`docs/DESIGN.md`
    /// §38): the kept genes, their statistics and order become the preprocessing a checkpoint
    /// stores, so evaluation and prediction re-apply the same subset.
    pub fn with_genes(self, selection: &GeneSelection) -> Result<Self> {
        match self.gene_positions(selection)? {
            Some(keep) => self.with_gene_positions(&keep),
            None => Ok(self),
        }
    }

    /// Keeps the genes at positions `keep`, in that order, as [`Self::with_genes`] does with
    /// the positions its selection picked.
    pub fn with_gene_positions(mut self, keep: &[usize]) -> Result<Self> {
        let Some(p) = &self.preprocessing else {
            return Ok(self);
        };
        if let Some(bad) = keep.iter().find(|&&i| i >= p.genes.len()) {
            return Err(TrainError::Msg(format!(
                "gene position {bad} of {} genes",
                p.genes.len()
            )));
        }
        let pick = |v: &[f32]| -> Vec<f32> { keep.iter().map(|&i| v[i]).collect() };
        let kept = Preprocessing {
            transform: p.transform,
            genes: keep.iter().map(|&i| p.genes[i].clone()).collect(),
            mean: pick(&p.mean),
            std: pick(&p.std),
        };
        for r in self.raw.iter_mut().flatten() {
            *r = pick(r);
        }
        for (pd, raw) in self.patients.iter_mut().zip(&self.raw) {
            pd.expression = raw.as_ref().map(|r| standardise(r, &kept));
        }
        self.preprocessing = Some(kept);
        Ok(self)
    }

    pub fn n_genes(&self) -> usize {
        self.preprocessing.as_ref().map_or(0, |p| p.genes.len())
    }

    /// The patient's slides' bags in slide order, through the memory-mapped feature cache
    /// (empty without slides).
    fn cached_bags(&self, i: usize) -> Result<Vec<CachedBag>> {
        let p = &self.patients[i];
        if p.slides.is_empty() {
            return Ok(Vec::new());
        }
        let cache = self.cache.as_ref().ok_or_else(|| {
            TrainError::Msg("the cohort has slides but no [features] section".into())
        })?;
        Ok(p.slides
            .iter()
            .map(|(id, path)| cache.get(path, id, gimp_io::DEFAULT_MAX_BAG_BYTES))
            .collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// The patient's bag `[N, D]` (slides concatenated in order), via the feature cache.
    pub fn bag(&self, i: usize) -> Result<Option<Tensor>> {
        let bags = self.cached_bags(i)?;
        if bags.is_empty() {
            return Ok(None);
        }
        let parts = bags
            .iter()
            .map(|b| Tensor::from_slice(b.features(), (b.n, b.d), &Device::Cpu))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Some(Tensor::cat(&parts, 0)?))
    }

    /// The patient's bag read from the memory-mapped cache by rows (its slides concatenated in
    /// order), copying nothing until asked: what inference reads (`docs/DESIGN.md` §42).
    pub fn bag_reader(&self, i: usize) -> Result<Option<CachedRows>> {
        let bags = self.cached_bags(i)?;
        if bags.is_empty() {
            return Ok(None);
        }
        let d = bags[0].d;
        // First row of each slide within the concatenation.
        let mut starts = Vec::with_capacity(bags.len());
        let mut n = 0usize;
        for b in &bags {
            if b.d != d {
                return Err(TrainError::Msg(format!(
                    "patient {}: its slides' features have {} and {} values per patch",
                    self.patients[i].case_id, d, b.d
                )));
            }
            starts.push(n);
            n += b.n;
        }
        Ok(Some(CachedRows {
            bags: bags.into(),
            starts: starts.into(),
            n,
            d,
        }))
    }

    /// Rows `rows` of the patient's bag (indices into its slides concatenated in order), read
    /// straight from the memory-mapped cache: a 6,000-patch pre-training window of a
    /// 150,000-patch bag costs its 6,000 rows, not a copy of the whole bag (docs/DESIGN.md §42).
    pub fn bag_rows(&self, i: usize, rows: &[u32]) -> Result<Option<Tensor>> {
        let Some(bag) = self.bag_reader(i)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(rows.len() * bag.d);
        for &r in rows {
            let r = r as usize;
            if r >= bag.n {
                return Err(TrainError::Msg(format!(
                    "patient {}: row {r} of a bag of {} patches",
                    self.patients[i].case_id, bag.n
                )));
            }
            out.extend_from_slice(bag.row(r));
        }
        Ok(Some(Tensor::from_vec(
            out,
            (rows.len(), bag.d),
            &Device::Cpu,
        )?))
    }

    /// Patches in the patient's bag (0 without slides), read from the cache's headers.
    pub fn bag_patches(&self, i: usize) -> Result<usize> {
        Ok(self.cached_bags(i)?.iter().map(|b| b.n).sum())
    }

    /// The patient with the largest bag among `patients` and its size after the `cap` of
    /// `--max-patches`.
    pub fn largest_bag(
        &self,
        patients: &[usize],
        cap: Option<usize>,
    ) -> Result<Option<(usize, usize)>> {
        let mut largest: Option<(usize, usize)> = None;
        for &i in patients {
            let n = self.bag_patches(i)?;
            let n = cap.map_or(n, |c| n.min(c));
            if largest.is_none_or(|(_, m)| n > m) {
                largest = Some((i, n));
            }
        }
        Ok(largest)
    }

    /// Memory before speed ([`gimp_nn::memory::WholeBag`]) for a training stage whose largest
    /// bag, after `cap`, has at least [`gimp_nn::memory::WHOLE_BAG_PATCHES`] patches; `None`
    /// (the kept buffers' speed) for smaller bags.
    pub fn whole_bag_mode(
        &self,
        patients: &[usize],
        cap: Option<usize>,
    ) -> Result<Option<gimp_nn::memory::WholeBag>> {
        let largest = self.largest_bag(patients, cap)?.map_or(0, |(_, n)| n);
        Ok((largest >= gimp_nn::memory::WHOLE_BAG_PATCHES).then(gimp_nn::memory::WholeBag::enter))
    }

    /// `--memory-limit`: refuses, before any step, a training set whose largest bag (after the
    /// `cap` of `--max-patches`) would need more than `limit_gb` gigabytes (10⁹ bytes) for one
    /// step by the model's `estimate` (bytes for a bag of so many patches), naming the patient,
    /// the figure and the largest bag that fits.
    pub fn check_memory(
        &self,
        patients: &[usize],
        cap: Option<usize>,
        limit_gb: Option<f64>,
        estimate: impl Fn(usize) -> Option<u64>,
    ) -> Result<()> {
        let Some(limit_gb) = limit_gb else {
            return Ok(());
        };
        let limit = (limit_gb * 1e9) as u64;
        let Some((i, n)) = self.largest_bag(patients, cap)?.filter(|&(_, n)| n > 0) else {
            return Ok(());
        };
        let unknown =
            || TrainError::Msg("--memory-limit: this model has no memory estimate".into());
        let need = estimate(n).ok_or_else(unknown)?;
        if need <= limit {
            return Ok(());
        }
        // The estimates grow with the bag: the largest bag within the limit, by bisection.
        let (mut lo, mut hi) = (0usize, n);
        while lo + 1 < hi {
            let mid = lo + (hi - lo) / 2;
            match estimate(mid).ok_or_else(unknown)? <= limit {
                true => lo = mid,
                false => hi = mid,
            }
        }
        let fits = match lo {
            0 => "no bag fits it".to_string(),
            lo => {
                format!("bags of up to {lo} patches fit (--max-patches {lo} caps them at random)")
            }
        };
        Err(TrainError::Msg(format!(
            "patient {}: a training step on its bag of {n} patches needs an estimated {:.1} GB, \
             over --memory-limit {limit_gb} GB; {fits}",
            self.patients[i].case_id,
            need as f64 / 1e9,
        )))
    }

    pub fn expression(&self, i: usize) -> Result<Option<Tensor>> {
        Ok(match &self.patients[i].expression {
            Some(v) => Some(Tensor::from_slice(v, v.len(), &Device::Cpu)?),
            None => None,
        })
    }
}

/// z-score with the given statistics; a gene with std < 1e-6 is 0.
pub fn standardise(raw: &[f32], p: &Preprocessing) -> Vec<f32> {
    raw.iter()
        .zip(p.mean.iter().zip(&p.std))
        .map(|(v, (m, s))| if *s < 1e-6 { 0.0 } else { (v - m) / s })
        .collect()
}

/// One sample of an expression matrix as a model trained with `p` reads it: in the checkpoint's
/// gene order (version suffixes ignored), transformed and standardised with its training
/// statistics.
pub fn expression_row(matrix: &Path, sample: &str, p: &Preprocessing) -> Result<Tensor> {
    let mat = gimp_io::expression::read_matrix(matrix, gimp_io::expression::Orientation::Auto)?;
    let row =
        mat.sample_index().get(sample).copied().ok_or_else(|| {
            TrainError::Msg(format!("{}: no sample '{sample}'", matrix.display()))
        })?;
    let pos: std::collections::HashMap<&str, usize> = mat
        .genes
        .iter()
        .enumerate()
        .map(|(i, g)| (gimp_io::expression::strip_version(g), i))
        .collect();
    let values = mat.row(row);
    let transform = p.transform;
    let mut ordered = Vec::with_capacity(p.genes.len());
    for g in &p.genes {
        let Some(&i) = pos.get(gimp_io::expression::strip_version(g)) else {
            return Err(TrainError::Msg(format!(
                "{}: gene '{g}' of the checkpoint is missing",
                matrix.display()
            )));
        };
        ordered.push(transform.apply(values[i]));
    }
    let v = standardise(&ordered, p);
    Ok(Tensor::from_vec(v, p.genes.len(), &Device::Cpu)?)
}

/// A patient's bag in the memory-mapped feature cache, its slides concatenated in order, read
/// by rows ([`BagRows`]). The cache's values were checked finite when it was built.
#[derive(Clone)]
pub struct CachedRows {
    /// Shared, so a training step's graph can keep a handle ([`BagRows::shared`]).
    bags: Arc<[CachedBag]>,
    /// First row of each slide within the concatenation.
    starts: Arc<[usize]>,
    n: usize,
    d: usize,
}

impl CachedRows {
    /// Row `r` (below `n`).
    fn row(&self, r: usize) -> &[f32] {
        let s = self.starts.partition_point(|&st| st <= r) - 1;
        let local = r - self.starts[s];
        &self.bags[s].features()[local * self.d..(local + 1) * self.d]
    }
}

impl BagRows for CachedRows {
    fn dims(&self) -> (usize, usize) {
        (self.n, self.d)
    }

    fn read_rows(&self, first: usize, out: &mut [f32]) -> gimp_io::Result<()> {
        let cache = Path::new("(feature cache)");
        let count = gimp_io::bag::window_rows(cache, first, out.len(), self.n, self.d)?;
        // Slide by slide: each slide's overlap with the window is one contiguous copy.
        for (b, &start) in self.bags.iter().zip(self.starts.iter()) {
            let (lo, hi) = (first.max(start), (first + count).min(start + b.n));
            if lo < hi {
                let src = &b.features()[(lo - start) * self.d..(hi - start) * self.d];
                out[(lo - first) * self.d..(hi - first) * self.d].copy_from_slice(src);
            }
        }
        Ok(())
    }

    fn shared(&self) -> Option<SharedRows> {
        Some(Arc::new(self.clone()))
    }
}
