//! Aperio JPEG 2000 SVS (compressions 33003 and 33005): the fixtures of
//! `tools/make_jp2k_svs_fixtures.py` (a crop of the repository's real slide, two levels of
//! 128-pixel lossy JPEG 2000 tiles) read pixel for pixel as OpenSlide reads them.

use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jp2k")
        .join(name)
}

fn expected(name: &str, level: usize) -> image::RgbImage {
    image::open(fixture(&format!("{name}.level{level}.png")))
        .unwrap()
        .to_rgb8()
}

/// Largest per-sample difference and how many samples differ.
fn diff(a: &image::RgbImage, b: &image::RgbImage) -> (u8, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut max = 0;
    let mut n = 0;
    for (x, y) in a.as_raw().iter().zip(b.as_raw()) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        n += (d > 0) as usize;
    }
    (max, n)
}

#[test]
fn both_aperio_jpeg2000_flavours_read_as_openslide_reads_them() {
    for name in ["aperio_33003", "aperio_33005"] {
        let s = gimp_slide::open(&fixture(&format!("{name}.svs"))).unwrap();
        assert_eq!(s.properties().vendor, "aperio");
        assert_eq!(s.properties().mpp, Some([0.499, 0.499]));
        assert_eq!(s.properties().objective_power, Some(20.0));
        let dims: Vec<_> = s.levels().iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(dims, [(352, 232), (176, 116)]);
        for level in 0..2 {
            let want = expected(name, level);
            let got = s
                .read_region(0, 0, level, want.width(), want.height())
                .unwrap();
            assert_eq!(diff(&got, &want), (0, 0), "{name} level {level}");
        }
        // A region across tile corners, from an odd level-0 offset: the same pixels.
        let want = expected(name, 0);
        let got = s.read_region(101, 77, 0, 200, 120).unwrap();
        let crop = image::imageops::crop_imm(&want, 101, 77, 200, 120).to_image();
        assert_eq!(diff(&got, &crop), (0, 0), "{name} region");
    }
}

#[test]
fn a_damaged_jpeg2000_tile_is_an_error_naming_the_file() {
    let bytes = std::fs::read(fixture("aperio_33005.svs")).unwrap();
    // The first tile's codestream: its SOC and SIZ markers.
    let at = bytes
        .windows(4)
        .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    // The markers zeroed; the image size in SIZ (Xsiz, Ysiz) made absurd; the tile cut short.
    for (what, offset, patch) in [
        ("marker", at, vec![0; 4]),
        ("size", at + 8, vec![0x7F; 8]),
        ("cut", at + 40, vec![0; 400]),
    ] {
        let mut b = bytes.clone();
        b[offset..offset + patch.len()].copy_from_slice(&patch);
        let p = d.path().join(format!("damaged_{what}.svs"));
        std::fs::write(&p, &b).unwrap();
        let s = gimp_slide::open(&p).unwrap();
        let e = s.read_region(0, 0, 0, 64, 64).unwrap_err().to_string();
        assert!(e.contains(&format!("damaged_{what}.svs")), "{e}");
        assert!(e.contains("chunk 0"), "{e}");
    }
}
