//! Patch images → feature vectors: the patch encoders ([`encoders`]: a registry of ViT-family
//! foundation models on one body, [`vit`], CONCH's attentional pooler, [`attn_pool`], and CLAM's
//! `resnet50_trunc`, [`resnet`]) and the
//! per-slide loop that reads patches, applies the encoder's transform and runs it in batches
//! ([`extract`]).

pub mod attn_pool;
pub mod encoders;
pub mod extract;
pub mod resnet;
pub mod vit;
pub mod weights;
