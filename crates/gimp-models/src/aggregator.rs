//! The patch aggregator of GiMP (`docs/DESIGN.md` §5) and TransMIL (`docs/DESIGN.md` §15):
//! `Linear(D_in → d) + ReLU`, a learnable CLS token, two pre-norm Nyström-attention layers
//! (no feed-forward block), optional PPEG between them, a final LayerNorm. Parameter names are
//! TransMIL's (`_fc1.0`, `cls_token`, `layer{1,2}.{norm,attn}`, `pos_layer.proj{,1,2}`, `norm`),
//! so a TransMIL state dict loads into it.
//!
//! Memory is linear in the bag: Nyström attention never forms an `N × N` matrix.

use crate::bag_embedding::BagEmbedding;
use crate::model::BagInput;
use candle_core::{Result, Tensor};
use gimp_nn::cpu::lanes::layer_norm_rows;
use gimp_nn::cpu::matmul::linear_rows;
use gimp_nn::cpu::matmul::View;
use gimp_nn::nystrom::{streams, NystromAttention, NystromConfig};
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

/// [`PatchAggregator::training_step_bytes`]: bytes besides those growing with the bag (the
/// program, the parameters and their optimiser state, thread stacks).
const TRAINING_BASE_BYTES: u64 = 250_000_000;
/// `dim`-wide buffers per token alive at a training step's peak.
const TRAINING_TOKEN_COPIES: f64 = 14.0;
/// ... and the more with PPEG (its output).
const PPEG_TOKEN_COPIES: f64 = 1.0;

/// `x + DW7(x) + DW5(x) + DW3(x)` on the `s × s` grid of patch tokens (CLS untouched).
///
/// The identity and the three same-padded depthwise convolutions are one depthwise 7 × 7
/// convolution: its kernel is the sum of the three kernels (centred) and a 1 at the centre, its
/// bias the sum of the biases. That convolution is one op ([`GridConv`]) with a hand-written
/// backward pass; the combined kernel is built from the parameters with candle's ops, so
/// autograd hands each kernel its centred part of the combined gradient. Built from shifted
/// multiply-adds instead (83 taps), every intermediate `s² × dim` tensor stayed alive for the
/// backward pass: about 170 copies of the tokens, 8 GB on a 24,000-patch bag.
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

    /// The combined kernel and bias, packed `[dim, k·k + 1]` (the bias last), and `k`.
    fn combined(&self, c: usize, device: &candle_core::Device) -> Result<(Tensor, usize)> {
        let k = self.convs.iter().map(|(k, _, _)| *k).max().unwrap_or(1);
        let mut identity = vec![0f32; k * k];
        identity[(k / 2) * k + k / 2] = 1.0;
        let mut kernel = Tensor::from_vec(identity, (1, k, k), device)?.broadcast_as((c, k, k))?;
        let mut bias = Tensor::zeros(c, candle_core::DType::F32, device)?;
        for (kk, w, b) in &self.convs {
            let r = (k - kk) / 2;
            let w = w
                .reshape((c, *kk, *kk))?
                .pad_with_zeros(1, r, r)?
                .pad_with_zeros(2, r, r)?;
            kernel = (kernel + w)?;
            bias = (bias + b)?;
        }
        let packed = Tensor::cat(&[kernel.reshape((c, k * k))?, bias.unsqueeze(1)?], 1)?;
        Ok((packed, k))
    }

    /// `tokens`: `[1, 1 + s², dim]`.
    pub fn forward(&self, tokens: &Tensor, side: usize) -> Result<Tensor> {
        let (_, t, c) = tokens.dims3()?;
        if t != 1 + side * side {
            candle_core::bail!("PPEG: {t} tokens for a {side} × {side} grid and CLS");
        }
        let (packed, k) = self.combined(c, tokens.device())?;
        // CLS passes through the op: no separate grid and copy with CLS (0.3 GB each on a
        // 150,000-patch bag) are held until the backward pass.
        let conv = GridConv { side, k, lead: 1 };
        tokens.contiguous()?.apply_op2(&packed, conv)
    }

    /// [`Self::forward`] at inference on the raw `side × side` grid of patch tokens (`[s², dim]`,
    /// CLS excluded), updated in place.
    fn forward_in_place(&self, grid: &mut [f32], side: usize) -> Result<()> {
        let c = grid.len() / (side * side).max(1);
        let (packed, k) = self.combined(c, &candle_core::Device::Cpu)?;
        let packed: Vec<f32> = packed.flatten_all()?.to_vec1()?;
        GridConv { side, k, lead: 0 }.apply_in_place(grid, &packed)
    }
}

/// Grid rows per partial sum of the PPEG kernel gradient: fixed, so the sums run in the same
/// order whatever the thread count or timing.
const ROWS_PER_PARTIAL: usize = 8;

