//! QuPath's GeoJSON, both ways: tissue outlines and scored patches out (a file QuPath opens by
//! drag-and-drop or `File > Import objects`), regions a pathologist drew in (`patch --roi`,
//! `--exclude`).
//!
//! The layout is QuPath's own (`PathObjectTypeAdapters`, v0.4 and later; docs/FORMATS.md has
//! it field by field): a `FeatureCollection` of `Feature`s whose `geometry` is a `Polygon` or
//! `MultiPolygon` in **level-0 pixels** (origin top-left, y down) and whose `properties` hold
//! `objectType` (`annotation` or `detection`), `classification` (`name`, `color` as `[r, g,
//! b]`), an optional `name` and `measurements` (a map of name → number). Out:
//!
//! - each tissue region: an `annotation` of class `Tissue`, its kept holes as interior rings;
//! - each patch: a `detection` square of class `Patch`, or `Top patch` for the highest scores,
//!   with measurements `score`, `percentile`, `row` (its row in the feature and scores files)
//!   and, for a classifier, `predicted class` (index) and `P(<class>)` (the slide's probability
//!   of its predicted class).
//!
//! In: a `FeatureCollection`, a single `Feature`, a bare geometry, or a JSON array of features
//! (what QuPath writes when "Export as FeatureCollection" is unticked); every feature must be a
//! valid `Polygon` or `MultiPolygon` inside the slide. Errors name the file and the feature (its
//! index from 0, its `id` and name when it has them).

use crate::outline;
use crate::segment::TissueMask;
use geo::{BoundingRect, Contains, Coord, Point, Polygon, Rect, Validation};
pub use geojson::Feature;
use geojson::{FeatureCollection, Geometry, GeometryValue, JsonObject, JsonValue};
use gimp_io::{DataError, ErrorKind, Result};
use serde_json::json;
use std::path::{Path, PathBuf};

/// A QuPath classification: its name and display colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub name: &'static str,
    pub color: [u8; 3],
}

/// Tissue outlines (the QC picture's green).
pub const TISSUE: Class = Class {
    name: "Tissue",
    color: [0, 200, 0],
};
/// Patches (the QC picture's orange).
pub const PATCH: Class = Class {
    name: "Patch",
    color: [255, 140, 0],
};
/// The highest-scoring patches (the heatmap's red).
pub const TOP_PATCH: Class = Class {
    name: "Top patch",
    color: [180, 4, 38],
};

/// The slide-level answer the patches' measurements carry.
#[derive(Debug, Clone, PartialEq)]
pub struct SlideCall {
    pub class_index: usize,
    pub class_name: String,
    pub probability: f32,
}

/// Per-patch scores of a model, in the patches' row order.
#[derive(Debug, Clone, Copy)]
pub struct PatchScores<'a> {
    pub scores: &'a [f32],
    /// Percentiles in [0, 1] ([`crate::overlay::percentiles`]).
    pub percentiles: &'a [f32],
}

fn feature(geometry: GeometryValue, properties: serde_json::Value) -> Feature {
    let properties = match properties {
        serde_json::Value::Object(m) => Some(m),
        _ => None,
    };
    Feature {
        geometry: Some(Geometry::new(geometry)),
        properties,
        ..Default::default()
    }
}

fn class_json(c: Class) -> serde_json::Value {
    json!({"name": c.name, "color": c.color})
}

/// Tissue regions as QuPath annotations: `Tissue k` (from 1, largest first), holes as interior
/// rings, level-0 pixels.
pub fn tissue_annotations(mask: &TissueMask) -> Vec<Feature> {
    outline::tissue_polygons(mask)
        .0
        .iter()
        .enumerate()
        .map(|(k, p)| {
            feature(
                GeometryValue::from(p),
                json!({
                    "objectType": "annotation",
                    "name": format!("Tissue {}", k + 1),
                    "classification": class_json(TISSUE),
                }),
            )
        })
        .collect()
}

