//! DSMIL, dual-stream MIL (Li et al. 2021; binli123/dsmil-wsi `dsmil.py`, `docs/DESIGN.md`
//! §18), with the reference's defaults: stream 1 an instance classifier with max-pooling; stream 2
//! attention to each class's critical instance through `q` (Linear → ReLU → Linear → Tanh, 128),
//! identity values, and the bag classifier `Conv1d(C, C, kernel = K)` over the class bag
//! vectors. Trained with `0.5·BCE(bag) + 0.5·BCE(max)` on one-hot labels. Names are the
//! reference's (`i_classifier.fc.0`, `b_classifier.q.{0,2}`, `b_classifier.fcc`).

use crate::arch::{config, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::model::{bag, Input, Model, Output};
use candle_core::{Result, Tensor, D};
use gimp_nn::{loss, ops, Init, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DsmilConfig {
    pub d_in: usize,
    pub n_classes: usize,
    /// Width of the query projection (128).
    pub q_dim: usize,
}

impl DsmilConfig {
    pub fn new(d_in: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_classes,
            q_dim: 128,
        }
    }
}

pub struct Dsmil {
    pub cfg: DsmilConfig,
    instance: Linear,
    q1: Linear,
    q2: Linear,
    /// `Conv1d(C, C, K)` weight `[C, C, K]` and bias `[C]`.
    fcc_w: Tensor,
    fcc_b: Tensor,
}

impl Dsmil {
    pub fn new(s: &Scope, cfg: DsmilConfig) -> Result<Self> {
        let (k, c) = (cfg.d_in, cfg.n_classes);
        let b = s.pp("b_classifier");
        let fcc = b.pp("fcc");
        // PyTorch's default for Conv1d: U(±1/√(C·K)) for weight and bias.
        let bound = 1.0 / ((c * k) as f64).sqrt();
        Ok(Self {
            instance: Linear::new(&s.pp("i_classifier.fc.0"), k, c, true)?,
            q1: Linear::new(&b.pp("q.0"), k, cfg.q_dim, true)?,
            q2: Linear::new(&b.pp("q.2"), cfg.q_dim, cfg.q_dim, true)?,
            fcc_w: fcc.get("weight", &[c, c, k], Init::Uniform(bound))?,
            fcc_b: fcc.get("bias", &[c], Init::Uniform(bound))?,
            cfg,
        })
    }

    fn q(&self, h: &Tensor) -> Result<Tensor> {
        self.q2.forward(&self.q1.forward(h)?.relu()?)?.tanh()
    }

    /// (bag logits `[C]`, max-instance logits `[C]`, attention `[N, C]`).
    fn streams(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (c, k) = (self.cfg.n_classes, self.cfg.d_in);
        let inst = self.instance.forward(x)?; // [N, C]
        let max_logits = inst.max(0)?; // [C]
                                       // The critical instance of each class: its highest-scoring patch.
        let critical = inst.argmax(0)?; // [C] u32
        let q = self.q(x)?; // [N, q]
        let q_max = self.q(&x.index_select(&critical, 0)?)?; // [C, q]
        let scores = (q.matmul(&q_max.t()?)? / (self.cfg.q_dim as f64).sqrt())?; // [N, C]
        let a = ops::softmax_last(&scores.t()?)?; // [C, N], softmax over instances
        let b = a.matmul(x)?; // [C, K]
        let w = self.fcc_w.reshape((c, c * k))?;
        let bag = w
            .matmul(&b.reshape((c * k, 1))?)?
            .squeeze(1)?
            .add(&self.fcc_b)?;
        Ok((bag, max_logits, a.t()?))
    }
}

fn one_hot(label: usize, c: usize, like: &Tensor) -> Result<Tensor> {
    let v: Vec<f32> = (0..c).map(|i| f32::from(u8::from(i == label))).collect();
    Tensor::from_vec(v, (1, c), like.device())
}

impl Model for Dsmil {
    fn forward(&self, input: &Input, _mode: &Mode) -> Result<Output> {
        let x = &*bag(input)?;
        let (logits, _, a) = self.streams(x)?;
        // Per-patch score for heatmaps: attention to the critical instance of the predicted class.
        let predicted = logits.argmax(D::Minus1)?.to_scalar::<u32>()? as usize;
        let attention = a.narrow(1, predicted, 1)?.squeeze(1)?;
        let embedding = logits.clone();
        Ok(Output {
            logits,
            embedding,
            attention: Some(attention),
        })
    }

    fn training_forward(
        &self,
        input: &Input,
        label: usize,
        _mode: &Mode,
    ) -> Result<(Output, Option<Tensor>)> {
        let x = &*bag(input)?;
        let (logits, max_logits, a) = self.streams(x)?;
        let y = one_hot(label, self.cfg.n_classes, &logits)?;
        let max_loss = loss::bce_with_logits(&max_logits.unsqueeze(0)?, &y)?;
        let out = Output {
            embedding: logits.clone(),
            attention: Some(a.narrow(1, label, 1)?.squeeze(1)?),
            logits,
        };
        Ok((out, Some(max_loss.affine(0.5, 0.0)?)))
    }

    fn bag_weight(&self) -> f64 {
        0.5
    }

    fn classification_loss(&self, logits: &Tensor, label: usize) -> Result<Tensor> {
        let y = one_hot(label, self.cfg.n_classes, logits)?;
        loss::bce_with_logits(&logits.unsqueeze(0)?, &y)
    }
}

/// DSMIL in the registry: its reference trains with Adam (β 0.5, 0.9), an L2 decay of 1e-3 and
/// a cosine-annealed rate.
pub const ARCH: ArchInfo = ArchInfo {
    name: "dsmil",
    summary: "DSMIL: dual-stream MIL, max-pooled instance classifier + critical-instance attention (Li et al. 2021)",
    reference: "binli123/dsmil-wsi dsmil.py MILNet",
    input: InputKind::Slide,
    training: Training::Supervised(TrainingDefaults {
        epochs: 50,
        lr: 1e-4,
        weight_decay: 1e-3,
        optimizer: gimp_nn::optim::Kind::AdamL2,
        betas: (0.5, 0.9),
        cosine: true,
        accumulate: 1,
        pretraining: None,
        top_variance_genes: None,
    }),
    default_config: |d, c| to_value(&DsmilConfig::new(d.features, c)),
    build: |s, v| Ok(Box::new(Dsmil::new(s, config(v)?)?)),
    config_from_weights: |w| {
        let fc = shape(w, "i_classifier.fc.0.weight")?;
        let mut c = DsmilConfig::new(fc[1], fc[0]);
        c.q_dim = shape(w, "b_classifier.q.0.weight")?[0];
        Ok(to_value(&c))
    },
    set_gene_groups: None,
};
