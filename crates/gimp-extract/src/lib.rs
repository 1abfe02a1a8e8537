//! Patch images → feature vectors: CLAM's `resnet50_trunc` on candle ([`resnet`]) and the
//! per-slide loop that reads patches, resizes them and runs the network in batches
//! ([`extract`]).

pub mod extract;
pub mod resnet;
