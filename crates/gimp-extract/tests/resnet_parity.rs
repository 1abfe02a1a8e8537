//! ResNet50-trunc against torchvision on four real patches of the repository's slide
//! (`tests/fixtures/resnet50_trunc_real_patches.safetensors`: a narrow ResNet50-trunc, see the
//! fixtures' README and `tools/make_resnet_fixture.py`).

use candle_core::{Device, Tensor};
use gimp_extract::resnet::{normalise, ResNet50Trunc};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn resnet50_trunc_matches_torchvision_on_real_patches() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/resnet50_trunc_real_patches.safetensors");
    let t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let rgb = &t["patches_rgb_u8"];
    let (b, _, h, w) = rgb.dims4().unwrap();
    let bytes: Vec<u8> = rgb.flatten_all().unwrap().to_vec1().unwrap();
    let x = normalise(&bytes, b, h, w, &Device::Cpu).unwrap();
    let weights: BTreeMap<String, Tensor> = t
        .iter()
        .filter(|(k, _)| k.starts_with("param."))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let net = ResNet50Trunc::new(weights).unwrap();
    let f = net.forward(&x).unwrap();
    assert_eq!(f.dims(), &[b, 128]);
    let expected = &t["features"];
    let diff = (&f - expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let scale = expected
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!(
        "ResNet50-trunc relative error vs torchvision: {:.2e}",
        diff / scale
    );
    assert!(diff / scale < 1e-3, "relative error {}", diff / scale);
}