/// A depthwise `k × k` convolution with bias, zero padding `k / 2`, on a channels-last
/// `side × side` grid `[side², C]`, as PyTorch's `Conv2d(C, C, k, padding=k/2, groups=C)`
/// computes it (cross-correlation); the kernel and bias come packed `[C, k·k + 1]`. As a candle
/// op its input and output are the grid after `lead` tokens (CLS) that pass through unchanged.
struct GridConv {
    side: usize,
    k: usize,
    lead: usize,
}

impl GridConv {
    /// The packed parameters as taps `[k·k, C]` and the bias `[C]`, after checking shapes.
    fn taps(&self, x_len: usize, packed: &[f32]) -> Result<(Vec<f32>, Vec<f32>, usize)> {
        let kk = self.k * self.k;
        let cells = self.side * self.side;
        if cells == 0 || !x_len.is_multiple_of(cells) || packed.len() != (x_len / cells) * (kk + 1)
        {
            candle_core::bail!("PPEG convolution: parameter and grid shapes do not match");
        }
        let c = x_len / cells;
        let mut taps = vec![0f32; kk * c];
        let mut bias = vec![0f32; c];
        for (ch, row) in packed.chunks_exact(kk + 1).enumerate() {
            for t in 0..kk {
                taps[t * c + ch] = row[t];
            }
            bias[ch] = row[kk];
        }
        Ok((taps, bias, c))
    }

    /// The leading tokens and the grid of an op input (`[…, lead + side², C]`).
    fn split<'a>(&self, x: &'a [f32], l: &candle_core::Layout) -> Result<(&'a [f32], &'a [f32])> {
        let c = l.dims().last().copied().unwrap_or(0);
        if x.len() != (self.lead + self.side * self.side) * c {
            candle_core::bail!(
                "PPEG convolution: {:?} for {} leading tokens and a {} × {} grid",
                l.dims(),
                self.lead,
                self.side,
                self.side
            );
        }
        Ok(x.split_at(self.lead * c))
    }

    /// Grid rows `i + di − r` and columns `j + dj − r` that exist, for tap `(di, dj)` at
    /// output row `i`: the source row and the range of output columns `j`.
    fn tap_range(&self, i: usize, di: usize, dj: usize) -> Option<(usize, usize, usize)> {
        let r = self.k / 2;
        let src = (i + di).checked_sub(r).filter(|&s| s < self.side)?;
        let j0 = r.saturating_sub(dj);
        let j1 = (self.side + r).saturating_sub(dj).min(self.side);
        (j0 < j1).then_some((src, j0, j1))
    }

    /// `dst[i] += Σ taps ⊙ src` over the taps of output row `i` (mirrored taps give the
    /// transposed convolution, for the input gradient). `src` holds the grid's rows from row
    /// `first` on.
    fn accumulate_row(
        &self,
        dst: &mut [f32],
        src: &[f32],
        first: usize,
        taps: &[f32],
        c: usize,
        i: usize,
    ) {
        let k = self.k;
        for di in 0..k {
            for dj in 0..k {
                let Some((s, j0, j1)) = self.tap_range(i, di, dj) else {
                    continue;
                };
                let w = &taps[(di * k + dj) * c..(di * k + dj + 1) * c];
                for j in j0..j1 {
                    let sj = j + dj - k / 2;
                    let at = (s - first) * self.side + sj;
                    let from = &src[at * c..(at + 1) * c];
                    let to = &mut dst[j * c..(j + 1) * c];
                    for ((o, &x), &wv) in to.iter_mut().zip(from).zip(w) {
                        *o += wv * x;
                    }
                }
            }
        }
    }
}

impl GridConv {
    /// The convolution of `x` (`[side², C]`) written over `x`, a block of grid rows at a time:
    /// a block's output needs the `k / 2` rows above it as they were, so those are kept aside
    /// before the block is written. Memory: a few blocks of rows, not a second grid.
    fn apply_in_place(&self, x: &mut [f32], packed: &[f32]) -> Result<()> {
        use rayon::prelude::*;
        let (taps, bias, c) = self.taps(x.len(), packed)?;
        let (side, r) = (self.side, self.k / 2);
        let row_len = side * c;
        let block = (2 * rayon::current_num_threads()).max(8);
        // The original rows `kept_first..r0`, already overwritten in `x`.
        let (mut kept, mut kept_first) = (Vec::new(), 0);
        let mut window = Vec::new();
        let mut out = vec![0f32; block * row_len];
        for r0 in (0..side).step_by(block) {
            let r1 = (r0 + block).min(side);
            let (lo, hi) = (r0.saturating_sub(r), (r1 + r).min(side));
            window.clear();
            window.extend_from_slice(&kept[(lo - kept_first) * row_len..]);
            window.extend_from_slice(&x[r0 * row_len..hi * row_len]);
            let out = &mut out[..(r1 - r0) * row_len];
            out.par_chunks_mut(row_len)
                .enumerate()
                .for_each(|(t, row)| {
                    for cell in row.chunks_exact_mut(c) {
                        cell.copy_from_slice(&bias);
                    }
                    self.accumulate_row(row, &window, lo, &taps, c, r0 + t);
                });
            kept_first = r1.saturating_sub(r).max(lo);
            kept = window[(kept_first - lo) * row_len..(r1 - lo) * row_len].to_vec();
            x[r0 * row_len..r1 * row_len].copy_from_slice(out);
        }
        Ok(())
    }
}

