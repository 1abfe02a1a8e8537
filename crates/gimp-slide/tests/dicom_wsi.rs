//! DICOM whole-slide series: the fixtures of `tools/make_dicom_fixtures.py` (wsidicomizer's
//! conversion of a crop of the repository's real slide, three levels of 128-pixel tiles, one
//! series per transfer syntax, TILED_FULL and TILED_SPARSE levels) read as wsidicom reads them.

use gimp_slide::batch;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dicom")
}

fn expected(series: &str, level: usize) -> image::RgbImage {
    image::open(fixtures().join(format!("expected/{series}.level{level}.png")))
        .unwrap()
        .to_rgb8()
}

const SIZES: [(u64, u64); 3] = [(384, 288), (192, 144), (96, 72)];
/// The tile `make_dicom_fixtures.py` leaves out of the JPEG 2000 series' level 0 (column 1,
/// row 1 of 128-pixel tiles): wsidicom paints it white, OpenSlide and gimp-rs black.
const MISSING: (u32, u32, u32, u32) = (128, 128, 128, 128);

/// Largest per-sample difference, outside `skip` (x, y, w, h).
fn max_diff(a: &image::RgbImage, b: &image::RgbImage, skip: Option<(u32, u32, u32, u32)>) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut max = 0;
    for (x, y, p) in a.enumerate_pixels() {
        if skip.is_some_and(|(sx, sy, w, h)| x >= sx && x < sx + w && y >= sy && y < sy + h) {
            continue;
        }
        let q = b.get_pixel(x, y);
        for c in 0..3 {
            max = max.max(p[c].abs_diff(q[c]));
        }
    }
    max
}

#[test]
fn every_series_and_level_reads_as_wsidicom_reads_it() {
    // Every pixel equal: JPEG baseline (4:2:2 chroma) too, since its frames are decoded by
    // libjpeg-turbo's code, wsidicom's and OpenSlide's decoder (the pure-Rust jpeg-decoder used
    // before was 4 off here, from its chroma upsampling).
    for (series, tolerance) in [("uncompressed", 0), ("jpeg2000", 0), ("jpeg", 0)] {
        let s = gimp_slide::open(&fixtures().join(series)).unwrap();
        let p = s.properties();
        assert_eq!(p.vendor, "dicom");
        let mpp = p.mpp.unwrap();
        assert!(
            (mpp[0] - 0.499).abs() < 1e-9 && (mpp[1] - 0.499).abs() < 1e-9,
            "{mpp:?}"
        );
        assert_eq!(p.magnification().map(|m| m.0.round()), Some(20.0));
        let dims: Vec<_> = s.levels().iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(dims, SIZES, "{series}");
        assert_eq!(s.levels()[2].downsample, 4.0);
        assert!(s.associated_names().is_empty());
        for (level, &(w, h)) in SIZES.iter().enumerate() {
            let got = s.read_region(0, 0, level, w as u32, h as u32).unwrap();
            let skip = (series == "jpeg2000" && level == 0).then_some(MISSING);
            let d = max_diff(&got, &expected(series, level), skip);
            assert!(d <= tolerance, "{series} level {level}: max difference {d}");
        }
        // A region across tile corners at level 1, from level-0 coordinates.
        let got = s.read_region(2 * 50, 2 * 30, 1, 120, 100).unwrap();
        let want = image::imageops::crop_imm(&expected(series, 1), 50, 30, 120, 100).to_image();
        assert!(max_diff(&got, &want, None) <= tolerance, "{series} region");
    }
}

#[test]
fn a_sparse_level_places_frames_by_position_and_leaves_missing_tiles_black() {
    let s = gimp_slide::open(&fixtures().join("jpeg2000")).unwrap();
    assert_eq!(
        s.properties().raw["dicom.DimensionOrganizationType"],
        "TILED_SPARSE"
    );
    let (x, y, w, h) = MISSING;
    let hole = s.read_region(x as i64, y as i64, 0, w, h).unwrap();
    assert!(hole.as_raw().iter().all(|&v| v == 0));
    // The tiles around it are there (the frames are stored in reverse order).
    let around = s.read_region(x as i64 - 8, y as i64 - 8, 0, 8, 8).unwrap();
    assert!(around.as_raw().iter().any(|&v| v != 0));
}

#[test]
fn one_file_opens_its_whole_series_and_folders_list_series_as_slides() {
    let from_file = gimp_slide::open(&fixtures().join("jpeg/level1.dcm")).unwrap();
    assert_eq!(from_file.levels().len(), 3);
    assert_eq!(from_file.levels()[0].width, 384);
    // A series folder is one slide; a folder of series folders lists each.
    let one = batch::slide_files(&[fixtures().join("jpeg")]).unwrap();
    assert_eq!(one, [fixtures().join("jpeg")]);
    assert_eq!(batch::slide_id(&one[0]), "jpeg");
    assert_eq!(batch::slide_id(&fixtures().join("jpeg/level1.dcm")), "jpeg");
    let all = batch::slide_files(&[fixtures()]).unwrap();
    let names: Vec<_> = all.iter().map(|p| batch::slide_id(p)).collect();
    assert_eq!(names, ["jpeg", "jpeg2000", "uncompressed"]);
}

