//! The one list of architectures. The CLI (`gimp-rs model list`, `--arch`), the trainer and the
//! docs all read it. Everything about a model lives in its own file, in its [`ArchInfo`]; adding
//! a model means adding that file and one line here (docs/MODELS.md, "Adding a model").

use crate::arch::ArchInfo;
use crate::model::Model;
use candle_core::{Result, Tensor};
use gimp_nn::checkpoint::Checkpoint;
use gimp_nn::ParamStore;
use serde_json::Value;
use std::collections::BTreeMap;

pub const REGISTRY: &[&ArchInfo] = &[
    &crate::abmil::ARCH,
    &crate::clam::ARCH_SB,
    &crate::clam::ARCH_MB,
    &crate::transmil::ARCH,
    &crate::snn::ARCH,
    &crate::group_msa::ARCH,
    &crate::dsmil::ARCH,
    &crate::porpoise::ARCH,
    &crate::pathomic::ARCH,
    &crate::mcat::ARCH,
    &crate::mgca::ARCH,
    &crate::biovil::ARCH,
    &crate::refers::ARCH,
    &crate::gimp::ARCH,
    &crate::mean_mil::ARCH,
    &crate::tangle::ARCH,
    &crate::tangle::ARCH_PROBE,
    &crate::survpath::ARCH,
    &crate::mmp::ARCH,
];

pub fn find(name: &str) -> Option<&'static ArchInfo> {
    REGISTRY.iter().copied().find(|a| a.name == name)
}

pub fn names() -> Vec<&'static str> {
    REGISTRY.iter().map(|a| a.name).collect()
}

/// The architectures gimp-train's supervised trainer trains (`gimp-rs train --arch`): every
/// one but those trained by their own stages (GiMP).
pub fn supervised_names() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .filter(|a| matches!(a.training, crate::arch::Training::Supervised(_)))
        .map(|a| a.name)
        .collect()
}

/// [`find`], or an error listing the known names.
pub fn lookup(name: &str) -> Result<&'static ArchInfo> {
    find(name).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "unknown architecture '{name}'; known: {}",
            names().join(", ")
        ))
    })
}

/// A model ready to run, with its architecture.
pub struct Loaded {
    pub arch: &'static ArchInfo,
    pub model: Box<dyn Model>,
    pub config: Value,
    /// Temperature the logits are divided by before the softmax: 1, or the one fitted on
    /// validation by `gimp-rs calibrate` and stored in the checkpoint (docs/DESIGN.md §32).
    pub temperature: f64,
    /// How its outputs answer a survival question, for a model trained for survival (its
    /// checkpoint records it); `None` for a classifier.
    pub survival: Option<crate::SurvivalHead>,
}

/// The checkpoint info key of the fitted temperature.
pub const TEMPERATURE_KEY: &str = "temperature";

impl Loaded {
    /// Class probabilities of `logits` `[.., C]`: `softmax(logits / temperature)`.
    pub fn probabilities(&self, logits: &Tensor) -> Result<Tensor> {
        gimp_nn::ops::softmax_last(&logits.affine(1.0 / self.temperature, 0.0)?)
    }
}

/// Builds `arch` from a weights file's tensors (by the reference's parameter names), with the
/// config those weights imply unless one is given. Every model parameter must come from the file
/// and every tensor of the file must be used; otherwise the error lists the names.
pub fn load(
    arch: &'static ArchInfo,
    weights: BTreeMap<String, Tensor>,
    config: Option<Value>,
) -> Result<Loaded> {
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
    Ok(Loaded {
        arch,
        model,
        config,
        temperature: 1.0,
        survival: None,
    })
}

/// The model a gimp-rs checkpoint holds (its architecture and config are stored in it).
pub fn load_checkpoint(ckpt: &Checkpoint) -> Result<Loaded> {
    let mut loaded = load(
        lookup(&ckpt.arch)?,
        ckpt.weights.clone(),
        Some(ckpt.config.clone()),
    )?;
    loaded.temperature = temperature(&ckpt.info)?;
    loaded.survival = crate::SurvivalHead::from_info(&ckpt.info)?;
    Ok(loaded)
}

/// The temperature a checkpoint's info records (1 when it records none).
pub fn temperature(info: &BTreeMap<String, String>) -> Result<f64> {
    match info.get(TEMPERATURE_KEY) {
        None => Ok(1.0),
        Some(t) => t
            .parse::<f64>()
            .ok()
            .filter(|t| t.is_finite() && *t > 0.0)
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "checkpoint info '{TEMPERATURE_KEY}' = '{t}' is not a positive number"
                ))
            }),
    }
}
