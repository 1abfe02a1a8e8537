//! ResNet50-trunc against torchvision on real patches of the shared slide
//! (`../shared/fixtures/resnet50_trunc_real_patches.safetensors`, 35 MB, read from `../shared`;
//! CI sets GIMP_REQUIRE_SHARED=1 so a missing file fails instead of skipping).

use candle_core::{Device, Tensor};
use gimp_extract::resnet::{normalise, ResNet50Trunc};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn resnet50_trunc_matches_torchvision_on_real_patches() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/resnet50_trunc_real_patches.safetensors");
    if !path.is_file() {
        assert!(
            std::env::var("GIMP_REQUIRE_SHARED").as_deref() != Ok("1"),
            "{} is required",
            path.display()
        );
        eprintln!("skipping: {} not found", path.display());
        return;
    }
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
    assert_eq!(f.dims(), &[b, 1024]);
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
