//! REFERS (Zhou et al. 2022, funnyzhou/REFERS), image–omic adaptation ("cross-supervision from
//! genes", `docs/DESIGN.md` §26). Views: a patient's slide split into `views` spatial regions
//! (contiguous runs of CLAM's row order, which follows the tissue), each encoded by the shared
//! aggregator, its tokens plus its CLS; REFERS' view fusion weighs every token position of every
//! view by a sigmoid of the channel-concatenated views and concatenates the weighted views along
//! the sequence. Report generation becomes gene-expression prediction: a one-layer post-norm
//! transformer decoder whose queries are learned gene-token embeddings cross-attends to the fused
//! tokens and regresses the standardised chunks (MSE). Study–report contrast becomes
//! slide–expression contrast, ConVIRT form (τ 0.1, λ 0.75) on the concatenated view CLS and the
//! projected gene CLS, **both directions with gradient** (the original detaches the
//! text→image term). `L = L_gene + L_con`. Then fine-tuned as every adaptation is.

use crate::arch::{
    config, no_reference, to_value, ArchInfo, InputKind, Pretraining, Training, TrainingDefaults,
};
use crate::image_omic::{l2_normalise, sample_rows, Encoders, ImageOmicConfig};
use crate::model::{Input, Model, Output};
use crate::transformer::MultiheadAttention;
use candle_core::{Result, Tensor};
use gimp_nn::{loss, ops, Init, LayerNorm, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefersConfig {
    pub encoders: ImageOmicConfig,
    /// Spatial views per slide (REFERS: up to 3 radiographs).
    pub views: usize,
    pub temperature: f64,
    /// ConVIRT's λ: weight of image→genes.
    pub lambda: f64,
}

impl RefersConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            encoders: ImageOmicConfig::new(d_in, n_genes, n_classes),
            views: 2,
            temperature: 0.1,
            lambda: 0.75,
        }
    }
}

/// Post-norm decoder layer: self-attention, cross-attention, feed-forward (GELU).
struct DecoderLayer {
    self_attn: MultiheadAttention,
    cross_attn: MultiheadAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
    norm3: LayerNorm,
}

impl DecoderLayer {
    fn new(s: &Scope, d: usize) -> Result<Self> {
        Ok(Self {
            self_attn: MultiheadAttention::new(&s.pp("self_attn"), d, 4)?,
            cross_attn: MultiheadAttention::new(&s.pp("multihead_attn"), d, 4)?,
            linear1: Linear::new(&s.pp("linear1"), d, 4 * d, true)?,
            linear2: Linear::new(&s.pp("linear2"), 4 * d, d, true)?,
            norm1: LayerNorm::new(&s.pp("norm1"), d)?,
            norm2: LayerNorm::new(&s.pp("norm2"), d)?,
            norm3: LayerNorm::new(&s.pp("norm3"), d)?,
        })
    }

    fn forward(&self, q: &Tensor, memory: &Tensor, p: f64, mode: &Mode) -> Result<Tensor> {
        let (sa, _) = self.self_attn.forward(q, q, p, mode)?;
        let x = self.norm1.forward(&(q + ops::dropout(&sa, p, mode)?)?)?;
        let (ca, _) = self.cross_attn.forward(&x, memory, p, mode)?;
        let x = self.norm2.forward(&(&x + ops::dropout(&ca, p, mode)?)?)?;
        let ff = self
            .linear2
            .forward(&ops::gelu(&self.linear1.forward(&x)?)?)?;
        self.norm3.forward(&(&x + ops::dropout(&ff, p, mode)?)?)
    }
}

pub struct Refers {
    pub cfg: RefersConfig,
    enc: Encoders,
    view_gates: Vec<Linear>,
    queries: Tensor,
    decoder: DecoderLayer,
    predict: Linear,
    text_proj: Linear,
}