/// Patches as QuPath detections: level-0 squares of side `size_level0`; with scores, the `top`
/// highest are of class [`TOP_PATCH`] and every patch carries its score, percentile and row, and
/// `call`'s predicted class and probability when given.
pub fn patch_detections(
    coords: &[[i64; 2]],
    size_level0: f64,
    scores: Option<PatchScores>,
    call: Option<&SlideCall>,
    top: usize,
) -> Vec<Feature> {
    let mut is_top = vec![false; coords.len()];
    if let Some(s) = scores {
        let mut order: Vec<usize> = (0..coords.len().min(s.scores.len())).collect();
        order.sort_by(|&i, &j| s.scores[j].total_cmp(&s.scores[i]).then(i.cmp(&j)));
        for &i in order.iter().take(top) {
            is_top[i] = true;
        }
    }
    coords
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (x0, y0) = (c[0] as f64, c[1] as f64);
            let square = Polygon::new(
                vec![
                    (x0, y0),
                    (x0 + size_level0, y0),
                    (x0 + size_level0, y0 + size_level0),
                    (x0, y0 + size_level0),
                ]
                .into(),
                vec![],
            );
            let mut props = json!({
                "objectType": "detection",
                "classification": class_json(if is_top[i] { TOP_PATCH } else { PATCH }),
            });
            if let Some(s) = scores {
                let mut m = JsonObject::new();
                put_number(&mut m, "score", s.scores.get(i).copied());
                put_number(&mut m, "percentile", s.percentiles.get(i).copied());
                m.insert("row".into(), json!(i));
                if let Some(c) = call {
                    m.insert("predicted class".into(), json!(c.class_index));
                    put_number(&mut m, &format!("P({})", c.class_name), Some(c.probability));
                }
                props["measurements"] = JsonValue::Object(m);
            }
            feature(GeometryValue::from(&square), props)
        })
        .collect()
}

/// The features of a GeoJSON file written by [`write`] (or any `FeatureCollection`), to pass
/// into another file: `export qupath` puts `patch`'s tissue annotations beside the patches.
pub fn read_features(path: &Path) -> Result<Vec<Feature>> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let fc: FeatureCollection = serde_json::from_str(&text).map_err(|e| {
        DataError::malformed(path, format!("not a GeoJSON FeatureCollection: {e}"))
            .at(format!("line {}", e.line()))
    })?;
    Ok(fc.features)
}

/// Puts measurement `name`: the `f32` as its shortest decimal (0.05882353, not
/// 0.05882352963089943); left out for NaN or infinity, which QuPath's measurement map cannot
/// hold.
fn put_number(m: &mut JsonObject, name: &str, v: Option<f32>) {
    if let Some(x) = v
        .filter(|v| v.is_finite())
        .and_then(|v| v.to_string().parse::<f64>().ok())
    {
        m.insert(name.to_string(), json!(x));
    }
}

/// Writes `features` as one `FeatureCollection` to `path` (atomically: a temporary file renamed).
pub fn write(path: &Path, features: Vec<Feature>) -> Result<()> {
    let fc = FeatureCollection::new(features);
    let text = serde_json::to_string(&fc)
        .map_err(|e| DataError::malformed(path, format!("could not encode GeoJSON: {e}")))?;
    gimp_io::atomic::write_bytes_atomic(path, text.as_bytes())
}

/// The polygons of a region file, for keeping or dropping patches.
#[derive(Debug, Clone)]
pub struct Regions {
    pub path: PathBuf,
    /// Every polygon of every feature, with its bounding box for a quick test.
    polygons: Vec<(Polygon<f64>, Rect<f64>)>,
    /// How many features the file had.
    pub n_features: usize,
}

impl Regions {
    /// Is level-0 point `(x, y)` inside one of the polygons (not in one of its holes)?
    pub fn contains(&self, x: f64, y: f64) -> bool {
        let p = Point::new(x, y);
        self.polygons.iter().any(|(poly, b)| {
            b.min().x <= x
                && x <= b.max().x
                && b.min().y <= y
                && y <= b.max().y
                && poly.contains(&p)
        })
    }

    pub fn n_polygons(&self) -> usize {
        self.polygons.len()
    }

    /// Reads a region file (see the module documentation) for a slide of `width × height`
    /// level-0 pixels.
    pub fn read(path: &Path, width: u64, height: u64) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
        let value: JsonValue = serde_json::from_str(&text).map_err(|e| {
            DataError::malformed(path, format!("not JSON: {e}")).at(format!("line {}", e.line()))
        })?;
        let features = top_level_features(path, value)?;
        if features.is_empty() {
            return Err(DataError::new(
                ErrorKind::Empty,
                path,
                "no features: draw at least one annotation (QuPath: File > Export objects as \
                 GeoJSON)",
            ));
        }
        let n_features = features.len();
        let mut polygons = Vec::new();
        for (i, v) in features.into_iter().enumerate() {
            let at = feature_name(i, &v);
            for p in feature_polygons(path, &at, v)? {
                check_polygon(path, &at, &p, width, height)?;
                let b = p.bounding_rect().ok_or_else(|| {
                    DataError::new(ErrorKind::Empty, path, "the polygon has no vertices")
                        .at(at.clone())
                })?;
                polygons.push((p, b));
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            polygons,
            n_features,
        })
    }
}

