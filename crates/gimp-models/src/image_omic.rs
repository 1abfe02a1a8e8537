//! What the image–omic pre-training adaptations of MGCA, BioViL and REFERS share
//! (`docs/DESIGN.md` §23–§26): the encoders, the projection heads, the losses, and the
//! fine-tuned classifier. A component of [`crate::mgca`], [`crate::biovil`] and
//! [`crate::refers`], not a model.
//!
//! * Image encoder: the WSI patch aggregator (frozen 1024-d features → Linear+ReLU → two Nyström
//!   layers with CLS, as GiMP's); global = CLS, local tokens = the patch tokens.
//! * Gene encoder ("text" → genes): the expression cut into fixed-size chunks in gene order (the
//!   last one zero-padded), each linearly embedded with a learned position, a CLS, and a small
//!   post-norm transformer. Gene tokens play the part of words.
//! * Fine-tuning (every adaptation): `Linear(2d → C)` on `[CLS_img, CLS_gene]` with both encoders
//!   trained, cross-entropy — image–omic classification, as GiMP.

use crate::aggregator::{AggregatorConfig, PatchAggregator};
use crate::model::{bag, expression, Input, Output};
use crate::transformer::EncoderLayer;
use candle_core::{Result, Tensor, D};
use gimp_nn::{loss, ops, Init, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageOmicConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    /// Width of both encoders.
    pub dim: usize,
    /// Genes per gene token.
    pub fragment: usize,
    /// Layers of the gene transformer (heads: 4, feed-forward: 2 × dim).
    pub gene_layers: usize,
    /// Width of the joint embedding space (128 in all three papers).
    pub proj_dim: usize,
    /// Patches sampled per slide in a pre-training batch.
    pub patches: usize,
    pub dropout: f64,
}

impl ImageOmicConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            dim: 256,
            fragment: (n_genes / 64).clamp(1, 256),
            gene_layers: 2,
            proj_dim: 128,
            patches: 512,
            dropout: 0.1,
        }
    }

    pub fn n_tokens(&self) -> usize {
        self.n_genes.div_ceil(self.fragment.max(1))
    }
}

/// Gene chunks → tokens → transformer; `[1 + T, d]` with CLS first.
pub struct GeneEncoder {
    fragment: usize,
    n_tokens: usize,
    embed: Linear,
    pos: Tensor,
    cls: Tensor,
    /// BioViL's [MASK] value embedding (only models that mask have one).
    mask: Option<Tensor>,
    layers: Vec<EncoderLayer>,
    dropout: f64,
}

impl GeneEncoder {
    pub fn new(s: &Scope, c: &ImageOmicConfig, with_mask: bool) -> Result<Self> {
        let t = c.n_tokens();
        Ok(Self {
            fragment: c.fragment,
            n_tokens: t,
            embed: Linear::new(&s.pp("embed"), c.fragment, c.dim, true)?,
            pos: s.get("pos", &[t, c.dim], Init::Normal(0.02))?,
            cls: s.get("cls", &[1, c.dim], Init::Normal(0.02))?,
            mask: if with_mask {
                Some(s.get("mask_token", &[1, c.dim], Init::Normal(0.02))?)
            } else {
                None
            },
            layers: (0..c.gene_layers)
                .map(|i| EncoderLayer::new(&s.pp(format!("layers.{i}")), c.dim, 4, 2 * c.dim))
                .collect::<Result<_>>()?,
            dropout: c.dropout,
        })
    }

    pub fn n_tokens(&self) -> usize {
        self.n_tokens
    }

    /// The expression `[G]` as chunks `[T, fragment]` (the last one zero-padded).
    pub fn chunks(&self, g: &Tensor) -> Result<Tensor> {
        let pad = self.n_tokens * self.fragment - g.dim(0)?;
        g.pad_with_zeros(0, 0, pad)?
            .reshape((self.n_tokens, self.fragment))
    }

    /// `[1 + T, d]`; tokens listed in `masked` get the [MASK] embedding instead of their values.
    pub fn encode(&self, g: &Tensor, masked: &[usize], mode: &Mode) -> Result<Tensor> {
        let mut tok = self.embed.forward(&self.chunks(g)?)?;
        if let (false, Some(mask)) = (masked.is_empty(), &self.mask) {
            let keep: Vec<f32> = (0..self.n_tokens)
                .map(|i| f32::from(u8::from(!masked.contains(&i))))
                .collect();
            let keep = Tensor::from_vec(keep, (self.n_tokens, 1), g.device())?;
            let mask = mask.broadcast_as(tok.shape())?;
            tok = (tok.broadcast_mul(&keep)? + mask.broadcast_mul(&keep.affine(-1.0, 1.0)?)?)?;
        }
        let mut x = Tensor::cat(&[&self.cls, &(tok + &self.pos)?], 0)?;
        for l in &self.layers {
            x = l.forward(&x, self.dropout, mode)?;
        }
        Ok(x)
    }
}

