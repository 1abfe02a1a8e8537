//! GiMP's training pipeline on a cohort: gene pre-training, GiMP pre-training (masked patch
//! modelling + gene-induced triplets), fine-tuning, evaluation.

pub mod config;
pub mod data;
pub mod evaluate;
pub mod experiment;
pub mod progress;
pub mod resume;
pub mod stages;
pub mod supervised;
pub mod trainer;

pub use config::RunConfig;
pub use data::Prepared;
