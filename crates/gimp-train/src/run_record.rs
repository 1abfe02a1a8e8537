//! A run folder's layout and record, decided here once: GiMP's stages in `genes/`, `pretrain/`
//! and `finetune/` (each with `model.safetensors`, `log.jsonl`, `state.safetensors`,
//! `metrics.json`), and beside them `config.toml` (the whole run configuration) and `run.json`
//! (the cohort, fold, seed, version and split sizes). `gimp-rs pretrain-genes/pretrain/finetune`,
//! `experiment` and Python's `train` all write through [`write`].

use crate::config::{Chosen, RunConfig};
use crate::data::Prepared;
use crate::error::{Result, TrainError};
use std::path::{Path, PathBuf};

/// A stage's weights in its folder.
pub const CHECKPOINT: &str = "model.safetensors";

/// GiMP's stages, each in its own folder of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageDir {
    Genes,
    Pretrain,
    Finetune,
}

impl StageDir {
    pub fn name(self) -> &'static str {
        match self {
            StageDir::Genes => "genes",
            StageDir::Pretrain => "pretrain",
            StageDir::Finetune => "finetune",
        }
    }

    /// The stage's folder in the run folder `out`.
    pub fn dir(self, out: &Path) -> PathBuf {
        out.join(self.name())
    }

    /// The stage's checkpoint when an earlier command left one in `out`.
    pub fn finished_checkpoint(self, out: &Path) -> Option<PathBuf> {
        Some(self.dir(out).join(CHECKPOINT)).filter(|p| p.is_file())
    }
}

/// Writes `out/config.toml` and `out/run.json` (atomically) for a run of `cfg` on the cohort
/// file `cohort` prepared as `data`.
pub fn write(out: &Path, cohort: &Path, cfg: &RunConfig, data: &Prepared) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| gimp_io::DataError::io(out, e))?;
    let config = toml::to_string_pretty(cfg)
        .map_err(|e| TrainError::Msg(format!("recording the run configuration: {e}")))?;
    gimp_io::atomic::write_bytes_atomic(&out.join("config.toml"), config.as_bytes())?;
    let run = serde_json::json!({
        "cohort": cohort.canonicalize().unwrap_or(cohort.to_path_buf()),
        "fold": cfg.fold,
        "seed": cfg.seed,
        "gimp_rs_version": env!("CARGO_PKG_VERSION"),
        "train": data.train.len(), "val": data.val.len(), "test": data.test.len(),
    });
    let run = serde_json::to_string_pretty(&run).unwrap_or_default();
    gimp_io::atomic::write_bytes_atomic(&out.join("run.json"), run.as_bytes())?;
    Ok(())
}

/// Records what a run's model selection chose (`docs/DESIGN.md` §41): `dir/selection.json`, and
/// one line `{"selection": …}` appended to `dir/log.jsonl` after the final fit's epochs.
pub fn write_selection(dir: &Path, chosen: &Chosen) -> Result<()> {
    let text = serde_json::to_string_pretty(chosen)
        .map_err(|e| TrainError::Msg(format!("recording the selection: {e}")))?;
    gimp_io::atomic::write_bytes_atomic(&dir.join("selection.json"), text.as_bytes())?;
    let line = serde_json::json!({ "selection": chosen });
    let log = dir.join("log.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| gimp_io::DataError::io(&log, e))?;
    use std::io::Write;
    writeln!(f, "{line}").map_err(|e| gimp_io::DataError::io(&log, e))?;
    Ok(())
}