/// The features of a file: a FeatureCollection's, a lone Feature or geometry, or an array.
fn top_level_features(path: &Path, value: JsonValue) -> Result<Vec<JsonValue>> {
    match value {
        JsonValue::Array(items) => Ok(items),
        JsonValue::Object(ref m) => match m.get("type").and_then(|t| t.as_str()) {
            Some("FeatureCollection") => match m.get("features") {
                Some(JsonValue::Array(items)) => Ok(items.clone()),
                _ => Err(DataError::malformed(
                    path,
                    "a FeatureCollection without a 'features' array",
                )),
            },
            Some(_) => Ok(vec![value]),
            None => Err(DataError::malformed(
                path,
                "not GeoJSON: the top-level object has no 'type' (expected FeatureCollection, \
                 Feature, Polygon or MultiPolygon)",
            )),
        },
        _ => Err(DataError::malformed(
            path,
            "not GeoJSON: expected an object or an array of features",
        )),
    }
}

/// `feature 3 (id "…", "Tumor")`: how errors point at a feature.
fn feature_name(i: usize, v: &JsonValue) -> String {
    let mut extra = Vec::new();
    if let Some(id) = v.get("id") {
        extra.push(format!("id {id}"));
    }
    let props = v.get("properties");
    let name = props.and_then(|p| p.get("name")).and_then(|n| n.as_str());
    let class = props
        .and_then(|p| p.get("classification"))
        .and_then(|c| c.get("name"))
        .and_then(|n| n.as_str());
    for s in [name, class].into_iter().flatten() {
        extra.push(format!("\"{s}\""));
    }
    if extra.is_empty() {
        format!("feature {i}")
    } else {
        format!("feature {i} ({})", extra.join(", "))
    }
}

/// The polygons of one feature (or bare geometry).
fn feature_polygons(path: &Path, at: &str, v: JsonValue) -> Result<Vec<Polygon<f64>>> {
    let bad = |msg: String| DataError::malformed(path, msg).at(at.to_string());
    let geometry: Geometry = match v.get("type").and_then(|t| t.as_str()) {
        Some("Feature") => {
            let f: Feature = serde_json::from_value(v)
                .map_err(|e| bad(format!("not a GeoJSON Feature: {e}")))?;
            f.geometry
                .ok_or_else(|| bad("the feature has no geometry".into()))?
        }
        Some(_) => serde_json::from_value(v)
            .map_err(|e| bad(format!("not a GeoJSON Feature or geometry: {e}")))?,
        None => return Err(bad("no 'type' (expected a Feature)".into())),
    };
    if let Some(p) = bad_position(&geometry.value) {
        return Err(bad(format!(
            "position {p:?} is not a point: expected [x, y] (numbers, level-0 pixels)"
        )));
    }
    let g: geo::Geometry<f64> = geo::Geometry::try_from(geometry)
        .map_err(|e| bad(format!("not a usable geometry: {e}")))?;
    let polys = match g {
        geo::Geometry::Polygon(p) => vec![p],
        geo::Geometry::MultiPolygon(m) => m.0,
        geo::Geometry::GeometryCollection(c) => {
            let mut out = Vec::new();
            for g in c {
                match g {
                    geo::Geometry::Polygon(p) => out.push(p),
                    geo::Geometry::MultiPolygon(m) => out.extend(m.0),
                    other => return Err(bad(not_an_area(&other))),
                }
            }
            out
        }
        other => return Err(bad(not_an_area(&other))),
    };
    Ok(polys)
}

