//! TransMIL (Shao et al., NeurIPS 2021; `docs/DESIGN.md` §15): the patch aggregator with
//! square padding and PPEG, and `_fc2` on CLS. Names are the original's, so a TransMIL
//! `state_dict` saved as safetensors runs as it is.

use crate::aggregator::{AggregatorConfig, PatchAggregator};
use crate::arch::{config, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::model::{bag_source, Input, Model, Output};
use candle_core::Result;
use gimp_nn::{Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransmilConfig {
    pub aggregator: AggregatorConfig,
    pub n_classes: usize,
}

impl TransmilConfig {
    pub fn new(d_in: usize, n_classes: usize) -> Self {
        Self {
            aggregator: AggregatorConfig::transmil(d_in),
            n_classes,
        }
    }
}

pub struct Transmil {
    pub cfg: TransmilConfig,
    pub aggregator: PatchAggregator,
    fc2: Linear,
}

impl Transmil {
    pub fn new(s: &Scope, cfg: TransmilConfig) -> Result<Self> {
        Ok(Self {
            aggregator: PatchAggregator::new(s, cfg.aggregator.clone())?,
            fc2: Linear::new(&s.pp("_fc2"), cfg.aggregator.dim, cfg.n_classes, true)?,
            cfg,
        })
    }
}

impl Model for Transmil {
    /// The aggregator's estimate (`PatchAggregator::training_step_bytes`); `_fc2` is negligible.
    fn training_step_bytes(&self, patches: usize) -> Option<u64> {
        Some(self.aggregator.training_step_bytes(patches))
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        // Training reads CLS alone, so the last layer computes only that row; the heat map's
        // attention is read outside training.
        let (cls, attention) = if mode.train {
            let tokens = self
                .aggregator
                .encode_bag_selected(bag_source(input)?, mode, &[0])?;
            (tokens.get(0)?.get(0)?, None)
        } else {
            let (cls, attention) = self
                .aggregator
                .cls_and_attention(bag_source(input)?, mode)?;
            (cls, Some(attention))
        };
        let logits = self.fc2.forward(&cls.unsqueeze(0)?)?.squeeze(0)?;
        Ok(Output {
            logits,
            embedding: cls,
            attention,
        })
    }
}

/// TransMIL in the registry. Its Lookahead-RAdam is not implemented: it trains with AdamW at
/// its learning rate and decay instead (recorded in the checkpoint).
pub const ARCH: ArchInfo = ArchInfo {
    name: "transmil",
    summary: "TransMIL: Nyström-attention transformer with PPEG (Shao et al. 2021)",
    reference: "szc19990412/TransMIL models/TransMIL.py",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults {
        optimizer: gimp_nn::optim::Kind::AdamW,
        accumulate: 2,
        ..TrainingDefaults::CLAM
    }),
    default_config: |d, c| to_value(&TransmilConfig::new(d.features, c)),
    build: |s, v| Ok(Box::new(Transmil::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let fc1 = shape(w, "_fc1.0.weight")?;
        let mut c = TransmilConfig::new(fc1[1], shape(w, "_fc2.weight")?[0]);
        c.aggregator.dim = fc1[0];
        c.aggregator.attention = gimp_nn::nystrom::NystromConfig::transmil(fc1[0]);
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
