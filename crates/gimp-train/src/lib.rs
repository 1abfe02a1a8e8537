//! Training on a cohort: the one training loop ([`trainer`]), GiMP's three stages ([`stages`]:
//! gene pre-training, masked patch modelling + gene-induced triplets, fine-tuning) and every
//! compared system ([`supervised`]) as its tasks, evaluation, the paper's experiments, run files.

pub mod compat;
pub mod config;
pub mod data;
pub mod error;
pub mod evaluate;
pub mod experiment;
pub mod predictions;
pub mod progress;
pub mod resume;
pub mod run_record;
pub mod selection;
pub mod stages;
pub mod summary;
pub mod supervised;
pub mod task;
pub mod trainer;

pub use config::RunConfig;
pub use data::Prepared;
