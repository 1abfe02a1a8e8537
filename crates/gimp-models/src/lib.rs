//! Every model of gimp-rs — one file each, owning its config, its code and its [`ArchInfo`] —
//! and the [`registry`] that lists them.

pub mod abmil;
pub mod aggregator;
pub mod arch;
mod bag_embedding;
pub mod bilinear_fusion;
pub mod biovil;
pub mod clam;
pub mod dsmil;
pub mod gated_attention;
pub mod gimp;
pub mod group_msa;
pub mod image_omic;
pub mod linear_start;
pub mod mcat;
pub mod mean_mil;
pub mod mgca;
pub mod mmp;
pub mod model;
pub mod pathomic;
pub mod porpoise;
pub mod refers;
pub mod registry;
pub mod snn;
pub mod survival_head;
pub mod survpath;
pub mod tangle;
pub mod transformer;
pub mod transmil;

pub use arch::{ArchInfo, Dims, InputKind, MissingInput, Pretraining, Training, TrainingDefaults};
pub use model::{BagInput, Input, Model, Output};
pub use registry::{Loaded, REGISTRY};
pub use survival_head::SurvivalHead;