/// Both encoders and the fine-tuning classifier.
pub struct Encoders {
    pub cfg: ImageOmicConfig,
    pub image: PatchAggregator,
    pub genes: GeneEncoder,
    classifier: Linear,
}

impl Encoders {
    /// `with_mask`: the gene encoder gets a [MASK] embedding (BioViL's masked gene modelling).
    pub fn new(s: &Scope, cfg: ImageOmicConfig, with_mask: bool) -> Result<Self> {
        let mut a = AggregatorConfig::gimp(cfg.d_in);
        a.dim = cfg.dim;
        a.attention.dim = cfg.dim;
        a.attention.heads = 4;
        a.attention.dim_head = cfg.dim / 4;
        a.attention.landmarks = 64;
        Ok(Self {
            image: PatchAggregator::new(&s.pp("image"), a)?,
            genes: GeneEncoder::new(&s.pp("genes"), &cfg, with_mask)?,
            classifier: Linear::new(&s.pp("classifier"), 2 * cfg.dim, cfg.n_classes, true)?,
            cfg,
        })
    }

    /// `(CLS_img [d], patch tokens [N, d], CLS attention over patches [N] when asked)`.
    pub fn image(
        &self,
        x: &Tensor,
        mode: &Mode,
        attention: bool,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        let n = x.dim(0)?;
        let e = self.image.encode(self.image.embed(x)?, mode, attention)?;
        let t = e.tokens.squeeze(0)?;
        Ok((t.get(0)?, t.narrow(0, 1, n)?, e.attention))
    }

    /// The fine-tuned classifier on `[CLS_img, CLS_gene]`.
    pub fn classify(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let (ci, _, attention) = self.image(&*bag(input)?, mode, !mode.train)?;
        let cg = self.genes.encode(expression(input)?, &[], mode)?.get(0)?;
        let h = Tensor::cat(&[&ci, &cg], 0)?;
        let logits = self
            .classifier
            .forward(&ops::dropout(&h.unsqueeze(0)?, self.cfg.dropout, mode)?)?
            .squeeze(0)?;
        Ok(Output {
            logits,
            embedding: h,
            attention,
        })
    }
}

/// BatchNorm over rows with batch statistics (pre-training only; no running averages are
/// needed because the projection heads are dropped after it).
pub struct BatchNorm {
    affine: Option<(Tensor, Tensor)>,
}

