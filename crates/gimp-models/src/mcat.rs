//! MCAT, multimodal co-attention transformer (Chen et al. 2021; mahmoodlab/MCAT
//! `model_coattn.py::MCAT_Surv`, `docs/DESIGN.md` §20), "small" sizes and concat fusion: the
//! expression is cut into gene groups (the six signature groups when given, else equal
//! contiguous chunks), each through its own two SNN blocks → six 256-d tokens; they attend to the
//! patch embeddings (one-head co-attention), then each side has a two-layer post-norm
//! transformer (8 heads, FFN 512), gated attention pooling and ρ; the two vectors are
//! concatenated through two ReLU layers into the classifier. Names are the reference's.

use crate::arch::{
    config, count_indexed, gene_group_networks, shape, to_value, ArchInfo, InputKind, Training,
    TrainingDefaults,
};
use crate::gated_attention::GatedAttention;
use crate::model::{bag, expression, Input, Model, Output};
use crate::transformer::{EncoderLayer, MultiheadAttention as Mha};
use candle_core::{Result, Tensor};
use gimp_nn::{ops, Activation, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McatConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    /// Genes of each group, as indices into the expression vector. Empty: six equal contiguous
    /// chunks.
    #[serde(default)]
    pub groups: Vec<Vec<u32>>,
    pub dropout: f64,
    /// Model width `d`: patch embedding (`wsi_net`), gene tokens, co-attention, transformers,
    /// ρ, `mm` and the classifier's input (256).
    #[serde(default = "default_d")]
    pub d: usize,
    /// Widths of each group's SNN blocks ([256, 256]); the last must be `d`.
    #[serde(default = "default_omic_hidden")]
    pub omic_hidden: Vec<usize>,
    /// Heads of the two transformers (8; the co-attention has one).
    #[serde(default = "default_heads")]
    pub heads: usize,
    /// Feed-forward width of the transformer layers (512).
    #[serde(default = "default_ffn")]
    pub ffn: usize,
    /// Layers of each transformer (2).
    #[serde(default = "default_layers")]
    pub layers: usize,
    /// Width of the gated attention heads (256).
    #[serde(default = "default_d")]
    pub attention_dim: usize,
}

fn default_d() -> usize {
    256
}

fn default_omic_hidden() -> Vec<usize> {
    vec![256, 256]
}

fn default_heads() -> usize {
    8
}

fn default_ffn() -> usize {
    512
}

fn default_layers() -> usize {
    2
}

impl McatConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            groups: Vec::new(),
            dropout: 0.25,
            d: default_d(),
            omic_hidden: default_omic_hidden(),
            heads: default_heads(),
            ffn: default_ffn(),
            layers: default_layers(),
            attention_dim: default_d(),
        }
    }

    /// The gene indices of every group.
    pub fn group_indices(&self) -> Vec<Vec<u32>> {
        if !self.groups.is_empty() {
            return self.groups.clone();
        }
        let (g, k) = (self.n_genes, 6usize);
        (0..k)
            .map(|i| ((i * g / k) as u32..((i + 1) * g / k) as u32).collect())
            .collect()
    }
}

/// Transformer, gated attention pooling over the tokens, and ρ: one side of MCAT.
struct Side {
    layers: Vec<EncoderLayer>,
    head: GatedAttention,
    rho: Linear,
}

impl Side {
    fn new(s: &Scope, name: &str, c: &McatConfig) -> Result<Self> {
        let (d, dropout) = (c.d, c.dropout);
        let t = s.pp(format!("{name}_transformer.layers"));
        Ok(Self {
            layers: (0..c.layers)
                .map(|i| EncoderLayer::new(&t.pp(i.to_string()), d, c.heads, c.ffn))
                .collect::<Result<_>>()?,
            head: GatedAttention::torch_init(
                &s.pp(format!("{name}_attention_head")),
                d,
                c.attention_dim,
                1,
                dropout,
            )?,
            rho: Linear::new(&s.pp(format!("{name}_rho.0")), d, d, true)?,
        })
    }

    fn forward(&self, tokens: &Tensor, p: f64, mode: &Mode) -> Result<Tensor> {
        let mut h = tokens.clone();
        for l in &self.layers {
            h = l.forward(&h, p, mode)?;
        }
        let a = ops::softmax_last(&self.head.forward(&h, mode)?.t()?)?; // [1, tokens]
        ops::dropout(&self.rho.forward(&a.matmul(&h)?)?.relu()?, p, mode)
    }
}

pub struct Mcat {
    pub cfg: McatConfig,
    groups: Vec<Tensor>,
    wsi: Linear,
    sig: Vec<Vec<Linear>>,
    coattn: Mha,
    path: Side,
    omic: Side,
    mm1: Linear,
    mm2: Linear,
    classifier: Linear,
}