/// Copies a series into a temporary folder, with `edit` applied to the bytes of `level0.dcm`.
fn damaged(series: &str, edit: impl Fn(&mut Vec<u8>)) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join(series)).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        if p.file_name().unwrap() == "level0.dcm" {
            edit(&mut b);
        }
        std::fs::write(d.path().join(p.file_name().unwrap()), b).unwrap();
    }
    d
}

fn replace(b: &mut [u8], from: &[u8], to: &[u8]) {
    let at = b.windows(from.len()).position(|w| w == from).unwrap();
    b[at..at + to.len()].copy_from_slice(to);
}

#[test]
fn damaged_series_are_errors_naming_the_file_and_attribute() {
    // An unsupported transfer syntax (JPEG baseline's UID turned into JPEG-LS lossless's).
    let d = damaged("jpeg", |b| {
        replace(b, b"1.2.840.10008.1.2.4.50", b"1.2.840.10008.1.2.4.80")
    });
    let e = gimp_slide::open(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("level0.dcm") && e.contains("TransferSyntaxUID"),
        "{e}"
    );
    assert!(e.contains("1.2.840.10008.1.2.4.80"), "{e}");

    // A missing attribute: TotalPixelMatrixColumns (0048,0006) renamed to a private tag.
    let d = damaged("jpeg", |b| {
        replace(
            b,
            &[0x48, 0x00, 0x06, 0x00, b'U', b'L'],
            &[0x49, 0x00, 0x06, 0x00],
        )
    });
    let e = gimp_slide::open(d.path()).err().unwrap().to_string();
    assert!(
        e.contains("level0.dcm") && e.contains("TotalPixelMatrixColumns"),
        "{e}"
    );

    // Frames cut off: the file ends inside the pixel data.
    let d = damaged("jpeg2000", |b| b.truncate(b.len() - 5000));
    let e = gimp_slide::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("level0.dcm"), "{e}");

    // A corrupt frame: an error when it is read, naming the file and the frame.
    let d = damaged("jpeg2000", |b| {
        let at = b
            .windows(4)
            .position(|w| w == [0xFF, 0x4F, 0xFF, 0x51])
            .unwrap();
        b[at + 8..at + 16].copy_from_slice(&[0x7F; 8]);
    });
    let s = gimp_slide::open(d.path()).unwrap();
    let e = s.read_region(0, 0, 0, 384, 288).unwrap_err().to_string();
    assert!(e.contains("level0.dcm") && e.contains("frame"), "{e}");

    // A folder with no DICOM file in it, and a file that is not a slide.
    let d = tempfile::tempdir().unwrap();
    let e = gimp_slide::open(d.path()).err().unwrap().to_string();
    assert!(e.contains("no DICOM file"), "{e}");
}

#[test]
fn a_frame_split_into_several_fragments_is_joined_by_the_offset_table() {
    // Level 2 of the JPEG series is one frame in one fragment; split it in two items (the
    // Basic Offset Table still says the frame starts at offset 0).
    let original = gimp_slide::open(&fixtures().join("jpeg")).unwrap();
    let want = original.read_region(0, 0, 2, 96, 72).unwrap();
    let d = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(fixtures().join("jpeg")).unwrap() {
        let p = e.unwrap().path();
        let mut b = std::fs::read(&p).unwrap();
        if p.file_name().unwrap() == "level2.dcm" {
            let header = [
                0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
            ];
            let at = b.windows(12).position(|w| w == header).unwrap() + 12;
            let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
            let bot_len = u32_at(&b, at + 4) as usize;
            assert_eq!(bot_len, 4, "one frame, one offset");
            let item = at + 8 + bot_len;
            let len = u32_at(&b, item + 4) as usize;
            let data = b[item + 8..item + 8 + len].to_vec();
            let half = (len / 2) & !1;
            let mut split = Vec::new();
            for part in [&data[..half], &data[half..]] {
                split.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
                split.extend_from_slice(&(part.len() as u32).to_le_bytes());
                split.extend_from_slice(part);
            }
            b.splice(item..item + 8 + len, split);
        }
        std::fs::write(d.path().join(p.file_name().unwrap()), b).unwrap();
    }
    let s = gimp_slide::open(d.path()).unwrap();
    assert_eq!(s.read_region(0, 0, 2, 96, 72).unwrap(), want);
}
