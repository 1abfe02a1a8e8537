//! A gene model's linear start (`docs/DESIGN.md` §43): a linear model of the standardised genes
//! whose output is added to the model's logits. The trainer fits it on the training patients
//! before the first step — the task's own linear model: logistic regression for classes, ridge
//! Cox for survival (`gimp_train::task::Task::linear_start`) — and keeps it frozen; the model's
//! own head starts at zero, so before its first step the model *is* that linear model, and every
//! step learns what the genes say beyond it. Model selection then compares "no epoch" (the
//! linear model alone) with every epoch count, on the inner folds.
//!
//! Its weights are ordinary parameters (`linear_start.weight` `[C, G]`, `linear_start.bias`
//! `[C]`), so a checkpoint carries them and evaluation and prediction add them as training did.

use candle_core::{Result, Tensor};
use gimp_nn::{Init, Linear, Scope};

/// The parameters' name prefix.
pub const PREFIX: &str = "linear_start";

pub struct LinearStart {
    linear: Linear,
}

impl LinearStart {
    /// Zero until the trainer sets it.
    pub fn new(s: &Scope, genes: usize, outputs: usize) -> Result<Self> {
        Ok(Self {
            linear: Linear::with_init(
                &s.pp(PREFIX),
                genes,
                outputs,
                true,
                Init::Constant(0.0),
                Init::Constant(0.0),
            )?,
        })
    }

    /// `logits + x Wᵀ + b` for standardised expression `x` `[B, G]` and logits `[B, C]`.
    pub fn add(&self, x: &Tensor, logits: &Tensor) -> Result<Tensor> {
        logits + self.linear.forward(x)?
    }

    /// The initialisation of the head it is added to: zero with a linear start (the model
    /// starts as the linear model), else the head's own.
    pub fn head_init(linear_start: bool, own: Init) -> Init {
        match linear_start {
            true => Init::Constant(0.0),
            false => own,
        }
    }
}
