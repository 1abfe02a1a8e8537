//! The real Aperio slide region of the repository (`data/slides/cmu_small_region.svs`, CC0) through
//! the pure-Rust reader, segmentation and patching. Pixels are compared with OpenSlide's decoding
//! of the same patches (the `patches_rgb_u8` of gimp-extract's ResNet fixture, read with OpenSlide
//! at level-0 (1024, 256), (1024, 512), (1280, 512), (1024, 768)).

use gimp_slide::patching::{self, PatchParams};
use gimp_slide::segment::{segment, SegmentParams};
use std::path::{Path, PathBuf};

/// A file of the repository, by its path from the repository root.
fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

const SLIDE: &str = "data/slides/cmu_small_region.svs";

/// Where the fixture's four patches lie on the slide (found by exhaustive search, exact match).
const FIXTURE_COORDS: [[i64; 2]; 4] = [[1024, 256], [1024, 512], [1280, 512], [1024, 768]];

#[test]
fn reads_the_aperio_slide_like_openslide() {
    let path = repo(SLIDE);
    let fix = repo("crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors");
    let s = gimp_slide::open(&path).unwrap();
    assert_eq!(s.levels().len(), 1);
    assert_eq!((s.levels()[0].width, s.levels()[0].height), (2220, 2967));
    let p = s.properties();
    assert_eq!(p.vendor, "aperio");
    assert_eq!(p.objective_power, Some(20.0));
    assert_eq!(p.mpp, Some([0.499, 0.499]));
    let mut names = s.associated_names();
    names.sort();
    assert_eq!(names, ["label", "macro", "thumbnail"]);
    let thumb = s.read_associated("thumbnail").unwrap();
    assert_eq!((thumb.width(), thumb.height()), (574, 768));
    let label = s.read_associated("label").unwrap();
    assert_eq!((label.width(), label.height()), (387, 463));

    let bytes = std::fs::read(fix).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let expected = st.tensor("patches_rgb_u8").unwrap();
    assert_eq!(expected.shape(), &[4, 3, 256, 256]);
    let expected = expected.data();
    let (mut max_diff, mut sum_diff) = (0i32, 0f64);
    for (k, c) in FIXTURE_COORDS.iter().enumerate() {
        let img = s.read_region(c[0], c[1], 0, 256, 256).unwrap();
        for y in 0..256 {
            for x in 0..256 {
                let px = img.get_pixel(x, y).0;
                for ch in 0..3 {
                    let e = expected[((k * 3 + ch) * 256 + y as usize) * 256 + x as usize];
                    let d = (px[ch] as i32 - e as i32).abs();
                    max_diff = max_diff.max(d);
                    sum_diff += d as f64;
                }
            }
        }
    }
    let mean = sum_diff / (4.0 * 3.0 * 256.0 * 256.0);
    eprintln!("pixels vs OpenSlide: max |diff| {max_diff}, mean {mean:.4}");
    // libjpeg-turbo's decoder with OpenSlide's settings: the same pixels, not close ones.
    assert_eq!(max_diff, 0, "mean {mean}");

    // Outside the slide reads black, as OpenSlide's transparent pixels after convert("RGB").
    let edge = s.read_region(2100, 2900, 0, 256, 256).unwrap();
    assert_eq!(edge.get_pixel(255, 255).0, [0, 0, 0]);
    assert!(s.read_region(0, 0, 3, 16, 16).is_err());
}

#[test]
fn segments_and_patches_the_aperio_slide() {
    let path = repo(SLIDE);
    let s = gimp_slide::open(&path).unwrap();
    let mut sp = SegmentParams::preset("bwh_biopsy").unwrap();
    sp.downsample = 4.0;
    let (overview, ds) = s.overview(sp.downsample, 1 << 26).unwrap();
    let mask = segment(&overview, ds, &sp);
    let frac = mask.tissue_fraction();
    eprintln!(
        "tissue fraction {frac:.3}, {} regions kept",
        mask.kept_regions().count()
    );
    assert!(frac > 0.1 && frac < 0.95, "tissue fraction {frac}");
    let params = PatchParams::default();
    let plan = patching::plan(s.as_ref(), &params).unwrap();
    assert_eq!(
        (plan.level, plan.size_at_level, plan.size_level0),
        (0, 256, 256)
    );
    let coords = patching::coords(&mask, &plan, params.contour_fn);
    eprintln!("{} patches", coords.len());
    assert!(coords.len() > 20);
    // The fixture's patches are tissue: the grid must contain those that lie on it.
    for c in FIXTURE_COORDS {
        let on_grid = coords
            .iter()
            .any(|k| (k[0] - c[0]).abs() < 256 && (k[1] - c[1]).abs() < 256);
        assert!(on_grid, "no patch near {c:?}");
    }
}

/// With `--features openslide`: both readers give the same levels, properties and pixels.
#[cfg(feature = "openslide")]
#[test]
fn openslide_and_the_pure_rust_reader_agree() {
    use gimp_slide::SlideReader;
    let path = repo(SLIDE);
    let ours = gimp_slide::tiff_slide::TiffSlide::open(&path).unwrap();
    let os = gimp_slide::openslide::OpenSlide::open(&path).unwrap();
    assert_eq!(ours.levels(), os.levels());
    assert_eq!(ours.properties().mpp, os.properties().mpp);
    assert_eq!(
        ours.properties().objective_power,
        os.properties().objective_power
    );
    // The whole level, every tile (edge tiles included), and a region across tile borders.
    for (x, y, w, h) in [(0, 0, 2220, 2967), (1000, 900, 300, 200)] {
        let a = ours.read_region(x, y, 0, w, h).unwrap();
        let b = os.read_region(x, y, 0, w, h).unwrap();
        let max = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| (*x as i32 - *y as i32).abs())
            .max();
        assert_eq!(max, Some(0), "region ({x}, {y}) {w}×{h}");
    }
}

/// CLAM's own procedure (OpenCV contours, `pointPolygonTest`), run at level 0 with the
/// bwh_biopsy preset by `tools/clam_patching_reference.py`, chose exactly these 50 patches
/// (`tests/fixtures/cmu_small_region_clam_coords.tsv`); ours must choose the same.
#[test]
fn patches_are_the_ones_clam_chooses() {
    let path = repo(SLIDE);
    let s = gimp_slide::open(&path).unwrap();
    let mut sp = SegmentParams::preset("bwh_biopsy").unwrap();
    sp.downsample = 1.0;
    let (overview, ds) = s.overview(1.0, 1 << 26).unwrap();
    let mask = segment(&overview, ds, &sp);
    let params = PatchParams::default();
    let plan = patching::plan(s.as_ref(), &params).unwrap();
    let mut ours = patching::coords(&mask, &plan, params.contour_fn);
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/cmu_small_region_clam_coords.tsv"),
    )
    .unwrap();
    let mut clam: Vec<[i64; 2]> = text
        .lines()
        .map(|l| {
            let (x, y) = l.split_once('\t').unwrap();
            [x.parse().unwrap(), y.parse().unwrap()]
        })
        .collect();
    assert_eq!(ours.len(), 50);
    ours.sort();
    clam.sort();
    assert_eq!(ours, clam);
}
