//! An OME-TIFF pyramid whose reduced levels are SubIFDs of page 0 (QuPath's, bfconvert's and
//! tifffile's layout), cut from the repository's real slide by tools/make_ome_tiff_fixture.py:
//! every level's pixels equal tifffile's (SHA-256 of the whole level), the mpp and objective
//! come from the OME-XML, and the label page after the pyramid is not taken for a level.

use sha2::{Digest, Sha256};
use std::path::Path;

#[test]
fn ome_tiff_subifd_levels_equal_tifffiles_pixels() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("ome_pyramid.json")).unwrap())
            .unwrap();
    let s = gimp_slide::open(&dir.join("ome_pyramid.ome.tif")).unwrap();
    assert_eq!(s.properties().vendor, "ome-tiff");
    let mpp = s.properties().mpp.unwrap();
    assert!(
        (mpp[0] - 0.499).abs() < 1e-12 && (mpp[1] - 0.499).abs() < 1e-12,
        "{mpp:?}"
    );
    let want = reference["levels"].as_array().unwrap();
    assert_eq!(s.levels().len(), want.len(), "{:?}", s.levels());
    for (i, (l, w)) in s.levels().iter().zip(want).enumerate() {
        let (width, height) = (w["width"].as_u64().unwrap(), w["height"].as_u64().unwrap());
        assert_eq!((l.width, l.height), (width, height), "level {i}");
        let img = s.read_region(0, 0, i, width as u32, height as u32).unwrap();
        for p in w["samples"].as_array().unwrap() {
            let (x, y) = (p[0].as_u64().unwrap() as u32, p[1].as_u64().unwrap() as u32);
            let rgb: Vec<u8> = p[2]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u8)
                .collect();
            assert_eq!(img.get_pixel(x, y).0.to_vec(), rgb, "level {i} ({x}, {y})");
        }
        let sha = format!("{:x}", Sha256::digest(img.as_raw()));
        assert_eq!(sha, w["sha256"].as_str().unwrap(), "level {i}");
    }
    // Level 1 is every second pixel: level-0 coordinates address it.
    let l0 = s.read_region(0, 0, 0, 250, 190).unwrap();
    let l1 = s.read_region(40, 60, 1, 8, 8).unwrap();
    assert_eq!(l1.get_pixel(3, 2).0, l0.get_pixel(40 + 6, 60 + 4).0);
}
