//! The viewer's server on the repository's slide, through its router (no socket) and, for the
//! concurrency test, a real socket on 127.0.0.1: tiles at every level, bad requests, what may be
//! served, a damaged slide beside a good one.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use gimp_predict::record::{SlidePrediction, TopPatch};
use gimp_view::server::{router, AppState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tower::ServiceExt;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn slide_path() -> PathBuf {
    repo().join("data/slides/cmu_small_region.svs")
}

/// A folder with the slide, a prediction record for it (a 4×5 grid of 512-pixel patches whose
/// score grows with x + y), a damaged copy of the slide and a link to a file outside.
fn fixture() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    std::fs::copy(slide_path(), dir.join("good.svs")).unwrap();
    let bytes = std::fs::read(slide_path()).unwrap();
    std::fs::write(dir.join("damaged.svs"), &bytes[..bytes.len() / 3]).unwrap();
    std::os::unix::fs::symlink(repo().join("Cargo.toml"), dir.join("outside.txt")).unwrap();
    let mut coords = Vec::new();
    let mut scores = Vec::new();
    for x in 0..4 {
        for y in 0..5 {
            coords.push([x * 512, y * 512]);
            scores.push((x + y) as f32);
        }
    }
    gimp_slide::overlay::write_scores(dir, "good", &coords, &scores).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    std::fs::write(dir.join("masks/good.tissue.png"), b"png").unwrap();
    SlidePrediction {
        risk: None,
        survival: None,
        slide_id: "good".into(),
        slide: dir.join("good.svs"),
        model: "test".into(),
        arch: "abmil".into(),
        encoder: "resnet50_trunc".into(),
        feature_width: 1024,
        classes: vec!["a".into(), "b".into()],
        probabilities: vec![0.25, 0.75],
        predicted: 1,
        predicted_class: Some("b".into()),
        modalities: vec!["slides".into()],
        warning: None,
        n_patches: coords.len(),
        patch_size_level0: 512.0,
        top_patches: vec![TopPatch {
            row: 19,
            x: 1536,
            y: 2048,
            score: 7.0,
        }],
        scores_csv: Some("good.scores.csv".into()),
        scores_h5: Some("good.scores.h5".into()),
        heatmap_png: None,
        qupath_geojson: None,
        patches_h5: "patches/good.h5".into(),
        features_h5: "h5_files/good.h5".into(),
        tissue_png: "masks/good.tissue.png".into(),
        times: vec![],
    }
    .write(dir)
    .unwrap();
    d
}

fn app(dir: &Path) -> axum::Router {
    let st = AppState {
        catalog: gimp_view::catalog::Catalog::open(&[dir.to_path_buf()]).unwrap(),
        cache: gimp_view::cache::TileCache::new(8 << 20),
        openseadragon: PathBuf::from(gimp_view::OPENSEADRAGON_DIR),
    };
    router(Arc::new(st))
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let r = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let body = axum::body::to_bytes(r.into_body(), 1 << 26).await.unwrap();
    (status, body.to_vec())
}

fn index_of(list: &serde_json::Value, id: &str) -> usize {
    list.as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap()["index"]
        .as_u64()
        .unwrap() as usize
}

