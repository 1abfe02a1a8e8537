//! A slide's patches, scores and prediction as one QuPath GeoJSON file
//! (`gimp_slide::qupath` owns the layout): `predict --slide` writes it as
//! `{slide_id}.qupath.geojson`, `gimp-rs export qupath` makes it from the files of `patch`,
//! `heatmap` or `predict`.

use crate::record::{read_scores, SlidePrediction};
use gimp_io::{DataError, ErrorKind, Result};
use gimp_slide::batch;
use gimp_slide::qupath::{self, PatchScores, SlideCall};
use std::path::Path;

pub use gimp_slide::qupath::Feature;

/// File name suffix of the QuPath file `predict` writes beside a slide's record.
pub const SUFFIX: &str = ".qupath.geojson";

/// The features of one slide: the tissue annotations of `contours` (a `contours_geojson` file of
/// `patch`), the patches of `patches` (a patch `.h5`) as detections, with the scores of `scores`
/// (a `.scores.csv` of `heatmap` / `predict`, which must list the same patches), the `top`
/// highest as their own class, and `call`'s prediction as measurements.
pub fn slide_features(
    contours: Option<&Path>,
    patches: &Path,
    scores: Option<&Path>,
    call: Option<&SlideCall>,
    top: usize,
) -> Result<Vec<Feature>> {
    let pf = gimp_io::h5::read_patches(patches)?;
    let size0 = pf.attrs.level0_patch_size().ok_or_else(|| {
        DataError::new(
            ErrorKind::Missing,
            patches,
            "no patch size in the attributes of 'coords' (patch_size_level0, or patch_size with \
             patch_level and downsample)",
        )
    })?;
    let mut features = match contours {
        Some(c) => qupath::read_features(c)?,
        None => Vec::new(),
    };
    let table = scores.map(read_scores).transpose()?;
    if let (Some(path), Some(t)) = (scores, &table) {
        if t.len() != pf.coords.len() {
            return Err(DataError::new(
                ErrorKind::Mismatch,
                path,
                format!(
                    "{} scores for the {} patches of {}: not the same slide's",
                    t.len(),
                    pf.coords.len(),
                    patches.display()
                ),
            ));
        }
        for (i, s) in t.iter().enumerate() {
            if s.row != i || [s.x, s.y] != pf.coords[i] {
                return Err(DataError::new(
                    ErrorKind::Mismatch,
                    path,
                    format!(
                        "row {i} is patch ({}, {}), but {} lists ({}, {}) there",
                        s.x,
                        s.y,
                        patches.display(),
                        pf.coords[i][0],
                        pf.coords[i][1]
                    ),
                )
                .at(format!("line {}", i + 2)));
            }
        }
    }
    let values: Option<(Vec<f32>, Vec<f32>)> = table.map(|t| {
        (
            t.iter().map(|s| s.score).collect(),
            t.iter().map(|s| s.percentile).collect(),
        )
    });
    let scores = values.as_ref().map(|(s, p)| PatchScores {
        scores: s,
        percentiles: p,
    });
    features.extend(qupath::patch_detections(
        &pf.coords, size0, scores, call, top,
    ));
    Ok(features)
}

/// The class a classifier's record predicts (none for a survival model).
pub fn call_of(r: &SlidePrediction) -> Option<SlideCall> {
    if r.risk.is_some() {
        return None;
    }
    Some(SlideCall {
        class_index: r.predicted,
        class_name: r.predicted_class.clone()?,
        probability: r.probabilities.get(r.predicted).copied()?,
    })
}

/// The features of a `predict` record (`{slide_id}.prediction.json`) and the files beside it.
pub fn record_features(record: &Path, top: usize) -> Result<Vec<Feature>> {
    let r = SlidePrediction::read(record)?;
    let dir = record.parent().unwrap_or(Path::new("."));
    let contours = batch::contours_path(dir, &r.slide_id);
    slide_features(
        contours.is_file().then_some(contours.as_path()),
        &dir.join(&r.patches_h5),
        r.scores_csv.as_ref().map(|s| dir.join(s)).as_deref(),
        call_of(&r).as_ref(),
        top,
    )
}

/// Writes `{out}/{id}.qupath.geojson`: a slide's patches (`coords`, `size0` level-0 pixels a
/// side) as detections with their scores and percentiles, the `top` highest as their own class;
/// returns the path. What `heatmap --qupath` writes.
pub fn write_scored_patches(
    out: &Path,
    id: &str,
    coords: &[[i64; 2]],
    size0: f64,
    scores: &[f32],
    top: usize,
) -> Result<std::path::PathBuf> {
    let percentiles = gimp_slide::overlay::percentiles(scores);
    let features = qupath::patch_detections(
        coords,
        size0,
        Some(PatchScores {
            scores,
            percentiles: &percentiles,
        }),
        None,
        top,
    );
    let path = out.join(format!("{id}{SUFFIX}"));
    qupath::write(&path, features)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gimp_io::h5::{PatchAttrs, PatchFile};

    #[test]
    fn scores_of_another_slide_are_refused_by_row() {
        let d = tempfile::tempdir().unwrap();
        let patches = d.path().join("s.h5");
        let coords = vec![[0, 0], [256, 0]];
        gimp_io::h5::write_patches(
            &patches,
            &PatchFile {
                coords: coords.clone(),
                attrs: PatchAttrs {
                    patch_size_level0: Some(256),
                    ..Default::default()
                },
            },
        )
        .unwrap();
        gimp_slide::overlay::write_scores(d.path(), "s", &coords, &[0.2, 0.8]).unwrap();
        let f = slide_features(
            None,
            &patches,
            Some(&d.path().join("s.scores.csv")),
            None,
            1,
        )
        .unwrap();
        assert_eq!(f.len(), 2);
        gimp_slide::overlay::write_scores(d.path(), "t", &[[0, 0], [0, 256]], &[0.2, 0.8]).unwrap();
        let e = slide_features(
            None,
            &patches,
            Some(&d.path().join("t.scores.csv")),
            None,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.scores.csv: line 3: row 1 is patch (0, 256)"),
            "{e}"
        );
    }
}
