//! Model weights by parameter name, whichever file the reference code saved them in.

use crate::{DataError, ErrorKind, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Weights by parameter name: a `torch.save`d state dict or training checkpoint (`.pt`, `.pth`,
/// `.ckpt`, `.bin`; see [`crate::pt::read_state_dict`]), otherwise safetensors. Chosen by
/// extension because a pickle and a safetensors header cannot be told apart cheaply by content.
pub fn read(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(ext.as_str(), "pt" | "pth" | "ckpt" | "bin") {
        return crate::pt::read_state_dict(path);
    }
    let t = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| {
        DataError::new(
            ErrorKind::Malformed,
            path,
            format!("not a readable safetensors file: {e}"),
        )
    })?;
    Ok(t.into_iter().collect())
}

/// SHA-256 of a file, lower-case hex (recorded with the features a weights file made).
pub fn sha256_hex(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| DataError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_of_a_known_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            super::sha256_hex(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn unreadable_files_are_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w.safetensors");
        std::fs::write(&p, b"not weights").unwrap();
        let e = super::read(&p).unwrap_err();
        assert!(
            e.to_string()
                .contains("w.safetensors: not a readable safetensors file"),
            "{e}"
        );
        let e = super::read(&d.path().join("missing.pth")).unwrap_err();
        assert!(
            e.to_string().ends_with("missing.pth: file does not exist"),
            "{e}"
        );
    }
}
