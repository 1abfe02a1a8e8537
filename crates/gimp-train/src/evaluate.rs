//! Evaluating any checkpoint on a split of a cohort, overall and by which modalities each patient
//! has; and the patient embeddings (`CLS_pat`) for plots and analysis.

use crate::compat::FeatureKind;
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use gimp_io::splits::Part;
use gimp_metrics::calibration::{self, Calibration};
use gimp_metrics::Report;
use gimp_models::registry::{self, Loaded};
use gimp_models::BagInput;
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::Mode;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub split: String,
    pub overall: Report,
    /// `slides+expression`, `slides only`, `expression only`.
    pub by_modality: BTreeMap<String, Report>,
    /// The temperature the probabilities were computed at (1 unless `calibrate` fitted one).
    pub temperature: f64,
    /// The reliability diagram's bins and the calibration errors of `overall`.
    pub calibration: Calibration,
}

/// A temperature fitted on the validation split (docs/DESIGN.md §32), with what it changes there.
#[derive(Debug, Clone, Serialize)]
pub struct TemperatureFit {
    pub temperature: f64,
    /// Validation patients it was fitted on.
    pub n: usize,
    pub nll_before: f64,
    pub nll_after: f64,
    pub ece_before: f64,
    pub ece_after: f64,
}

/// Fits the temperature of `m` (whose own temperature is ignored) on the validation split of
/// `data` by minimising the negative log-likelihood; the predicted classes do not change.
pub fn fit_temperature(m: &Loaded, data: &Prepared) -> Result<TemperatureFit> {
    if m.survival.is_some() {
        return Err(TrainError::Msg(format!(
            "{} is a survival model: its outputs are hazards or a log-risk, not class \
             probabilities a temperature could calibrate",
            m.arch.name
        )));
    }
    let (y, probs) = predictions(m, data, Part::Val, 1.0)?;
    if y.is_empty() {
        return Err(TrainError::Msg(
            "no validation patient has the input this model reads: a temperature is fitted on \
             the validation split"
                .into(),
        ));
    }
    let t = calibration::fit_temperature(&y, &probs);
    let after = calibration::with_temperature(&probs, t);
    let ece = |p: &[Vec<f64>]| calibration::calibration(&y, p, calibration::DEFAULT_BINS).ece;
    Ok(TemperatureFit {
        temperature: t,
        n: y.len(),
        nll_before: calibration::nll_at(&y, &probs, 1.0),
        nll_after: calibration::nll_at(&y, &probs, t),
        ece_before: ece(&probs),
        ece_after: ece(&after),
    })
}

/// Labels and probabilities (at temperature `t`) of every patient of `part` that has what the
/// model reads.
fn predictions(
    m: &Loaded,
    data: &Prepared,
    part: Part,
    t: f64,
) -> Result<(Vec<usize>, Vec<Vec<f64>>)> {
    let (mut y, mut probs) = (Vec::new(), Vec::new());
    for &i in split_indices(data, part) {
        let Some(out) = run_patient(m, data, i)? else {
            continue;
        };
        let logits = out.logits.affine(1.0 / t, 0.0)?;
        probs.push(
            gimp_nn::ops::softmax_last(&logits)?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1()?,
        );
        y.push(data.patients[i].label);
    }
    Ok((y, probs))
}

/// A model to run: from a gimp-rs checkpoint (with its classes and expression preprocessing),
/// or from the reference code's weights and an architecture name.
pub struct ModelSource {
    pub loaded: Loaded,
    pub classes: Option<Vec<String>>,
    pub preprocessing: Option<gimp_nn::checkpoint::Preprocessing>,
    /// The settings it was trained with (a checkpoint's provenance), if known.
    pub training: Option<serde_json::Value>,
    /// The features it reads (`None` for expression-only models of unknown width).
    pub features: Option<FeatureKind>,
    /// Where it came from, for errors: `checkpoint PATH` or `ARCH weights PATH`.
    pub origin: String,
}

