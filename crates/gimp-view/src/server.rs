//! The HTTP side: routes, handlers and serving. Every handler answers bad input (an index, level
//! or tile that does not exist, a path outside the folders) with 404 or 403 and a short text;
//! tiles are rendered off the async threads and kept in the [`TileCache`].

use crate::cache::TileCache;
use crate::catalog::{Catalog, SlideEntry};
use crate::dzi::{self, TileRegion};
use crate::files::{self, Refusal};
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gimp_slide::SlideReader;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("../web/index.html");
const VIEWER_JS: &str = include_str!("../web/viewer.js");
const VIEWER_CSS: &str = include_str!("../web/viewer.css");
/// Side of a top-patch thumbnail in the gallery.
const THUMB: u32 = 128;

pub struct AppState {
    pub catalog: Catalog,
    pub cache: TileCache,
    /// OpenSeadragon's `build/openseadragon` folder (scripts and button images).
    pub openseadragon: PathBuf,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/app/viewer.js",
            get(|| async { page(VIEWER_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/app/viewer.css",
            get(|| async { page(VIEWER_CSS, "text/css; charset=utf-8") }),
        )
        .route("/osd/{*path}", get(openseadragon))
        .route("/files/{*path}", get(file))
        .route("/api/slides", get(slide_list))
        .route("/api/slides/{i}", get(slide_info))
        .route("/api/slides/{i}/scores", get(scores))
        .route("/slides/{i}/image.dzi", get(descriptor))
        .route("/slides/{i}/image_files/{level}/{tile}", get(tile))
        .route("/slides/{i}/tissue.png", get(tissue))
        .route("/slides/{i}/patch/{row}", get(patch_thumbnail))
        .with_state(state)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

fn refuse(status: StatusCode, why: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why.into(),
    )
        .into_response()
}

fn not_found(what: impl std::fmt::Display) -> Response {
    refuse(StatusCode::NOT_FOUND, format!("not found: {what}"))
}

fn refusal(r: Refusal, what: &str) -> Response {
    match r {
        Refusal::Forbidden => refuse(StatusCode::FORBIDDEN, format!("forbidden: {what}")),
        Refusal::NotFound => not_found(what),
    }
}

fn send_file(path: &std::path::Path) -> Response {
    match std::fs::read(path) {
        Ok(bytes) => ([(header::CONTENT_TYPE, files::content_type(path))], bytes).into_response(),
        Err(_) => not_found("file"),
    }
}

fn jpeg_response(bytes: Arc<Vec<u8>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        Body::from(bytes.as_ref().clone()),
    )
        .into_response()
}

/// The entry of slide index `i` (a decimal number); `None` → [`no_slide`].
fn entry<'a>(st: &'a AppState, i: &str) -> Option<(usize, &'a SlideEntry)> {
    i.parse::<usize>()
        .ok()
        .and_then(|k| st.catalog.slides.get(k).map(|e| (k, e)))
}

fn no_slide(i: &str) -> Response {
    not_found(format!("slide {i}"))
}

async fn openseadragon(
    State(st): State<Arc<AppState>>,
    UrlPath(path): UrlPath<String>,
) -> Response {
    match files::resolve(&st.openseadragon, &path) {
        Ok(p) => send_file(&p),
        Err(r) => refusal(r, &path),
    }
}

/// A file under one of the folders given: refused (403) when any folder finds it forbidden,
/// else the first folder that has it.
async fn file(State(st): State<Arc<AppState>>, UrlPath(path): UrlPath<String>) -> Response {
    let mut forbidden = !files::is_plain(&path);
    for root in &st.catalog.roots {
        match files::resolve(root, &path) {
            Ok(p) => return send_file(&p),
            Err(Refusal::Forbidden) => forbidden = true,
            Err(Refusal::NotFound) => {}
        }
    }
    if forbidden {
        return refusal(Refusal::Forbidden, &path);
    }
    not_found(&path)
}

async fn slide_list(State(st): State<Arc<AppState>>) -> Response {
    Json(st.catalog.summaries()).into_response()
}

async fn slide_info(State(st): State<Arc<AppState>>, UrlPath(i): UrlPath<String>) -> Response {
    let Some((k, e)) = entry(&st, &i) else {
        return no_slide(&i);
    };
    // Opens the slide when it is not open; how that went is in `meta` and `error`.
    let _ = reader(&st, k).await;
    let slide = e.meta().and_then(|m| m.as_ref().ok()).map(|m| {
        let p = &m.properties;
        json!({
            "levels": m.levels.iter().map(|l| json!({"width": l.width, "height": l.height, "downsample": l.downsample})).collect::<Vec<_>>(),
            "mpp": p.mpp,
            "magnification": p.magnification().map(|m| m.0),
            "vendor": p.vendor,
        })
    });
    let prediction = e.prediction().map(|(r, _)| r);
    Json(json!({
        "index": k,
        "id": e.id,
        "path": e.path,
        "error": e.error(),
        "slide": slide,
        "prediction": prediction,
        "has_scores": e.scores().is_some_and(|s| s.is_ok()),
        "has_tissue": e.prediction().is_some(),
    }))
    .into_response()
}

