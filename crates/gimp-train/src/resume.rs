//! Resumable training: at the end of every epoch a stage writes `state.safetensors` (atomically)
//! with the parameters, the optimiser's moments and step, the stage's random-number stream, the
//! epoch, and the best epoch so far with its weights. `--resume` continues from it and reaches the
//! same final weights as an uninterrupted run.

use crate::error::{Result, TrainError};
use candle_core::Tensor;
use gimp_nn::optim::Adam;
use gimp_nn::ParamStore;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// Everything a stage's loop carries from one epoch to the next.
pub struct LoopState {
    pub rng: ChaCha8Rng,
    /// Epochs completed.
    pub epochs_done: usize,
    pub step: usize,
    pub best: Option<(f64, f64)>,
    pub best_epoch: usize,
    pub best_snap: BTreeMap<String, Tensor>,
    /// Early stopping: the lowest validation loss so far and the epochs since it.
    pub lowest_val_loss: Option<f64>,
    pub epochs_since_lowest: usize,
}

fn rng_to_json(r: &ChaCha8Rng) -> serde_json::Value {
    serde_json::json!({
        "seed": r.get_seed().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "stream": r.get_stream().to_string(),
        "word_pos": r.get_word_pos().to_string(),
    })
}

fn rng_from_json(v: &serde_json::Value) -> Option<ChaCha8Rng> {
    let hex = v.get("seed")?.as_str()?;
    let mut seed = [0u8; 32];
    for (i, b) in seed.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    let mut r = ChaCha8Rng::from_seed(seed);
    r.set_stream(v.get("stream")?.as_str()?.parse().ok()?);
    r.set_word_pos(v.get("word_pos")?.as_str()?.parse().ok()?);
    Some(r)
}

pub fn save(path: &Path, store: &ParamStore, opt: &Adam, s: &LoopState) -> Result<()> {
    let mut named: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut push = |prefix: &str, map: BTreeMap<String, Tensor>| -> Result<()> {
        for (k, t) in map {
            named.push((
                format!("{prefix}{k}"),
                t.dims().to_vec(),
                t.flatten_all()?.to_vec1::<f32>()?,
            ));
        }
        Ok(())
    };
    push("param.", store.tensors())?;
    push("adam.", opt.state_tensors())?;
    push("best.", s.best_snap.clone())?;
    let meta = serde_json::json!({
        "rng": rng_to_json(&s.rng),
        "epochs_done": s.epochs_done,
        "step": s.step,
        "adam_step": opt.step,
        "best": s.best.map(|(a, l)| vec![a, l]),
        "best_epoch": s.best_epoch,
        "lowest_val_loss": s.lowest_val_loss,
        "epochs_since_lowest": s.epochs_since_lowest,
    });
    let refs: Vec<(&str, Vec<usize>, &[f32])> = named
        .iter()
        .map(|(n, d, v)| (n.as_str(), d.clone(), v.as_slice()))
        .collect();
    gimp_io::safetensors_io::write_f32(
        path,
        &refs,
        Some(HashMap::from([(
            "gimp.state".to_string(),
            meta.to_string(),
        )])),
    )?;
    Ok(())
}

/// Restores a saved loop into `store` and `opt`; `None` when there is no state file.
pub fn load(path: &Path, store: &ParamStore, opt: &mut Adam) -> Result<Option<LoopState>> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = std::fs::read(path).map_err(|e| gimp_io::DataError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| gimp_io::DataError::malformed(path, format!("not a training state: {e}")))?;
    let bad = |what: &str| {
        TrainError::Msg(format!(
            "{}: training state has no valid '{what}'",
            path.display()
        ))
    };
    let m: serde_json::Value = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("gimp.state"))
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| bad("gimp.state"))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)?;
    let take = |prefix: &str| -> BTreeMap<String, Tensor> {
        tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone())))
            .collect()
    };
    let params = take("param.");
    for (name, p) in store.params() {
        let t = params
            .get(&name)
            .ok_or_else(|| bad(&format!("param.{name}")))?;
        p.var.set(t)?;
    }
    let get_usize = |k: &str| {
        m.get(k)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
            .ok_or_else(|| bad(k))
    };
    opt.load_state(&take("adam."), get_usize("adam_step")? as u64)?;
    let best = m
        .get("best")
        .and_then(|v| v.as_array())
        .and_then(|a| Some((a.first()?.as_f64()?, a.get(1)?.as_f64()?)));
    Ok(Some(LoopState {
        rng: rng_from_json(&m["rng"]).ok_or_else(|| bad("rng"))?,
        epochs_done: get_usize("epochs_done")?,
        step: get_usize("step")?,
        best,
        best_epoch: get_usize("best_epoch")?,
        best_snap: take("best."),
        lowest_val_loss: m.get("lowest_val_loss").and_then(|v| v.as_f64()),
        // States written before early stopping existed have no counter: none has started.
        epochs_since_lowest: get_usize("epochs_since_lowest").unwrap_or(0),
    }))
}
