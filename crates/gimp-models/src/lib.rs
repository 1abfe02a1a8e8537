//! Every model of gimp-rs — one file each, with its config — and the [`registry`] that names them.

pub mod abmil;
pub mod aggregator;
pub mod bilinear_fusion;
pub mod biovil;
pub mod clam;
pub mod dsmil;
pub mod gimp;
pub mod group_msa;
pub mod image_omic;
pub mod mcat;
pub mod mgca;
pub mod model;
pub mod pathomic;
pub mod porpoise;
pub mod refers;
pub mod registry;
pub mod snn;
pub mod transformer;
pub mod transmil;

pub use model::{Input, Model, Output};
pub use registry::{ArchInfo, Dims, InputKind, REGISTRY};