async fn scores(State(st): State<Arc<AppState>>, UrlPath(i): UrlPath<String>) -> Response {
    let Some((_, e)) = entry(&st, &i) else {
        return no_slide(&i);
    };
    match (e.scores(), e.prediction()) {
        (Some(Ok(s)), Some((rec, _))) => Json(json!({
            "patch_size_level0": rec.patch_size_level0,
            "row": s.iter().map(|p| p.row).collect::<Vec<_>>(),
            "x": s.iter().map(|p| p.x).collect::<Vec<_>>(),
            "y": s.iter().map(|p| p.y).collect::<Vec<_>>(),
            "score": s.iter().map(|p| p.score).collect::<Vec<_>>(),
            "percentile": s.iter().map(|p| p.percentile).collect::<Vec<_>>(),
        }))
        .into_response(),
        (Some(Err(err)), _) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err),
        _ => not_found(format!("scores of slide {i}")),
    }
}

/// The reader of slide `k`, opened off the async threads when it is not open.
async fn reader(st: &Arc<AppState>, k: usize) -> Result<Arc<dyn SlideReader>, String> {
    if let Some(r) = st.catalog.open_reader(k) {
        return Ok(r);
    }
    let opener = st.clone();
    match tokio::task::spawn_blocking(move || opener.catalog.reader(k)).await {
        Ok(Some(r)) => r,
        Ok(None) => Err(format!("slide {k}: no such slide")),
        Err(_) => Err(format!("slide {k}: opening stopped")),
    }
}

async fn descriptor(State(st): State<Arc<AppState>>, UrlPath(i): UrlPath<String>) -> Response {
    let Some((k, e)) = entry(&st, &i) else {
        return no_slide(&i);
    };
    if e.pyramid().is_none() {
        let _ = reader(&st, k).await;
    }
    match e.pyramid() {
        Some(p) => ([(header::CONTENT_TYPE, "application/xml")], p.descriptor()).into_response(),
        None => not_found(format!("slide {i} (it could not be opened)")),
    }
}

/// `{col}_{row}.jpeg` → (col, row).
fn parse_tile(name: &str) -> Option<(u64, u64)> {
    let stem = name
        .strip_suffix(".jpeg")
        .or_else(|| name.strip_suffix(".jpg"))?;
    let (c, r) = stem.split_once('_')?;
    Some((c.parse().ok()?, r.parse().ok()?))
}

async fn tile(
    State(st): State<Arc<AppState>>,
    UrlPath((i, level, name)): UrlPath<(String, String, String)>,
) -> Response {
    let Some((k, e)) = entry(&st, &i) else {
        return no_slide(&i);
    };
    let bad = || not_found(format!("tile {level}/{name} of slide {i}"));
    let (Some(level), Some((col, row))) = (level.parse::<u32>().ok(), parse_tile(&name)) else {
        return bad();
    };
    let key = (k, level, col, row);
    if let Some(t) = st.cache.get(&key) {
        return jpeg_response(t);
    }
    let Ok(slide) = reader(&st, k).await else {
        return bad();
    };
    let Some(region) = e.pyramid().and_then(|p| p.tile(level, col, row)) else {
        return bad();
    };
    let rendered =
        tokio::task::spawn_blocking(move || dzi::tile_jpeg(slide.as_ref(), &region)).await;
    match rendered {
        Ok(Ok(bytes)) => {
            let bytes = Arc::new(bytes);
            st.cache.insert(key, bytes.clone());
            jpeg_response(bytes)
        }
        Ok(Err(err)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "tile rendering stopped"),
    }
}

async fn tissue(State(st): State<Arc<AppState>>, UrlPath(i): UrlPath<String>) -> Response {
    let Some((_, e)) = entry(&st, &i) else {
        return no_slide(&i);
    };
    match e.prediction() {
        Some((rec, dir)) => match files::resolve(dir, &rec.tissue_png) {
            Ok(p) => send_file(&p),
            Err(r) => refusal(r, &rec.tissue_png),
        },
        None => not_found(format!("tissue outlines of slide {i}")),
    }
}

async fn patch_thumbnail(
    State(st): State<Arc<AppState>>,
    UrlPath((i, row)): UrlPath<(String, String)>,
) -> Response {
    let Some((k, e)) = entry(&st, &i) else {
        return no_slide(&i);
    };
    let row = row.strip_suffix(".jpeg").unwrap_or(&row);
    let (Some(Ok(scores)), Some((rec, _))) = (e.scores(), e.prediction()) else {
        return not_found(format!("patches of slide {i}"));
    };
    let Ok(slide) = reader(&st, k).await else {
        return not_found(format!("patches of slide {i}"));
    };
    let Some(p) = row
        .parse::<usize>()
        .ok()
        .and_then(|r| scores.iter().find(|p| p.row == r))
        .copied()
    else {
        return not_found(format!("patch {row} of slide {i}"));
    };
    let region = TileRegion {
        x0: p.x,
        y0: p.y,
        scale: rec.patch_size_level0 / THUMB as f64,
        width: THUMB,
        height: THUMB,
    };
    match tokio::task::spawn_blocking(move || dzi::tile_jpeg(slide.as_ref(), &region)).await {
        Ok(Ok(bytes)) => jpeg_response(Arc::new(bytes)),
        Ok(Err(err)) => refuse(StatusCode::INTERNAL_SERVER_ERROR, err),
        Err(_) => refuse(StatusCode::INTERNAL_SERVER_ERROR, "rendering stopped"),
    }
}
