//! JPEG-tiled TIFFs (tools/make_jpeg_tiff_fixtures.py): YCbCr 4:2:0, 4:2:2 and 4:4:4, restart
//! markers, Aperio-style RGB JPEG, all with shared `JPEGTables` and padded edge tiles. Each
//! must read exactly as OpenSlide read it (`NAME.png`, level 0 as RGB) — not within 1: the same
//! libjpeg-turbo arithmetic (ISLOW IDCT, fancy upsampling, its YCbCr tables).

use gimp_slide::jpeg::{self, JpegColour};
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const VARIANTS: [&str; 5] = [
    "jpeg_ycbcr420",
    "jpeg_ycbcr420_restart",
    "jpeg_ycbcr422",
    "jpeg_ycbcr444",
    "jpeg_rgb",
];

fn max_diff(a: &[u8], b: &[u8]) -> i32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as i32 - *y as i32).abs())
        .max()
        .unwrap_or(0)
}

#[test]
fn jpeg_tiles_read_exactly_as_openslide_reads_them() {
    for name in VARIANTS {
        let s = gimp_slide::open(&fixture(&format!("{name}.tif"))).unwrap();
        let expected = image::open(fixture(&format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let (w, h) = expected.dimensions();
        assert_eq!((s.levels()[0].width, s.levels()[0].height), (150, 100));
        let whole = s.read_region(0, 0, 0, w, h).unwrap();
        assert_eq!(max_diff(whole.as_raw(), expected.as_raw()), 0, "{name}");
        // A region across tile borders, starting inside a tile.
        let part = s.read_region(37, 29, 0, 80, 60).unwrap();
        let want = image::imageops::crop_imm(&expected, 37, 29, 80, 60).to_image();
        assert_eq!(max_diff(part.as_raw(), want.as_raw()), 0, "{name} region");
    }
}

#[test]
fn broken_jpeg_streams_are_errors_not_panics() {
    // A tile with its scan cut short still decodes (libjpeg pads, as OpenSlide accepts); a stream
    // that is not JPEG, or tables that are not tables, is an error with libjpeg's message.
    let e = jpeg::decode(None, b"not a jpeg at all", JpegColour::YCbCr).unwrap_err();
    assert!(e.contains("JPEG"), "{e}");
    let e = jpeg::decode(Some(b"\xff\xd8\xff\xd9"), b"", JpegColour::Rgb).unwrap_err();
    assert!(e.contains("empty"), "{e}");
    let e = jpeg::decode(Some(b"junk"), b"\xff\xd8\xff\xd9", JpegColour::Rgb).unwrap_err();
    assert!(!e.is_empty());
    // Decoding keeps working after errors (no state is left behind).
    let s = gimp_slide::open(&fixture("jpeg_ycbcr420.tif")).unwrap();
    assert!(s.read_region(0, 0, 0, 48, 48).is_ok());
}

/// With `--features openslide`: every fixture against libopenslide itself, not only the PNG it
/// wrote when the fixtures were made.
#[cfg(feature = "openslide")]
#[test]
fn jpeg_tiles_match_the_linked_openslide() {
    use gimp_slide::SlideReader;
    for name in VARIANTS {
        let path = fixture(&format!("{name}.tif"));
        let ours = gimp_slide::tiff_slide::TiffSlide::open(&path).unwrap();
        let os = gimp_slide::openslide::OpenSlide::open(&path).unwrap();
        let a = ours.read_region(0, 0, 0, 150, 100).unwrap();
        let b = os.read_region(0, 0, 0, 150, 100).unwrap();
        assert_eq!(max_diff(a.as_raw(), b.as_raw()), 0, "{name}");
    }
}