impl ModelSource {
    /// `checkpoint`, else `arch` with `weights` (safetensors, a `torch.save`d state dict or a
    /// Lightning checkpoint, by the reference's parameter names).
    pub fn open(
        checkpoint: Option<&std::path::Path>,
        arch: Option<&str>,
        weights: Option<&std::path::Path>,
    ) -> Result<Self> {
        let loading = |p: &std::path::Path, e: candle_core::Error| {
            TrainError::Msg(format!("loading {}: {e}", p.display()))
        };
        match (checkpoint, arch, weights) {
            (Some(path), _, _) => {
                let c = Checkpoint::load(path)?;
                let loaded = registry::load_checkpoint(&c).map_err(|e| loading(path, e))?;
                Ok(Self {
                    features: FeatureKind::expected(Some(&c.info), &loaded.config),
                    origin: format!("the checkpoint {}", path.display()),
                    loaded,
                    training: c
                        .info
                        .get("training")
                        .and_then(|t| serde_json::from_str(t).ok()),
                    classes: Some(c.classes),
                    preprocessing: c.preprocessing,
                })
            }
            (None, Some(arch), Some(path)) => {
                let arch = registry::lookup(arch)?;
                let weights = gimp_io::weights::read(path)?;
                let loaded = registry::load(arch, weights, None).map_err(|e| loading(path, e))?;
                Ok(Self {
                    features: FeatureKind::expected(None, &loaded.config),
                    origin: format!("{} from {}", arch.name, path.display()),
                    loaded,
                    classes: None,
                    preprocessing: None,
                    training: None,
                })
            }
            _ => Err(TrainError::Msg(
                "give --checkpoint, or --arch with --weights".into(),
            )),
        }
    }
}

impl ModelSource {
    /// Refuses a feature file whose width or encoder is not the one the model was trained on
    /// (§36), before the model runs on it.
    pub fn check_features(&self, file: &std::path::Path) -> Result<()> {
        match &self.features {
            Some(want) => want.check(&self.origin, file, &FeatureKind::of_file(file)?),
            None => Ok(()),
        }
    }

    /// Why an answer from only some of the modalities a model reads may not be trustworthy.
    /// GiMP answers without expression (or slides) through its learned "missing" embedding;
    /// fine-tuned on both modalities alone it answers near chance that way (the demo's GiMP with
    /// modality dropout, given only slides, gave 0.50–0.53 to every test patient). A model
    /// fine-tuned on the one modality (`finetune.modalities`) or on every subset
    /// (`finetune.modality_subsets`, docs/DESIGN.md §31) is trained for it. `None` when the model
    /// has both, reads only one anyway, or was trained for the case.
    pub fn missing_modality_warning(&self, slides: bool, expression: bool) -> Option<String> {
        if self.loaded.arch.input != gimp_models::InputKind::Multimodal || (slides && expression) {
            return None;
        }
        let finetune = self.training.as_ref().map(|t| &t["finetune"]);
        if finetune.is_some_and(|f| f["modality_subsets"].as_bool() == Some(true)) {
            return None;
        }
        let modalities = finetune.and_then(|f| f["modalities"].as_str());
        let (missing, alone) = match slides {
            true => ("expression", "image"),
            false => ("slide features", "genes"),
        };
        (modalities != Some(alone)).then(|| {
            format!(
                "{} was fine-tuned with both modalities; without {missing} it answers through a \
                 placeholder embedding and may be near chance: prefer a model fine-tuned for it \
                 (finetune.modality_subsets = true) or on the modality you have \
                 (finetune.modalities = \"{alone}\")",
                self.loaded.arch.name
            )
        })
    }
}

/// One score per patch of `bag` (`[N, D]`) from a model that reads slides — attention for the
/// MIL models, CLS attention for the Nyström aggregators — with the patient's expression where
/// the model reads it too.
pub fn patch_scores(
    m: &Loaded,
    bag: BagInput,
    expression: Option<&candle_core::Tensor>,
) -> Result<Vec<f32>> {
    let name = m.arch.name;
    if !m.arch.input.reads_slides() {
        return Err(TrainError::Msg(format!(
            "{name} reads expression only: it has no per-patch scores"
        )));
    }
    let input = m
        .arch
        .input
        .select(Some(bag), expression)
        .map_err(|missing| TrainError::Msg(format!("{name} {missing}")))?;
    let out = m.model.forward(&input, &Mode::inference())?;
    let scores = out
        .attention
        .ok_or_else(|| TrainError::Msg(format!("{name} returned no per-patch scores")))?;
    Ok(scores.to_vec1()?)
}

