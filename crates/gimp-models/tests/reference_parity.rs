//! Models loaded from state dicts of the original code (TransMIL, CLAM-SB/MB, PORPOISE's ABMIL,
//! PORPOISE MMF, Pathomic Fusion's WSI adaptation, MCAT, DSMIL) with random weights give the
//! original code's logits and attention (fixtures written by tools/make_model_fixtures.py and
//! tools/make_fusion_fixtures.py).

use candle_core::{Device, Tensor};
use gimp_models::registry::{self, find};
use gimp_models::Input;
use gimp_nn::Mode;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir().join(name), &Device::Cpu).unwrap()
}

fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let b = b.flatten_all().unwrap();
    let a = a.flatten_all().unwrap();
    let d = (&a - &b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
        .max(1e-12)
}

fn check(arch: &str) {
    let weights: BTreeMap<String, Tensor> = load(&format!("{arch}_weights.safetensors"))
        .into_iter()
        .collect();
    let io = load(&format!("{arch}_io.safetensors"));
    let bag =
        gimp_io::feature_file::read_bag(&dir().join(format!("{arch}_bag.h5")), u64::MAX).unwrap();
    let x = Tensor::from_vec(bag.features, (bag.n, bag.d), &Device::Cpu).unwrap();
    let model = registry::load(find(arch).unwrap(), weights, None)
        .unwrap()
        .model;
    let input = match io.get("expression") {
        Some(e) => Input::Patient {
            bag: Some((&x).into()),
            expression: Some(e),
        },
        None => Input::bag(&x),
    };
    let out = model.forward(&input, &Mode::eval()).unwrap();
    let e = rel_err(&out.logits, &io["logits"]);
    assert!(
        e < 1e-4,
        "{arch}: logits relative error {e}: {} vs {}",
        out.logits,
        io["logits"]
    );
    if let Some(expected) = io.get("attention_raw") {
        let got = out.attention.clone().expect("attention");
        // CLAM-MB returns every branch; our heatmap score is the predicted class's branch.
        let expected = if expected.dim(0).unwrap() > 1 {
            let c = out.logits.argmax(0).unwrap().to_scalar::<u32>().unwrap() as usize;
            expected.get(c).unwrap()
        } else {
            expected.clone()
        };
        let e = rel_err(&got, &expected);
        assert!(e < 1e-4, "{arch}: attention relative error {e}");
    }
    if let Some(coattn) = io.get("coattn_raw") {
        // MCAT: the per-patch score is the co-attention map averaged over the gene groups.
        let e = rel_err(
            &out.attention.clone().expect("attention"),
            &coattn.mean(0).unwrap(),
        );
        assert!(e < 1e-4, "{arch}: co-attention relative error {e}");
    }
    if let Some(a) = io.get("attention") {
        // DSMIL: attention to the predicted class's critical instance.
        let c = out.logits.argmax(0).unwrap().to_scalar::<u32>().unwrap() as usize;
        let expected = a.narrow(1, c, 1).unwrap().squeeze(1).unwrap();
        let e = rel_err(&out.attention.clone().expect("attention"), &expected);
        assert!(e < 1e-4, "{arch}: attention relative error {e}");
    }
}

#[test]
fn porpoise_matches_the_original_code() {
    check("porpoise");
}

#[test]
fn pathomic_fusion_matches_mcats_mil_attention_fc_surv() {
    check("pathomic");
}

#[test]
fn mcat_matches_the_original_code() {
    check("mcat");
}

#[test]
fn dsmil_matches_the_original_code() {
    check("dsmil");
}

#[test]
fn transmil_matches_the_original_code() {
    check("transmil");
}

#[test]
fn clam_sb_matches_the_original_code() {
    check("clam_sb");
}

#[test]
fn clam_mb_matches_the_original_code() {
    check("clam_mb");
}

#[test]
fn abmil_matches_porpoise_amil() {
    check("abmil");
}

#[test]
fn weights_of_another_architecture_are_refused_with_names() {
    let weights: BTreeMap<String, Tensor> = load("abmil_weights.safetensors").into_iter().collect();
    let mut cfg = (find("clam_sb").unwrap().default_config)(gimp_models::Dims::both(128), 2);
    // The fixture's widths (128 → 32 → 16), so the common layers fit and only names differ.
    cfg["hidden"] = 32.into();
    cfg["attention_dim"] = 16.into();
    let err = registry::load(find("clam_sb").unwrap(), weights, Some(cfg))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("missing") && err.contains("classifiers.weight"),
        "{err}"
    );
}
