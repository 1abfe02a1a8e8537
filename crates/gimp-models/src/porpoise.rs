//! PORPOISE multimodal fusion (`PorpoiseMMF`, `docs/DESIGN.md` §21) with the constructor's
//! defaults (and PyTorch's default init; the class calls no init function): gated ABMIL on the slide (input dropout 0.10, 1024 → 512 → gated attention → ρ 256),
//! a two-block SNN on expression (256, 256), gated bilinear fusion with both gates, scale 8 and
//! skip, then `classifier_mm`. Names are the reference's, so its state dicts load as they are.

use crate::abmil::GatedAttention;
use crate::arch::{config, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::bilinear_fusion::{BilinearFusion, BilinearFusionConfig};
use crate::model::{bag, expression, Input, Model, Output};
use candle_core::{Result, Tensor};
use gimp_nn::{ops, Activation, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PorpoiseConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    pub dropout: f64,
    /// Dropout on the input patch features (0 removes the layer, shifting the names down).
    pub dropinput: f64,
    pub fusion: BilinearFusionConfig,
}

impl PorpoiseConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            dropout: 0.25,
            dropinput: 0.10,
            fusion: BilinearFusionConfig {
                dim1: 256,
                dim2: 256,
                scale1: 8,
                scale2: 8,
                gate1: true,
                gate2: true,
                skip: true,
                mmhid: 256,
                dropout: 0.25,
                encoder_dropout: false,
            },
        }
    }
}

/// Gated-attention pooling of a bag into one vector, as PORPOISE and Pathomic Fusion's WSI
/// adaptation share it: `fc(1024→512)`, gated attention, softmax, ρ (512→256).
pub struct AttentionPath {
    fc: Linear,
    attention: GatedAttention,
    rho: Linear,
    dropout: f64,
    dropinput: f64,
}

impl AttentionPath {
    /// The Linear is `attention_net.1` when input dropout precedes it, else `attention_net.0`.
    pub fn new(s: &Scope, d_in: usize, dropout: f64, dropinput: f64) -> Result<Self> {
        let net = s.pp("attention_net");
        let first = usize::from(dropinput > 0.0);
        Ok(Self {
            fc: Linear::new(&net.pp(first.to_string()), d_in, 512, true)?,
            attention: GatedAttention::torch_init(
                &net.pp((first + 3).to_string()),
                512,
                256,
                1,
                dropout,
            )?,
            rho: Linear::new(&s.pp("rho.0"), 512, 256, true)?,
            dropout,
            dropinput,
        })
    }

    /// Bag `[N, D]` → (`[1, 256]`, raw attention `[N]`).
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

/// The two SNN blocks on expression (`fc_omic.{0,1}.0`: Linear → ELU → AlphaDropout 0.25)
/// → `[1, 256]`. PyTorch's default init: these models never call `init_max_weights`.
pub struct OmicPath {
    blocks: Vec<Linear>,
}

impl OmicPath {
    pub fn new(s: &Scope, n_genes: usize) -> Result<Self> {
        Ok(Self {
            blocks: vec![
                Linear::new(&s.pp("fc_omic.0.0"), n_genes, 256, true)?,
                Linear::new(&s.pp("fc_omic.1.0"), 256, 256, true)?,
            ],
        })
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
    /// `MIL_Attention_FC_surv`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        s: &Scope,
        d_in: usize,
        n_genes: usize,
        n_classes: usize,
        dropout: f64,
        dropinput: f64,
        fusion: BilinearFusionConfig,
        classifier: &str,
    ) -> Result<Self> {
        Ok(Self {
            path: AttentionPath::new(s, d_in, dropout, dropinput)?,
            omic: OmicPath::new(s, n_genes)?,
            classifier: Linear::new(&s.pp(classifier), fusion.mmhid, n_classes, true)?,
            mm: BilinearFusion::new(&s.pp("mm"), fusion)?,
        })
    }

    pub fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let (v1, attention) = self.path.forward(bag(input)?, mode)?;
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
        let fc = shape(
            w,
            if dropinput {
                "attention_net.1.weight"
            } else {
                "attention_net.0.weight"
            },
        )?;
        let omic = shape(w, "fc_omic.0.0.weight")?;
        let mut c = PorpoiseConfig::new(fc[1], omic[1], shape(w, "classifier_mm.weight")?[0]);
        if !dropinput {
            c.dropinput = 0.0;
        }
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