#[tokio::test]
async fn tiles_at_every_level_and_404_for_what_does_not_exist() {
    let d = fixture();
    let app = app(d.path());
    let (s, body) = get(&app, "/api/slides").await;
    assert_eq!(s, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let good = index_of(&list, "good");
    let (s, dzi) = get(&app, &format!("/slides/{good}/image.dzi")).await;
    assert_eq!(s, StatusCode::OK);
    let dzi = String::from_utf8(dzi).unwrap();
    assert!(dzi.contains(r#"Width="2220" Height="2967""#), "{dzi}");
    // Every level's first and last tile is a JPEG of the level's size.
    let p = gimp_view::dzi::Pyramid::new(2220, 2967);
    for level in 0..=p.max_level() {
        let (w, h) = p.level_size(level).unwrap();
        let (cols, rows) = (w.div_ceil(256), h.div_ceil(256));
        for (c, r) in [(0, 0), (cols - 1, rows - 1)] {
            let (s, jpeg) = get(
                &app,
                &format!("/slides/{good}/image_files/{level}/{c}_{r}.jpeg"),
            )
            .await;
            assert_eq!(s, StatusCode::OK, "level {level} tile {c}_{r}");
            let img = image::load_from_memory(&jpeg).unwrap();
            let t = p.tile(level, c, r).unwrap();
            assert_eq!((img.width(), img.height()), (t.width, t.height));
        }
    }
    for bad in [
        format!("/slides/{good}/image_files/13/0_0.jpeg"),
        format!("/slides/{good}/image_files/12/9_0.jpeg"),
        format!("/slides/{good}/image_files/12/0_12.jpeg"),
        format!("/slides/{good}/image_files/-1/0_0.jpeg"),
        format!("/slides/{good}/image_files/12/a_0.jpeg"),
        format!("/slides/{good}/image_files/12/0_0.png"),
        format!("/slides/{good}/image_files/12/99999999999999999999_0.jpeg"),
        format!("/slides/{good}/image_files/4294967296/0_0.jpeg"),
        "/slides/99/image_files/0/0_0.jpeg".to_string(),
        "/slides/x/image.dzi".to_string(),
        format!("/slides/{good}/patch/12345.jpeg"),
        "/api/slides/99".to_string(),
    ] {
        let (s, _) = get(&app, &bad).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{bad}");
    }
}

#[tokio::test]
async fn scores_prediction_and_top_patches_are_served() {
    let d = fixture();
    let app = app(d.path());
    let (_, body) = get(&app, "/api/slides").await;
    let good = index_of(&serde_json::from_slice(&body).unwrap(), "good");
    let (s, body) = get(&app, &format!("/api/slides/{good}")).await;
    assert_eq!(s, StatusCode::OK);
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(info["prediction"]["predicted_class"], "b");
    assert_eq!(info["has_scores"], true);
    let (s, body) = get(&app, &format!("/api/slides/{good}/scores")).await;
    assert_eq!(s, StatusCode::OK);
    let sc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(sc["x"].as_array().unwrap().len(), 20);
    assert_eq!(sc["score"][19], 7.0);
    assert_eq!(sc["percentile"][19], 1.0);
    let (s, jpeg) = get(&app, &format!("/slides/{good}/patch/19.jpeg")).await;
    assert_eq!(s, StatusCode::OK);
    let img = image::load_from_memory(&jpeg).unwrap();
    assert_eq!((img.width(), img.height()), (128, 128));
    let (s, png) = get(&app, &format!("/slides/{good}/tissue.png")).await;
    assert_eq!((s, png.as_slice()), (StatusCode::OK, b"png".as_slice()));
}

#[tokio::test]
async fn serves_only_files_under_the_folders_it_was_given() {
    let d = fixture();
    let app = app(d.path());
    let (s, body) = get(&app, "/files/good.scores.csv").await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(body).unwrap().starts_with("row,x,y"));
    let (s, _) = get(&app, "/files/masks/good.tissue.png").await;
    assert_eq!(s, StatusCode::OK);
    for (uri, want) in [
        ("/files/../Cargo.toml", StatusCode::FORBIDDEN),
        ("/files/..%2F..%2FCargo.toml", StatusCode::FORBIDDEN),
        ("/files/masks/..%2F..%2Fgood.svs", StatusCode::FORBIDDEN),
        ("/files/%2Fetc%2Fpasswd", StatusCode::FORBIDDEN),
        ("/files//etc/passwd", StatusCode::FORBIDDEN),
        ("/files/.%2Fgood.scores.csv", StatusCode::FORBIDDEN),
        ("/files/masks%5C..%5Cgood.svs", StatusCode::FORBIDDEN),
        ("/files/outside.txt", StatusCode::FORBIDDEN),
        ("/files/nothing-here.txt", StatusCode::NOT_FOUND),
        ("/files/masks", StatusCode::NOT_FOUND),
        ("/osd/..%2F..%2F..%2Fpackage.json", StatusCode::FORBIDDEN),
        ("/osd/%2Fetc%2Fpasswd", StatusCode::FORBIDDEN),
        ("/nowhere", StatusCode::NOT_FOUND),
    ] {
        let (s, body) = get(&app, uri).await;
        assert_eq!(s, want, "{uri}: {}", String::from_utf8_lossy(&body));
        assert!(
            !String::from_utf8_lossy(&body).contains("[workspace]"),
            "{uri}"
        );
    }
}

#[tokio::test]
async fn a_damaged_slide_reports_its_error_and_the_others_keep_working() {
    let d = fixture();
    let app = app(d.path());
    let (_, body) = get(&app, "/api/slides").await;
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    let bad = index_of(&list, "damaged");
    // Nothing is opened before it is asked for: the damage is not known yet.
    assert_eq!(list[bad]["opened"], false);
    assert!(list[bad]["error"].is_null());
    let (s, body) = get(&app, &format!("/api/slides/{bad}")).await;
    assert_eq!(s, StatusCode::OK);
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let err = info["error"].as_str().unwrap();
    assert!(err.contains("damaged.svs"), "{err}");
    // From then on the list says so too.
    let (_, body) = get(&app, "/api/slides").await;
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[bad]["opened"], true);
    assert!(list[bad]["error"].as_str().unwrap().contains("damaged.svs"));
    for uri in [
        format!("/slides/{bad}/image.dzi"),
        format!("/slides/{bad}/image_files/0/0_0.jpeg"),
    ] {
        assert_eq!(get(&app, &uri).await.0, StatusCode::NOT_FOUND, "{uri}");
    }
    let good = index_of(&list, "good");
    let (s, _) = get(&app, &format!("/slides/{good}/image_files/11/1_1.jpeg")).await;
    assert_eq!(s, StatusCode::OK);
}

/// A folder of many slides (links to one file): listing opens none; each is opened when first
/// asked for, and no more than `OPEN_SLIDES` stay open however many are looked at.
#[tokio::test]
async fn slides_are_opened_when_first_shown_and_only_a_few_stay_open() {
    let d = tempfile::tempdir().unwrap();
    let n = 3 * gimp_view::catalog::OPEN_SLIDES;
    for i in 0..n {
        std::os::unix::fs::symlink(slide_path(), d.path().join(format!("s{i:03}.svs"))).unwrap();
    }
    let st = Arc::new(AppState {
        catalog: gimp_view::catalog::Catalog::open(&[d.path().to_path_buf()]).unwrap(),
        cache: gimp_view::cache::TileCache::new(8 << 20),
        openseadragon: PathBuf::from(gimp_view::OPENSEADRAGON_DIR),
    });
    let app = router(st.clone());
    let (_, body) = get(&app, "/api/slides").await;
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), n);
    assert!(list
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["opened"] == false));
    assert_eq!(st.catalog.open_count(), 0);
    for i in 0..n {
        let (s, _) = get(&app, &format!("/slides/{i}/image_files/12/0_0.jpeg")).await;
        assert_eq!(s, StatusCode::OK, "slide {i}");
        assert!(st.catalog.open_count() <= gimp_view::catalog::OPEN_SLIDES);
    }
    assert_eq!(st.catalog.open_count(), gimp_view::catalog::OPEN_SLIDES);
    // A slide closed again opens again (its levels were kept).
    let (s, body) = get(&app, "/api/slides/0").await;
    assert_eq!(s, StatusCode::OK);
    let info: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(info["slide"]["levels"][0]["width"], 2220);
    let (s, _) = get(&app, "/slides/0/image_files/11/1_1.jpeg").await;
    assert_eq!(s, StatusCode::OK);
}

