//! The bytes and features TRIDENT's path gives (OpenSlide → PIL → torchvision transform → the
//! network; `tools/trident_parity.py --fixture`): for three patches of the repository's slide,
//! what `read_patches` feeds each encoder must be TRIDENT's transform output byte for byte
//! (JPEG decoding, the patcher's resize and the transform's resize and crop), and the features
//! of the encoders' fixture networks on them within 1e-5 of TRIDENT's.

use gimp_extract::encoders;
use gimp_extract::extract::{read_patches, PatchGeometry};
use safetensors::SafeTensors;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn here(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

struct Fixture {
    coords: Vec<[i64; 2]>,
    meta: HashMap<String, String>,
    bytes: Vec<u8>,
}

fn fixture() -> Fixture {
    let bytes = std::fs::read(here("tests/fixtures/trident_path.safetensors")).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let c = st.tensor("coords").unwrap();
    let coords = c
        .data()
        .chunks_exact(16)
        .map(|p| {
            let v = |i: usize| i64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap());
            [v(0), v(1)]
        })
        .collect();
    Fixture {
        coords,
        meta,
        bytes,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn slide() -> Box<dyn gimp_slide::SlideReader> {
    gimp_slide::open(&here("../../data/slides/cmu_small_region.svs")).unwrap()
}

/// Each patch's bytes as `read_patches` gives them, hashed.
fn hashes(rgb: &[u8], n: usize) -> Vec<String> {
    rgb.chunks_exact(rgb.len() / n).map(sha256_hex).collect()
}

#[test]
fn patches_reach_every_encoder_as_tridents_transform_leaves_them() {
    let f = fixture();
    let s = slide();
    let n = f.coords.len();
    let g = PatchGeometry {
        level: 0,
        read_size: 256,
        input_size: 256,
    };
    for spec in encoders::ENCODERS {
        let want = &f.meta[&format!("input.{}", spec.name)];
        let rgb = read_patches(s.as_ref(), &f.coords, &g, &spec.transform).unwrap();
        assert_eq!(hashes(&rgb, n).join(","), *want, "{}", spec.name);
    }
    // A 40× read (512 px) brought to 20× by TRIDENT's patcher (PIL's bicubic), then UNI's
    // transform.
    let g512 = PatchGeometry {
        level: 0,
        read_size: 512,
        input_size: 256,
    };
    let uni = encoders::find("uni_v1").unwrap();
    let rgb = read_patches(s.as_ref(), &f.coords, &g512, &uni.transform).unwrap();
    assert_eq!(hashes(&rgb, n).join(","), f.meta["input.uni_v1.from512"]);
}

#[test]
fn features_match_tridents_path_within_1e5() {
    let f = fixture();
    let st = SafeTensors::deserialize(&f.bytes).unwrap();
    let s = slide();
    let n = f.coords.len();
    let g = PatchGeometry {
        level: 0,
        read_size: 256,
        input_size: 256,
    };
    let mut checked = 0;
    for spec in encoders::ENCODERS {
        let Ok(want) = st.tensor(&format!("features.{}", spec.name)) else {
            continue;
        };
        let want: Vec<f32> = want
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        let path = here(&format!("tests/fixtures/vit_{}.safetensors", spec.name));
        let weights: std::collections::BTreeMap<_, _> = gimp_io::weights::read(&path)
            .unwrap()
            .into_iter()
            .filter(|(k, _)| !k.starts_with("test."))
            .collect();
        let enc = spec.load_from(weights, &path).unwrap();
        let rgb = read_patches(s.as_ref(), &f.coords, &g, enc.transform()).unwrap();
        let side = enc.input_size().unwrap() as usize;
        let got = enc.forward_sized(&rgb, n, side).unwrap();
        assert_eq!(got.len(), want.len(), "{}", spec.name);
        let d = want.len() / n;
        for (i, (g_row, w_row)) in got.chunks_exact(d).zip(want.chunks_exact(d)).enumerate() {
            let scale = w_row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = g_row
                .iter()
                .zip(w_row)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{} patch {i}: row-relative {:.2e}", spec.name, diff / scale);
            assert!(
                diff / scale < 1e-5,
                "{} patch {i}: {}",
                spec.name,
                diff / scale
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 7);
}
