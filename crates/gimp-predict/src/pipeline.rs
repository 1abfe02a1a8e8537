//! One slide from pixels to probabilities, in stages (segmentation and patching, features, the
//! model, scores and heatmap), each timed and reported through a callback; finished stages of an
//! earlier run (patch file, complete feature file) are reused, so a stopped batch resumes.

use crate::encoder::SlideEncoder;
use crate::record::{SlidePrediction, StageTime, TopPatch};
use crate::{PredictError, Result};
use candle_core::Tensor;
use gimp_models::BagInput;
use gimp_nn::Mode;
use gimp_slide::batch;
use gimp_slide::overlay;
use gimp_slide::patching::PatchParams;
use gimp_slide::segment::SegmentParams;
use gimp_train::evaluate::ModelSource;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Patching,
    Features,
    Model,
    Heatmap,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Patching => "segmentation + patching",
            Stage::Features => "features",
            Stage::Model => "model",
            Stage::Heatmap => "scores + heatmap",
        }
    }
}

/// What the pipeline reports as it goes.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// `stage` of slide `slide` starts.
    Stage { slide: &'a str, stage: Stage },
    /// The slide has this many patches to encode (0 when its features are done already).
    Patches(usize),
    /// This many more patches are encoded.
    Encoded(usize),
    /// A doubt about the slide (its scale, `gimp_slide::resolution`) the user should see.
    Warning(&'a str),
}

pub struct Predictor {
    pub model: ModelSource,
    pub encoder: SlideEncoder,
    pub segment: SegmentParams,
    pub patching: PatchParams,
    /// How many of the highest-scoring patches the record lists.
    pub top: usize,
    /// Level-0 pixels per pixel of the heatmap picture.
    pub heatmap_downsample: f64,
    /// Opacity of the heatmap's colours over the slide.
    pub alpha: f32,
}

impl Predictor {
    /// Refuses a model that reads no slides, or whose features are not the encoder's (§36):
    /// checked once, before any slide is read.
    pub fn new(
        model: ModelSource,
        encoder: SlideEncoder,
        segment: SegmentParams,
        patching: PatchParams,
    ) -> Result<Self> {
        let arch = model.loaded.arch;
        if !arch.input.reads_slides() {
            return Err(PredictError::Msg(format!(
                "{} reads expression only; a slide gives it nothing",
                arch.name
            )));
        }
        if let Some(want) = &model.features {
            want.check(&model.origin, encoder.weights(), &encoder.kind())?;
        }
        Ok(Self {
            model,
            encoder,
            segment,
            patching,
            top: 10,
            heatmap_downsample: 16.0,
            alpha: 0.5,
        })
    }

    /// Runs `slide` through every stage into `out` (patches/, masks/, h5_files/ and the
    /// slide's scores, heatmap and record) and returns the record. `expression` is the
    /// patient's row for models that read both.
    pub fn slide(
        &self,
        slide: &Path,
        out: &Path,
        expression: Option<&Tensor>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<SlidePrediction> {
        let id = batch::slide_id(slide);
        let mut times = Vec::new();
        let mut timed = |stage: Stage, t: Instant| {
            times.push(StageTime {
                stage: stage.name().into(),
                seconds: t.elapsed().as_secs_f64(),
            })
        };

        let t = Instant::now();
        progress(Progress::Stage {
            slide: &id,
            stage: Stage::Patching,
        });
        let patch_path = batch::patch_path(out, &id);
        if !batch::patches_done(out, &id) || !batch::tissue_path(out, &id).is_file() {
            let done = batch::patch_slide(slide, out, &self.segment, &self.patching)?;
            for w in &done.warnings {
                progress(Progress::Warning(w));
            }
        }
        let patches = gimp_io::h5::read_patches(&patch_path)?;
        timed(Stage::Patching, t);

        let t = Instant::now();
        progress(Progress::Stage {
            slide: &id,
            stage: Stage::Features,
        });
        let n = patches.coords.len();
        if self.encoder.is_done(out, &id, n) {
            progress(Progress::Patches(0));
        } else {
            progress(Progress::Patches(n));
            self.encoder
                .extract(out, slide, &patches, &patch_path, |k| {
                    progress(Progress::Encoded(k))
                })?;
        }
        let features = batch::features_path(out, &id);
        timed(Stage::Features, t);

        let t = Instant::now();
        progress(Progress::Stage {
            slide: &id,
            stage: Stage::Model,
        });
        self.model.check_features(&features)?;
        // Read by rows: inference embeds the bag window by window (docs/DESIGN.md §42).
        let (bag, _) = gimp_io::feature_file::open_rows(&features, gimp_io::DEFAULT_MAX_BAG_BYTES)?;
        let width = bag.dims().1;
        let loaded = &self.model.loaded;
        let input = loaded
            .arch
            .input
            .select(Some(BagInput::Rows(bag.as_ref())), expression)
            .map_err(|missing| PredictError::Msg(format!("{} {missing}", loaded.arch.name)))?;
        let answer = loaded.model.forward(&input, &Mode::inference())?;
        // At the checkpoint's calibrated temperature, as `model run` answers.
        let probabilities: Vec<f32> = loaded.probabilities(&answer.logits)?.to_vec1()?;
        let predicted = argmax(&probabilities);
        let (risk, survival) = match &loaded.survival {
            Some(head) => (
                head.risk(&answer.logits)?.first().copied(),
                head.survival_curve(&answer.logits)?,
            ),
            None => (None, None),
        };
        let scores: Option<Vec<f32>> = answer.attention.map(|a| a.to_vec1()).transpose()?;
        timed(Stage::Model, t);

        let t = Instant::now();
        progress(Progress::Stage {
            slide: &id,
            stage: Stage::Heatmap,
        });
        let size0 = patches.attrs.level0_patch_size().ok_or_else(|| {
            PredictError::Io(gimp_io::DataError::new(
                gimp_io::ErrorKind::Missing,
                &patch_path,
                "no patch size in the attributes of 'coords'",
            ))
        })?;
        let mut top_patches = Vec::new();
        let (mut scores_csv, mut scores_h5, mut heatmap_png) = (None, None, None);
        if let Some(s) = &scores {
            if s.len() != n {
                return Err(PredictError::Msg(format!(
                    "{} gave {} patch scores for {n} patches",
                    loaded.arch.name,
                    s.len()
                )));
            }
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&i, &j| s[j].total_cmp(&s[i]));
            top_patches = order
                .iter()
                .take(self.top)
                .map(|&i| TopPatch {
                    row: i,
                    x: patches.coords[i][0],
                    y: patches.coords[i][1],
                    score: s[i],
                })
                .collect();
            let picture = Heatmap {
                slide,
                downsample: self.heatmap_downsample,
                alpha: self.alpha,
            };
            write_scores(out, &id, &patches.coords, size0, s, Some(picture))?;
            scores_csv = Some(format!("{id}.scores.csv"));
            scores_h5 = Some(format!("{id}.scores.h5"));
            heatmap_png = Some(format!("{id}.heatmap.png"));
        }
        timed(Stage::Heatmap, t);

        let modalities = [(true, "slides"), (expression.is_some(), "expression")]
            .into_iter()
            .filter(|&(has, _)| has)
            .map(|(_, m)| m.to_string())
            .collect();
        let classes = self.model.classes.clone().unwrap_or_else(|| {
            (0..probabilities.len())
                .map(|k| format!("class {k}"))
                .collect()
        });
        let rel = |p: std::path::PathBuf| {
            p.strip_prefix(out)
                .map(|r| r.to_string_lossy().into_owned())
                .unwrap_or_else(|_| p.to_string_lossy().into_owned())
        };
        let mut record = SlidePrediction {
            slide_id: id.clone(),
            slide: std::fs::canonicalize(slide).unwrap_or_else(|_| slide.to_path_buf()),
            model: self.model.origin.clone(),
            arch: loaded.arch.name.to_string(),
            encoder: self.encoder.name().to_string(),
            feature_width: width,
            predicted_class: classes.get(predicted).cloned(),
            risk,
            survival,
            classes,
            probabilities,
            predicted,
            modalities,
            warning: self
                .model
                .missing_modality_warning(true, expression.is_some()),
            n_patches: n,
            patch_size_level0: size0,
            top_patches,
            scores_csv,
            scores_h5,
            heatmap_png,
            qupath_geojson: None,
            patches_h5: rel(patch_path.clone()),
            features_h5: rel(features),
            tissue_png: rel(batch::tissue_path(out, &id)),
            times,
        };
        // The QuPath file last: it carries the record's prediction.
        let contours = batch::contours_path(out, &id);
        let features = crate::qupath::slide_features(
            contours.is_file().then_some(contours.as_path()),
            &patch_path,
            record.scores_csv.as_ref().map(|s| out.join(s)).as_deref(),
            crate::qupath::call_of(&record).as_ref(),
            self.top,
        )?;
        let qupath_name = format!("{id}{}", crate::qupath::SUFFIX);
        gimp_slide::qupath::write(&out.join(&qupath_name), features)?;
        record.qupath_geojson = Some(qupath_name);
        record.write(out)?;
        Ok(record)
    }
}

/// The first index of the largest value.
fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// The picture of a slide's patch scores: the slide's overview at `downsample` level-0 pixels
/// per pixel, the scores' colours over it at opacity `alpha`.
pub struct Heatmap<'a> {
    pub slide: &'a Path,
    pub downsample: f64,
    pub alpha: f32,
}

/// Writes a slide's patch scores (`{id}.scores.csv` and `.h5`, aligned with `coords`) in `out`
/// and, given a [`Heatmap`], the picture `{id}.heatmap.png` (patches of `size0` level-0
/// pixels); returns the picture's path. What `predict --slide` and `heatmap` both write.
pub fn write_scores(
    out: &Path,
    id: &str,
    coords: &[[i64; 2]],
    size0: f64,
    scores: &[f32],
    heatmap: Option<Heatmap>,
) -> Result<Option<PathBuf>> {
    overlay::write_scores(out, id, coords, scores)?;
    let Some(h) = heatmap else {
        return Ok(None);
    };
    let reader = gimp_slide::open(h.slide)?;
    let (img, ds) = reader.overview(h.downsample, 1 << 28)?;
    let pic = overlay::heatmap(&img, ds, coords, size0, scores, h.alpha);
    let path = out.join(format!("{id}.heatmap.png"));
    overlay::save_png(&pic, &path)?;
    Ok(Some(path))
}
