//! The one list of architectures. The CLI (`gimp-rs model list`, `--arch`), the trainer and the
//! docs all read it; adding a model means adding a file and one entry here.

use crate::abmil::{Abmil, AbmilConfig};
use crate::biovil::{Biovil, BiovilConfig};
use crate::clam::{Branches, Clam, ClamConfig};
use crate::dsmil::{Dsmil, DsmilConfig};
use crate::gimp::{Gimp, GimpConfig};
use crate::group_msa::{GroupMsa, GroupMsaConfig};
use crate::mcat::{Mcat, McatConfig};
use crate::mgca::{Mgca, MgcaConfig};
use crate::model::Model;
use crate::pathomic::{Pathomic, PathomicConfig};
use crate::porpoise::{Porpoise, PorpoiseConfig};
use crate::refers::{Refers, RefersConfig};
use crate::snn::{Snn, SnnConfig};
use crate::transmil::{Transmil, TransmilConfig};
use candle_core::{Result, Tensor};
use gimp_nn::{ParamStore, Scope};
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    /// A bag of patch features.
    Slide,
    /// An expression vector.
    Expression,
    /// Slide features and/or expression of one patient (GiMP: either may be absent).
    Multimodal,
    /// Slide features and expression, both required (the reference fusion models drop
    /// patients without both).
    Paired,
}

/// Input widths of a cohort: patch-feature width and gene count (0 where absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub features: usize,
    pub genes: usize,
}

impl Dims {
    /// The same width for both inputs (tests and single-input callers).
    pub fn both(n: usize) -> Self {
        Self {
            features: n,
            genes: n,
        }
    }
}

/// One architecture: how to build it from a config, its defaults, and how to read a reference
/// state dict's shapes back into a config.
pub struct ArchInfo {
    pub name: &'static str,
    pub summary: &'static str,
    /// Where the parameter names come from.
    pub reference: &'static str,
    pub input: InputKind,
    /// Default config for inputs of these widths and `n_classes`.
    pub default_config: fn(Dims, usize) -> Value,
    pub build: fn(&Scope, &Value) -> Result<Box<dyn Model>>,
    /// Trained in two stages: its self-supervised image–omic objective
    /// ([`Model::pretrain_loss`]), then fine-tuning.
    pub pretraining: bool,
    /// The config a weights file implies (layer widths and class count read from its shapes).
    pub config_from_weights: fn(&BTreeMap<String, Tensor>) -> Result<Value>,
}

fn cfg<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    serde_json::from_value(v.clone())
        .map_err(|e| candle_core::Error::Msg(format!("invalid model config: {e}")))
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn shape(w: &BTreeMap<String, Tensor>, name: &str) -> Result<Vec<usize>> {
    w.get(name)
        .map(|t| t.dims().to_vec())
        .ok_or_else(|| candle_core::Error::Msg(format!("the weights have no '{name}'")))
}

fn count_indexed(w: &BTreeMap<String, Tensor>, prefix: &str, suffix: &str) -> usize {
    (0..)
        .take_while(|i| w.contains_key(&format!("{prefix}{i}{suffix}")))
        .count()
}

