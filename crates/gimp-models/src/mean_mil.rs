//! Mean-pooling MIL: the mean of a bag's patch features through a linear classifier, the
//! simplest baseline of MIL benchmarks (TransMIL's and DTFD-MIL's "Mean-pooling" rows). It is
//! also the worked example of adding a model: this file and one line in the registry are all it
//! takes (docs/MODELS.md, "Adding a model"; a test checks no other source file names it).

use crate::arch::{config, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::model::{bag, Input, Model, Output};
use candle_core::{Result, Tensor};
use gimp_nn::{Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanMilConfig {
    pub d_in: usize,
    pub n_classes: usize,
}

/// Parameters: `classifier.{weight,bias}`.
pub struct MeanMil {
    classifier: Linear,
}

impl MeanMil {
    pub fn new(s: &Scope, cfg: MeanMilConfig) -> Result<Self> {
        Ok(Self {
            classifier: Linear::new(&s.pp("classifier"), cfg.d_in, cfg.n_classes, true)?,
        })
    }
}

impl Model for MeanMil {
    fn forward(&self, input: &Input, _mode: &Mode) -> Result<Output> {
        let x = &*bag(input)?;
        let n = x.dim(0)?;
        let embedding = x.mean(0)?;
        let logits = self
            .classifier
            .forward(&embedding.unsqueeze(0)?)?
            .squeeze(0)?;
        // Every patch weighs the same in the mean.
        let attention = Tensor::full(1.0 / n.max(1) as f32, n, x.device())?;
        Ok(Output {
            logits,
            embedding,
            attention: Some(attention),
        })
    }
}

/// Mean-pooling MIL in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "mean_mil",
    summary: "Mean-pooling MIL: mean patch feature, linear classifier (the MIL benchmarks' simplest baseline)",
    reference: "gimp-rs (nn.Linear names: classifier.weight, classifier.bias)",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults::CLAM),
    default_config: |d, c| {
        to_value(&MeanMilConfig {
            d_in: d.features,
            n_classes: c,
        })
    },
    build: |s, v| Ok(Box::new(MeanMil::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let c = shape(w, "classifier.weight")?;
        Ok(to_value(&MeanMilConfig {
            d_in: c[1],
            n_classes: c[0],
        }))
    },
    set_gene_groups: None,
};
