//! Crash-safe output: write to a temporary name beside the target, fsync, rename.
//!
//! A reader (or a resumed job) therefore sees either the old file or the complete new one, never
//! a half-written file, even after a kill or a power cut.

use crate::error::{DataError, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

fn temp_name(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    target.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `target` by calling `fill` on a temporary file, then renames it into place.
pub fn write_atomic<F>(target: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> std::io::Result<()>,
{
    if let Some(parent) = target.parent() {
        if !parent.as_os_str().is_empty() {
            fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
        }
    }
    let tmp = temp_name(target);
    let result = (|| -> std::io::Result<()> {
        let file = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(DataError::io(target, e));
    }
    fs::rename(&tmp, target).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataError::io(target, e)
    })
}

/// Writes a byte buffer atomically.
pub fn write_bytes_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(target, |w| w.write_all(bytes))
}
