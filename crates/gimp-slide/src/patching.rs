//! The patch grid at a target magnification (CLAM's `process_contour` with `four_pt`), and the
//! patch file that records it.
//!
//! CLAM asks the user for a pyramid level; users think in magnifications (CLAM#145, #163). Here
//! the user gives a magnification (default 20×): the level read is the smallest one at or above
//! it, the patch is read at the size that covers `patch_size` pixels of the target and is resized
//! to `patch_size` at extraction. The file keeps CLAM's attributes (`patch_size` and
//! `patch_level` as read, `downsample`, `level_dim`) and TRIDENT's (`patch_size_level0`,
//! `level0_magnification`, `target_magnification`, `overlap`), so both tool families read it.

use crate::resolution::{self, ScaleOverride};
use crate::segment::TissueMask;
use crate::slide::SlideReader;
use gimp_io::h5::{PatchAttrs, PatchFile};
use gimp_io::{DataError, ErrorKind, Result};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContourFn {
    /// Keep a patch when any of four points around its centre (±¼ side) is in tissue.
    FourPt,
    /// Keep a patch when its centre is in tissue.
    Center,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchParams {
    /// Patch side in pixels at the target magnification.
    pub patch_size: u32,
    /// Grid step in pixels at the target magnification (`patch_size`: no overlap).
    pub step: u32,
    pub target_magnification: f64,
    /// Level-0 magnification when the file does not state it (or states it wrongly).
    pub level0_magnification: Option<f64>,
    /// Microns per level-0 pixel when the file does not state it (or states it wrongly).
    #[serde(default)]
    pub mpp: Option<f64>,
    pub contour_fn: ContourFn,
    /// Patch only inside these regions (`--roi`): a GeoJSON file, or a folder of
    /// `{slide_id}.geojson` ([`crate::qupath`]).
    #[serde(default)]
    pub roi: Option<PathBuf>,
    /// Leave these regions out (`--exclude`), same forms as `roi`.
    #[serde(default)]
    pub exclude: Option<PathBuf>,
}

impl PatchParams {
    /// The user's overrides of the slide's scale.
    pub fn scale(&self) -> ScaleOverride {
        ScaleOverride {
            mpp: self.mpp,
            magnification: self.level0_magnification,
        }
    }
}

impl Default for PatchParams {
    fn default() -> Self {
        Self {
            patch_size: 256,
            step: 256,
            target_magnification: 20.0,
            level0_magnification: None,
            mpp: None,
            roi: None,
            exclude: None,
            contour_fn: ContourFn::FourPt,
        }
    }
}

/// Where and at what size patches are read.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PatchPlan {
    pub level0_magnification: f64,
    pub level: usize,
    pub level_downsample: f64,
    /// Patch side read at `level` (resized to `patch_size` at extraction).
    pub size_at_level: u32,
    /// Patch side and grid step in level-0 pixels.
    pub size_level0: u32,
    pub step_level0: u32,
    pub patch_size: u32,
}

/// The plan for `slide`, its level-0 magnification resolved from the file and the user's
/// overrides ([`crate::resolution`]).
pub fn plan(slide: &dyn SlideReader, p: &PatchParams) -> Result<PatchPlan> {
    let scale = resolution::resolve(slide.properties(), &p.scale());
    plan_at(slide, p, scale.magnification_or_err(slide.path())?)
}

/// The plan for `slide` whose level 0 is at magnification `mag0`.
pub fn plan_at(slide: &dyn SlideReader, p: &PatchParams, mag0: f64) -> Result<PatchPlan> {
    if p.target_magnification.is_nan()
        || p.target_magnification <= 0.0
        || p.patch_size == 0
        || p.step == 0
    {
        return Err(DataError::new(
            ErrorKind::Value,
            slide.path(),
            "magnification, patch size and step must be positive",
        ));
    }
    let wanted = mag0 / p.target_magnification;
    if wanted < 0.99 {
        return Err(DataError::new(
            ErrorKind::Value,
            slide.path(),
            format!(
                "the slide is scanned at {mag0}×; patches at {}× would need upsampling — choose \
                 --magnification {mag0} or lower",
                p.target_magnification
            ),
        ));
    }
    let level = slide.best_level_for_downsample(wanted);
    let level_downsample = slide.levels()[level].downsample;
    Ok(PatchPlan {
        level0_magnification: mag0,
        level,
        level_downsample,
        size_at_level: (p.patch_size as f64 * wanted / level_downsample).round() as u32,
        size_level0: (p.patch_size as f64 * wanted).round() as u32,
        step_level0: (p.step as f64 * wanted).round().max(1.0) as u32,
        patch_size: p.patch_size,
    })
}

/// Level-0 top-left corners of the patches to keep: for each kept region (in scan order), its
/// bounding box's grid with x the slow and y the fast index (CLAM's order), each candidate
/// tested by the contour function and dropped when its centre is in a kept hole.
pub fn coords(mask: &TissueMask, plan: &PatchPlan, contour_fn: ContourFn) -> Vec<[i64; 2]> {
    let size = plan.size_level0 as f64;
    let step = plan.step_level0 as i64;
    let shift = ((plan.size_level0 / 2) as f64 * 0.5).floor();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in mask.kept_regions() {
        let [bx, by, bw, bh] = r.bbox;
        let x0 = (bx as f64 * mask.downsample[0]).floor() as i64;
        let y0 = (by as f64 * mask.downsample[1]).floor() as i64;
        let x1 = ((bx + bw) as f64 * mask.downsample[0]).ceil() as i64;
        let y1 = ((by + bh) as f64 * mask.downsample[1]).ceil() as i64;
        let mut x = x0;
        while x < x1 {
            let mut y = y0;
            while y < y1 {
                let cx = x as f64 + (size / 2.0).floor();
                let cy = y as f64 + (size / 2.0).floor();
                let hit = match contour_fn {
                    ContourFn::Center => mask.inside(cx, cy),
                    ContourFn::FourPt => [(-1.0, -1.0), (1.0, 1.0), (1.0, -1.0), (-1.0, 1.0)]
                        .iter()
                        .any(|(sx, sy)| mask.inside(cx + sx * shift, cy + sy * shift)),
                };
                if hit && !mask.in_hole(cx, cy) && seen.insert((x, y)) {
                    out.push([x, y]);
                }
                y += step;
            }
            x += step;
        }
    }
    out
}

/// The patch file for `coords` made by `plan` on `slide`.
pub fn patch_file(
    slide: &dyn SlideReader,
    name: &str,
    plan: &PatchPlan,
    params: &PatchParams,
    coords: Vec<[i64; 2]>,
) -> PatchFile {
    let l = slide.levels()[plan.level];
    PatchFile {
        coords,
        attrs: PatchAttrs {
            patch_size: Some(plan.size_at_level as i64),
            patch_level: Some(plan.level as i64),
            downsample: Some([plan.level_downsample, plan.level_downsample]),
            level_dim: Some([l.width as i64, l.height as i64]),
            patch_size_level0: Some(plan.size_level0 as i64),
            level0_magnification: Some(plan.level0_magnification),
            target_magnification: Some(params.target_magnification),
            overlap: Some(params.patch_size as i64 - params.step as i64),
            name: Some(name.to_string()),
        },
    }
}