impl candle_core::CustomOp2 for GridConv {
    fn name(&self) -> &'static str {
        "ppeg-grid-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let all = gimp_nn::cpu::slice(s1, l1, "PPEG grid")?;
        let packed = gimp_nn::cpu::slice(s2, l2, "PPEG kernel")?;
        let (lead, x) = self.split(all, l1)?;
        let (taps, bias, c) = self.taps(x.len(), packed)?;
        let mut out = vec![0f32; all.len()];
        out[..lead.len()].copy_from_slice(lead);
        out[lead.len()..]
            .par_chunks_mut(self.side * c)
            .enumerate()
            .for_each(|(i, row)| {
                for cell in row.chunks_exact_mut(c) {
                    cell.copy_from_slice(&bias);
                }
                self.accumulate_row(row, x, 0, &taps, c, i);
            });
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        packed: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let (k, side) = (self.k, self.side);
        let (dx, dpacked) = gimp_nn::cpu::with_data(x, |all| {
            gimp_nn::cpu::with_data(packed, |ps| {
                gimp_nn::cpu::with_data(grad, |all_g| {
                    let (lead_x, xs) = self.split(all, x.layout())?;
                    let (lead_g, g) = all_g.split_at(lead_x.len());
                    let (taps, _, c) = self.taps(xs.len(), ps)?;
                    // The transposed convolution: the mirrored taps on the gradient.
                    let mut mirrored = vec![0f32; taps.len()];
                    for t in 0..k * k {
                        let m = k * k - 1 - t;
                        mirrored[m * c..(m + 1) * c].copy_from_slice(&taps[t * c..(t + 1) * c]);
                    }
                    // The leading tokens pass through: their gradient is the output's.
                    let mut dx = vec![0f32; all.len()];
                    dx[..lead_g.len()].copy_from_slice(lead_g);
                    dx[lead_g.len()..]
                        .par_chunks_mut(side * c)
                        .enumerate()
                        .for_each(|(i, row)| self.accumulate_row(row, g, 0, &mirrored, c, i));
                    // Kernel and bias gradients: partial sums over fixed blocks of grid rows in
                    // parallel, then added in block order. (rayon's `fold`/`reduce` split the
                    // rows as work-stealing goes, so its sums — and the weights — changed from
                    // run to run.)
                    let width = (k * k + 1) * c;
                    let partials: Vec<Vec<f32>> = (0..side.div_ceil(ROWS_PER_PARTIAL))
                        .into_par_iter()
                        .map(|block| {
                            let mut acc = vec![0f32; width];
                            let rows = block * ROWS_PER_PARTIAL
                                ..((block + 1) * ROWS_PER_PARTIAL).min(side);
                            for i in rows {
                                for di in 0..k {
                                    for dj in 0..k {
                                        let Some((s, j0, j1)) = self.tap_range(i, di, dj) else {
                                            continue;
                                        };
                                        let t = di * k + dj;
                                        let a = &mut acc[t * c..(t + 1) * c];
                                        for j in j0..j1 {
                                            let sj = j + dj - k / 2;
                                            let gx = &g[(i * side + j) * c..(i * side + j + 1) * c];
                                            let xv =
                                                &xs[(s * side + sj) * c..(s * side + sj + 1) * c];
                                            for ((o, &gv), &xv) in a.iter_mut().zip(gx).zip(xv) {
                                                *o += gv * xv;
                                            }
                                        }
                                    }
                                }
                                let db = &mut acc[k * k * c..];
                                for gx in g[i * side * c..(i + 1) * side * c].chunks_exact(c) {
                                    db.iter_mut().zip(gx).for_each(|(o, &v)| *o += v);
                                }
                            }
                            acc
                        })
                        .collect();
                    let mut dtaps = vec![0f32; width];
                    for p in &partials {
                        dtaps.iter_mut().zip(p).for_each(|(x, y)| *x += y);
                    }
                    let mut dpacked = vec![0f32; c * (k * k + 1)];
                    for (ch, row) in dpacked.chunks_exact_mut(k * k + 1).enumerate() {
                        for (t, v) in row.iter_mut().enumerate() {
                            *v = dtaps[t * c + ch];
                        }
                    }
                    Ok((dx, dpacked))
                })
            })
        })?;
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), x.device())?),
            Some(Tensor::from_vec(dpacked, packed.shape(), packed.device())?),
        ))
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
    pub fn encode(&self, h: Tensor, mode: &Mode, with_attention: bool) -> Result<Encoded> {
        self.encode_rows(h, mode, with_attention, None)
    }

    /// The final tokens at `rows` only (token indices with CLS at 0 and square-padding copies
    /// after the patches, increasing), `[1, |rows|, dim]`: what [`Self::encode`] gives at those
    /// rows. The last layer computes just those rows (every token still serves as key, value
    /// and landmark there), unless PPEG follows it (a one-layer TransMIL).
    pub fn encode_selected(&self, h: Tensor, mode: &Mode, rows: &[usize]) -> Result<Tensor> {
        Ok(self.encode_rows(h, mode, false, Some(rows))?.tokens)
    }

    fn encode_rows(
        &self,
        h: Tensor,
        mode: &Mode,
        with_attention: bool,
        rows: Option<&[usize]>,
    ) -> Result<Encoded> {
        let (_, n, _) = h.dims3()?;
        let x = self.with_cls_and_padding(h)?;
        self.encode_tokens(x, n, mode, with_attention, rows)
    }

    /// CLS, the embedded patches `h` `[1, N, dim]` and the square padding's copies of the
    /// first patches.
    fn with_cls_and_padding(&self, h: Tensor) -> Result<Tensor> {
        let (_, n, _) = h.dims3()?;
        let (_, add) = self.square(n);
        // The embedded tokens are dropped as soon as `x` holds them (a whole bag's worth).
        let padded = if add > 0 {
            let p = Tensor::cat(&[&h, &h.narrow(1, 0, add)?], 1)?;
            drop(h);
            p
        } else {
            h
        };
        Tensor::cat(&[&self.cls, &padded], 1)
    }

    /// The first layer's tokens of a bag `[N, D_in]` (CLS, the embedded patches, the square
    /// padding's copies) and `N`. A bag from a reader that can be shared
    /// ([`gimp_io::bag::BagRows::shared`], the training data's feature cache) is embedded by
    /// one op that reads it window by window in both passes, so the step never holds it whole
    /// ([`crate::bag_embedding`]); otherwise the bag goes whole through `fc1`.
    fn bag_tokens(&self, x: BagInput) -> Result<(Tensor, usize)> {
        let (n, _) = x.dims()?;
        let shared = match x {
            BagInput::Rows(r) => r.shared(),
            BagInput::Tensor(_) => None,
        };
        let w = &self.fc1.weight;
        let on_cpu = w.device().is_cpu() && w.dtype() == candle_core::DType::F32;
        let tokens = match (shared, &self.fc1.bias, on_cpu) {
            (Some(bag), Some(b), true) => {
                BagEmbedding::new(bag, self.square(n).1).tokens(w, b, &self.cls)?
            }
            _ => self.with_cls_and_padding(self.embed(&*x.tensor()?)?)?,
        };
        Ok((tokens, n))
    }

    /// The final tokens at `rows` of a bag given as a tensor or a row reader: what
    /// [`Self::encode_selected`] gives on its embedding, reading a shareable reader by windows
    /// ([`Self::bag_tokens`]).
    pub fn encode_bag_selected(&self, x: BagInput, mode: &Mode, rows: &[usize]) -> Result<Tensor> {
        let (tokens, n) = self.bag_tokens(x)?;
        Ok(self
            .encode_tokens(tokens, n, mode, false, Some(rows))?
            .tokens)
    }

    /// The layers (with PPEG) and the final norm on the tokens `x` `[1, 1 + n + add, dim]` of a
    /// bag of `n` patches.
    fn encode_tokens(
        &self,
        mut x: Tensor,
        n: usize,
        mode: &Mode,
        with_attention: bool,
        rows: Option<&[usize]>,
    ) -> Result<Encoded> {
        let (side, add) = self.square(n);
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

    /// Estimated peak resident memory, in bytes, of one training step through the aggregator
    /// on a bag of `patches` patches (as `Self::cls` runs it when training: the last layer on
    /// CLS alone), the bag itself included:
    ///
    /// `TRAINING_BASE_BYTES + tokens · 4 · (d_in + TRAINING_TOKEN_COPIES · dim)`, with PPEG
    /// `PPEG_TOKEN_COPIES` more,
    ///
    /// where `tokens` counts CLS and TransMIL's square padding. A step on a bag held as a
    /// tensor (the bench step's) holds the bag, `fc1`'s pre-activation and output, the padded
    /// tokens and their copy with CLS, each layer's kept core output and result, and inside a
    /// layer's backward pass its output gradient, the LayerNorm output's gradient and one
    /// group of heads' `q`, `k`, `v` and their gradients, plus what the allocator holds for
    /// reuse; PPEG adds its output. The constants are fitted to `/usr/bin/time -v` of
    /// `bench_steps --only finetune_step_N` / `transmil_step_N` at 24,000 and 150,000 patches
    /// (`docs/PERFORMANCE.md`, "Training on whole slides"). `train` and `finetune` read the
    /// bag from the memory-mapped feature cache by windows ([`crate::bag_embedding`]) and hold
    /// neither the bag nor the embedding's copies (`train --arch transmil` peaks at 3.43 GiB on
    /// a 150,000-patch bag, its step at 4.50): the estimate is above what they use.
    pub fn training_step_bytes(&self, patches: usize) -> u64 {
        let tokens = 1 + match self.cfg.square_pad || self.cfg.ppeg {
            true => {
                let side = (patches as f64).sqrt().ceil() as usize;
                side * side
            }
            false => patches,
        };
        let copies = TRAINING_TOKEN_COPIES
            + if self.cfg.ppeg {
                PPEG_TOKEN_COPIES
            } else {
                0.0
            };
        let per_token = 4.0 * (self.cfg.d_in as f64 + copies * self.cfg.dim as f64);
        TRAINING_BASE_BYTES + (tokens as f64 * per_token) as u64
    }

    /// `CLS_img` `[dim]` of a bag `[N, D_in]`.
    pub fn cls<'a>(&self, x: impl Into<BagInput<'a>>, mode: &Mode) -> Result<Tensor> {
        let x = x.into();
        if in_place_inference(mode, x) {
            return Ok(self.encode_in_place(x, false)?.0);
        }
        // Only CLS is read: the last layer computes it alone (`encode_selected`).
        self.encode_bag_selected(x, mode, &[0])?.get(0)?.get(0)
    }

    /// The final CLS token `[dim]` of a bag `[N, D_in]` and the last layer's CLS attention over
    /// its patches `[N]` (as [`Encoded::attention`]): what inference reads. At inference on the
    /// CPU every layer and PPEG update one token buffer in place ([`Self::encode_in_place`]).
    pub fn cls_and_attention(&self, x: BagInput, mode: &Mode) -> Result<(Tensor, Tensor)> {
        let (cls, attention) = if in_place_inference(mode, x) {
            self.encode_in_place(x, true)?
        } else {
            let enc = self.encode(self.embed(&*x.tensor()?)?, mode, true)?;
            (enc.tokens.get(0)?.get(0)?, enc.attention)
        };
        let attention =
            attention.ok_or_else(|| candle_core::Error::Msg("no attention was computed".into()))?;
        Ok((cls, attention))
    }

    /// Inference on raw buffers: the bag embedded window by window into one token buffer (CLS,
    /// patches, square-padding copies) as it is read, every layer (`gimp_nn::nystrom::infer`)
    /// and PPEG updating it in place, the final norm on CLS alone; with `with_attention`, the
    /// last layer's CLS attention over the patches (square-padding copies folded back onto the
    /// patches they copy). A 150,000-patch bag read from a feature file needs the tokens, one
    /// layer's V and window-sized scratch: neither the bag whole, nor a second copy of the
    /// tokens, nor anything of size `N × m`.
    fn encode_in_place(
        &self,
        x: BagInput,
        with_attention: bool,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let (n, d_in) = x.dims()?;
        let dim = self.cfg.dim;
        let (side, add) = self.square(n);
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
        let w1 = flat(&self.fc1.weight)?;
        let b1 = self.fc1.bias.as_ref().map(flat).transpose()?;
        let mut tokens = vec![0f32; (1 + n + add) * dim];
        tokens[..dim].copy_from_slice(&flat(&self.cls)?);
        let w = View::dense(&w1, dim, d_in);
        let embed = |src: &[f32], dst: &mut [f32]| {
            linear_rows(src, w, b1.as_deref(), dst);
            dst.iter_mut().for_each(|v| *v = v.max(0.0));
        };
        let rows = 4096;
        let patches = tokens[dim..(1 + n) * dim].chunks_mut(rows * dim);
        match x {
            BagInput::Tensor(x) => gimp_nn::cpu::with_data(x, |xs| {
                xs.chunks(rows * d_in)
                    .zip(patches)
                    .for_each(|(src, dst)| embed(src, dst));
                Ok(())
            })?,
            BagInput::Rows(reader) => {
                let mut window = vec![0f32; rows.min(n) * d_in];
                for (i, dst) in patches.enumerate() {
                    let src = &mut window[..dst.len() / dim * d_in];
                    reader
                        .read_rows(i * rows, src)
                        .map_err(candle_core::Error::wrap)?;
                    embed(src, dst);
                }
            }
        }
        // Square padding repeats the first `add` patches after the last.
        tokens.copy_within(dim..(1 + add) * dim, (1 + n) * dim);
        let mut attention = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let last = i + 1 == self.layers.len();
            let of = (with_attention && last).then_some(0);
            if let Some(a) = layer
                .attn
                .prenorm_residual_inplace(&layer.norm, &mut tokens, of)?
            {
                attention = Some(fold_patch_attention(&a, n, add)?);
            }
            if let (0, Some(p)) = (i, &self.ppeg) {
                p.forward_in_place(&mut tokens[dim..], side)?;
            }
        }
        let mut cls = vec![0f32; dim];
        layer_norm_rows(
            &tokens[..dim],
            &mut cls,
            &flat(&self.norm.weight)?,
            &flat(&self.norm.bias)?,
            self.norm.eps as f32,
        );
        let attention = attention
            .map(|a| Tensor::from_vec(a, n, &candle_core::Device::Cpu))
            .transpose()?;
        Ok((
            Tensor::from_vec(cls, dim, &candle_core::Device::Cpu)?,
            attention,
        ))
    }

    /// The side of the token grid and the square padding's copies for a bag of `n` patches.
    fn square(&self, n: usize) -> (usize, usize) {
        let side = (n as f64).sqrt().ceil() as usize;
        let add = match self.cfg.square_pad || self.cfg.ppeg {
            true => side * side - n,
            false => 0,
        };
        (side, add)
    }
}

