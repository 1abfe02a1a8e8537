//! BioViL (Boecking et al. 2022, Microsoft hi-ml-multimodal), image–omic adaptation
//! (`docs/DESIGN.md` §25): every patch token is projected to 128-d
//! (`Linear – BN – ReLU – Linear`, the 1×1-conv projector) and the global image embedding is the
//! **mean of the projected patch embeddings**; the gene CLS goes through BioViL's text projector
//! (`Linear – GELU – LayerNorm(eps 1e-12) – Linear`). `L = L_global + L_MGM`: the symmetric
//! InfoNCE `½[CE(S) + CE(Sᵀ)]` with a fixed τ = 0.1 (our choice; BioViL's is not published), and
//! masked gene modelling in place of masked language modelling — 15% of gene tokens get the
//! [MASK] embedding and an MLP predicts their standardised values (MSE). Then fine-tuned as every
//! adaptation is ([`crate::image_omic`]).

use crate::arch::{
    config, no_reference, to_value, ArchInfo, InputKind, Pretraining, Training, TrainingDefaults,
};
use crate::image_omic::{clip_loss, sample_rows, BatchNorm, Encoders, ImageOmicConfig};
use crate::model::{Input, Model, Output};
use candle_core::{Result, Tensor};
use gimp_nn::{ops, LayerNorm, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BiovilConfig {
    pub encoders: ImageOmicConfig,
    /// Fraction of gene tokens masked.
    pub mask_ratio: f64,
    pub temperature: f64,
    /// Weight of the masked-gene loss.
    pub mgm_weight: f64,
}

impl BiovilConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            encoders: ImageOmicConfig::new(d_in, n_genes, n_classes),
            mask_ratio: 0.15,
            temperature: 0.1,
            mgm_weight: 1.0,
        }
    }
}

pub struct Biovil {
    pub cfg: BiovilConfig,
    enc: Encoders,
    patch_l1: Linear,
    patch_bn: BatchNorm,
    patch_l2: Linear,
    gene_l1: Linear,
    gene_ln: LayerNorm,
    gene_l2: Linear,
    mgm1: Linear,
    mgm2: Linear,
}

impl Biovil {
    pub fn new(s: &Scope, cfg: BiovilConfig) -> Result<Self> {
        let (d, e, f) = (
            cfg.encoders.dim,
            cfg.encoders.proj_dim,
            cfg.encoders.fragment,
        );
        let mut gene_ln = LayerNorm::new(&s.pp("gene_proj.2"), e)?;
        gene_ln.eps = 1e-12;
        Ok(Self {
            enc: Encoders::new(s, cfg.encoders.clone(), true)?,
            patch_l1: Linear::new(&s.pp("patch_proj.0"), d, e, false)?,
            patch_bn: BatchNorm::new(&s.pp("patch_proj.1"), e, true)?,
            patch_l2: Linear::new(&s.pp("patch_proj.3"), e, e, true)?,
            gene_l1: Linear::new(&s.pp("gene_proj.0"), d, e, true)?,
            gene_ln,
            gene_l2: Linear::new(&s.pp("gene_proj.3"), e, e, true)?,
            mgm1: Linear::new(&s.pp("mgm.0"), d, d, true)?,
            mgm2: Linear::new(&s.pp("mgm.2"), d, f, true)?,
            cfg,
        })
    }

    /// Masked token positions of one patient: `⌈ratio · T⌉` drawn without replacement.
    fn mask_positions(&self, mode: &Mode) -> Vec<usize> {
        let t = self.enc.genes.n_tokens();
        let k = ((t as f64 * self.cfg.mask_ratio).ceil() as usize).clamp(1, t);
        mode.with_rng(|rng| rand::seq::index::sample(rng, t, k).into_vec())
    }
}

impl Model for Biovil {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        self.enc.classify(input, mode)
    }

    fn pretrain_loss(&self, batch: &[(Tensor, Tensor)], mode: &Mode) -> Result<Option<Tensor>> {
        let (mut v, mut t, mut mgm) = (Vec::new(), Vec::new(), Vec::new());
        for (x, g) in batch {
            let x = sample_rows(x, self.cfg.encoders.patches, mode)?;
            let (_, patches, _) = self.enc.image(&x, mode, false)?;
            let p = self
                .patch_bn
                .forward(&self.patch_l1.forward(&patches)?)?
                .relu()?;
            v.push(self.patch_l2.forward(&p)?.mean_keepdim(0)?);
            let cls = self.enc.genes.encode(g, &[], mode)?.get(0)?.unsqueeze(0)?;
            let h = self
                .gene_ln
                .forward(&ops::gelu(&self.gene_l1.forward(&cls)?)?)?;
            t.push(self.gene_l2.forward(&h)?);
            // Masked gene modelling: predict the chunks hidden behind [MASK].
            let masked = self.mask_positions(mode);
            let tokens = self.enc.genes.encode(g, &masked, mode)?;
            let chunk_idx: Vec<u32> = masked.iter().map(|&i| i as u32).collect();
            let token_idx: Vec<u32> = chunk_idx.iter().map(|&i| i + 1).collect(); // after CLS
            let token_idx = Tensor::new(token_idx.as_slice(), g.device())?;
            let chunk_idx = Tensor::new(chunk_idx.as_slice(), g.device())?;
            let pred = self.mgm2.forward(
                &self
                    .mgm1
                    .forward(&tokens.index_select(&token_idx, 0)?)?
                    .relu()?,
            )?;
            let target = self.enc.genes.chunks(g)?.index_select(&chunk_idx, 0)?;
            mgm.push((pred - target)?.sqr()?.mean_all()?);
        }
        let global = (clip_loss(
            &Tensor::cat(&v, 0)?,
            &Tensor::cat(&t, 0)?,
            self.cfg.temperature,
        )? * 0.5)?;
        let mgm = Tensor::stack(&mgm, 0)?.mean_all()?;
        Ok(Some((global + (mgm * self.cfg.mgm_weight)?)?))
    }
}

/// The BioViL adaptation in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "biovil",
    summary: "BioViL image–omic adaptation: global slide–expression InfoNCE + masked gene modelling, then fine-tuning (Boecking et al. 2022)",
    reference: "gimp-rs (docs/DESIGN.md §25; projectors of microsoft/hi-ml-multimodal)",
    input: InputKind::Paired,
    training: Training::Supervised(TrainingDefaults {
        pretraining: Some(Pretraining::MGCA),
        ..TrainingDefaults::ADAMW
    }),
    default_config: |d, c| to_value(&BiovilConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Biovil::new(s, config(v)?)?)),
    config_from_weights: |_| no_reference("biovil"),
    set_gene_groups: None,
};
