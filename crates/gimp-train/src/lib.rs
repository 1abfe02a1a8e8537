//! Training on a cohort: the one training loop ([`trainer`]), GiMP's three stages ([`stages`]:
//! gene pre-training, masked patch modelling + gene-induced triplets, fine-tuning) and every
//! compared system ([`supervised`]) as its tasks, evaluation, the paper's experiments, run files.

pub mod compat;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod experiment;
pub mod objective;
pub mod progress;
pub mod resume;
pub mod stages;
pub mod supervised;
pub mod trainer;

pub use config::RunConfig;
pub use data::Prepared;