/// Whether inference runs on raw buffers ([`PatchAggregator::encode_in_place`]): when the
/// layers would stream anyway, on the CPU.
fn in_place_inference(mode: &Mode, x: BagInput) -> bool {
    streams(mode)
        && match x {
            BagInput::Tensor(x) => x.device().is_cpu() && x.dtype() == candle_core::DType::F32,
            // Read as f32 on the CPU.
            BagInput::Rows(_) => true,
        }
}

/// Per-head attention of CLS over the tokens (`[H, T]`: CLS, `n` patches, `add` copies) as the
/// mean over heads over the patches, each copy's weight added to the patch it copies.
fn fold_patch_attention(a: &[f32], n: usize, add: usize) -> Result<Vec<f32>> {
    let t = 1 + n + add;
    if !a.len().is_multiple_of(t) {
        candle_core::bail!("attention of {} values for {t} tokens", a.len());
    }
    let heads = a.len() / t;
    let mut patches = vec![0f32; n];
    for head in a.chunks_exact(t) {
        for (p, v) in patches.iter_mut().zip(&head[1..1 + n]) {
            *p += v;
        }
        for (p, v) in patches.iter_mut().zip(&head[1 + n..]) {
            *p += v;
        }
    }
    patches.iter_mut().for_each(|p| *p /= heads as f32);
    Ok(patches)
}

