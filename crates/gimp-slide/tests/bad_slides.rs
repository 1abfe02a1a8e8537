//! Damaged and foreign files give an error that names the file; nothing panics.

use gimp_io::ErrorKind;
use std::path::Path;

/// The repository's real Aperio slide region (`data/slides/cmu_small_region.svs`).
fn real_slide() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/slides/cmu_small_region.svs"),
    )
    .unwrap()
}

#[test]
fn foreign_and_empty_files_are_refused_by_name() {
    let d = tempfile::tempdir().unwrap();
    let empty = d.path().join("empty.svs");
    std::fs::write(&empty, b"").unwrap();
    let e = gimp_slide::open(&empty).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.to_string().contains("empty.svs"));
    let text = d.path().join("slide.mrxs");
    std::fs::write(&text, b"not a slide at all").unwrap();
    let e = gimp_slide::open(&text).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    let msg = e.to_string();
    assert!(
        msg.contains("slide.mrxs") && msg.to_lowercase().contains("openslide"),
        "{msg}"
    );
    let header_only = d.path().join("h.tif");
    std::fs::write(&header_only, b"II*\0\x08\0\0\0").unwrap();
    let e = gimp_slide::open(&header_only).err().unwrap();
    assert!(e.to_string().contains("h.tif"), "{e}");
    assert!(gimp_slide::open(&d.path().join("missing.svs")).is_err());
}

#[test]
fn truncated_and_corrupted_slides_fail_cleanly() {
    let bytes = real_slide();
    let d = tempfile::tempdir().unwrap();
    // Truncations at several points, and runs of bytes overwritten inside the file: each
    // open and read either works or returns an error naming the file.
    let mut cases: Vec<(String, Vec<u8>)> = [0.001, 0.01, 0.3, 0.6, 0.95]
        .iter()
        .map(|f| {
            (
                format!("cut{f}"),
                bytes[..(bytes.len() as f64 * f) as usize].to_vec(),
            )
        })
        .collect();
    for (k, at) in [0.0005f64, 0.2, 0.5, 0.8].iter().enumerate() {
        let mut b = bytes.clone();
        let start = (b.len() as f64 * at) as usize;
        for (i, x) in b[start..start + 4096].iter_mut().enumerate() {
            *x = (i as u8).wrapping_mul(37).wrapping_add(k as u8);
        }
        cases.push((format!("flip{k}"), b));
    }
    for (name, b) in cases {
        let p = d.path().join(format!("{name}.svs"));
        std::fs::write(&p, &b).unwrap();
        match gimp_slide::open(&p) {
            Err(e) => assert!(e.to_string().contains(&format!("{name}.svs")), "{e}"),
            Ok(s) => {
                for (x, y) in [(0, 0), (1024, 1024), (2000, 2800)] {
                    if let Err(e) = s.read_region(x, y, 0, 300, 300) {
                        assert!(e.to_string().contains(&format!("{name}.svs")), "{e}");
                    }
                }
                for n in s.associated_names() {
                    let _ = s.read_associated(&n);
                }
            }
        }
    }
}
