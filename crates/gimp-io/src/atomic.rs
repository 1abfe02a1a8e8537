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

/// Removes temporary files of `target` left by writers that were killed mid-write (their process
/// is gone), so a resumed job does not accumulate them. Temporary names carry the writer's PID;
/// a live writer's file is left alone.
fn remove_stale_temps(target: &Path) {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        // Without /proc (not Linux) nothing is known to be dead: keep the file.
        let alive =
            !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists();
        if pid != std::process::id() && !alive {
            let _ = fs::remove_file(e.path());
        }
    }
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
    })?;
    remove_stale_temps(target);
    Ok(())
}

/// Writes a byte buffer atomically.
pub fn write_bytes_atomic(target: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(target, |w| w.write_all(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_removes_temporaries_of_dead_writers_only() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("state.safetensors");
        // PID 4194304 is above Linux's maximum: no such process.
        let dead = d.path().join(".state.safetensors.4194304.tmp");
        let other = d.path().join(".other.4194304.tmp");
        for p in [&dead, &other] {
            fs::write(p, b"half").unwrap();
        }
        write_bytes_atomic(&target, b"complete").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"complete");
        if Path::new("/proc/self").exists() {
            assert!(!dead.exists(), "a dead writer's temporary file stayed");
        }
        assert!(other.exists(), "another file's temporary was touched");
    }
}
