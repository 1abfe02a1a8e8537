//! The patch aggregator of GiMP (`docs/DESIGN.md` §5) and TransMIL (`docs/DESIGN.md` §15):
//! `Linear(D_in → d) + ReLU`, a learnable CLS token, two pre-norm Nyström-attention layers
//! (no feed-forward block), optional PPEG between them, a final LayerNorm. Parameter names are
//! TransMIL's (`_fc1.0`, `cls_token`, `layer{1,2}.{norm,attn}`, `pos_layer.proj{,1,2}`, `norm`),
//! so a TransMIL state dict loads into it.
//!
//! Memory is linear in the bag: Nyström attention never forms an `N × N` matrix.

use candle_core::{Result, Tensor};
use gimp_nn::cpu::lanes::layer_norm_rows;
use gimp_nn::cpu::matmul::linear_rows;
use gimp_nn::cpu::matmul::View;
use gimp_nn::nystrom::{choose_path, NystromAttention, NystromConfig, NystromPath};
use gimp_nn::{Activation, Init, LayerNorm, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AggregatorConfig {
    pub d_in: usize,
    pub dim: usize,
    pub layers: usize,
    pub attention: NystromConfig,
    /// PPEG (depthwise 7/5/3 convolutions on the token grid) after the first layer.
    pub ppeg: bool,
    /// Pad the patch tokens to a square by repeating the first ones (TransMIL); needed by PPEG.
    pub square_pad: bool,
}

impl AggregatorConfig {
    /// GiMP's aggregator: d 512, 8 heads × 64, 256 landmarks, no PPEG.
    pub fn gimp(d_in: usize) -> Self {
        Self {
            d_in,
            dim: 512,
            layers: 2,
            attention: NystromConfig::transmil(512),
            ppeg: false,
            square_pad: false,
        }
    }

    /// TransMIL's: the same layers with square padding and PPEG.
    pub fn transmil(d_in: usize) -> Self {
        Self {
            ppeg: true,
            square_pad: true,
            ..Self::gimp(d_in)
        }
    }
}

/// `x + DW7(x) + DW5(x) + DW3(x)` on the `s × s` grid of patch tokens (CLS untouched).
pub struct Ppeg {
    convs: Vec<(usize, Tensor, Tensor)>,
}

impl Ppeg {
    pub fn new(s: &Scope, dim: usize) -> Result<Self> {
        let convs = [("proj", 7usize), ("proj1", 5), ("proj2", 3)]
            .into_iter()
            .map(|(name, k)| {
                let init = Init::torch_default(k * k);
                let w = s.pp(name).get("weight", &[dim, 1, k, k], init)?;
                let b = s.pp(name).get("bias", &[dim], init)?;
                Ok((k, w, b))
            })
            .collect::<Result<_>>()?;
        Ok(Self { convs })
    }

    /// `tokens`: `[1, 1 + s², dim]`.
    pub fn forward(&self, tokens: &Tensor, side: usize) -> Result<Tensor> {
        let (_, t, c) = tokens.dims3()?;
        let cls = tokens.narrow(1, 0, 1)?;
        let grid = tokens.narrow(1, 1, t - 1)?.reshape((side, side, c))?;
        let mut out = grid.clone();
        for (k, w, b) in &self.convs {
            let r = k / 2;
            let padded = grid.pad_with_zeros(0, r, r)?.pad_with_zeros(1, r, r)?;
            let w = w.reshape((c, k * k))?.t()?.contiguous()?; // [k², C]
            let mut acc = b
                .reshape((1, 1, c))?
                .broadcast_as((side, side, c))?
                .contiguous()?;
            for di in 0..*k {
                for dj in 0..*k {
                    let tap = w.get(di * k + dj)?.reshape((1, 1, c))?;
                    let shifted = padded.narrow(0, di, side)?.narrow(1, dj, side)?;
                    acc = (acc + shifted.broadcast_mul(&tap)?)?;
                }
            }
            out = (out + acc)?;
        }
        Tensor::cat(&[cls, out.reshape((1, side * side, c))?], 1)
    }
}

struct TransLayer {
    norm: LayerNorm,
    attn: NystromAttention,
}

impl TransLayer {
    fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        self.attn.forward_prenorm_residual(&self.norm, x, mode)
    }
}

/// Output of the aggregator for one bag.
pub struct Encoded {
    /// All tokens after the final LayerNorm, `[1, T, dim]`; token 0 is CLS.
    pub tokens: Tensor,
    /// CLS attention of the last layer over the original patches, `[N]` (mean over heads,
    /// square-padding duplicates folded back onto the patches they copy), when requested.
    pub attention: Option<Tensor>,
}

