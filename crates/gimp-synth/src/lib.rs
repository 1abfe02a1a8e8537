//! Synthetic image-omic cohorts: realistic enough to exercise every reader and every model, with
//! the ground truth real data cannot give (which patches are tumour of the patient's subtype).
//! Everything is a deterministic function of the settings and the seed.

pub mod calibration;
pub mod config;
pub mod model;
pub mod survival;
pub mod write;

pub use config::{Difficulty, Size, SurvivalSettings, SynthConfig};
pub use write::{generate, SynthReport};

/// log2(FPKM + 1) expression of every patient, generated in memory exactly as [`generate`] would
/// write it (rounded to GDC's 4 decimals), with the recorded labels. For calibration and tests
/// that need no files.
pub fn expression_in_memory(cfg: &SynthConfig) -> (Vec<Vec<f32>>, Vec<usize>) {
    use gimp_io::expression::ExpressionTransform;
    use rayon::prelude::*;
    let patients = model::patients(cfg);
    let genes = model::GeneModel::new(cfg);
    let x = patients
        .par_iter()
        .map(|p| {
            let mut rng = model::expression_rng(cfg, p);
            genes
                .sample(cfg, &mut rng, p.true_class, p.purity)
                .into_iter()
                .map(|v| ExpressionTransform::Log2p1.apply(model::to_fpkm(v)))
                .collect()
        })
        .collect();
    (x, patients.iter().map(|p| p.observed_class).collect())
}
