//! SNN gene encoder as MCAT/PORPOISE implement it (`docs/DESIGN.md` §19): blocks of
//! `Linear → ELU(α = 1) → AlphaDropout(0.25)` (ELU, not SELU, as the reference code really does),
//! LeCun-normal weights and zero biases, then `Linear(→ C)`. Names follow PORPOISE's `SNN`
//! (`fc_omic.{i}.0`, `classifier`).

use crate::arch::{
    config, count_indexed, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults,
};
use crate::linear_start::{DeepGenes, LinearStart};
use crate::model::{expression, Input, Model, Output};
use candle_core::Result;
use gimp_nn::{ops, Init, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnnConfig {
    pub n_genes: usize,
    /// Hidden widths: "small" [256; 4], "big" [1024, 1024, 1024, 256].
    pub hidden: Vec<usize>,
    pub n_classes: usize,
    pub dropout: f64,
    /// A frozen linear model of the genes added to the logits, the head starting at zero
    /// (`crate::linear_start`; off in the reference's SNN).
    #[serde(default)]
    pub linear_start: bool,
    /// With a linear start on more genes than `n_genes`: the genes the model is given and the
    /// `n_genes` of them the blocks read (`crate::linear_start::DeepGenes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_genes: Option<DeepGenes>,
}

impl SnnConfig {
    pub fn small(n_genes: usize, n_classes: usize) -> Self {
        Self {
            n_genes,
            hidden: vec![256; 4],
            n_classes,
            dropout: 0.25,
            linear_start: false,
            deep_genes: None,
        }
    }
}

pub struct Snn {
    pub cfg: SnnConfig,
    blocks: Vec<Linear>,
    classifier: Linear,
    linear_start: Option<LinearStart>,
}

fn lecun(s: &Scope, i: usize, o: usize) -> Result<Linear> {
    lecun_or(s, i, o, false)
}

/// LeCun-normal weights and zero biases, or zero weights under a linear start.
fn lecun_or(s: &Scope, i: usize, o: usize, linear_start: bool) -> Result<Linear> {
    let w = LinearStart::head_init(linear_start, Init::Normal(1.0 / (i as f64).sqrt()));
    Linear::with_init(s, i, o, true, w, Init::Constant(0.0))
}

impl Snn {
    pub fn new(s: &Scope, cfg: SnnConfig) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut prev = cfg.n_genes;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            blocks.push(lecun(&s.pp(format!("fc_omic.{i}.0")), prev, h)?);
            prev = h;
        }
        Ok(Self {
            classifier: lecun_or(&s.pp("classifier"), prev, cfg.n_classes, cfg.linear_start)?,
            linear_start: match cfg.linear_start {
                true => Some(LinearStart::new(
                    s,
                    cfg.n_genes,
                    cfg.n_classes,
                    cfg.deep_genes.as_ref(),
                )?),
                false => None,
            },
            blocks,
            cfg,
        })
    }
}

impl Snn {
    /// Last hidden layer `[B, h]` and logits `[B, C]` of standardised expression `[B, G]` (the
    /// genes the model is given).
    pub fn encode_with_logits(
        &self,
        x: &candle_core::Tensor,
        mode: &Mode,
    ) -> Result<(candle_core::Tensor, candle_core::Tensor)> {
        let mut h = match &self.linear_start {
            Some(l) => l.deep_input(x)?,
            None => x.clone(),
        };
        for b in &self.blocks {
            h = ops::alpha_dropout(&b.forward(&h)?.elu(1.0)?, self.cfg.dropout, mode)?;
        }
        let mut logits = self.classifier.forward(&h)?;
        if let Some(l) = &self.linear_start {
            logits = l.add(x, &logits)?;
        }
        Ok((h, logits))
    }
}

impl Model for Snn {
    fn expression_batch_logits(
        &self,
        x: &candle_core::Tensor,
        mode: &Mode,
    ) -> Result<Option<candle_core::Tensor>> {
        Ok(Some(self.encode_with_logits(x, mode)?.1))
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let (h, logits) = self.encode_with_logits(&expression(input)?.unsqueeze(0)?, mode)?;
        Ok(Output {
            logits: logits.squeeze(0)?,
            embedding: h.squeeze(0)?,
            attention: None,
        })
    }

    fn has_linear_start(&self) -> bool {
        self.linear_start.is_some()
    }
}

/// SNN in the registry (trained as MCAT's and PORPOISE's scripts train it).
pub const ARCH: ArchInfo = ArchInfo {
    name: "snn",
    summary: "Self-normalising network on expression, as MCAT/PORPOISE implement it",
    reference: "mahmoodlab/PORPOISE models/model_genomic.py SNN",
    input: InputKind::Expression,
    // MCAT's training, on the most variable genes (`docs/DESIGN.md` §38).
    training: Training::Supervised(TrainingDefaults {
        top_variance_genes: Some(TrainingDefaults::VARIABLE_GENES),
        ..TrainingDefaults::MCAT
    }),
    default_config: |d, c| to_value(&SnnConfig::small(d.genes, c)),
    build: |s, v| Ok(Box::new(Snn::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let n = count_indexed(w, "fc_omic.", ".0.weight");
        let first = shape(w, "fc_omic.0.0.weight")?;
        let hidden = (0..n)
            .map(|i| shape(w, &format!("fc_omic.{i}.0.weight")).map(|s| s[0]))
            .collect::<Result<Vec<_>>>()?;
        let mut c = SnnConfig::small(first[1], shape(w, "classifier.weight")?[0]);
        c.hidden = hidden;
        let start = format!("{}.weight", crate::linear_start::PREFIX);
        c.linear_start = w.contains_key(&start);
        if c.linear_start && shape(w, &start)?[1] != first[1] {
            return Err(candle_core::Error::Msg(
                "this SNN's linear start reads more genes than its blocks, and which of them the blocks read is not in the weights: use a gimp-rs checkpoint, which stores its config".into(),
            ));
        }
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
