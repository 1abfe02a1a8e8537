//! What a prediction leaves per slide: `{out}/{slide_id}.prediction.json`, the record the viewer
//! (`gimp-view`) reads, beside the files it names (relative to the record's folder).

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// File name suffix of a slide's record.
pub const SUFFIX: &str = ".prediction.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TopPatch {
    /// Row in the feature file (and the scores files).
    pub row: usize,
    /// Level-0 top-left corner.
    pub x: i64,
    pub y: i64,
    pub score: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SlidePrediction {
    pub slide_id: String,
    /// The slide as given to `predict` (absolute when it could be made so).
    pub slide: PathBuf,
    /// `checkpoint PATH` or `ARCH from PATH`.
    pub model: String,
    pub arch: String,
    pub encoder: String,
    pub feature_width: usize,
    pub classes: Vec<String>,
    pub probabilities: Vec<f32>,
    pub predicted: usize,
    pub predicted_class: Option<String>,
    /// A survival model's risk score (higher: earlier event; docs/DESIGN.md §34); `classes`
    /// then names its outputs (time bins, or `log-risk`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<f64>,
    /// A discrete-time survival model's survival curve: no event by the end of each time bin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survival: Option<Vec<f64>>,
    pub modalities: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
    pub n_patches: usize,
    /// Patch side in level-0 pixels.
    pub patch_size_level0: f64,
    /// Empty for a model without per-patch scores (then there are no scores files or heatmap).
    pub top_patches: Vec<TopPatch>,
    /// Files beside the record (relative to its folder).
    pub scores_csv: Option<String>,
    pub scores_h5: Option<String>,
    pub heatmap_png: Option<String>,
    /// Tissue annotations and patch detections for QuPath (`{slide_id}.qupath.geojson`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qupath_geojson: Option<String>,
    pub patches_h5: String,
    pub features_h5: String,
    pub tissue_png: String,
    pub times: Vec<StageTime>,
}

impl SlidePrediction {
    pub fn path(out: &Path, slide_id: &str) -> PathBuf {
        out.join(format!("{slide_id}{SUFFIX}"))
    }

    pub fn read(path: &Path) -> gimp_io::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| gimp_io::DataError::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            gimp_io::DataError::malformed(path, format!("not a prediction record: {e}"))
                .at(format!("line {}", e.line()))
        })
    }

    pub fn write(&self, out: &Path) -> gimp_io::Result<PathBuf> {
        let path = Self::path(out, &self.slide_id);
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| gimp_io::DataError::malformed(&path, e.to_string()))?;
        gimp_io::atomic::write_bytes_atomic(&path, json.as_bytes())?;
        Ok(path)
    }
}

/// One patch's score, from `{id}.scores.csv`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct PatchScore {
    pub row: usize,
    pub x: i64,
    pub y: i64,
    pub score: f32,
    pub percentile: f32,
}

/// Reads a scores file written by `gimp-rs heatmap` or `predict` (`row,x,y,score,percentile`).
pub fn read_scores(path: &Path) -> gimp_io::Result<Vec<PatchScore>> {
    let mut r = csv::Reader::from_path(path)
        .map_err(|e| gimp_io::DataError::malformed(path, format!("cannot read the scores: {e}")))?;
    r.deserialize()
        .map(|row| {
            row.map_err(|e| {
                let line = e.position().map_or(0, |p| p.line());
                gimp_io::DataError::malformed(
                    path,
                    format!("{e}; expected row,x,y,score,percentile"),
                )
                .at(format!("line {line}"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_are_read_back_and_a_bad_row_is_named() {
        let d = tempfile::tempdir().unwrap();
        let coords = [[0, 0], [256, 0], [0, 256]];
        gimp_slide::overlay::write_scores(d.path(), "s", &coords, &[0.5, 2.0, -1.0]).unwrap();
        let s = read_scores(&d.path().join("s.scores.csv")).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!((s[1].row, s[1].x, s[1].y, s[1].score), (1, 256, 0, 2.0));
        assert_eq!(
            s.iter().map(|p| p.percentile).collect::<Vec<_>>(),
            [0.5, 1.0, 0.0]
        );

        let bad = d.path().join("bad.scores.csv");
        std::fs::write(
            &bad,
            "row,x,y,score,percentile\n0,0,0,0.5,0.5\n1,zero,0,1,1\n",
        )
        .unwrap();
        let e = read_scores(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.scores.csv") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn a_record_that_is_not_one_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.prediction.json");
        std::fs::write(&p, "{\"slide_id\": 3}").unwrap();
        let e = SlidePrediction::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("x.prediction.json") && e.contains("not a prediction record"),
            "{e}"
        );
    }
}
