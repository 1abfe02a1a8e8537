//! CLAM-SB and CLAM-MB (Lu et al. 2021; `docs/DESIGN.md` §17): gated attention MIL with
//! instance-level clustering. Parameter names are CLAM's (`attention_net.0`,
//! `attention_net.{2|3}.attention_{a,b,c}`, `classifiers`, `instance_classifiers.{c}`): index 3
//! when the fc block has a Dropout (CLAM 2024+, or 2021 with `--drop_out`), 2 otherwise.

use crate::arch::{
    config, count_indexed, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults,
};
use crate::gated_attention::{gated_pool_step_bytes, GatedAttention};
use crate::model::{bag, Input, Model, Output};
use candle_core::{Result, Tensor, D};
use gimp_nn::loss;
use gimp_nn::{Linear, Mode, Scope};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branches {
    /// One attention branch and one bag classifier (CLAM-SB).
    Single,
    /// One attention branch and one scalar head per class (CLAM-MB).
    Multi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceLoss {
    CrossEntropy,
    /// Smooth top-1 SVM, as CLAM's README commands use (`--inst_loss svm`).
    Svm,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClamConfig {
    pub branches: Branches,
    pub d_in: usize,
    pub hidden: usize,
    pub attention_dim: usize,
    pub n_classes: usize,
    pub dropout: f64,
    /// Patches per side for instance clustering (`--B`).
    pub k_sample: usize,
    pub subtyping: bool,
    pub bag_weight: f64,
    pub instance_loss: InstanceLoss,
    /// Position of the attention block inside `attention_net` (3, or 2 for 2021 CLAM without
    /// dropout).
    pub attention_net_index: usize,
}

impl ClamConfig {
    pub fn small(branches: Branches, d_in: usize, n_classes: usize) -> Self {
        Self {
            branches,
            d_in,
            hidden: 512,
            attention_dim: 256,
            n_classes,
            dropout: 0.25,
            k_sample: 8,
            subtyping: true,
            bag_weight: 0.7,
            instance_loss: InstanceLoss::Svm,
            attention_net_index: 3,
        }
    }
}

pub struct Clam {
    pub cfg: ClamConfig,
    fc: Linear,
    attention: GatedAttention,
    /// SB: one Linear(hidden → C); MB: C Linear(hidden → 1).
    classifiers: Vec<Linear>,
    instance_classifiers: Vec<Linear>,
}

impl Clam {
    pub fn new(s: &Scope, cfg: ClamConfig) -> Result<Self> {
        let net = s.pp("attention_net");
        let k = match cfg.branches {
            Branches::Single => 1,
            Branches::Multi => cfg.n_classes,
        };
        let classifiers = match cfg.branches {
            Branches::Single => vec![Linear::xavier(
                &s.pp("classifiers"),
                cfg.hidden,
                cfg.n_classes,
            )?],
            Branches::Multi => (0..cfg.n_classes)
                .map(|c| Linear::xavier(&s.pp(format!("classifiers.{c}")), cfg.hidden, 1))
                .collect::<Result<_>>()?,
        };
        let instance_classifiers = (0..cfg.n_classes)
            .map(|c| Linear::xavier(&s.pp(format!("instance_classifiers.{c}")), cfg.hidden, 2))
            .collect::<Result<_>>()?;
        Ok(Self {
            fc: Linear::xavier(&net.pp("0"), cfg.d_in, cfg.hidden)?,
            attention: GatedAttention::new(
                &net.pp(cfg.attention_net_index.to_string()),
                cfg.hidden,
                cfg.attention_dim,
                k,
                cfg.dropout,
            )?,
            classifiers,
            instance_classifiers,
            cfg,
        })
    }

    /// CLAM's instance-level clustering loss for a bag of class `label`, from the embeddings
    /// of each attention branch's `k` most then `k` least attended patches (`extremes`,
    /// `[branches · 2k, hidden]`): for the label's own classifier the `k` most attended patches
    /// are positives and the `k` least attended negatives; when subtyping, every other
    /// classifier sees its `k` most attended patches as negatives. Summed, divided by C when
    /// subtyping.
    fn instance_loss(&self, extremes: &Tensor, label: usize) -> Result<Option<Tensor>> {
        let k = self.cfg.k_sample;
        let inst_loss = |logits: &Tensor, targets: &[usize]| -> Result<Tensor> {
            match self.cfg.instance_loss {
                InstanceLoss::CrossEntropy => loss::cross_entropy(logits, targets),
                InstanceLoss::Svm => loss::smooth_top1_svm(logits, targets, 1.0, 1.0),
            }
        };
        let mut total: Option<Tensor> = None;
        for c in 0..self.cfg.n_classes {
            let branch = match self.cfg.branches {
                Branches::Single => 0,
                Branches::Multi => c,
            };
            let l = if c == label {
                let targets: Vec<usize> = (0..2 * k).map(|i| usize::from(i < k)).collect();
                inst_loss(
                    &self.instance_classifiers[c].forward(&extremes.narrow(
                        0,
                        branch * 2 * k,
                        2 * k,
                    )?)?,
                    &targets,
                )?
            } else if self.cfg.subtyping {
                inst_loss(
                    &self.instance_classifiers[c].forward(&extremes.narrow(
                        0,
                        branch * 2 * k,
                        k,
                    )?)?,
                    &vec![0; k],
                )?
            } else {
                continue;
            };
            total = Some(match total {
                Some(t) => (t + l)?,
                None => l,
            });
        }
        match total {
            Some(t) if self.cfg.subtyping => {
                Ok(Some(t.affine(1.0 / self.cfg.n_classes as f64, 0.0)?))
            }
            other => Ok(other),
        }
    }
}

impl Clam {
    /// The training forward pass: the output and, from the same attention, the instance loss
    /// (`None` for bags with fewer than `k_sample` patches).
    pub fn forward_train(
        &self,
        x: &Tensor,
        label: usize,
        mode: &Mode,
    ) -> Result<(Output, Option<Tensor>)> {
        let p = self.attention.pool(&self.fc, x, self.cfg.k_sample, mode)?;
        let inst = match &p.extremes {
            Some(e) => self.instance_loss(e, label)?,
            None => None,
        };
        Ok((self.head(&p.pooled, &p.scores)?, inst))
    }

    /// The output from the pooled embeddings `[K, hidden]` and the raw attention `[K, N]`.
    fn head(&self, m: &Tensor, raw: &Tensor) -> Result<Output> {
        let logits = match self.cfg.branches {
            Branches::Single => self.classifiers[0].forward(m)?.squeeze(0)?,
            Branches::Multi => {
                let per: Vec<Tensor> = self
                    .classifiers
                    .iter()
                    .enumerate()
                    .map(|(c, lin)| lin.forward(&m.narrow(0, c, 1)?)?.reshape(1))
                    .collect::<Result<_>>()?;
                Tensor::cat(&per, 0)?
            }
        };
        let embedding = m.flatten_all()?;
        // Heatmap score per patch: the single branch, or the predicted class's branch.
        let attention = match self.cfg.branches {
            Branches::Single => raw.squeeze(0)?,
            Branches::Multi => {
                let c = logits.argmax(D::Minus1)?.to_scalar::<u32>()? as usize;
                raw.get(c)?
            }
        };
        Ok(Output {
            logits,
            embedding,
            attention: Some(attention),
        })
    }
}

impl Model for Clam {
    /// The gated-attention pooling's estimate (`gated_attention::gated_pool_step_bytes`).
    fn training_step_bytes(&self, patches: usize) -> Option<u64> {
        Some(gated_pool_step_bytes(
            self.cfg.d_in,
            self.cfg.hidden,
            patches,
        ))
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let p = self.attention.pool(&self.fc, &*bag(input)?, 0, mode)?;
        self.head(&p.pooled, &p.scores)
    }

    /// `(1 − bag_weight) · L_inst` as the auxiliary loss (`docs/DESIGN.md` §17).
    fn training_forward(
        &self,
        input: &Input,
        label: usize,
        mode: &Mode,
    ) -> Result<(Output, Option<Tensor>)> {
        let (out, inst) = self.forward_train(&*bag(input)?, label, mode)?;
        let inst = inst
            .map(|l| l.affine(1.0 - self.cfg.bag_weight, 0.0))
            .transpose()?;
        Ok((out, inst))
    }

    fn bag_weight(&self) -> f64 {
        self.cfg.bag_weight
    }
}

fn config_from_weights(w: &BTreeMap<String, Tensor>, branches: Branches) -> Result<Value> {
    let fc = shape(w, "attention_net.0.weight")?;
    let index = if w.contains_key("attention_net.3.attention_a.0.weight") {
        3
    } else {
        2
    };
    let att = shape(w, &format!("attention_net.{index}.attention_a.0.weight"))?;
    let n_classes = match branches {
        Branches::Single => shape(w, "classifiers.weight")?[0],
        Branches::Multi => count_indexed(w, "classifiers.", ".weight"),
    };
    let mut c = ClamConfig::small(branches, fc[1], n_classes);
    c.hidden = fc[0];
    c.attention_dim = att[0];
    c.attention_net_index = index;
    Ok(to_value(&c))
}

/// CLAM-SB in the registry.
pub const ARCH_SB: ArchInfo = ArchInfo {
    name: "clam_sb",
    summary:
        "CLAM single-branch: gated attention MIL with instance-level clustering (Lu et al. 2021)",
    reference: "mahmoodlab/CLAM models/model_clam.py CLAM_SB",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults::CLAM),
    default_config: |d, c| to_value(&ClamConfig::small(Branches::Single, d.features, c)),
    build: |s, v| Ok(Box::new(Clam::new(s, config(v)?)?)),
    config_from_weights: |w| config_from_weights(w, Branches::Single),
    set_gene_groups: None,
};

/// CLAM-MB in the registry.
pub const ARCH_MB: ArchInfo = ArchInfo {
    name: "clam_mb",
    summary: "CLAM multi-branch: one attention branch per class",
    reference: "mahmoodlab/CLAM models/model_clam.py CLAM_MB",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults::CLAM),
    default_config: |d, c| to_value(&ClamConfig::small(Branches::Multi, d.features, c)),
    build: |s, v| Ok(Box::new(Clam::new(s, config(v)?)?)),
    config_from_weights: |w| config_from_weights(w, Branches::Multi),
    set_gene_groups: None,
};
