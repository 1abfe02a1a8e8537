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
//!
//! The linear model reads every gene the model is given, the deep part may read fewer
//! ([`DeepGenes`]): a logistic regression or ridge Cox model copes with tens of thousands of genes,
//! a deep model trained on a hundred patients does better on the most variable few thousand
//! (`docs/DESIGN.md` §38) — and a linear start on those alone loses what the other genes say
//! (§44).

use candle_core::{Result, Tensor};
use gimp_nn::{Init, Linear, Scope};
use serde::{Deserialize, Serialize};

/// The parameters' name prefix.
pub const PREFIX: &str = "linear_start";

/// The genes a model with a linear start is given (all of them read by the linear start) and
/// the positions among them its deep part reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeepGenes {
    /// Genes the model is given.
    pub input: usize,
    /// Increasing positions among them that the deep part reads.
    pub positions: Vec<usize>,
}

pub struct LinearStart {
    linear: Linear,
    /// The deep part's genes as an index, when it reads fewer than the model is given.
    deep: Option<Tensor>,
}

impl LinearStart {
    /// Zero until the trainer sets it. `genes`: the genes the deep part reads, which are the
    /// genes the model is given unless `deep` says otherwise.
    pub fn new(s: &Scope, genes: usize, outputs: usize, deep: Option<&DeepGenes>) -> Result<Self> {
        let input = match deep {
            None => genes,
            Some(d) => {
                let increasing = d.positions.windows(2).all(|w| w[0] < w[1]);
                let inside = d.positions.last().is_none_or(|&p| p < d.input);
                if d.positions.len() != genes || !increasing || !inside {
                    candle_core::bail!(
                        "deep_genes: {} increasing positions below {} expected for {genes} \
                         genes, found {} (increasing: {increasing}, below: {inside})",
                        genes,
                        d.input,
                        d.positions.len()
                    );
                }
                d.input
            }
        };
        let deep = deep
            .map(|d| gimp_nn::loss::index_tensor(&d.positions, s.device()))
            .transpose()?;
        Ok(Self {
            linear: Linear::with_init(
                &s.pp(PREFIX),
                input,
                outputs,
                true,
                Init::Constant(0.0),
                Init::Constant(0.0),
            )?,
            deep,
        })
    }

    /// What the deep part reads of the model's input `x` `[B, G]`.
    pub fn deep_input(&self, x: &Tensor) -> Result<Tensor> {
        match &self.deep {
            Some(index) => x.index_select(index, 1),
            None => Ok(x.clone()),
        }
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