/// The first position with fewer than two coordinates or a non-finite one (the conversion to
/// `geo` indexes `[0]` and `[1]` unchecked).
fn bad_position(v: &GeometryValue) -> Option<Vec<f64>> {
    let bad = |p: &geojson::Position| {
        (p.len() < 2 || p.as_slice().iter().any(|c| !c.is_finite())).then(|| p.as_slice().to_vec())
    };
    let first = |ps: &[geojson::Position]| ps.iter().find_map(bad);
    match v {
        GeometryValue::Point { coordinates } => bad(coordinates),
        GeometryValue::MultiPoint { coordinates } | GeometryValue::LineString { coordinates } => {
            first(coordinates)
        }
        GeometryValue::MultiLineString { coordinates } | GeometryValue::Polygon { coordinates } => {
            coordinates.iter().find_map(|r| first(r))
        }
        GeometryValue::MultiPolygon { coordinates } => coordinates
            .iter()
            .flat_map(|p| p.iter())
            .find_map(|r| first(r)),
        GeometryValue::GeometryCollection { geometries } => {
            geometries.iter().find_map(|g| bad_position(&g.value))
        }
    }
}

fn not_an_area(g: &geo::Geometry<f64>) -> String {
    let kind = match g {
        geo::Geometry::Point(_) | geo::Geometry::MultiPoint(_) => "points",
        geo::Geometry::Line(_)
        | geo::Geometry::LineString(_)
        | geo::Geometry::MultiLineString(_) => "a line",
        _ => "not an area",
    };
    format!("{kind}; a region must be a Polygon or MultiPolygon (a closed annotation)")
}

/// A polygon must have a real area, be valid (rings closed, not crossing) and lie inside the
/// slide (within a pixel: QuPath clips annotations to the image).
fn check_polygon(path: &Path, at: &str, p: &Polygon<f64>, width: u64, height: u64) -> Result<()> {
    if let Err(e) = p.check_validation() {
        return Err(DataError::new(
            ErrorKind::Value,
            path,
            format!(
                "invalid polygon: {e} (QuPath: Objects > Annotations > Fix geometry, or redraw it)"
            ),
        )
        .at(at.to_string()));
    }
    let Some(b) = p.bounding_rect() else {
        return Err(DataError::new(ErrorKind::Empty, path, "an empty polygon").at(at.to_string()));
    };
    let inside = |c: Coord<f64>| {
        c.x >= -1.0 && c.y >= -1.0 && c.x <= width as f64 + 1.0 && c.y <= height as f64 + 1.0
    };
    if !inside(b.min()) || !inside(b.max()) {
        return Err(DataError::new(
            ErrorKind::Value,
            path,
            format!(
                "spans x {:.0}…{:.0}, y {:.0}…{:.0}, outside the slide's {width} × {height} \
                 level-0 pixels; coordinates must be level-0 pixels of this slide (QuPath's), not \
                 microns or another slide's",
                b.min().x,
                b.max().x,
                b.min().y,
                b.max().y
            ),
        )
        .at(at.to_string()));
    }
    Ok(())
}

/// Which patches to keep: those whose centre is inside `include` (when given) and not inside
/// `exclude` (when given).
#[derive(Debug, Clone, Default)]
pub struct PatchFilter {
    pub include: Option<Regions>,
    pub exclude: Option<Regions>,
}

impl PatchFilter {
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Keeps the level-0 corners whose patch centre passes.
    pub fn apply(&self, coords: Vec<[i64; 2]>, size_level0: f64) -> Vec<[i64; 2]> {
        let half = (size_level0 / 2.0).floor();
        coords
            .into_iter()
            .filter(|c| {
                let (x, y) = (c[0] as f64 + half, c[1] as f64 + half);
                self.include.as_ref().is_none_or(|r| r.contains(x, y))
                    && !self.exclude.as_ref().is_some_and(|r| r.contains(x, y))
            })
            .collect()
    }
}

