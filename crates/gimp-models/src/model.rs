//! The one interface every model implements, so heads, heatmaps, embeddings and the trainer are
//! written once (MIL-Lab's pattern).

use candle_core::{Device, Result, Tensor};
use gimp_io::bag::BagRows;
use gimp_nn::Mode;
use std::borrow::Cow;

/// A patient's patch features `[N, D]` (its slides concatenated): a tensor, or a reader of row
/// windows (a feature file) that inference on the CPU embeds as it reads, so a whole slide's
/// bag is never held whole there (`docs/DESIGN.md` §42). Models that need the bag whole read
/// it all ([`BagInput::tensor`]).
#[derive(Clone, Copy)]
pub enum BagInput<'a> {
    Tensor(&'a Tensor),
    Rows(&'a dyn BagRows),
}

impl<'a> From<&'a Tensor> for BagInput<'a> {
    fn from(t: &'a Tensor) -> Self {
        BagInput::Tensor(t)
    }
}

impl<'a> BagInput<'a> {
    /// The whole bag as a tensor (read in full from a row reader).
    pub fn tensor(self) -> Result<Cow<'a, Tensor>> {
        match self {
            BagInput::Tensor(t) => Ok(Cow::Borrowed(t)),
            BagInput::Rows(r) => {
                let (n, d) = r.dims();
                let all = r.read_all().map_err(candle_core::Error::wrap)?;
                Ok(Cow::Owned(Tensor::from_vec(all, (n, d), &Device::Cpu)?))
            }
        }
    }

    /// Patches and values per patch.
    pub fn dims(self) -> Result<(usize, usize)> {
        match self {
            BagInput::Tensor(t) => t.dims2(),
            BagInput::Rows(r) => Ok(r.dims()),
        }
    }
}

/// What a patient gives a model.
pub enum Input<'a> {
    /// Patch features (a patient's slides concatenated).
    Bag(BagInput<'a>),
    /// Standardised expression `[G]`.
    Expression(&'a Tensor),
    /// Both modalities of one patient, either possibly absent (multimodal models).
    Patient {
        bag: Option<BagInput<'a>>,
        expression: Option<&'a Tensor>,
    },
}

impl<'a> Input<'a> {
    /// A bag alone, from a tensor `[N, D]`.
    pub fn bag(t: &'a Tensor) -> Self {
        Input::Bag(BagInput::Tensor(t))
    }
}

/// What a model returns for one patient.
pub struct Output {
    /// Class scores `[C]`.
    pub logits: Tensor,
    /// The representation the head reads (`[d]`), for t-SNE and triplets.
    pub embedding: Tensor,
    /// One score per input patch, aligned with the bag's rows (MIL models).
    pub attention: Option<Tensor>,
}

pub trait Model {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output>;

    /// The training pass for a patient of class `label`: the output and the model's own
    /// auxiliary loss, already weighted, to add to the classification loss (CLAM's instance
    /// clustering); `None` for models without one.
    fn training_forward(
        &self,
        input: &Input,
        _label: usize,
        mode: &Mode,
    ) -> Result<(Output, Option<Tensor>)> {
        Ok((self.forward(input, mode)?, None))
    }

    /// Estimated peak resident memory, in bytes, of one training step on a bag of `patches`
    /// patches, the bag included (`--memory-limit`). The formula sits in the model's file with
    /// the measurements it was fitted to; `None` for models without one.
    fn training_step_bytes(&self, _patches: usize) -> Option<u64> {
        None
    }

    /// Weight of the classification loss when an auxiliary loss is present (CLAM: 0.7).
    fn bag_weight(&self) -> f64 {
        1.0
    }

    /// The self-supervised pre-training objective on a batch of patients that have both
    /// modalities (`(bag, expression)` pairs), for the models that have one (the image–omic
    /// adaptations of MGCA, BioViL and REFERS); `None` for the others.
    fn pretrain_loss(&self, _batch: &[(Tensor, Tensor)], _mode: &Mode) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Logits `[B, C]` of a batch of standardised expression rows `[B, G]`, for the
    /// expression-only models that can run patients as one batch (the supervised trainer then
    /// trains them on patient mini-batches); `None` for the others.
    fn expression_batch_logits(&self, _x: &Tensor, _mode: &Mode) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// Parameters fitted to the training patients' bags before training, by parameter name
    /// (MMP's morphological prototypes: k-means on training patches); `bags` reads the bags
    /// only when a model asks. None for most models.
    fn fit_to_training(
        &self,
        _bags: &dyn Fn() -> Result<Vec<Tensor>>,
        _seed: u64,
    ) -> Result<Vec<(String, Tensor)>> {
        Ok(Vec::new())
    }

    /// Whether the model adds a linear start to its logits (`crate::linear_start`): the
    /// trainer then fits its `linear_start.*` weights before training and freezes them.
    fn has_linear_start(&self) -> bool {
        false
    }

    /// The classification loss of one patient's logits `[C]`: cross-entropy, except for models
    /// whose reference trains otherwise (DSMIL: BCE on the one-hot label).
    fn classification_loss(&self, logits: &Tensor, label: usize) -> Result<Tensor> {
        gimp_nn::loss::cross_entropy(&logits.unsqueeze(0)?, &[label])
    }
}

/// The input's bag as it was given (a tensor or a row reader).
pub(crate) fn bag_source<'a>(input: &Input<'a>) -> Result<BagInput<'a>> {
    match input {
        Input::Bag(b) => Ok(*b),
        Input::Patient { bag: Some(b), .. } => Ok(*b),
        _ => candle_core::bail!("this model reads slide features, not expression"),
    }
}

/// The input's bag as a tensor `[N, D]`.
pub(crate) fn bag<'a>(input: &Input<'a>) -> Result<Cow<'a, Tensor>> {
    bag_source(input)?.tensor()
}

pub(crate) fn expression<'a>(input: &'a Input) -> Result<&'a Tensor> {
    match input {
        Input::Expression(t) => Ok(t),
        Input::Patient {
            expression: Some(t),
            ..
        } => Ok(t),
        _ => candle_core::bail!("this model reads expression, not slide features"),
    }
}
