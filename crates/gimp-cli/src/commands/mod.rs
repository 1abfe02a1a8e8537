pub mod baseline;
pub mod cohort;
pub mod demo;
pub mod experiment;
pub mod model;
pub mod split;
pub mod synth;
pub mod train;