impl Mcat {
    pub fn new(s: &Scope, cfg: McatConfig) -> Result<Self> {
        let d = cfg.d;
        if cfg.omic_hidden.last() != Some(&d) {
            candle_core::bail!(
                "MCAT: the SNN widths {:?} must end at d = {d}",
                cfg.omic_hidden
            );
        }
        if cfg.heads == 0 || !d.is_multiple_of(cfg.heads) {
            candle_core::bail!("MCAT: d = {d} is not divisible by {} heads", cfg.heads);
        }
        let groups = cfg.group_indices();
        if groups.iter().any(|g| g.is_empty())
            || groups.iter().flatten().any(|&i| i as usize >= cfg.n_genes)
        {
            candle_core::bail!(
                "MCAT: every gene group needs genes, and indices below {}",
                cfg.n_genes
            );
        }
        let sig = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let b = s.pp(format!("sig_networks.{i}"));
                let mut prev = g.len();
                cfg.omic_hidden
                    .iter()
                    .enumerate()
                    .map(|(j, &h)| {
                        let l = Linear::new(&b.pp(format!("{j}.0")), prev, h, true);
                        prev = h;
                        l
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let dev = s.device().clone();
        Ok(Self {
            groups: groups
                .iter()
                .map(|g| Tensor::new(g.as_slice(), &dev))
                .collect::<Result<_>>()?,
            wsi: Linear::new(&s.pp("wsi_net.0"), cfg.d_in, d, true)?,
            sig,
            coattn: Mha::new(&s.pp("coattn"), d, 1)?,
            path: Side::new(s, "path", &cfg)?,
            omic: Side::new(s, "omic", &cfg)?,
            mm1: Linear::new(&s.pp("mm.0"), 2 * d, d, true)?,
            mm2: Linear::new(&s.pp("mm.2"), d, d, true)?,
            classifier: Linear::new(&s.pp("classifier"), d, cfg.n_classes, true)?,
            cfg,
        })
    }
}

impl Model for Mcat {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let p = self.cfg.dropout;
        let h = ops::dropout(
            &self.wsi.forward_act(&*bag(input)?, Activation::Relu)?,
            p,
            mode,
        )?; // [N, d]
        let g = expression(input)?;
        let tokens = self
            .groups
            .iter()
            .zip(&self.sig)
            .map(|(idx, blocks)| {
                let mut x = g.index_select(idx, 0)?.unsqueeze(0)?;
                for b in blocks {
                    x = ops::alpha_dropout(&b.forward(&x)?.elu(1.0)?, 0.25, mode)?;
                }
                Ok(x)
            })
            .collect::<Result<Vec<_>>>()?;
        let omic_tokens = Tensor::cat(&tokens, 0)?; // [6, d]
        let (coattended, raw) = self.coattn.forward(&omic_tokens, &h, 0.0, mode)?; // [6, d], [6, N]
        let h_path = self.path.forward(&coattended, p, mode)?;
        let h_omic = self.omic.forward(&omic_tokens, p, mode)?;
        let fused = Tensor::cat(&[&h_path, &h_omic], 1)?;
        let fused = self
            .mm2
            .forward(&self.mm1.forward(&fused)?.relu()?)?
            .relu()?;
        Ok(Output {
            logits: self.classifier.forward(&fused)?.squeeze(0)?,
            embedding: fused.squeeze(0)?,
            // Per patch: the co-attention scores averaged over the gene groups.
            attention: Some(raw.mean(0)?),
        })
    }
}

/// MCAT in the registry; its gene groups come from `--signatures` when given.
pub const ARCH: ArchInfo = ArchInfo {
    name: "mcat",
    summary: "MCAT: genomic-guided co-attention over patches, two transformers, concat fusion (Chen et al. 2021)",
    reference: "MCAT_Surv, models/model_coattn.py of mahmoodlab/MCAT and PORPOISE",
    input: InputKind::Paired,
    training: Training::Supervised(TrainingDefaults::MCAT),
    default_config: |d, c| to_value(&McatConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Mcat::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let fc = shape(w, "wsi_net.0.weight")?;
        let g = gene_group_networks(w)?;
        let mut c = McatConfig::new(fc[1], g.genes, shape(w, "classifier.weight")?[0]);
        c.d = fc[0];
        c.omic_hidden = g.hidden;
        c.layers = count_indexed(w, "path_transformer.layers.", ".linear1.weight");
        c.ffn = shape(w, "path_transformer.layers.0.linear1.weight")?[0];
        c.attention_dim = shape(w, "path_attention_head.attention_a.0.weight")?[0];
        // Heads leave no trace in the shapes: the reference's 8.
        c.groups = g.groups;
        Ok(to_value(&c))
    },
    set_gene_groups: Some(|c, groups| {
        c["groups"] = to_value(&groups);
        Ok(())
    }),
};
