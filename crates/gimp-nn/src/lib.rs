//! Building blocks on candle shared by every model of gimp-rs.

pub mod checkpoint;
pub mod cpu;
pub mod gated_attention;
pub mod init;
pub mod layers;
pub mod loss;
pub mod memory;
pub mod nystrom;
pub mod ops;
pub mod optim;
pub mod params;
pub mod survival;

pub use candle_core::{Device, Result, Tensor};
pub use cpu::fused_linear::Activation;
pub use init::Init;
pub use layers::{LayerNorm, Linear};
pub use ops::Mode;
pub use params::{ParamStore, Scope};
