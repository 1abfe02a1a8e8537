//! Pathomic Fusion, in the WSI adaptation MIL benchmarks use (`docs/DESIGN.md` §22): MCAT's
//! `MIL_Attention_FC_surv(fusion='bilinear')` — gated ABMIL path branch (1024 → 512 → gated
//! attention → ρ 256), two SNN blocks on expression, `BilinearFusion(256, 256, scale 8, 8,
//! mmhid 256)` in MCAT's copy (both gates, no skip, dropout after both encoders), then
//! `classifier`. Compared with [`crate::porpoise`]: no input dropout, no skip, encoder dropout.

use crate::arch::{config, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::bilinear_fusion::BilinearFusionConfig;
use crate::model::{Input, Model, Output};
use crate::porpoise::{
    default_attention_dim, default_hidden, default_omic_hidden, FusionMil, FusionMilWidths,
};
use candle_core::Result;
use gimp_nn::{Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathomicConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    pub dropout: f64,
    /// Width of the patch layer (`attention_net.0`; 512).
    #[serde(default = "default_hidden")]
    pub hidden: usize,
    /// Width of the gated attention (256).
    #[serde(default = "default_attention_dim")]
    pub attention_dim: usize,
    /// Widths of the SNN blocks on expression ([256, 256]); the last is `fusion.dim2`. ρ's
    /// output width is `fusion.dim1`.
    #[serde(default = "default_omic_hidden")]
    pub omic_hidden: Vec<usize>,
    pub fusion: BilinearFusionConfig,
}

impl PathomicConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            dropout: 0.25,
            hidden: default_hidden(),
            attention_dim: default_attention_dim(),
            omic_hidden: default_omic_hidden(),
            fusion: BilinearFusionConfig::new(256, 256, 256, false, true),
        }
    }
}

pub struct Pathomic {
    pub cfg: PathomicConfig,
    net: FusionMil,
}

impl Pathomic {
    pub fn new(s: &Scope, cfg: PathomicConfig) -> Result<Self> {
        let c = &cfg;
        Ok(Self {
            net: FusionMil::new(
                s,
                c.d_in,
                c.n_genes,
                c.n_classes,
                c.hidden,
                c.attention_dim,
                &c.omic_hidden,
                c.dropout,
                0.0,
                c.fusion.clone(),
                "classifier",
            )?,
            cfg,
        })
    }
}

impl Model for Pathomic {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        self.net.forward(input, mode)
    }
}

/// Pathomic Fusion (WSI adaptation) in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "pathomic",
    summary: "Pathomic Fusion, WSI adaptation: gated ABMIL + SNN, gated bilinear fusion (Chen et al. 2020; MCAT's MIL_Attention_FC_surv)",
    reference: "MIL_Attention_FC_surv(fusion='bilinear'), models/model_set_mil.py of mahmoodlab/MCAT and PORPOISE",
    input: InputKind::Paired,
    training: Training::Supervised(TrainingDefaults::MCAT),
    default_config: |d, c| to_value(&PathomicConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Pathomic::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let default = PathomicConfig::new(0, 0, 0);
        let r = FusionMilWidths::from_weights(w, 0, "classifier", default.fusion.clone())?;
        Ok(to_value(&PathomicConfig {
            hidden: r.hidden,
            attention_dim: r.attention_dim,
            omic_hidden: r.omic_hidden,
            fusion: r.fusion,
            ..PathomicConfig::new(r.d_in, r.n_genes, r.n_classes)
        }))
    },
    set_gene_groups: None,
};
