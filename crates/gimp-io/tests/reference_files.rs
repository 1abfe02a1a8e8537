//! Files written by the reference Python tools (h5py as CLAM/TRIDENT use it, torch.save, numpy,
//! safetensors) — see tools/make_reference_fixtures.py — read back with the expected values.

use gimp_io::{feature_file, h5, pt, Bag, ErrorKind, DEFAULT_MAX_BAG_BYTES};
use std::path::{Path, PathBuf};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/reference")
        .join(name)
}

fn expected() -> Vec<f32> {
    std::fs::read_to_string(data("features_expected.txt"))
        .unwrap()
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn expected_coords() -> Vec<[i64; 2]> {
    (0..7).map(|i| [i * 512, i * 512 + 256]).collect()
}

fn assert_features(bag: &Bag) {
    assert_eq!((bag.n, bag.d), (7, 16));
    let e = expected();
    for (a, b) in bag.features.iter().zip(&e) {
        assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn clam_feature_h5_int32_and_int64_coords() {
    for name in ["clam_features.h5", "clam_features_int64.h5"] {
        let bag = feature_file::read_bag(&data(name), DEFAULT_MAX_BAG_BYTES).unwrap();
        assert_features(&bag);
        assert_eq!(
            bag.coords.as_deref(),
            Some(expected_coords().as_slice()),
            "{name}"
        );
        assert_eq!(feature_file::bag_shape(&data(name)).unwrap(), (7, 16));
    }
}

#[test]
fn clam_patch_file_attributes() {
    let p = h5::read_patches(&data("clam_patches.h5")).unwrap();
    assert_eq!(p.coords, expected_coords());
    assert_eq!(p.attrs.patch_size, Some(256));
    assert_eq!(p.attrs.patch_level, Some(0));
    assert_eq!(p.attrs.downsample, Some([1.0, 1.0]));
    assert_eq!(p.attrs.level_dim, Some([2220, 2967]));
    assert_eq!(p.attrs.name.as_deref(), Some("slide_a"));
    assert_eq!(p.attrs.level0_patch_size(), Some(256.0));
}

#[test]
fn trident_patch_file_attributes() {
    let p = h5::read_patches(&data("trident_patches.h5")).unwrap();
    assert_eq!(p.coords, expected_coords());
    assert_eq!(p.attrs.patch_size_level0, Some(512));
    assert_eq!(p.attrs.level0_magnification, Some(40.0));
    assert_eq!(p.attrs.target_magnification, Some(20.0));
    assert_eq!(p.attrs.level0_patch_size(), Some(512.0));
}

#[test]
fn torch_save_bare_tensor() {
    let bag = feature_file::read_bag(&data("features.pt"), DEFAULT_MAX_BAG_BYTES).unwrap();
    assert_features(&bag);
    assert!(bag.coords.is_none());
    assert_eq!(
        feature_file::bag_shape(&data("features.pt")).unwrap(),
        (7, 16)
    );
}

#[test]
fn torch_save_strided_view_and_f64() {
    for name in ["features_transposed_view.pt", "features_f64.pt"] {
        let bag = feature_file::read_bag(&data(name), DEFAULT_MAX_BAG_BYTES).unwrap();
        assert_features(&bag);
    }
}

#[test]
fn torch_dict_and_legacy_give_clear_errors() {
    let e = feature_file::read_bag(&data("dict.pt"), DEFAULT_MAX_BAG_BYTES).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(
        e.to_string().contains("dict.pt") && e.to_string().contains("'features'"),
        "{e}"
    );
    let e = feature_file::read_bag(&data("legacy.pt"), DEFAULT_MAX_BAG_BYTES).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Malformed);
    assert!(e.to_string().contains("legacy"), "{e}");
}

#[test]
fn numpy_c_and_fortran_order() {
    for name in ["features.npy", "features_fortran_f64.npy"] {
        let bag = feature_file::read_bag(&data(name), DEFAULT_MAX_BAG_BYTES).unwrap();
        assert_features(&bag);
    }
}

#[test]
fn safetensors_with_coords() {
    let bag = feature_file::read_bag(&data("features.safetensors"), DEFAULT_MAX_BAG_BYTES).unwrap();
    assert_features(&bag);
    assert_eq!(bag.coords.as_deref(), Some(expected_coords().as_slice()));
}

#[test]
fn writers_round_trip_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let bag = feature_file::read_bag(&data("clam_features.h5"), DEFAULT_MAX_BAG_BYTES).unwrap();
    let h5p = dir.path().join("a.h5");
    h5::write_features(&h5p, &bag, h5::Chunking::Clam).unwrap();
    assert_eq!(
        feature_file::read_bag(&h5p, DEFAULT_MAX_BAG_BYTES).unwrap(),
        bag
    );
    let ptp = dir.path().join("a.pt");
    pt::write_bag(&ptp, &bag).unwrap();
    let back = feature_file::read_bag(&ptp, DEFAULT_MAX_BAG_BYTES).unwrap();
    assert_eq!(back.features, bag.features);
    let npyp = dir.path().join("a.npy");
    gimp_io::npy::write_bag(&npyp, &bag).unwrap();
    assert_eq!(
        feature_file::read_bag(&npyp, DEFAULT_MAX_BAG_BYTES)
            .unwrap()
            .features,
        bag.features
    );
    let patches = h5::read_patches(&data("trident_patches.h5")).unwrap();
    let pp = dir.path().join("p.h5");
    h5::write_patches(&pp, &patches).unwrap();
    assert_eq!(h5::read_patches(&pp).unwrap(), patches);
    // No temporary file is left beside the outputs.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn size_limit_is_checked_before_reading() {
    let e = feature_file::read_bag(&data("clam_features.h5"), 100).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooLarge);
}