/// Where a level of the file is exactly a Deep Zoom level (a 40× pyramid of 256-px YCbCr JPEG
/// tiles at downsample 1 and 4 here), whole tiles are the file's own bytes; edge tiles and the
/// levels between are rendered, and look the same.
#[tokio::test]
async fn tiles_the_file_stores_are_handed_out_as_they_are() {
    let d = tempfile::tempdir().unwrap();
    let fixture = repo().join("crates/gimp-slide/tests/fixtures/ycbcr_jpeg_40x.svs");
    std::fs::copy(&fixture, d.path().join("s.svs")).unwrap();
    let app = app(d.path());
    let slide = gimp_slide::open(&fixture).unwrap();
    let p = gimp_view::dzi::Pyramid::new(1280, 1024);
    let max = p.max_level(); // 11: 2048 ≥ 1280
    for (level, col, row, file_level) in [(max, 3, 2, 0), (max, 0, 0, 0), (max - 2, 0, 0, 1)] {
        let (s, body) = get(
            &app,
            &format!("/slides/0/image_files/{level}/{col}_{row}.jpeg"),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let stored = slide
            .stored_jpeg_tile(file_level, 256, col, row)
            .unwrap()
            .unwrap();
        assert!(body == stored, "level {level} tile {col}_{row}");
    }
    // Rendered: a level between (scale 2), and the cut-short edge tile of scale 4.
    for (level, col, row) in [(max - 1, 1, 1), (max - 2, 1, 0)] {
        let (s, body) = get(
            &app,
            &format!("/slides/0/image_files/{level}/{col}_{row}.jpeg"),
        )
        .await;
        assert_eq!(s, StatusCode::OK);
        let t = p.tile(level, col, row).unwrap();
        let img = image::load_from_memory(&body).unwrap().to_rgb8();
        assert_eq!((img.width(), img.height()), (t.width, t.height));
        let want = gimp_view::dzi::render(slide.as_ref(), &t).unwrap();
        let diff: f64 = img
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / img.as_raw().len() as f64;
        assert!(
            diff < 4.0,
            "level {level} tile {col}_{row}: mean difference {diff}"
        );
    }
}

/// The server stops when asked (Ctrl-C in `gimp-rs view`): `serve_until` returns `Ok` after the
/// request in progress, and the port is closed.
#[test]
fn the_server_stops_cleanly_when_asked() {
    let d = fixture();
    let opts = gimp_view::ViewOptions {
        inputs: vec![d.path().to_path_buf()],
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        cache_bytes: 8 << 20,
        openseadragon: Some(PathBuf::from(gimp_view::OPENSEADRAGON_DIR)),
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        gimp_view::serve_until(
            opts,
            move |addr, _| addr_tx.send(addr).unwrap(),
            move || async move {
                let _ = stop_rx.await;
            },
        )
    });
    let addr = addr_rx.recv().unwrap();
    // Slides are listed by id: "damaged" (0), then "good" (1).
    let r = ureq::get(&format!("http://{addr}/slides/1/image_files/12/0_0.jpeg"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = std::time::Instant::now();
    stop_tx.send(()).unwrap();
    server.join().unwrap().unwrap();
    assert!(t.elapsed() < gimp_view::SHUTDOWN_GRACE, "{:?}", t.elapsed());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}

/// Fails when npm could not install the page's packages at build time: the viewer cannot work
/// without OpenSeadragon, and this says what to run.
#[tokio::test]
async fn the_page_and_openseadragon_are_served() {
    if let Err(e) = gimp_view::openseadragon_dir(None) {
        panic!("{e}");
    }
    let d = fixture();
    let app = app(d.path());
    let (s, page) = get(&app, "/").await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(page)
        .unwrap()
        .contains("/osd/openseadragon.min.js"));
    for uri in [
        "/osd/openseadragon.min.js",
        "/osd/images/home_rest.png",
        "/app/viewer.js",
    ] {
        let (s, body) = get(&app, uri).await;
        assert_eq!(s, StatusCode::OK, "{uri}");
        assert!(body.len() > 100, "{uri}");
    }
}

/// 200 tile requests at once on a real socket (127.0.0.1): every one answered 200 with a JPEG.
#[test]
fn two_hundred_concurrent_tile_requests_all_succeed() {
    let d = fixture();
    let opts = gimp_view::ViewOptions {
        inputs: vec![d.path().to_path_buf()],
        host: "127.0.0.1".parse().unwrap(),
        port: 0,
        cache_bytes: 64 << 20,
        openseadragon: Some(d.path().to_path_buf()),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let st = Arc::new(AppState {
        catalog: gimp_view::catalog::Catalog::open(&opts.inputs).unwrap(),
        cache: gimp_view::cache::TileCache::new(opts.cache_bytes),
        openseadragon: d.path().to_path_buf(),
    });
    let good = st
        .catalog
        .slides
        .iter()
        .position(|s| s.id == "good")
        .unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(l.local_addr().unwrap()).unwrap();
            axum::serve(l, router(st)).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    // Levels 9–12, every tile, repeated to 200 requests: cold and cached tiles at once.
    let p = gimp_view::dzi::Pyramid::new(2220, 2967);
    let mut urls = Vec::new();
    for level in 9..=12 {
        let (w, h) = p.level_size(level).unwrap();
        for c in 0..w.div_ceil(256) {
            for r in 0..h.div_ceil(256) {
                urls.push(format!(
                    "http://{addr}/slides/{good}/image_files/{level}/{c}_{r}.jpeg"
                ));
            }
        }
    }
    let urls: Vec<String> = urls.iter().cycle().take(200).cloned().collect();
    let barrier = Arc::new(std::sync::Barrier::new(urls.len()));
    let handles: Vec<_> = urls
        .into_iter()
        .map(|u| {
            let b = barrier.clone();
            std::thread::spawn(move || {
                b.wait();
                let r = ureq::get(&u).call().map_err(|e| format!("{u}: {e}"))?;
                let kind = r.content_type().to_string();
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut r.into_reader(), &mut body)
                    .map_err(|e| e.to_string())?;
                if kind != "image/jpeg" || body.get(..2) != Some(&[0xFF, 0xD8]) {
                    return Err(format!("{u}: not a JPEG ({kind})"));
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    let errors: Vec<String> = handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
}

/// DICOM series folders (gimp-slide's fixtures: three series of a crop of the slide) are listed
/// as one slide each, by folder name, and served as tiles like any slide; a series folder given
/// directly is one slide.
#[tokio::test]
async fn dicom_series_folders_are_slides_of_the_viewer() {
    let dicom = repo().join("crates/gimp-slide/tests/fixtures/dicom");
    let all = app(&dicom);
    let (s, body) = get(&all, "/api/slides").await;
    assert_eq!(s, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["jpeg", "jpeg2000", "uncompressed"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|s| s["error"].is_null()),
        "{list}"
    );
    let i = index_of(&list, "jpeg2000");
    let (s, dzi) = get(&all, &format!("/slides/{i}/image.dzi")).await;
    assert_eq!(s, StatusCode::OK);
    assert!(String::from_utf8(dzi)
        .unwrap()
        .contains(r#"Width="384" Height="288""#));
    let p = gimp_view::dzi::Pyramid::new(384, 288);
    let (s, jpeg) = get(
        &all,
        &format!("/slides/{i}/image_files/{}/1_0.jpeg", p.max_level()),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let img = image::load_from_memory(&jpeg).unwrap();
    assert_eq!(img.width(), 384 - 256);

    let one = app(&dicom.join("jpeg"));
    let (_, body) = get(&one, "/api/slides").await;
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["id"], "jpeg");
}