/// The largest difference of `a` from `b` relative to `b`'s largest magnitude (tests).
#[cfg(test)]
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let s = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d.to_scalar::<f32>().unwrap() / s.max(1e-12)
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

    /// Every parameter's gradient in `a` within `tol` of `b`'s, relative to `b`'s largest.
    fn assert_same_grads(
        store: &ParamStore,
        a: &candle_core::backprop::GradStore,
        b: &candle_core::backprop::GradStore,
        tol: f32,
        case: &str,
    ) {
        for (name, p) in store.params() {
            let e = rel(
                a.get(p.var.as_tensor()).unwrap(),
                b.get(p.var.as_tensor()).unwrap(),
            );
            assert!(e < tol, "{case}: gradient of {name}: {e}");
        }
    }

    /// `cfg` at test size: 32 wide, 4 heads of 8, 8 landmarks, no dropout.
    fn small(mut cfg: AggregatorConfig) -> AggregatorConfig {
        cfg.dim = 32;
        cfg.attention = NystromConfig {
            heads: 4,
            dim_head: 8,
            landmarks: 8,
            dropout: 0.0,
            ..NystromConfig::transmil(32)
        };
        cfg
    }

    /// Inference on one token buffer in place (square padding, PPEG over several blocks of grid
    /// rows, every layer, the CLS attention from the last layer's keys) gives the graph path's
    /// CLS token and heat-map attention, for TransMIL's and GiMP's aggregators; a bag read by
    /// row windows (5,000 patches: two windows) gives exactly the tensor's answer.
    #[test]
    fn in_place_inference_equals_the_graph_encoding() {
        for (ppeg, n) in [
            (true, 40),
            (true, 300),
            (false, 300),
            (true, 1),
            (true, 5000),
        ] {
            let cfg = match ppeg {
                true => AggregatorConfig::transmil(12),
                false => AggregatorConfig::gimp(12),
            };
            let store = ParamStore::new(5);
            let agg = PatchAggregator::new(&store.root(), small(cfg)).unwrap();
            let x = Tensor::randn(0f32, 1f32, (n, 12), &Device::Cpu).unwrap();
            let (cls, attention) = agg
                .cls_and_attention(BagInput::Tensor(&x), &Mode::inference())
                .unwrap();
            let bag = gimp_io::Bag {
                n,
                d: 12,
                features: x.flatten_all().unwrap().to_vec1().unwrap(),
                coords: None,
            };
            let (rows_cls, rows_attention) = agg
                .cls_and_attention(BagInput::Rows(&bag), &Mode::inference())
                .unwrap();
            assert_eq!(max_diff(&rows_cls, &cls), 0.0);
            assert_eq!(max_diff(&rows_attention, &attention), 0.0);
            let graph = agg
                .encode(agg.embed(&x).unwrap(), &Mode::eval(), true)
                .unwrap();
            let graph_cls = graph.tokens.get(0).unwrap().get(0).unwrap();
            let graph_attention = graph.attention.unwrap();
            assert_eq!(attention.dims(), &[n]);
            let e = max_diff(&cls, &graph_cls);
            assert!(e < 1e-4, "ppeg {ppeg}, {n} patches: CLS {e}");
            let e = max_diff(&attention, &graph_attention);
            assert!(e < 1e-5, "ppeg {ppeg}, {n} patches: attention {e}");
            assert!(max_diff(&agg.cls(&x, &Mode::inference()).unwrap(), &cls) == 0.0);
        }
    }

    /// TransMIL's encoding on selected rows (square padding, PPEG after the first layer, the
    /// last layer on those rows only) equals the whole encoding's rows: forward and every
    /// parameter's gradient, with both ways of holding the attention matrices.
    #[test]
    fn selected_rows_equal_the_whole_encoding_with_ppeg() {
        let store = ParamStore::new(3);
        let agg =
            PatchAggregator::new(&store.root(), small(AggregatorConfig::transmil(12))).unwrap();
        // 40 patches: a 7 × 7 grid with 9 copies, 50 tokens with CLS.
        let x = Tensor::randn(0f32, 1f32, (40, 12), &Device::Cpu).unwrap();
        let rows = [0usize, 5, 41, 49];
        let idx = gimp_nn::loss::index_tensor(&rows, &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1f32, (1, rows.len(), 32), &Device::Cpu).unwrap();
        let mode = Mode::eval();
        for limit in [usize::MAX, 0] {
            gimp_nn::nystrom::with_keep_attention_limit(limit, || {
                let h = agg.embed(&x).unwrap();
                let selected = agg.encode_selected(h.clone(), &mode, &rows).unwrap();
                let whole = agg
                    .encode(h.clone(), &mode, false)
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
                assert_same_grads(&store, &gs, &gw, 1e-4, &format!("limit {limit}"));
            });
        }
    }

    /// A training step on a bag from a shareable row reader (the feature cache's kind, which
    /// the step reads by windows in both passes) gives the encoding and every parameter's
    /// gradient of the bag as a tensor: square padding with PPEG, none (GiMP's aggregator), a
    /// bag of two windows, and a random subset of the rows (`--max-patches`).
    #[test]
    fn a_bag_read_by_windows_trains_as_the_tensor() {
        use gimp_io::bag::{SelectedRows, SharedRows};
        use std::sync::Arc;
        for (ppeg, n, keep) in [
            (true, 40, 40),
            (false, 30, 30),
            (true, 5000, 5000),
            (true, 300, 101),
        ] {
            let cfg = match ppeg {
                true => AggregatorConfig::transmil(12),
                false => AggregatorConfig::gimp(12),
            };
            let store = ParamStore::new(9);
            let agg = PatchAggregator::new(&store.root(), small(cfg)).unwrap();
            let x = Tensor::randn(0f32, 1f32, (n, 12), &Device::Cpu).unwrap();
            // Every third row from the first, then the rest in order, up to `keep`.
            let rows: Vec<usize> = (0..n).step_by(3).chain(1..n).take(keep).collect();
            let mut sorted = rows.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let rows = sorted;
            let bag: SharedRows = Arc::new(gimp_io::Bag {
                n,
                d: 12,
                features: x.flatten_all().unwrap().to_vec1().unwrap(),
                coords: None,
            });
            let reader = SelectedRows::new(bag, rows.clone()).unwrap();
            let idx = gimp_nn::loss::index_tensor(&rows, &Device::Cpu).unwrap();
            let subset = x.index_select(&idx, 0).unwrap();
            let picked = [0usize, 1, rows.len()];
            let mode = Mode::eval();
            let by_rows = agg
                .encode_bag_selected(BagInput::Rows(&reader), &mode, &picked)
                .unwrap();
            let whole = agg
                .encode_selected(agg.embed(&subset).unwrap(), &mode, &picked)
                .unwrap();
            assert!(
                max_diff(&by_rows, &whole) < 1e-5,
                "{n} patches, {keep} kept"
            );
            let w = Tensor::randn(0f32, 1f32, whole.dims(), &Device::Cpu).unwrap();
            let loss = |t: &Tensor| (t * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let (gr, gt) = (loss(&by_rows), loss(&whole));
            assert_same_grads(&store, &gr, &gt, 1e-5, &format!("{n} patches, {keep} kept"));
        }
    }
}