pub struct PatchAggregator {
    pub cfg: AggregatorConfig,
    fc1: Linear,
    cls: Tensor,
    layers: Vec<TransLayer>,
    ppeg: Option<Ppeg>,
    norm: LayerNorm,
}

impl PatchAggregator {
    pub fn new(s: &Scope, cfg: AggregatorConfig) -> Result<Self> {
        let fc1 = Linear::new(&s.pp("_fc1.0"), cfg.d_in, cfg.dim, true)?;
        let cls = s.get("cls_token", &[1, 1, cfg.dim], Init::Normal(1.0))?;
        let mut att = cfg.attention.clone();
        att.dim = cfg.dim;
        let layers = (1..=cfg.layers)
            .map(|i| {
                let l = s.pp(format!("layer{i}"));
                Ok(TransLayer {
                    norm: LayerNorm::new(&l.pp("norm"), cfg.dim)?,
                    attn: NystromAttention::new(&l.pp("attn"), att.clone())?,
                })
            })
            .collect::<Result<_>>()?;
        let ppeg = if cfg.ppeg {
            Some(Ppeg::new(&s.pp("pos_layer"), cfg.dim)?)
        } else {
            None
        };
        Ok(Self {
            fc1,
            cls,
            layers,
            ppeg,
            norm: LayerNorm::new(&s.pp("norm"), cfg.dim)?,
            cfg,
        })
    }

    /// `Linear + ReLU` on every patch: `[N, D_in]` → `[1, N, dim]`. Masked patch modelling
    /// replaces rows of this before [`Self::encode`].
    pub fn embed(&self, x: &Tensor) -> Result<Tensor> {
        self.fc1.forward_act(x, Activation::Relu)?.unsqueeze(0)
    }

    /// Square padding, CLS, the layers (with PPEG), the final norm.
    pub fn encode(&self, h: &Tensor, mode: &Mode, with_attention: bool) -> Result<Encoded> {
        self.encode_rows(h, mode, with_attention, None)
    }

    /// The final tokens at `rows` only (token indices with CLS at 0 and square-padding copies
    /// after the patches, increasing), `[1, |rows|, dim]`: what [`Self::encode`] gives at those
    /// rows. The last layer computes just those rows (every token still serves as key, value
    /// and landmark there), unless PPEG follows it (a one-layer TransMIL).
    pub fn encode_selected(&self, h: &Tensor, mode: &Mode, rows: &[usize]) -> Result<Tensor> {
        Ok(self.encode_rows(h, mode, false, Some(rows))?.tokens)
    }

    fn encode_rows(
        &self,
        h: &Tensor,
        mode: &Mode,
        with_attention: bool,
        rows: Option<&[usize]>,
    ) -> Result<Encoded> {
        let (_, n, _) = h.dims3()?;
        let side = (n as f64).sqrt().ceil() as usize;
        let add = if self.cfg.square_pad || self.cfg.ppeg {
            side * side - n
        } else {
            0
        };
        let h = if add > 0 {
            Tensor::cat(&[h.clone(), h.narrow(1, 0, add)?], 1)?
        } else {
            h.clone()
        };
        let mut x = Tensor::cat(&[self.cls.clone(), h], 1)?;
        let mut attention = None;
        let mut selected = false;
        for (i, layer) in self.layers.iter().enumerate() {
            let last = i + 1 == self.layers.len();
            let ppeg_after = i == 0 && self.ppeg.is_some();
            if with_attention && last {
                let a = layer.attn.attention_row(&layer.norm.forward(&x)?, 0)?; // [1, h, T]
                let a = a.mean(1)?.squeeze(0)?; // [T]
                let mut patches = a.narrow(0, 1, n)?;
                if add > 0 {
                    let dup = a.narrow(0, 1 + n, add)?.pad_with_zeros(0, 0, n - add)?;
                    patches = (patches + dup)?;
                }
                attention = Some(patches);
            }
            x = match rows {
                Some(r) if last && !ppeg_after => {
                    selected = true;
                    layer
                        .attn
                        .forward_prenorm_residual_rows(&layer.norm, &x, mode, Some(r))?
                }
                _ => layer.forward(&x, mode)?,
            };
            if ppeg_after {
                if let Some(p) = &self.ppeg {
                    x = p.forward(&x, side)?;
                }
            }
        }
        if let (Some(r), false) = (rows, selected) {
            x = x.index_select(&gimp_nn::loss::index_tensor(r, x.device())?, 1)?;
        }
        Ok(Encoded {
            tokens: self.norm.forward(&x)?,
            attention,
        })
    }