/// The model a checkpoint holds.
pub fn load(ckpt: &Checkpoint) -> Result<Loaded> {
    Ok(registry::load_checkpoint(ckpt)?)
}

/// The model a checkpoint (read from `path`) holds, after checking that `data`'s features are the
/// ones it was trained on (§36): what `evaluate`, `embed` and `tsne` run.
pub fn load_for_cohort(
    ckpt: &Checkpoint,
    path: &std::path::Path,
    data: &Prepared,
) -> Result<Loaded> {
    let m = load(ckpt)?;
    if m.arch.input.reads_slides() {
        if let Some(want) = FeatureKind::expected(Some(&ckpt.info), &m.config) {
            want.check_cohort(&format!("the checkpoint {}", path.display()), data)?;
        }
    }
    Ok(m)
}

fn modality(data: &Prepared, i: usize) -> &'static str {
    match (
        data.patients[i].slides.is_empty(),
        data.patients[i].expression.is_none(),
    ) {
        (false, false) => "slides+expression",
        (false, true) => "slides only",
        (true, false) => "expression only",
        (true, true) => "neither",
    }
}

/// Runs the model on patient `i`; `None` when the patient lacks what the model reads.
pub fn run_patient(m: &Loaded, data: &Prepared, i: usize) -> Result<Option<gimp_models::Output>> {
    let bag = data.bag_reader(i)?;
    let expr = data.expression(i)?;
    let bag = bag.as_ref().map(|b| BagInput::Rows(b));
    let Ok(input) = m.arch.input.select(bag, expr.as_ref()) else {
        return Ok(None);
    };
    Ok(Some(m.model.forward(&input, &Mode::inference())?))
}

pub fn split_indices(data: &Prepared, part: Part) -> &[usize] {
    match part {
        Part::Train => &data.train,
        Part::Val => &data.val,
        Part::Test => &data.test,
    }
}

pub fn evaluate(m: &Loaded, data: &Prepared, part: Part, seed: u64) -> Result<Evaluation> {
    let nc = data.classes.len();
    let mut all: (Vec<usize>, Vec<Vec<f64>>) = (Vec::new(), Vec::new());
    let mut groups: BTreeMap<String, (Vec<usize>, Vec<Vec<f64>>)> = BTreeMap::new();
    for &i in split_indices(data, part) {
        let Some(out) = run_patient(m, data, i)? else {
            continue;
        };
        let p: Vec<f64> = m
            .probabilities(&out.logits)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1()?;
        let y = data.patients[i].label;
        all.0.push(y);
        all.1.push(p.clone());
        let g = groups.entry(modality(data, i).to_string()).or_default();
        g.0.push(y);
        g.1.push(p);
    }
    if all.0.is_empty() {
        return Err(TrainError::Msg(format!(
            "no patient of the {} split has the input this model reads",
            part.name()
        )));
    }
    Ok(Evaluation {
        split: part.name().to_string(),
        temperature: m.temperature,
        calibration: calibration::calibration(&all.0, &all.1, calibration::DEFAULT_BINS),
        overall: Report::new(&all.0, &all.1, nc, seed),
        by_modality: groups
            .into_iter()
            .map(|(k, (y, p))| (k, Report::new(&y, &p, nc, seed)))
            .collect(),
    })
}

/// A survival checkpoint's metrics on a split (`docs/DESIGN.md` §34), with every scored
/// patient's risk and outcome (for Kaplan–Meier curves by risk group).
#[derive(Debug, Clone, Serialize)]
pub struct SurvivalEvaluation {
    pub split: String,
    /// `nll` or `cox`.
    pub loss: String,
    pub unit: String,
    pub scores: crate::task::SurvivalScores,
    #[serde(skip)]
    pub predictions: crate::predictions::Predictions,
}