#[cfg(test)]
mod ppeg_tests {
    use super::*;
    use candle_core::{Device, Var};
    use gimp_nn::ParamStore;

    /// PPEG as shifted multiply-adds of candle's ordinary ops (its first implementation).
    fn graph(p: &Ppeg, tokens: &Tensor, side: usize) -> Tensor {
        let (_, t, c) = tokens.dims3().unwrap();
        let cls = tokens.narrow(1, 0, 1).unwrap();
        let grid = tokens
            .narrow(1, 1, t - 1)
            .unwrap()
            .reshape((side, side, c))
            .unwrap();
        let mut out = grid.clone();
        for (k, w, b) in &p.convs {
            let r = k / 2;
            let padded = grid
                .pad_with_zeros(0, r, r)
                .unwrap()
                .pad_with_zeros(1, r, r)
                .unwrap();
            let w = w.reshape((c, k * k)).unwrap().t().unwrap();
            let mut acc = b
                .reshape((1, 1, c))
                .unwrap()
                .broadcast_as((side, side, c))
                .unwrap();
            for di in 0..*k {
                for dj in 0..*k {
                    let tap = w.get(di * k + dj).unwrap().reshape((1, 1, c)).unwrap();
                    let shifted = padded
                        .narrow(0, di, side)
                        .unwrap()
                        .narrow(1, dj, side)
                        .unwrap();
                    acc = (acc + shifted.broadcast_mul(&tap).unwrap()).unwrap();
                }
            }
            out = (out + acc).unwrap();
        }
        Tensor::cat(&[cls, out.reshape((1, side * side, c)).unwrap()], 1).unwrap()
    }

