//! Pages of YCbCr JPEG tiles, read straight from the file outside the reader's lock (tools/make_big_slide.py's layout,
//! small: `ycbcr_jpeg_40x.svs`, 1280 × 1024 at 40×, levels at downsample 4, 16 and 64, 256-px
//! tiles): the right colours against libjpeg-turbo's (tifffile's) decoding, tiles in the right
//! places, stored tiles handed out only where they are complete, the same pixels from many
//! threads at once.

use gimp_slide::SlideReader;
use std::path::Path;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn open() -> Box<dyn SlideReader> {
    gimp_slide::open(&fixture("ycbcr_jpeg_40x.svs")).unwrap()
}

/// A stored tile decoded by the same libjpeg-turbo code the reader uses.
fn decoded(bytes: &[u8]) -> image::RgbImage {
    let d = gimp_slide::jpeg::decode(None, bytes, gimp_slide::jpeg::JpegColour::YCbCr).unwrap();
    assert_eq!(d.channels, 3);
    image::RgbImage::from_raw(d.width, d.height, d.pixels).unwrap()
}

fn block_mean(img: &image::RgbImage, x: u32, y: u32) -> [f64; 3] {
    let mut m = [0.0; 3];
    for dy in 0..16 {
        for dx in 0..16 {
            for (c, v) in img.get_pixel(x + dx, y + dy).0.iter().enumerate() {
                m[c] += *v as f64 / 256.0;
            }
        }
    }
    m
}

#[test]
fn a_40x_aperio_pyramid_of_ycbcr_jpeg_tiles_reads_in_the_right_colours() {
    let s = open();
    assert_eq!(s.properties().vendor, "aperio");
    assert_eq!(s.properties().mpp, Some([0.25, 0.25]));
    assert_eq!(s.properties().objective_power, Some(40.0));
    let sizes: Vec<_> = s.levels().iter().map(|l| (l.width, l.height)).collect();
    assert_eq!(sizes, [(1280, 1024), (320, 256), (80, 64), (20, 16)]);
    assert_eq!(s.associated_names(), ["thumbnail"]);
    let img = s.read_region(0, 0, 0, 1280, 1024).unwrap();
    // 16 × 16 means from tifffile (libjpeg-turbo) on the same file: glass, tissue, glass.
    for ((x, y), want) in [
        ((0, 0), [242.2, 240.2, 245.2]),
        ((540, 1008), [119.7, 81.9, 122.1]),
        ((580, 1008), [204.1, 168.7, 190.2]),
        ((1264, 1008), [242.1, 240.1, 245.1]),
    ] {
        let got = block_mean(&img, x, y);
        for c in 0..3 {
            assert!(
                (got[c] - want[c]).abs() < 3.0,
                "({x}, {y}): {got:?} against {want:?}"
            );
        }
    }
}

#[test]
fn stored_tiles_are_complete_jpegs_of_the_pixels_read() {
    let s = open();
    // Tile (3, 2) of level 0 is the 256 × 256 square at (768, 512).
    let bytes = s.stored_jpeg_tile(0, 256, 3, 2).unwrap().unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xD8]);
    let stored = decoded(&bytes);
    assert_eq!(stored, s.read_region(768, 512, 0, 256, 256).unwrap());
    // Level 1 (downsample 4): tile (1, 0) is level-0 (1024, 0) onwards.
    let bytes = s.stored_jpeg_tile(1, 256, 1, 0).unwrap().unwrap();
    let stored = decoded(&bytes);
    assert_eq!(stored.dimensions(), (256, 256));
    let read = s.read_region(1024, 0, 1, 64, 256).unwrap();
    for (x, y) in [(0, 0), (63, 255), (10, 100)] {
        assert_eq!(stored.get_pixel(x, y), read.get_pixel(x, y), "({x}, {y})");
    }
    // Past the level's tiles, another tile size, a level that does not exist: none.
    assert!(s.stored_jpeg_tile(0, 256, 5, 0).is_none());
    assert!(s.stored_jpeg_tile(0, 256, 0, 4).is_none());
    assert!(s.stored_jpeg_tile(0, 240, 0, 0).is_none());
    assert!(s.stored_jpeg_tile(9, 256, 0, 0).is_none());
    // Aperio's RGB-coded JPEG (the repository's slide) is not handed out as it is.
    let real = gimp_slide::open(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/slides/cmu_small_region.svs"),
    )
    .unwrap();
    assert!(real.stored_jpeg_tile(0, 240, 0, 0).is_none());
}

#[test]
fn threads_reading_at_once_get_the_same_pixels() {
    let regions: Vec<(i64, i64)> = (0..16).map(|i| ((i % 5) * 200, (i % 4) * 190)).collect();
    let alone: Vec<_> = {
        let s = open();
        regions
            .iter()
            .map(|&(x, y)| s.read_region(x, y, 0, 300, 300).unwrap())
            .collect()
    };
    // A fresh reader: nothing decoded yet, so the threads decode the same tiles at once.
    let s: std::sync::Arc<dyn SlideReader> = open().into();
    let handles: Vec<_> = regions
        .iter()
        .map(|&(x, y)| {
            let s = s.clone();
            std::thread::spawn(move || s.read_region(x, y, 0, 300, 300).unwrap())
        })
        .collect();
    for (h, want) in handles.into_iter().zip(alone) {
        assert!(h.join().unwrap() == want);
    }
}