/// Evaluates a survival checkpoint (`m.survival`) on `part`: Harrell's c-index with a bootstrap
/// interval, Uno's c-index, time-dependent AUC and (NLL head) the integrated Brier score, the
/// censoring distribution from the split's training part.
pub fn evaluate_survival(
    m: &Loaded,
    data: &Prepared,
    part: Part,
    seed: u64,
) -> Result<SurvivalEvaluation> {
    let head = m.survival.as_ref().ok_or_else(|| {
        TrainError::Msg(format!(
            "{} is not a survival model (its checkpoint records no survival head)",
            m.arch.name
        ))
    })?;
    let outcomes = &data
        .survival
        .as_ref()
        .ok_or_else(|| {
            TrainError::Msg(
                "the checkpoint is a survival model but the cohort file has no [survival] \
                 section to evaluate it against"
                    .into(),
            )
        })?
        .outcomes;
    let mut p = crate::predictions::Predictions::default();
    for &i in split_indices(data, part) {
        let Some(out) = run_patient(m, data, i)? else {
            continue;
        };
        p.patients.push(i);
        p.risk.extend(head.risk(&out.logits)?);
        p.probs
            .push(head.survival_curve(&out.logits)?.unwrap_or_default());
        p.time.push(outcomes[i].time);
        p.event.push(outcomes[i].event);
    }
    if p.patients.is_empty() {
        return Err(TrainError::Msg(format!(
            "no patient of the {} split has the input this model reads",
            part.name()
        )));
    }
    let train_time: Vec<f64> = data.train.iter().map(|&i| outcomes[i].time).collect();
    let train_event: Vec<bool> = data.train.iter().map(|&i| outcomes[i].event).collect();
    let train = gimp_metrics::survival::Outcomes {
        time: &train_time,
        event: &train_event,
    };
    Ok(SurvivalEvaluation {
        split: part.name().to_string(),
        loss: head.loss.name().to_string(),
        unit: head.unit.clone(),
        scores: crate::task::score(train, &p, head, seed),
        predictions: p,
    })
}

/// A checkpoint's figures on a split, in the terms of the task it was trained for.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CheckpointEvaluation {
    Classification(Evaluation),
    Survival(SurvivalEvaluation),
}

/// Evaluates any checkpoint on `part`: [`evaluate_survival`] where it records a survival head,
/// else [`evaluate`].
pub fn evaluate_checkpoint(
    m: &Loaded,
    data: &Prepared,
    part: Part,
    seed: u64,
) -> Result<CheckpointEvaluation> {
    Ok(match m.survival {
        Some(_) => CheckpointEvaluation::Survival(evaluate_survival(m, data, part, seed)?),
        None => CheckpointEvaluation::Classification(evaluate(m, data, part, seed)?),
    })
}

/// Tab-separated embeddings: `case_id, label, split, modalities, e0 … e{d−1}`.
pub fn embeddings_tsv(m: &Loaded, data: &Prepared) -> Result<String> {
    let mut part_of = vec![""; data.patients.len()];
    for (part, idx) in [
        ("train", &data.train),
        ("val", &data.val),
        ("test", &data.test),
    ] {
        for &i in idx {
            part_of[i] = part;
        }
    }
    let mut out = String::new();
    let mut header = false;
    for (i, part) in part_of.iter().enumerate() {
        let Some(o) = run_patient(m, data, i)? else {
            continue;
        };
        let e: Vec<f32> = o.embedding.to_vec1()?;
        if !header {
            out.push_str("case_id\tlabel\tsplit\tmodalities");
            for k in 0..e.len() {
                out.push_str(&format!("\te{k}"));
            }
            out.push('\n');
            header = true;
        }
        let p = &data.patients[i];
        out.push_str(&format!(
            "{}\t{}\t{}\t{}",
            p.case_id,
            data.classes[p.label],
            part,
            modality(data, i)
        ));
        for v in e {
            out.push_str(&format!("\t{v}"));
        }
        out.push('\n');
    }
    Ok(out)
}
