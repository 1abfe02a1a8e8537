//! Cohorts: a TOML file that says where a cohort's labels, slide features, expression and splits
//! are; joining them by patient with every problem reported; making and checking splits; and the
//! memory-mapped feature cache training reads from.

pub mod cache;
pub mod cohort;
pub mod config;
mod listing;
pub mod split;
pub mod summary;
pub mod survival;

pub use cohort::{Cohort, LoadOptions, Patient, Slide};
pub use config::{CohortConfig, CohortFile};
pub use split::Fold;
pub use summary::Summary;