    /// `CLS_img` `[dim]` of a bag `[N, D_in]`.
    pub fn cls(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        if self.in_place_inference(mode, x) {
            return self.cls_in_place(x);
        }
        // Only CLS is read: the last layer computes it alone (`encode_selected`).
        let tokens = self.encode_selected(&self.embed(x)?, mode, &[0])?;
        tokens.get(0)?.get(0)
    }

    /// Whether [`Self::cls`] runs on raw buffers: when the layers would stream anyway, and
    /// there is no PPEG or square padding.
    fn in_place_inference(&self, mode: &Mode, x: &Tensor) -> bool {
        choose_path(mode, true, x, &self.cfg.attention) == NystromPath::Streaming
            && !self.cfg.ppeg
            && !self.cfg.square_pad
    }

    /// Inference of `CLS_img` with every layer updating one token buffer in place
    /// (`gimp_nn::nystrom::infer`): a 150,000-patch bag needs the tokens, K and V, nothing of
    /// size `N × m` and no second copy of the tokens.
    fn cls_in_place(&self, x: &Tensor) -> Result<Tensor> {
        let (n, d_in) = x.dims2()?;
        let dim = self.cfg.dim;
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
        let w1 = flat(&self.fc1.weight)?;
        let b1 = self.fc1.bias.as_ref().map(flat).transpose()?;
        let mut tokens = vec![0f32; (n + 1) * dim];
        tokens[..dim].copy_from_slice(&flat(&self.cls)?);
        gimp_nn::cpu::with_data(x, |xs| {
            let w = View::dense(&w1, dim, d_in);
            let rows = 4096;
            for (src, dst) in xs
                .chunks(rows * d_in)
                .zip(tokens[dim..].chunks_mut(rows * dim))
            {
                linear_rows(src, w, b1.as_deref(), dst);
                dst.iter_mut().for_each(|v| *v = v.max(0.0));
            }
            Ok(())
        })?;
        for layer in &self.layers {
            layer
                .attn
                .prenorm_residual_inplace(&layer.norm, &mut tokens)?;
        }
        let mut cls = vec![0f32; dim];
        layer_norm_rows(
            &tokens[..dim],
            &mut cls,
            &flat(&self.norm.weight)?,
            &flat(&self.norm.bias)?,
            self.norm.eps as f32,
        );
        Tensor::from_vec(cls, dim, x.device())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use gimp_nn::ParamStore;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// TransMIL's encoding on selected rows (square padding, PPEG after the first layer, the
    /// last layer on those rows only) equals the whole encoding's rows: forward and every
    /// parameter's gradient, with both ways of holding the attention matrices.
    #[test]
    fn selected_rows_equal_the_whole_encoding_with_ppeg() {
        let mut cfg = AggregatorConfig::transmil(12);
        cfg.dim = 32;
        cfg.attention = NystromConfig {
            heads: 4,
            dim_head: 8,
            landmarks: 8,
            dropout: 0.0,
            ..NystromConfig::transmil(32)
        };
        let store = ParamStore::new(3);
        let agg = PatchAggregator::new(&store.root(), cfg).unwrap();
        // 40 patches: a 7 × 7 grid with 9 copies, 50 tokens with CLS.
        let x = Tensor::randn(0f32, 1f32, (40, 12), &Device::Cpu).unwrap();
        let rows = [0usize, 5, 41, 49];
        let idx = gimp_nn::loss::index_tensor(&rows, &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1f32, (1, rows.len(), 32), &Device::Cpu).unwrap();
        let mode = Mode::eval();
        for limit in [usize::MAX, 0] {
            gimp_nn::nystrom::with_keep_attention_limit(limit, || {
                let h = agg.embed(&x).unwrap();
                let selected = agg.encode_selected(&h, &mode, &rows).unwrap();
                let whole = agg
                    .encode(&h, &mode, false)
                    .unwrap()
                    .tokens
                    .index_select(&idx, 1)
                    .unwrap();
                assert!(max_diff(&selected, &whole) < 1e-5);
                let gs = (&selected * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                let gw = (&whole * &w)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                for (name, p) in store.params() {
                    let (a, b) = (
                        gs.get(p.var.as_tensor()).unwrap(),
                        gw.get(p.var.as_tensor()).unwrap(),
                    );
                    let scale = b
                        .abs()
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    let e = max_diff(a, b) / scale.max(1e-12);
                    assert!(e < 1e-4, "limit {limit}: gradient of {name}: {e}");
                }
            });
        }
    }
}
