//! PORPOISE multimodal fusion (`PorpoiseMMF`, `docs/DESIGN.md` §21) with the constructor's
//! defaults (and PyTorch's default init; the class calls no init function): gated ABMIL on the slide (input dropout 0.10, 1024 → 512 → gated attention → ρ 256),
//! a two-block SNN on expression (256, 256), gated bilinear fusion with both gates, scale 8 and
//! skip, then `classifier_mm`. Names are the reference's, so its state dicts load as they are.

use crate::arch::{
    config, count_indexed, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults,
};
use crate::bilinear_fusion::{BilinearFusion, BilinearFusionConfig};
use crate::gated_attention::GatedAttention;
use crate::model::{bag, expression, Input, Model, Output};
use candle_core::{Result, Tensor};
use gimp_nn::{ops, Activation, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PorpoiseConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    pub dropout: f64,
    /// Dropout on the input patch features (0 removes the layer, shifting the names down).
    pub dropinput: f64,
    /// Width of the patch layer (`attention_net`'s Linear; 512).
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

pub(crate) fn default_hidden() -> usize {
    512
}

pub(crate) fn default_attention_dim() -> usize {
    256
}

pub(crate) fn default_omic_hidden() -> Vec<usize> {
    vec![256, 256]
}

impl PorpoiseConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            dropout: 0.25,
            dropinput: 0.10,
            hidden: default_hidden(),
            attention_dim: default_attention_dim(),
            omic_hidden: default_omic_hidden(),
            fusion: BilinearFusionConfig::new(256, 256, 256, true, false),
        }
    }
}

/// The widths a [`FusionMil`] state dict's shapes give (its Linear at `attention_net.{first}`,
/// its classifier named `classifier`), with the fusion's gates and dropout kept from `fusion`.
pub(crate) struct FusionMilWidths {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    pub hidden: usize,
    pub attention_dim: usize,
    pub omic_hidden: Vec<usize>,
    pub fusion: BilinearFusionConfig,
}

impl FusionMilWidths {
    pub(crate) fn from_weights(
        w: &BTreeMap<String, Tensor>,
        first: usize,
        classifier: &str,
        fusion: BilinearFusionConfig,
    ) -> Result<Self> {
        let fc = shape(w, &format!("attention_net.{first}.weight"))?;
        let attention = shape(
            w,
            &format!("attention_net.{}.attention_a.0.weight", first + 3),
        )?;
        let omic_hidden = (0..count_indexed(w, "fc_omic.", ".0.weight"))
            .map(|i| shape(w, &format!("fc_omic.{i}.0.weight")).map(|s| s[0]))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            d_in: fc[1],
            n_genes: shape(w, "fc_omic.0.0.weight")?[1],
            n_classes: shape(w, &format!("{classifier}.weight"))?[0],
            hidden: fc[0],
            attention_dim: attention[0],
            omic_hidden,
            fusion: fusion.with_widths_from(w, "mm.")?,
        })
    }
}

/// Gated-attention pooling of a bag into one vector, as PORPOISE and Pathomic Fusion's WSI
/// adaptation share it: `fc(d_in → hidden)`, gated attention, softmax, ρ (hidden → out); the
/// reference's widths are 1024 → 512, attention 256, ρ 256.
pub struct AttentionPath {
    fc: Linear,
    attention: GatedAttention,
    rho: Linear,
    dropout: f64,
    dropinput: f64,
}

impl AttentionPath {
    /// The Linear is `attention_net.1` when input dropout precedes it, else `attention_net.0`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: &Scope,
        d_in: usize,
        hidden: usize,
        attention_dim: usize,
        out: usize,
        dropout: f64,
        dropinput: f64,
    ) -> Result<Self> {
        let net = s.pp("attention_net");
        let first = usize::from(dropinput > 0.0);
        Ok(Self {
            fc: Linear::new(&net.pp(first.to_string()), d_in, hidden, true)?,
            attention: GatedAttention::torch_init(
                &net.pp((first + 3).to_string()),
                hidden,
                attention_dim,
                1,
                dropout,
            )?,
            rho: Linear::new(&s.pp("rho.0"), hidden, out, true)?,
            dropout,
            dropinput,
        })
    }

    /// Bag `[N, D]` → (`[1, out]`, raw attention `[N]`).
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<(Tensor, Tensor)> {
        let x = ops::dropout(x, self.dropinput, mode)?;
        let h = ops::dropout(
            &self.fc.forward_act(&x, Activation::Relu)?,
            self.dropout,
            mode,
        )?;
        let raw = self.attention.forward(&h, mode)?.t()?;
        let pooled = ops::softmax_last(&raw)?.matmul(&h)?;
        let v = ops::dropout(&self.rho.forward(&pooled)?.relu()?, self.dropout, mode)?;
        Ok((v, raw.squeeze(0)?))
    }
}

