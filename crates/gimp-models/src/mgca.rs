//! MGCA (Wang et al. 2022, HKU-MedAI/MGCA), image–omic adaptation (`docs/DESIGN.md` §24):
//! slide ↔ expression instead of radiograph ↔ report. Three alignments between the two
//! encoders of [`crate::image_omic`], all on unit-norm 128-d projections:
//! instance-wise (ITA: CLS_img ↔ CLS_gene, τ₁ 0.07, both directions summed), token-wise (CTA:
//! gene tokens ↔ patch tokens within a patient, τ₂ 0.1, both directions), prototype-level (CPA:
//! swapped prediction of Sinkhorn assignments to learned prototypes, ε 0.05, τ₃ 0.2);
//! `L = L_ITA + L_CTA + L_CPA` (the CLI's λ = 1). Token weights are uniform (MGCA's ResNet
//! fallback, which the spec allows); prototypes: 32 (the spec suggests fewer than 500 for
//! cohorts of hundreds). Then fine-tuned as every adaptation is ([`crate::image_omic`]).

use crate::arch::{
    config, no_reference, to_value, ArchInfo, InputKind, Pretraining, Training, TrainingDefaults,
};
use crate::image_omic::{
    clip_loss, prototype_alignment, sample_rows, token_alignment, Encoders, ImageOmicConfig,
    Projection,
};
use crate::model::{Input, Model, Output};
use candle_core::{Result, Tensor};
use gimp_nn::{Init, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MgcaConfig {
    pub encoders: ImageOmicConfig,
    pub prototypes: usize,
    /// Hidden width of the projection heads (2048 in MGCA).
    pub proj_hidden: usize,
}

impl MgcaConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            encoders: ImageOmicConfig::new(d_in, n_genes, n_classes),
            prototypes: 32,
            proj_hidden: 2048,
        }
    }
}

pub struct Mgca {
    pub cfg: MgcaConfig,
    enc: Encoders,
    img_global: Projection,
    img_local: Projection,
    gene_global: Projection,
    gene_local: Projection,
    prototypes: Tensor,
}

impl Mgca {
    pub fn new(s: &Scope, cfg: MgcaConfig) -> Result<Self> {
        let (d, h, e) = (cfg.encoders.dim, cfg.proj_hidden, cfg.encoders.proj_dim);
        Ok(Self {
            enc: Encoders::new(s, cfg.encoders.clone(), false)?,
            img_global: Projection::new(&s.pp("img_global"), d, h, e)?,
            img_local: Projection::new(&s.pp("img_local"), d, h, e)?,
            gene_global: Projection::new(&s.pp("gene_global"), d, h, e)?,
            gene_local: Projection::new(&s.pp("gene_local"), d, h, e)?,
            prototypes: s.get(
                "prototypes.weight",
                &[cfg.prototypes, e],
                Init::Uniform(1.0 / (e as f64).sqrt()),
            )?,
            cfg,
        })
    }
}

impl Model for Mgca {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        self.enc.classify(input, mode)
    }

    fn pretrain_loss(&self, batch: &[(Tensor, Tensor)], mode: &Mode) -> Result<Option<Tensor>> {
        let (mut vg, mut tg, mut cta) = (Vec::new(), Vec::new(), Vec::new());
        for (x, g) in batch {
            let x = sample_rows(x, self.cfg.encoders.patches, mode)?;
            let (ci, patches, _) = self.enc.image(&x, mode, false)?;
            let genes = self.enc.genes.encode(g, &[], mode)?;
            vg.push(ci.unsqueeze(0)?);
            tg.push(genes.get(0)?.unsqueeze(0)?);
            let p = self.img_local.forward(&patches)?;
            let w = self
                .gene_local
                .forward(&genes.narrow(0, 1, genes.dim(0)? - 1)?)?;
            // Word→patch and patch→word, each the mean of its two directions.
            cta.push((token_alignment(&w, &p, 0.1)? + token_alignment(&p, &w, 0.1)?)?);
        }
        let v = self.img_global.forward(&Tensor::cat(&vg, 0)?)?;
        let t = self.gene_global.forward(&Tensor::cat(&tg, 0)?)?;
        let ita = clip_loss(&v, &t, 0.07)?;
        let cta = (Tensor::stack(&cta, 0)?.sum_all()? / batch.len() as f64)?;
        let cpa = prototype_alignment(&v, &t, &self.prototypes, 0.05, 0.2)?;
        Ok(Some(((ita + cta)? + cpa)?))
    }
}

/// The MGCA adaptation in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "mgca",
    summary: "MGCA image–omic adaptation: instance, token and prototype alignment of slide and expression, then fine-tuning (Wang et al. 2022)",
    reference: "gimp-rs (docs/DESIGN.md §24; losses of HKU-MedAI/MGCA)",
    input: InputKind::Paired,
    training: Training::Supervised(TrainingDefaults {
        pretraining: Some(Pretraining::MGCA),
        ..TrainingDefaults::ADAMW
    }),
    default_config: |d, c| to_value(&MgcaConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Mgca::new(s, config(v)?)?)),
    config_from_weights: |_| no_reference("mgca"),
    set_gene_groups: None,
};
