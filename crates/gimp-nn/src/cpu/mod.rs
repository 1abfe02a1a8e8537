//! CPU building blocks of the fused ops: vectorised row kernels (`lanes`), strided matrix
//! products (`matmul`), reusable scratch buffers (`scratch`), access to the `f32` data behind
//! candle's CPU tensors (`storage`), the fused candle ops with hand-written backward passes
//! (`kernels`, `fused_linear`), and a caching global allocator (`alloc`).
//!
//! Public are the pieces other crates use: the allocator the binaries install, the matrix
//! products and row kernels of gimp-extract's and the aggregator's raw-buffer paths, and the
//! fused Linear op.

pub mod alloc;
pub mod fused_linear;
pub(crate) mod kernels;
pub mod lanes;
pub mod matmul;
pub(crate) mod scratch;
mod storage;

#[doc(hidden)]
pub use scratch::pool_every_size;
pub(crate) use storage::CpuForward;
pub use storage::{slice, with_data};