    /// PPEG's kernel and bias gradients are the same bits whatever the thread count (and so
    /// whatever the work-stealing does): TransMIL's training used to differ from run to run by
    /// 1e-7 because they were summed in the order threads finished.
    #[test]
    fn ppeg_gradients_do_not_depend_on_the_threads() {
        let (side, c) = (40usize, 6);
        let store = ParamStore::new(7);
        let p = Ppeg::new(&store.root(), c).unwrap();
        let x = Var::from_tensor(
            &Tensor::randn(0f32, 1f32, (1, 1 + side * side, c), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let w = Tensor::randn(0f32, 1f32, (1, 1 + side * side, c), &Device::Cpu).unwrap();
        let params: Vec<Tensor> = store
            .params()
            .values()
            .map(|v| v.var.as_tensor().clone())
            .collect();
        let gradients = |threads: usize| -> Vec<Vec<f32>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = p.forward(x.as_tensor(), side).unwrap();
                let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
                params
                    .iter()
                    .map(|v| g.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                    .collect()
            })
        };
        let one = gradients(1);
        for threads in [2, 3, 4, 4] {
            assert_eq!(gradients(threads), one, "{threads} threads");
        }
    }

    /// The one-op PPEG equals the three convolutions as candle ops: forward and the
    /// gradients of the tokens, every kernel and every bias (grids of 1, 2 and 9 rows).
    #[test]
    fn fused_ppeg_matches_the_three_convolutions() {
        for side in [1usize, 2, 9] {
            let c = 5;
            let store = ParamStore::new(side as u64);
            let p = Ppeg::new(&store.root(), c).unwrap();
            let x = Var::from_tensor(
                &Tensor::randn(0f32, 1f32, (1, 1 + side * side, c), &Device::Cpu).unwrap(),
            )
            .unwrap();
            let w = Tensor::randn(0f32, 1f32, (1, 1 + side * side, c), &Device::Cpu).unwrap();
            let fused = p.forward(x.as_tensor(), side).unwrap();
            let reference = graph(&p, x.as_tensor(), side);
            assert!(rel(&fused, &reference) < 1e-5, "side {side}: forward");
            let gf = (&fused * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gr = (&reference * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let mut vars = vec![("tokens".to_string(), x.as_tensor().clone())];
            vars.extend(
                store
                    .params()
                    .into_iter()
                    .map(|(n, p)| (n, p.var.as_tensor().clone())),
            );
            for (name, v) in vars {
                let e = rel(gf.get(&v).unwrap(), gr.get(&v).unwrap());
                assert!(e < 1e-5, "side {side}: gradient of {name}: {e}");
            }
        }
    }
}
