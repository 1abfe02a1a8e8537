//! ABMIL as pathology MIL papers use it (`docs/DESIGN.md` §16): gated attention over 1024-d
//! features (Ilse et al. 2018, with CLAM's layer sizes). Parameter names follow PORPOISE's
//! `PorpoiseAMIL` (`attention_net.0`, `attention_net.3.attention_{a,b,c}`, `classifier`), so its
//! state dicts load as they are.

use crate::arch::{config, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::gated_attention::{gated_pool_step_bytes, GatedAttention};
use crate::model::{bag, Input, Model, Output};
use candle_core::Result;
use gimp_nn::{Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AbmilConfig {
    pub d_in: usize,
    pub hidden: usize,
    pub attention_dim: usize,
    pub n_classes: usize,
    pub dropout: f64,
}

impl AbmilConfig {
    pub fn small(d_in: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            hidden: 512,
            attention_dim: 256,
            n_classes,
            dropout: 0.25,
        }
    }
}

pub struct Abmil {
    pub cfg: AbmilConfig,
    fc: Linear,
    attention: GatedAttention,
    classifier: Linear,
}

impl Abmil {
    pub fn new(s: &Scope, cfg: AbmilConfig) -> Result<Self> {
        let net = s.pp("attention_net");
        Ok(Self {
            fc: Linear::xavier(&net.pp("0"), cfg.d_in, cfg.hidden)?,
            attention: GatedAttention::new(
                &net.pp("3"),
                cfg.hidden,
                cfg.attention_dim,
                1,
                cfg.dropout,
            )?,
            classifier: Linear::xavier(&s.pp("classifier"), cfg.hidden, cfg.n_classes)?,
            cfg,
        })
    }
}

impl Model for Abmil {
    fn training_step_bytes(&self, patches: usize) -> Option<u64> {
        Some(gated_pool_step_bytes(
            self.cfg.d_in,
            self.cfg.hidden,
            patches,
        ))
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let p = self.attention.pool(&self.fc, &*bag(input)?, 0, mode)?;
        let m = p.pooled; // [1, hidden]
        let logits = self.classifier.forward(&m)?.squeeze(0)?;
        Ok(Output {
            logits,
            embedding: m.squeeze(0)?,
            attention: Some(p.scores.squeeze(0)?),
        })
    }
}

/// ABMIL in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "abmil",
    summary: "Gated attention MIL on patch features (Ilse et al. 2018, pathology variant)",
    reference: "PORPOISE PorpoiseAMIL",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults::CLAM),
    default_config: |d, c| to_value(&AbmilConfig::small(d.features, c)),
    build: |s, v| Ok(Box::new(Abmil::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let fc = shape(w, "attention_net.0.weight")?;
        let att = shape(w, "attention_net.3.attention_a.0.weight")?;
        let mut c = AbmilConfig::small(fc[1], shape(w, "classifier.weight")?[0]);
        c.hidden = fc[0];
        c.attention_dim = att[0];
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
