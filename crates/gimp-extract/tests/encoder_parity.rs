//! Every ViT-family encoder against its reference (timm, or `transformers` for Phikon-v2) at
//! reduced width and depth with random weights, on crops of real patches
//! (`tests/fixtures/vit_*.safetensors`, written by `tools/make_vit_fixtures.py`; see the
//! fixtures' README). Loaded through the registry, so the key check and the name mapping run too.

use candle_core::Tensor;
use gimp_extract::encoders::{self, PatchEncoder};
use gimp_io::ErrorKind;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/vit_{name}.safetensors"))
}

/// The fixture's weights and its `test.*` tensors, apart.
fn split(name: &str) -> (BTreeMap<String, Tensor>, BTreeMap<String, Tensor>) {
    let all = gimp_io::weights::read(&fixture(name)).unwrap();
    all.into_iter().partition(|(k, _)| !k.starts_with("test."))
}

fn rel_err(got: &[f32], want: &Tensor) -> f32 {
    let want: Vec<f32> = want.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "output size");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

fn check(name: &str) {
    let (weights, test) = split(name);
    let spec = encoders::find(name).unwrap();
    let enc = spec.load_from(weights, &fixture(name)).unwrap();
    for case in ["native", "other"] {
        let Some(rgb) = test.get(&format!("test.rgb_{case}")) else {
            continue;
        };
        let (b, _, side, _) = rgb.dims4().unwrap();
        let bytes: Vec<u8> = rgb.flatten_all().unwrap().to_vec1().unwrap();
        let out = enc.forward_sized(&bytes, b, side).unwrap();
        assert_eq!(out.len(), b * enc.out_dim());
        let err = rel_err(&out, &test[&format!("test.out_{case}")]);
        eprintln!("{name} at {side} px: relative error {err:.2e}");
        assert!(err < 1e-4, "{name} at {side} px: relative error {err}");
    }
}

#[test]
fn uni_v1_matches_timm() {
    check("uni_v1");
}

#[test]
fn uni_v2_matches_timm() {
    check("uni_v2");
}

#[test]
fn virchow2_matches_timm() {
    check("virchow2");
}

#[test]
fn gigapath_matches_timm() {
    check("gigapath");
}

#[test]
fn hoptimus0_matches_timm() {
    check("hoptimus0");
}

#[test]
fn phikon_v2_matches_transformers() {
    check("phikon_v2");
}

#[test]
fn phikon_v2_reads_transformers_5_names_too() {
    let (weights, test) = split("phikon_v2");
    let renamed: BTreeMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".attention.attention.query.", ".attention.q_proj.")
                .replace(".attention.attention.key.", ".attention.k_proj.")
                .replace(".attention.attention.value.", ".attention.v_proj.")
                .replace(".attention.output.dense.", ".attention.o_proj.");
            (k, v)
        })
        .collect();
    assert!(renamed.contains_key("encoder.layer.0.attention.q_proj.weight"));
    let enc = encoders::find("phikon_v2")
        .unwrap()
        .load_from(renamed, &fixture("phikon_v2"))
        .unwrap();
    let rgb = &test["test.rgb_native"];
    let (b, _, side, _) = rgb.dims4().unwrap();
    let bytes: Vec<u8> = rgb.flatten_all().unwrap().to_vec1().unwrap();
    let out = enc.forward_sized(&bytes, b, side).unwrap();
    assert!(rel_err(&out, &test["test.out_native"]) < 1e-4);
}