/// The SNN blocks on expression (`fc_omic.{i}.0`: Linear → ELU → AlphaDropout 0.25; the
/// reference's two of 256) → `[1, last width]`. PyTorch's default init: these models never call
/// `init_max_weights`.
pub struct OmicPath {
    blocks: Vec<Linear>,
}

impl OmicPath {
    pub fn new(s: &Scope, n_genes: usize, hidden: &[usize]) -> Result<Self> {
        let mut prev = n_genes;
        let blocks = hidden
            .iter()
            .enumerate()
            .map(|(i, &h)| {
                let l = Linear::new(&s.pp(format!("fc_omic.{i}.0")), prev, h, true);
                prev = h;
                l
            })
            .collect::<Result<_>>()?;
        Ok(Self { blocks })
    }

    pub fn forward(&self, g: &Tensor, mode: &Mode) -> Result<Tensor> {
        let mut h = g.unsqueeze(0)?;
        for b in &self.blocks {
            h = ops::alpha_dropout(&b.forward(&h)?.elu(1.0)?, 0.25, mode)?;
        }
        Ok(h)
    }
}

/// Path branch, omic branch, gated bilinear fusion and a classifier: the shape PORPOISE and
/// Pathomic Fusion's WSI adaptation share (they differ in configuration and names).
pub struct FusionMil {
    path: AttentionPath,
    omic: OmicPath,
    mm: BilinearFusion,
    classifier: Linear,
}

impl FusionMil {
    /// `classifier`: the classifier's name (`classifier_mm` in PORPOISE, `classifier` in MCAT's
    /// `MIL_Attention_FC_surv`). The path branch ends at `fusion.dim1`; the last of
    /// `omic_hidden` must be `fusion.dim2`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: &Scope,
        d_in: usize,
        n_genes: usize,
        n_classes: usize,
        hidden: usize,
        attention_dim: usize,
        omic_hidden: &[usize],
        dropout: f64,
        dropinput: f64,
        fusion: BilinearFusionConfig,
        classifier: &str,
    ) -> Result<Self> {
        if omic_hidden.last() != Some(&fusion.dim2) {
            candle_core::bail!(
                "the omic branch's widths {omic_hidden:?} must end at the fusion's dim2 = {}",
                fusion.dim2
            );
        }
        Ok(Self {
            path: AttentionPath::new(
                s,
                d_in,
                hidden,
                attention_dim,
                fusion.dim1,
                dropout,
                dropinput,
            )?,
            omic: OmicPath::new(s, n_genes, omic_hidden)?,
            classifier: Linear::new(&s.pp(classifier), fusion.mmhid, n_classes, true)?,
            mm: BilinearFusion::new(&s.pp("mm"), fusion)?,
        })
    }

    pub fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let (v1, attention) = self.path.forward(&*bag(input)?, mode)?;
        let v2 = self.omic.forward(expression(input)?, mode)?;
        let h = self.mm.forward(&v1, &v2, mode)?;
        Ok(Output {
            logits: self.classifier.forward(&h)?.squeeze(0)?,
            embedding: h.squeeze(0)?,
            attention: Some(attention),
        })
    }
}

pub struct Porpoise {
    pub cfg: PorpoiseConfig,
    net: FusionMil,
}

impl Porpoise {
    pub fn new(s: &Scope, cfg: PorpoiseConfig) -> Result<Self> {
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
                c.dropinput,
                c.fusion.clone(),
                "classifier_mm",
            )?,
            cfg,
        })
    }
}

impl Model for Porpoise {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        self.net.forward(input, mode)
    }
}

/// PORPOISE MMF in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "porpoise",
    summary: "PORPOISE MMF: gated ABMIL + SNN, gated bilinear (Kronecker) fusion with skip (Chen et al. 2022)",
    reference: "mahmoodlab/PORPOISE models/model_porpoise.py PorpoiseMMF",
    input: InputKind::Paired,
    training: Training::Supervised(TrainingDefaults::MCAT),
    default_config: |d, c| to_value(&PorpoiseConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Porpoise::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let dropinput = w.contains_key("attention_net.1.weight");
        let default = PorpoiseConfig::new(0, 0, 0);
        let r = FusionMilWidths::from_weights(
            w,
            usize::from(dropinput),
            "classifier_mm",
            default.fusion.clone(),
        )?;
        let mut c = PorpoiseConfig {
            hidden: r.hidden,
            attention_dim: r.attention_dim,
            omic_hidden: r.omic_hidden,
            fusion: r.fusion,
            ..PorpoiseConfig::new(r.d_in, r.n_genes, r.n_classes)
        };
        if !dropinput {
            c.dropinput = 0.0;
        }
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
