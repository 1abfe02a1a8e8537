//! Generic TIFFs written by tifffile (tools/make_tiff_fixtures.py): an LZW pyramid with a pixel
//! size, deflate grey tiles, and a stripped image — pixels exact (lossless codecs), levels and
//! microns per pixel as stored.

use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn pattern(x: u32, y: u32) -> [u8; 3] {
    [
        ((x * 3) % 256) as u8,
        ((y * 5) % 256) as u8,
        (((x + y) * 7) % 256) as u8,
    ]
}

#[test]
fn lzw_pyramid_reads_exactly_with_levels_and_pixel_size() {
    let s = gimp_slide::open(&fixture("pyramid_lzw.tif")).unwrap();
    assert_eq!(s.properties().vendor, "generic-tiff");
    let levels = s.levels();
    assert_eq!(levels.len(), 2);
    assert_eq!((levels[0].width, levels[0].height), (300, 200));
    assert_eq!((levels[1].width, levels[1].height), (150, 100));
    assert!((levels[1].downsample - 2.0).abs() < 1e-9);
    let mpp = s.properties().mpp.unwrap();
    assert!((mpp[0] - 0.5).abs() < 1e-9, "{mpp:?}");
    assert_eq!(s.properties().magnification().unwrap().0, 20.0);
    // A region across tile borders, and one hanging over the edge (black outside).
    let r = s.read_region(50, 40, 0, 100, 90).unwrap();
    for (x, y) in [(0, 0), (13, 24), (99, 89), (78, 23)] {
        assert_eq!(r.get_pixel(x, y).0, pattern(50 + x, 40 + y), "({x}, {y})");
    }
    let edge = s.read_region(280, 190, 0, 40, 20).unwrap();
    assert_eq!(edge.get_pixel(5, 5).0, pattern(285, 195));
    assert_eq!(edge.get_pixel(30, 15).0, [0, 0, 0]);
    // Level 1 holds every second pixel; level-0 coordinates address it.
    let r1 = s.read_region(100, 60, 1, 10, 10).unwrap();
    assert_eq!(r1.get_pixel(3, 4).0, pattern(100 + 6, 60 + 8));
    assert_eq!(s.best_level_for_downsample(3.0), 1);
    assert_eq!(s.best_level_for_downsample(1.5), 0);
}

#[test]
fn grey_deflate_and_stripped_images_read_exactly() {
    let g = gimp_slide::open(&fixture("grey_deflate.tif")).unwrap();
    let r = g.read_region(10, 20, 0, 50, 40).unwrap();
    let v = pattern(10 + 33, 20 + 17)[1];
    assert_eq!(r.get_pixel(33, 17).0, [v, v, v]);
    assert_eq!(g.properties().mpp, None);
    let s = gimp_slide::open(&fixture("stripped.tif")).unwrap();
    assert_eq!(s.levels().len(), 1);
    let r = s.read_region(0, 0, 0, 300, 200).unwrap();
    assert_eq!(r.get_pixel(299, 199).0, pattern(299, 199));
    assert_eq!(r.get_pixel(120, 33).0, pattern(120, 33));
    // No magnification in the file: patching asks for one.
    let plan = gimp_slide::patching::plan(s.as_ref(), &Default::default());
    assert!(plan
        .unwrap_err()
        .to_string()
        .contains("--level0-magnification"));
}