#[test]
fn wrong_keys_are_listed_with_the_encoder_the_file_looks_like() {
    let (mut weights, _) = split("uni_v2");
    // H-optimus-0 has the same structure but 4 registers: loading UNI2-h's file as it must
    // fail on the register tensor's shape, naming it.
    let e = encoders::find("hoptimus0")
        .unwrap()
        .load_from(weights.clone(), &fixture("uni_v2"))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::Shape, "{e}");
    assert!(e.to_string().contains("'reg_token'"), "{e}");
    // Missing and unexpected names are listed; the file is recognised.
    weights.remove("blocks.0.ls1.gamma");
    let extra = weights["norm.bias"].clone();
    weights.insert("head.bias".into(), extra);
    let e = encoders::find("uni_v2")
        .unwrap()
        .load_from(weights.clone(), &fixture("uni_v2"))
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("missing [blocks.0.ls1.gamma]"), "{msg}");
    assert!(msg.contains("unexpected [head.bias]"), "{msg}");
    // UNI's file given as Virchow2: no registers, and it looks like UNI or GigaPath (same names).
    let (uni, _) = split("uni_v1");
    let e = encoders::find("virchow2")
        .unwrap()
        .load_from(uni, &fixture("uni_v1"))
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("missing [reg_token]"), "{msg}");
    assert!(msg.contains("--encoder uni_v1"), "{msg}");
    // A ResNet file is no ViT.
    let e = encoders::find("uni_v1")
        .unwrap()
        .load(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/resnet50_trunc_real_patches.safetensors"),
        )
        .err()
        .unwrap();
    assert!(e.to_string().contains("--encoder resnet50_trunc"), "{e}");
}

#[test]
fn every_registered_encoder_is_listed_once_with_its_transform() {
    let names = encoders::names();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), names.len());
    for spec in encoders::ENCODERS {
        assert!(encoders::find(spec.name).is_some());
        let want = match spec.name {
            "resnet50_trunc" => None,
            "conch_v1" | "conch_v15" => Some(448),
            _ => Some(224),
        };
        assert_eq!(spec.transform.input_size(), want, "{}", spec.name);
    }
    assert!(encoders::find("uni").is_none());
}

#[test]
fn inputs_of_the_wrong_size_are_refused() {
    let (weights, _) = split("uni_v1");
    let enc: Box<dyn PatchEncoder> = encoders::find("uni_v1")
        .unwrap()
        .load_from(weights, &fixture("uni_v1"))
        .unwrap();
    assert!(enc.forward_sized(&[0u8; 3 * 50 * 50], 1, 50).is_err());
    assert!(enc.forward_sized(&[0u8; 10], 1, 64).is_err());
    // Phikon-v2 (transformers' resampling is not timm's) runs at its native size only.
    let (weights, _) = split("phikon_v2");
    let enc = encoders::find("phikon_v2")
        .unwrap()
        .load_from(weights, &fixture("phikon_v2"))
        .unwrap();
    let e = enc.forward_sized(&[0u8; 3 * 64 * 64], 1, 64).unwrap_err();
    assert!(e.to_string().contains("48 px only"), "{e}");
}

#[test]
fn conch_v1_matches_the_reference_tower() {
    check("conch_v1");
}

#[test]
fn conch_v15_matches_the_reference_tower() {
    check("conch_v15");
}

#[test]
fn conch_v15_position_resampling_is_pytorchs_at_its_scale_factor() {
    // F.interpolate(scale_factor=28.1 / 14, mode='bicubic') of a 14 × 14 grid, as every
    // 448 px forward pass of CONCH v1.5 does.
    let (_, test) = split("conch_v15");
    let grid: Vec<f32> = test["test.grid_14"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let up = gimp_extract::vit::resample_bicubic_by_factor(&grid, 14, 28, 28.1 / 14.0, 1);
    let err = rel_err(&up, &test["test.grid_28"]);
    assert!(err < 1e-5, "relative error {err}");
}

#[test]
fn conch_v1_drops_the_text_side_but_not_unknown_image_tensors() {
    let (mut weights, _) = split("conch_v1");
    assert!(weights.contains_key("text.token_embedding.weight"));
    assert!(weights.contains_key("visual.attn_pool_caption.query"));
    let spec = encoders::find("conch_v1").unwrap();
    assert_eq!(
        spec.load_from(weights.clone(), &fixture("conch_v1"))
            .unwrap()
            .out_dim(),
        32
    );
    let extra = weights["visual.ln_contrast.bias"].clone();
    weights.insert("visual.head.bias".into(), extra);
    weights.remove("visual.proj_contrast");
    let msg = spec
        .load_from(weights, &fixture("conch_v1"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("missing [visual.proj_contrast]"), "{msg}");
    assert!(msg.contains("unexpected [visual.head.bias]"), "{msg}");
    // CONCH v1.5's file given as v1 (and the reverse) is recognised.
    let (v15, _) = split("conch_v15");
    let msg = spec
        .load_from(v15, &fixture("conch_v15"))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("--encoder conch_v15"), "{msg}");
}