fn clam_from_weights(w: &BTreeMap<String, Tensor>, branches: Branches) -> Result<Value> {
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

fn no_reference(name: &str) -> Result<Value> {
    Err(candle_core::Error::Msg(format!(
        "{name} has no reference weights to read (the adaptation is gimp-rs's): use a gimp-rs checkpoint, which stores its config"
    )))
}

pub const REGISTRY: &[ArchInfo] = &[
    ArchInfo {
        name: "abmil",
        summary: "Gated attention MIL on patch features (Ilse et al. 2018, pathology variant)",
        reference: "PORPOISE PorpoiseAMIL",
        input: InputKind::Slide,
        default_config: |d, c| to_value(&AbmilConfig::small(d.features, c)),
        build: |s, v| Ok(Box::new(Abmil::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let fc = shape(w, "attention_net.0.weight")?;
            let att = shape(w, "attention_net.3.attention_a.0.weight")?;
            let mut c = AbmilConfig::small(fc[1], shape(w, "classifier.weight")?[0]);
            c.hidden = fc[0];
            c.attention_dim = att[0];
            Ok(to_value(&c))
        },
    },
    ArchInfo {
        name: "clam_sb",
        summary: "CLAM single-branch: gated attention MIL with instance-level clustering (Lu et al. 2021)",
        reference: "mahmoodlab/CLAM models/model_clam.py CLAM_SB",
        input: InputKind::Slide,
        default_config: |d, c| to_value(&ClamConfig::small(Branches::Single, d.features, c)),
        build: |s, v| Ok(Box::new(Clam::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| clam_from_weights(w, Branches::Single),
    },
    ArchInfo {
        name: "clam_mb",
        summary: "CLAM multi-branch: one attention branch per class",
        reference: "mahmoodlab/CLAM models/model_clam.py CLAM_MB",
        input: InputKind::Slide,
        default_config: |d, c| to_value(&ClamConfig::small(Branches::Multi, d.features, c)),
        build: |s, v| Ok(Box::new(Clam::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| clam_from_weights(w, Branches::Multi),
    },
    ArchInfo {
        name: "transmil",
        summary: "TransMIL: Nyström-attention transformer with PPEG (Shao et al. 2021)",
        reference: "szc19990412/TransMIL models/TransMIL.py",
        input: InputKind::Slide,
        default_config: |d, c| to_value(&TransmilConfig::new(d.features, c)),
        build: |s, v| Ok(Box::new(Transmil::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let fc1 = shape(w, "_fc1.0.weight")?;
            let mut c = TransmilConfig::new(fc1[1], shape(w, "_fc2.weight")?[0]);
            c.aggregator.dim = fc1[0];
            c.aggregator.attention = gimp_nn::nystrom::NystromConfig::transmil(fc1[0]);
            Ok(to_value(&c))
        },
    },
    ArchInfo {
        name: "snn",
        summary: "Self-normalising network on expression, as MCAT/PORPOISE implement it",
        reference: "mahmoodlab/PORPOISE models/model_genomic.py SNN",
        input: InputKind::Expression,
        default_config: |d, c| to_value(&SnnConfig::small(d.genes, c)),
        build: |s, v| Ok(Box::new(Snn::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let n = count_indexed(w, "fc_omic.", ".0.weight");
            let first = shape(w, "fc_omic.0.0.weight")?;
            let hidden = (0..n).map(|i| shape(w, &format!("fc_omic.{i}.0.weight")).map(|s| s[0])).collect::<Result<Vec<_>>>()?;
            let mut c = SnnConfig::small(first[1], shape(w, "classifier.weight")?[0]);
            c.hidden = hidden;
            Ok(to_value(&c))
        },
    },
    ArchInfo {
        name: "group_msa",
        summary: "GroupMSA gene encoder with a linear head (GiMP, Jin et al. 2023)",
        reference: "gimp-rs (the paper published no code)",
        input: InputKind::Expression,
        default_config: |d, c| to_value(&GroupMsaConfig::gimp(d.genes, c)),
        build: |s, v| Ok(Box::new(GroupMsa::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |_| {
            Err(candle_core::Error::Msg(
                "GroupMSA's gene count cannot be read from its weights: use a gimp-rs checkpoint, which stores its config".into(),
            ))
        },
    },
    ArchInfo {
        name: "dsmil",
        summary: "DSMIL: dual-stream MIL, max-pooled instance classifier + critical-instance attention (Li et al. 2021)",
        reference: "binli123/dsmil-wsi dsmil.py MILNet",
        input: InputKind::Slide,
        default_config: |d, c| to_value(&DsmilConfig::new(d.features, c)),
        build: |s, v| Ok(Box::new(Dsmil::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let fc = shape(w, "i_classifier.fc.0.weight")?;
            let mut c = DsmilConfig::new(fc[1], fc[0]);
            c.q_dim = shape(w, "b_classifier.q.0.weight")?[0];
            Ok(to_value(&c))
        },
    },
    ArchInfo {
        name: "porpoise",
        summary: "PORPOISE MMF: gated ABMIL + SNN, gated bilinear (Kronecker) fusion with skip (Chen et al. 2022)",
        reference: "mahmoodlab/PORPOISE models/model_porpoise.py PorpoiseMMF",
        input: InputKind::Paired,
        default_config: |d, c| to_value(&PorpoiseConfig::new(d.features, d.genes, c)),
        build: |s, v| Ok(Box::new(Porpoise::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let dropinput = w.contains_key("attention_net.1.weight");
            let fc = shape(w, if dropinput { "attention_net.1.weight" } else { "attention_net.0.weight" })?;
            let omic = shape(w, "fc_omic.0.0.weight")?;
            let mut c = PorpoiseConfig::new(fc[1], omic[1], shape(w, "classifier_mm.weight")?[0]);
            if !dropinput {
                c.dropinput = 0.0;
            }
            Ok(to_value(&c))
        },
    },
    ArchInfo {
        name: "pathomic",
        summary: "Pathomic Fusion, WSI adaptation: gated ABMIL + SNN, gated bilinear fusion (Chen et al. 2020; MCAT's MIL_Attention_FC_surv)",
        reference: "MIL_Attention_FC_surv(fusion='bilinear'), models/model_set_mil.py of mahmoodlab/MCAT and PORPOISE",
        input: InputKind::Paired,
        default_config: |d, c| to_value(&PathomicConfig::new(d.features, d.genes, c)),
        build: |s, v| Ok(Box::new(Pathomic::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let fc = shape(w, "attention_net.0.weight")?;
            let omic = shape(w, "fc_omic.0.0.weight")?;
            Ok(to_value(&PathomicConfig::new(fc[1], omic[1], shape(w, "classifier.weight")?[0])))
        },
    },
    ArchInfo {
        name: "mcat",
        summary: "MCAT: genomic-guided co-attention over patches, two transformers, concat fusion (Chen et al. 2021)",
        reference: "MCAT_Surv, models/model_coattn.py of mahmoodlab/MCAT and PORPOISE",
        input: InputKind::Paired,
        default_config: |d, c| to_value(&McatConfig::new(d.features, d.genes, c)),
        build: |s, v| Ok(Box::new(Mcat::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |w| {
            let fc = shape(w, "wsi_net.0.weight")?;
            let n = count_indexed(w, "sig_networks.", ".0.0.weight");
            let sizes = (0..n).map(|i| shape(w, &format!("sig_networks.{i}.0.0.weight")).map(|s| s[1])).collect::<Result<Vec<_>>>()?;
            let mut c = McatConfig::new(fc[1], sizes.iter().sum(), shape(w, "classifier.weight")?[0]);
            // The reference takes one vector per group; read as consecutive slices of one vector.
            let mut start = 0u32;
            c.groups = sizes.iter().map(|&k| { let g = (start..start + k as u32).collect(); start += k as u32; g }).collect();
            Ok(to_value(&c))
        },
    },
    ArchInfo {
        name: "mgca",
        summary: "MGCA image–omic adaptation: instance, token and prototype alignment of slide and expression, then fine-tuning (Wang et al. 2022)",
        reference: "gimp-rs (spec/baselines.md §10; losses of HKU-MedAI/MGCA)",
        input: InputKind::Paired,
        default_config: |d, c| to_value(&MgcaConfig::new(d.features, d.genes, c)),
        build: |s, v| Ok(Box::new(Mgca::new(s, cfg(v)?)?)),
        pretraining: true,
        config_from_weights: |_| no_reference("mgca"),
    },
    ArchInfo {
        name: "biovil",
        summary: "BioViL image–omic adaptation: global slide–expression InfoNCE + masked gene modelling, then fine-tuning (Boecking et al. 2022)",
        reference: "gimp-rs (spec/baselines.md §11; projectors of microsoft/hi-ml-multimodal)",
        input: InputKind::Paired,
        default_config: |d, c| to_value(&BiovilConfig::new(d.features, d.genes, c)),
        build: |s, v| Ok(Box::new(Biovil::new(s, cfg(v)?)?)),
        pretraining: true,
        config_from_weights: |_| no_reference("biovil"),
    },
    ArchInfo {
        name: "refers",
        summary: "REFERS image–omic adaptation: fused spatial views predict expression + ConVIRT contrast, then fine-tuning (Zhou et al. 2022)",
        reference: "gimp-rs (spec/baselines.md §12; objectives of funnyzhou/REFERS)",
        input: InputKind::Paired,
        default_config: |d, c| to_value(&RefersConfig::new(d.features, d.genes, c)),
        build: |s, v| Ok(Box::new(Refers::new(s, cfg(v)?)?)),
        pretraining: true,
        config_from_weights: |_| no_reference("refers"),
    },
    ArchInfo {
        name: "gimp",
        summary: "GiMP: patch aggregator + GroupMSA, MPM and gene-induced triplet pre-training, MLP head on CLS_pat",
        reference: "gimp-rs (spec/gimp.md; the paper published no code)",
        input: InputKind::Multimodal,
        default_config: |d, c| {
            to_value(&GimpConfig {
                aggregator: crate::aggregator::AggregatorConfig::gimp(d.features),
                genes: crate::gimp::GeneEncoderConfig::GroupMsa(GroupMsaConfig::gimp(d.genes.max(1), c)),
                n_classes: c,
                head_dropout: 0.25,
            })
        },
        build: |s, v| Ok(Box::new(Gimp::new(s, cfg(v)?)?)),
        pretraining: false,
        config_from_weights: |_| {
            Err(candle_core::Error::Msg("a GiMP model is read from a gimp-rs checkpoint, which stores its config".into()))
        },
    },
];

pub fn find(name: &str) -> Option<&'static ArchInfo> {
    REGISTRY.iter().find(|a| a.name == name)
}

pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|a| a.name).collect()
}

/// Builds `arch` from a weights file's tensors (by the reference's parameter names), with the
/// config those weights imply unless one is given. Every model parameter must come from the file
/// and every tensor of the file must be used; otherwise the error lists the names.
pub fn load(
    arch: &ArchInfo,
    weights: BTreeMap<String, Tensor>,
    config: Option<Value>,
) -> Result<(Box<dyn Model>, Value)> {
    let config = match config {
        Some(c) => c,
        None => (arch.config_from_weights)(&weights)?,
    };
    let store = ParamStore::with_preset(0, weights);
    let model = (arch.build)(&store.root_inference(), &config)?;
    let (fresh, unused) = (store.fresh(), store.unused());
    if !fresh.is_empty() || !unused.is_empty() {
        candle_core::bail!(
            "the weights do not fit {}: missing {:?}; not used {:?}",
            arch.name,
            fresh.iter().take(8).collect::<Vec<_>>(),
            unused.iter().take(8).collect::<Vec<_>>()
        );
    }
    Ok((model, config))
}
