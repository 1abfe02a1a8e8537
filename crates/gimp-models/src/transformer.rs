//! PyTorch's `nn.MultiheadAttention` and post-norm `nn.TransformerEncoderLayer`, by their
//! parameter names (`in_proj_weight`, `out_proj`, `linear1`, `norm1`, …), on one sequence
//! `[T, d]`: MCAT's transformers and the gene-token encoders of the image–omic baselines.

use candle_core::{Result, Tensor};
use gimp_nn::{ops, Activation, Init, LayerNorm, Linear, Mode, Scope};

/// PyTorch's `MultiheadAttention` parameters (`in_proj_weight` `[3d, d]`, `in_proj_bias`,
/// `out_proj`), xavier-uniform in-projection and zero biases as it initialises them.
pub struct MultiheadAttention {
    in_w: Tensor,
    in_b: Tensor,
    out: Linear,
    heads: usize,
}

impl MultiheadAttention {
    pub fn new(s: &Scope, d: usize, heads: usize) -> Result<Self> {
        let bound = (6.0 / (d + 3 * d) as f64).sqrt();
        Ok(Self {
            in_w: s.get("in_proj_weight", &[3 * d, d], Init::Uniform(bound))?,
            in_b: s.get("in_proj_bias", &[3 * d], Init::Constant(0.0))?,
            out: Linear::with_init(
                &s.pp("out_proj"),
                d,
                d,
                true,
                Init::torch_default(d),
                Init::Constant(0.0),
            )?,
            heads,
        })
    }

    /// Queries `[Lq, d]` attend to keys = values `[Lk, d]`; returns `[Lq, d]` and the first
    /// head's scaled pre-softmax scores `[Lq, Lk]` (MCAT's co-attention map; it has one head).
    pub fn forward(
        &self,
        q: &Tensor,
        kv: &Tensor,
        dropout: f64,
        mode: &Mode,
    ) -> Result<(Tensor, Tensor)> {
        let d = q.dim(1)?;
        let proj = |x: &Tensor, i: usize| -> Result<Tensor> {
            let w = self.in_w.narrow(0, i * d, d)?;
            let b = self.in_b.narrow(0, i * d, d)?;
            x.matmul(&w.t()?)?.broadcast_add(&b)
        };
        let (qp, kp, vp) = (proj(q, 0)?, proj(kv, 1)?, proj(kv, 2)?);
        let hd = d / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut outs = Vec::with_capacity(self.heads);
        let mut raw0 = None;
        for h in 0..self.heads {
            let (qh, kh, vh) = (
                qp.narrow(1, h * hd, hd)?,
                kp.narrow(1, h * hd, hd)?,
                vp.narrow(1, h * hd, hd)?,
            );
            let raw = (qh.matmul(&kh.t()?)? * scale)?;
            let a = ops::dropout(&ops::softmax_last(&raw)?, dropout, mode)?;
            outs.push(a.matmul(&vh)?);
            if h == 0 {
                raw0 = Some(raw);
            }
        }
        let o = Tensor::cat(&outs, 1)?;
        Ok((self.out.forward(&o)?, raw0.unwrap_or(o)))
    }
}

/// `nn.TransformerEncoderLayer(d, heads, ffn, dropout, relu)`, post-norm (PyTorch's default).
pub struct EncoderLayer {
    attn: MultiheadAttention,
    linear1: Linear,
    linear2: Linear,
    norm1: LayerNorm,
    norm2: LayerNorm,
}

impl EncoderLayer {
    pub fn new(s: &Scope, d: usize, heads: usize, ffn: usize) -> Result<Self> {
        Ok(Self {
            attn: MultiheadAttention::new(&s.pp("self_attn"), d, heads)?,
            linear1: Linear::new(&s.pp("linear1"), d, ffn, true)?,
            linear2: Linear::new(&s.pp("linear2"), ffn, d, true)?,
            norm1: LayerNorm::new(&s.pp("norm1"), d)?,
            norm2: LayerNorm::new(&s.pp("norm2"), d)?,
        })
    }

    /// Tokens `[T, d]` → `[T, d]`.
    pub fn forward(&self, x: &Tensor, p: f64, mode: &Mode) -> Result<Tensor> {
        let (sa, _) = self.attn.forward(x, x, p, mode)?;
        let x = self.norm1.forward(&(x + ops::dropout(&sa, p, mode)?)?)?;
        let ff = self.linear1.forward_act(&x, Activation::Relu)?;
        let ff = self.linear2.forward(&ops::dropout(&ff, p, mode)?)?;
        self.norm2.forward(&(x + ops::dropout(&ff, p, mode)?)?)
    }
}
