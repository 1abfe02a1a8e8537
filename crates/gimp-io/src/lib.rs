//! Readers and writers for the files users of CLAM, TransMIL, MCAT and PORPOISE already have.
//!
//! Every reader returns a [`DataError`] that names the file and the line, row or field at fault;
//! none panics on bad input, and every writer goes through [`atomic`] so no output is ever left
//! half-written.

pub mod atomic;
pub mod bag;
pub mod dataset;
pub mod error;
pub mod expression;
pub mod feature_file;
pub mod guard;
pub mod h5;
pub mod npy;
pub mod pathways;
pub mod pt;
pub mod safetensors_io;
pub mod shard;
pub mod splits;
pub mod survival_table;
pub mod text;
pub mod weights;

pub use bag::{Bag, DEFAULT_MAX_BAG_BYTES};
pub use error::{DataError, ErrorKind, Result};
pub use feature_file::FeatureFormat;