impl BatchNorm {
    pub fn new(s: &Scope, dim: usize, affine: bool) -> Result<Self> {
        Ok(Self {
            affine: if affine {
                Some((
                    s.get("weight", &[dim], Init::Constant(1.0))?,
                    s.get("bias", &[dim], Init::Constant(0.0))?,
                ))
            } else {
                None
            },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(0)?;
        let c = x.broadcast_sub(&mean)?;
        let var = c.sqr()?.mean_keepdim(0)?;
        let y = c.broadcast_div(&(var + 1e-5)?.sqrt()?)?;
        match &self.affine {
            Some((w, b)) => y.broadcast_mul(w)?.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// MGCA's projection: `Linear(d → h) – BN – ReLU – Linear(h → e) – BN(affine = False)`.
pub struct Projection {
    l1: Linear,
    bn1: BatchNorm,
    l2: Linear,
    bn2: BatchNorm,
}

impl Projection {
    pub fn new(s: &Scope, d: usize, hidden: usize, e: usize) -> Result<Self> {
        Ok(Self {
            l1: Linear::new(&s.pp("0"), d, hidden, true)?,
            bn1: BatchNorm::new(&s.pp("1"), hidden, true)?,
            l2: Linear::new(&s.pp("3"), hidden, e, true)?,
            bn2: BatchNorm::new(&s.pp("4"), e, false)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.bn1.forward(&self.l1.forward(x)?)?.relu()?;
        self.bn2.forward(&self.l2.forward(&h)?)
    }
}

pub fn l2_normalise(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()? + 1e-12)?)
}

/// Cross-entropy of `S` and of `Sᵀ` against the diagonal, summed (MGCA's ITA; BioViL halves it).
pub fn clip_loss(v: &Tensor, t: &Tensor, temperature: f64) -> Result<Tensor> {
    let s = l2_normalise(v)?
        .matmul(&l2_normalise(t)?.t()?)?
        .affine(1.0 / temperature, 0.0)?;
    let diag: Vec<usize> = (0..s.dim(0)?).collect();
    loss::cross_entropy(&s, &diag)? + loss::cross_entropy(&s.t()?.contiguous()?, &diag)?
}

/// One direction of MGCA's token-wise alignment for one sample, uniform token weights: every
/// query token attends to the other modality's tokens (softmax at `τ`), the attended vectors are
/// normalised, and each query must pick its own attended vector among all of them, by rows and by
/// columns; the mean of the two.
pub fn token_alignment(queries: &Tensor, keys: &Tensor, temperature: f64) -> Result<Tensor> {
    let q = l2_normalise(queries)?;
    let k = l2_normalise(keys)?;
    let a = ops::softmax_last(&q.matmul(&k.t()?)?.affine(1.0 / temperature, 0.0)?)?;
    let c = l2_normalise(&a.matmul(&k)?)?;
    let s = q.matmul(&c.t()?)?.affine(1.0 / temperature, 0.0)?;
    let diag: Vec<usize> = (0..s.dim(0)?).collect();
    (loss::cross_entropy(&s, &diag)? + loss::cross_entropy(&s.t()?.contiguous()?, &diag)?)? * 0.5
}

/// Sinkhorn–Knopp targets (no gradient) for scores `[B, K]`: `exp(u/ε)`, then alternately rows
/// (prototypes) to 1/K and columns (samples) to 1/B, `iters` times; columns finally sum to 1.
pub fn sinkhorn(scores: &Tensor, eps: f64, iters: usize) -> Result<Tensor> {
    let u = scores.detach();
    let (b, k) = u.dims2()?;
    // Subtracting the maximum keeps exp finite; the normalisation removes the constant.
    let u = u.broadcast_sub(&u.max_keepdim(D::Minus1)?.max_keepdim(0)?)?;
    let mut q = (u / eps)?.exp()?.t()?; // [K, B]
    q = q.broadcast_div(&q.sum_all()?)?;
    for _ in 0..iters {
        q = (q.broadcast_div(&q.sum_keepdim(1)?)? / k as f64)?;
        q = (q.broadcast_div(&q.sum_keepdim(0)?)? / b as f64)?;
    }
    (q * b as f64)?.t()
}

/// MGCA's prototype-level alignment: swapped prediction between the two modalities' prototype
/// assignments.
pub fn prototype_alignment(
    v: &Tensor,
    t: &Tensor,
    prototypes: &Tensor,
    eps: f64,
    temperature: f64,
) -> Result<Tensor> {
    let c = l2_normalise(prototypes)?;
    let u = l2_normalise(v)?.matmul(&c.t()?)?;
    let r = l2_normalise(t)?.matmul(&c.t()?)?;
    let (qv, qt) = (sinkhorn(&u, eps, 3)?, sinkhorn(&r, eps, 3)?);
    let lp = |x: &Tensor| ops::log_softmax_last(&x.affine(1.0 / temperature, 0.0)?);
    let a = (qv * lp(&r)?)?.sum(D::Minus1)?.mean_all()?;
    let b = (qt * lp(&u)?)?.sum(D::Minus1)?.mean_all()?;
    (a + b)? * -0.5
}

/// Up to `k` rows of a bag, drawn without replacement by the mode's random stream (all rows
/// when the bag is smaller or the mode is not training).
pub fn sample_rows(x: &Tensor, k: usize, mode: &Mode) -> Result<Tensor> {
    let n = x.dim(0)?;
    if n <= k || !mode.train {
        return Ok(x.clone());
    }
    let idx: Vec<u32> = mode.with_rng(|rng| {
        let mut v = rand::seq::index::sample(rng, n, k).into_vec();
        v.sort_unstable();
        v.into_iter().map(|i| i as u32).collect()
    });
    x.index_select(&Tensor::new(idx.as_slice(), x.device())?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn sinkhorn_gives_equipartitioned_assignments() {
        let u = Tensor::new(
            &[
                [0.9f32, 0.1, 0.0],
                [0.8, 0.2, 0.1],
                [0.1, 0.7, 0.3],
                [0.0, 0.2, 0.9],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let q = sinkhorn(&u, 0.05, 3).unwrap();
        // Each sample's assignment sums to 1; prototypes share the samples roughly equally.
        for s in q.sum(1).unwrap().to_vec1::<f32>().unwrap() {
            assert!((s - 1.0).abs() < 1e-4, "{s}");
        }
        let per_proto = q.sum(0).unwrap().to_vec1::<f32>().unwrap();
        assert!(
            per_proto.iter().all(|&p| p > 0.5 && p < 2.0),
            "{per_proto:?}"
        );
    }

    #[test]
    fn contrastive_losses_prefer_matched_pairs() {
        let a = Tensor::new(
            &[[1f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
            &Device::Cpu,
        )
        .unwrap();
        let shuffled = Tensor::new(
            &[[0f32, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],
            &Device::Cpu,
        )
        .unwrap();
        let good = clip_loss(&a, &a, 0.07).unwrap().to_scalar::<f32>().unwrap();
        let bad = clip_loss(&a, &shuffled, 0.07)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(good < 1e-3 && bad > 10.0, "{good} {bad}");
        let t_good = token_alignment(&a, &a, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let t_bad = token_alignment(
            &a,
            &Tensor::ones((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
            0.1,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(t_good < t_bad, "{t_good} {t_bad}");
    }
}
