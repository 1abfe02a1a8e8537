//! Building blocks on candle shared by every model of gimp-rs.

pub mod alloc;
pub mod checkpoint;
pub mod cpu;
pub mod fused_linear;
pub mod init;
pub mod kernels;
pub mod lanes;
pub mod layers;
pub mod loss;
pub mod matmul;
pub mod nystrom;
pub mod nystrom_infer;
pub mod nystrom_layer_op;
pub mod nystrom_op;
pub mod ops;
pub mod optim;
pub mod params;
pub mod scratch;

pub use candle_core::{Device, Result, Tensor};
pub use fused_linear::Activation;
pub use init::Init;
pub use layers::{LayerNorm, Linear};
pub use ops::Mode;
pub use params::{ParamStore, Scope};