/// Reads `--roi` / `--exclude` for one slide: `spec` is a GeoJSON file, or a folder holding
/// `{slide_id}.geojson`.
pub fn regions_for(spec: &Path, slide_id: &str, width: u64, height: u64) -> Result<Regions> {
    let path = if spec.is_dir() {
        let p = spec.join(format!("{slide_id}.geojson"));
        if !p.is_file() {
            return Err(DataError::new(
                ErrorKind::Missing,
                &p,
                format!(
                    "no region file for slide '{slide_id}' in {}",
                    spec.display()
                ),
            ));
        }
        p
    } else {
        spec.to_path_buf()
    };
    Regions::read(&path, width, height)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_tmp(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn detections_carry_scores_and_the_top_class() {
        let f = patch_detections(
            &[[0, 0], [512, 0], [0, 512]],
            512.0,
            Some(PatchScores {
                scores: &[0.1, 0.9, 0.5],
                percentiles: &[0.0, 1.0, 0.5],
            }),
            Some(&SlideCall {
                class_index: 1,
                class_name: "tumor".into(),
                probability: 0.75,
            }),
            1,
        );
        let v = serde_json::to_value(&f[1]).unwrap();
        assert_eq!(v["type"], "Feature");
        assert_eq!(v["geometry"]["type"], "Polygon");
        assert_eq!(
            v["geometry"]["coordinates"][0],
            json!([
                [512.0, 0.0],
                [1024.0, 0.0],
                [1024.0, 512.0],
                [512.0, 512.0],
                [512.0, 0.0]
            ])
        );
        let p = &v["properties"];
        assert_eq!(p["objectType"], "detection");
        assert_eq!(
            p["classification"],
            json!({"name": "Top patch", "color": [180, 4, 38]})
        );
        let m = &p["measurements"];
        assert_eq!(m["score"].as_f64().unwrap() as f32, 0.9);
        assert_eq!(m["percentile"], 1.0);
        assert_eq!(m["row"], 1);
        assert_eq!(m["predicted class"], 1);
        assert_eq!(m["P(tumor)"], 0.75);
        let v0 = serde_json::to_value(&f[0]).unwrap();
        assert_eq!(v0["properties"]["classification"]["name"], "Patch");
    }

    #[test]
    fn regions_keep_holes_and_errors_name_the_feature() {
        let d = tempfile::tempdir().unwrap();
        // A square with a hole, and a MultiPolygon of two squares, in QuPath's array form.
        let p = write_tmp(
            d.path(),
            "roi.geojson",
            r#"[{"type":"Feature","id":"a","geometry":{"type":"Polygon","coordinates":[[[0,0],[100,0],[100,100],[0,100],[0,0]],[[40,40],[60,40],[60,60],[40,60],[40,40]]]},"properties":{"objectType":"annotation"}},
               {"type":"Feature","geometry":{"type":"MultiPolygon","coordinates":[[[[200,0],[250,0],[250,50],[200,50],[200,0]]],[[[300,0],[350,0],[350,50],[300,50],[300,0]]]]},"properties":{}}]"#,
        );
        let r = Regions::read(&p, 400, 400).unwrap();
        assert_eq!((r.n_features, r.n_polygons()), (2, 3));
        assert!(r.contains(10.0, 10.0) && !r.contains(50.0, 50.0));
        assert!(r.contains(225.0, 25.0) && r.contains(325.0, 25.0) && !r.contains(275.0, 25.0));
        let err = |text: &str| {
            let p = write_tmp(d.path(), "bad.geojson", text);
            Regions::read(&p, 400, 400).unwrap_err().to_string()
        };
        let e = err(
            r#"{"type":"FeatureCollection","features":[{"type":"Feature","id":"x","geometry":{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,10],[0,0]]]},"properties":{}},{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[900,0],[900,10],[0,0]]]},"properties":{"name":"Tumor"}}]}"#,
        );
        assert!(
            e.contains("bad.geojson: feature 1 (\"Tumor\"): spans x 0…900"),
            "{e}"
        );
        let e = err(
            r#"{"type":"Feature","id":"bow","geometry":{"type":"Polygon","coordinates":[[[0,0],[10,10],[10,0],[0,10],[0,0]]]},"properties":{}}"#,
        );
        assert!(e.contains("feature 0 (id \"bow\"): invalid polygon"), "{e}");
        let e = err(
            r#"[{"type":"Feature","geometry":{"type":"LineString","coordinates":[[0,0],[10,10]]},"properties":{}}]"#,
        );
        assert!(
            e.contains("feature 0: a line; a region must be a Polygon"),
            "{e}"
        );
        let e = err(
            r#"[{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[10]]]},"properties":{}}]"#,
        );
        assert!(
            e.contains("feature 0: position [10.0] is not a point"),
            "{e}"
        );
        let e = err("{\"type\": ");
        assert!(e.contains("bad.geojson: line 1: not JSON"), "{e}");
        let e = err(r#"{"type":"FeatureCollection","features":[]}"#);
        assert!(e.contains("no features"), "{e}");
    }
}
