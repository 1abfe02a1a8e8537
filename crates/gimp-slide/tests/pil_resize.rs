//! `gimp_slide::resample` against Pillow's `Image.resize` (tools/make_resample_fixture.py):
//! every output byte equal, on random images resized up and down by bilinear and bicubic, and
//! on a real patch of the repository's slide resized as each encoder's transform and TRIDENT's
//! patcher resize it.

use gimp_slide::resample::{resize, resize_rgb, Filter};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

fn filter(name: &str) -> Filter {
    match name {
        "bilinear" => Filter::Bilinear,
        "bicubic" => Filter::Bicubic,
        other => panic!("fixture names filter {other}"),
    }
}

#[test]
fn resizes_random_images_exactly_as_pil() {
    let bytes = std::fs::read(repo(
        "crates/gimp-slide/tests/fixtures/pil_resize.safetensors",
    ))
    .unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut cases = 0;
    for i in 0.. {
        let Some(name) = meta.get(&format!("random_{i}")) else {
            break;
        };
        let input = st.tensor(&format!("random_{i}_in")).unwrap();
        let want = st.tensor(&format!("random_{i}_out")).unwrap();
        let (h, w) = (input.shape()[0], input.shape()[1]);
        let (oh, ow) = (want.shape()[0], want.shape()[1]);
        let got = resize(input.data(), w, h, 3, ow, oh, filter(name));
        let differing = got.iter().zip(want.data()).filter(|(a, b)| a != b).count();
        assert_eq!(
            differing, 0,
            "case {i}: {w}×{h} → {ow}×{oh} {name}: {differing} bytes differ"
        );
        cases += 1;
    }
    assert_eq!(cases, 48);
}

#[test]
fn resizes_slide_patches_exactly_as_the_transforms_do() {
    let bytes = std::fs::read(repo(
        "crates/gimp-slide/tests/fixtures/pil_resize.safetensors",
    ))
    .unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let slide = gimp_slide::open(&repo("data/slides/cmu_small_region.svs")).unwrap();
    let mut cases = 0;
    for j in 0.. {
        let Some(case) = meta.get(&format!("slide_{j}")) else {
            break;
        };
        let f: Vec<&str> = case.split(',').collect();
        let num = |k: usize| f[k].parse::<u32>().unwrap();
        let (x, y, side, size) = (num(0), num(1), num(2), num(3));
        let patch = slide
            .read_region(x as i64, y as i64, 0, side, side)
            .unwrap();
        let out = resize_rgb(&patch, size, size, filter(f[4]));
        let digest: String = Sha256::digest(out.as_raw())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(digest, f[5], "{side} → {size} {}", f[4]);
        cases += 1;
    }
    assert_eq!(cases, 6);
}
