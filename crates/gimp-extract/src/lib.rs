//! From image patches to feature vectors.

pub mod resnet;

pub use resnet::ResNet50Trunc;