impl Refers {
    pub fn new(s: &Scope, cfg: RefersConfig) -> Result<Self> {
        let c = &cfg.encoders;
        let (d, k) = (c.dim, cfg.views.max(1));
        Ok(Self {
            enc: Encoders::new(s, c.clone(), false)?,
            view_gates: (0..k)
                .map(|i| Linear::new(&s.pp(format!("fusion.{i}")), k * d, 1, true))
                .collect::<Result<_>>()?,
            queries: s.get("gene_queries", &[c.n_tokens(), d], Init::Normal(0.02))?,
            decoder: DecoderLayer::new(&s.pp("decoder"), d)?,
            predict: Linear::new(&s.pp("predict"), d, c.fragment, true)?,
            text_proj: Linear::new(&s.pp("text_proj"), d, k * d, true)?,
            cfg,
        })
    }

    /// The fused image tokens `[views · M, d]` and the views' CLS concatenated `[views · d]`.
    fn fused_views(&self, x: &Tensor, mode: &Mode) -> Result<(Tensor, Tensor)> {
        let k = self.cfg.views.max(1);
        let n = x.dim(0)?;
        let m = (n / k).max(1);
        let mut tokens = Vec::with_capacity(k);
        let mut cls = Vec::with_capacity(k);
        for v in 0..k {
            // Contiguous runs of rows; a bag shorter than the views reuses its rows.
            let start = (v * m).min(n.saturating_sub(m));
            let (c, t, _) = self
                .enc
                .image(&x.narrow(0, start, m.min(n))?, mode, false)?;
            tokens.push(t.broadcast_add(&c)?);
            cls.push(c);
        }
        let channels = Tensor::cat(&tokens, 1)?; // [M, k·d]
        let weighted = tokens
            .iter()
            .zip(&self.view_gates)
            .map(|(t, g)| t.broadcast_mul(&ops::sigmoid(&g.forward(&channels)?)?))
            .collect::<Result<Vec<_>>>()?;
        Ok((Tensor::cat(&weighted, 0)?, Tensor::cat(&cls, 0)?))
    }
}

impl Model for Refers {
    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        self.enc.classify(input, mode)
    }

    fn pretrain_loss(&self, batch: &[(Tensor, Tensor)], mode: &Mode) -> Result<Option<Tensor>> {
        let p = self.cfg.encoders.dropout;
        let (mut img, mut txt, mut gene_loss) = (Vec::new(), Vec::new(), Vec::new());
        for (x, g) in batch {
            let x = sample_rows(x, self.cfg.encoders.patches, mode)?;
            let (fused, cls) = self.fused_views(&x, mode)?;
            let h = self.decoder.forward(&self.queries, &fused, p, mode)?;
            let pred = self.predict.forward(&h)?;
            gene_loss.push((pred - self.enc.genes.chunks(g)?)?.sqr()?.mean_all()?);
            img.push(cls.unsqueeze(0)?);
            let gc = self.enc.genes.encode(g, &[], mode)?.get(0)?.unsqueeze(0)?;
            txt.push(self.text_proj.forward(&gc)?);
        }
        let v = l2_normalise(&Tensor::cat(&img, 0)?)?;
        let u = l2_normalise(&Tensor::cat(&txt, 0)?)?;
        let s = v.matmul(&u.t()?)?.affine(1.0 / self.cfg.temperature, 0.0)?;
        let diag: Vec<usize> = (0..s.dim(0)?).collect();
        let v2u = loss::cross_entropy(&s, &diag)?;
        let u2v = loss::cross_entropy(&s.t()?.contiguous()?, &diag)?;
        let con = ((v2u * self.cfg.lambda)? + (u2v * (1.0 - self.cfg.lambda))?)?;
        let gene = Tensor::stack(&gene_loss, 0)?.mean_all()?;
        Ok(Some((gene + con)?))
    }
}

/// The REFERS adaptation in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "refers",
    summary: "REFERS image–omic adaptation: fused spatial views predict expression + ConVIRT contrast, then fine-tuning (Zhou et al. 2022)",
    reference: "gimp-rs (docs/DESIGN.md §26; objectives of funnyzhou/REFERS)",
    input: InputKind::Paired,
    training: Training::Supervised(TrainingDefaults {
        pretraining: Some(Pretraining::MGCA),
        ..TrainingDefaults::ADAMW
    }),
    default_config: |d, c| to_value(&RefersConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Refers::new(s, config(v)?)?)),
    config_from_weights: |_| no_reference("refers"),
    set_gene_groups: None,
};
