//! Nyström attention exactly as lucidrains' `nystrom-attention` 0.0.14 computes it
//! (`docs/DESIGN.md` §6): front zero-padding to a multiple of the landmark count,
//! segment-mean landmarks, a Moore–Penrose pseudo-inverse by 6 Newton–Schulz-style iterations
//! from a global-scalar initialisation, a depthwise residual convolution (kernel 33) on V, and
//! un-padding that keeps the **last** `n` rows. `legacy_front_slice` keeps the first `n` rows
//! instead, reproducing 0.0.9 (the version TransMIL pins) bug for bug.
//!
//! Nothing `n × n` is ever formed: the largest intermediates are `n × m`.
//!
//! The same function has four implementations, which [`choose_path`] picks between:
//! - [`reference`]: candle's ordinary ops with autograd, the oracle the others are tested against;
//! - [`core_op`]: everything between the two projections as one op with a hand-written backward;
//! - [`layer_op`]: the whole pre-norm residual layer as one op with a hand-written backward;
//! - [`infer`]: streaming inference on raw buffers, in place, in memory linear in the bag.
//!
//! They share one implementation of each piece: the padded layout and landmark means
//! ([`geometry`]), the residual convolution ([`residual_conv`]), the pseudo-inverse with its
//! global start scale ([`pinv`]) and the online softmax of `F3` ([`online_softmax`]).
//!
//! The two training ops either keep the `N' × m` attention matrices `F1` and `F3` of every
//! head for the backward pass or rebuild them there block by block
//! ([`AttentionMemory`]); [`choose_path`] picks by their size.

pub mod core_op;
pub(crate) mod geometry;
pub mod infer;
pub mod layer_op;
pub(crate) mod online_softmax;
pub(crate) mod pinv;
mod reference;
pub(crate) mod residual_conv;

pub use reference::{pinv_iterative, AttentionParts};

use crate::init::Init;
use crate::layers::{LayerNorm, Linear};
use crate::ops::{self, Mode};
use crate::params::Scope;
use candle_core::{DType, Device, Result, Tensor};
use core_op::{CoreShape, NystromCore};
use geometry::Geometry;
use infer::{LayerWeights, Update};
use layer_op::{LayerShape, NystromLayerOp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NystromConfig {
    pub dim: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub landmarks: usize,
    pub pinv_iterations: usize,
    /// Depthwise convolution of V added to the output (kernel `residual_kernel`), or none.
    pub residual: bool,
    pub residual_kernel: usize,
    /// Dropout on the output projection.
    pub dropout: f64,
    /// Keep the first `n` rows after padding (nystrom-attention ≤ 0.0.9) instead of the last.
    pub legacy_front_slice: bool,
}

impl NystromConfig {
    /// The aggregator's layers in GiMP and TransMIL: 8 heads × 64 = 512, 256 landmarks.
    pub fn transmil(dim: usize) -> Self {
        Self {
            dim,
            heads: 8,
            dim_head: dim / 8,
            landmarks: dim / 2,
            pinv_iterations: 6,
            residual: true,
            residual_kernel: 33,
            dropout: 0.1,
            legacy_front_slice: false,
        }
    }
}

/// Rows per chunk on the streaming path.
pub const STREAM_CHUNK: usize = 4096;

/// What the training ops keep of the attention matrices `F1` (`N' × m`) and `F3` (`m × N'`)
/// of every head for the backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMemory {
    /// Keep them (`2·b·H·N'·m` floats per layer): the fastest backward pass on windows.
    Keep,
    /// Keep only each `F3` row's log-sum-exp and rebuild both, block by block, in the backward
    /// pass (one more product per block): memory linear in the bag, what lets a whole slide
    /// train (`docs/PERFORMANCE.md`, "Training on whole slides").
    Recompute,
}

/// The most bytes of kept attention matrices per layer before the training ops rebuild them
/// instead (128 MiB: a 6,000-patch pre-training window keeps them, a 24,000-patch bag does
/// not). `GIMP_KEEP_ATTENTION_MB` overrides it. The gated-attention pooling op
/// (`crate::gated_attention`) applies the same limit to the patch embeddings it keeps.
pub const KEEP_ATTENTION_BYTES: usize = 128 << 20;

thread_local! {
    static KEEP_LIMIT: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Sets (or, with `None`, clears) this thread's limit in place of [`KEEP_ATTENTION_BYTES`],
/// returning the previous setting ([`crate::memory::WholeBag`]).
pub(crate) fn set_keep_attention_limit(bytes: Option<usize>) -> Option<usize> {
    KEEP_LIMIT.with(|c| c.replace(bytes))
}

/// Runs `f` with another limit for [`KEEP_ATTENTION_BYTES`] on this thread (tests pin each
/// mode with it).
pub fn with_keep_attention_limit<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    let before = KEEP_LIMIT.with(|c| c.replace(Some(bytes)));
    let out = f();
    KEEP_LIMIT.with(|c| c.set(before));
    out
}

pub(crate) fn keep_attention_limit() -> usize {
    static FROM_ENV: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    KEEP_LIMIT.with(|c| c.get()).unwrap_or_else(|| {
        FROM_ENV
            .get_or_init(|| {
                std::env::var("GIMP_KEEP_ATTENTION_MB")
                    .ok()
                    .and_then(|v| v.parse::<usize>().ok())
                    .map(|mb| mb << 20)
            })
            .unwrap_or(KEEP_ATTENTION_BYTES)
    })
}

/// Bytes of `F1` and `F3` for every head of one layer on `x` (`[b, n, ·]`, or one bag
/// `[n, ·]`).
pub fn attention_matrix_bytes(x: &Tensor, cfg: &NystromConfig) -> usize {
    let (b, n) = match x.dims() {
        [b, n, _] => (*b, *n),
        [n, _] => (1, *n),
        _ => (1, 0),
    };
    let geo = Geometry::new(n, cfg.landmarks, cfg.legacy_front_slice);
    2 * b * cfg.heads * geo.padded * cfg.landmarks * std::mem::size_of::<f32>()
}

/// The implementation that runs a call of [`NystromAttention::forward`] or
/// [`NystromAttention::forward_prenorm_residual`] (the graph reference,
/// [`NystromAttention::forward_graph`], only runs when called by name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NystromPath {
    /// [`infer`]: raw buffers, chunk by chunk, one bag at a time; nothing is recorded for
    /// backpropagation and there is no dropout.
    Streaming,
    /// [`layer_op`]: LayerNorm, both projections, the core, dropout and the residual as one
    /// op with a hand-written backward pass. It has CPU kernels for `f32` only.
    FusedLayer(AttentionMemory),
    /// [`core_op`] between candle's projections (LayerNorm, dropout and the residual, if any,
    /// as ordinary candle ops). The op has CPU kernels only; elsewhere candle reports an error.
    FusedCore(AttentionMemory),
}

/// Whether `mode` runs the layers streaming ([`NystromPath::Streaming`]): inference without
/// gradients, whatever the bag's size.
pub fn streams(mode: &Mode) -> bool {
    mode.no_grad && !mode.train
}

/// Chooses the implementation for a call in `mode` on the input `x` (`[b, n, dim]`) of a layer
/// configured by `cfg`; `whole_layer` says whether the caller wants the pre-norm residual layer
/// `x + attention(norm(x))` rather than the attention alone.
///
/// - [`NystromPath::Streaming`] whenever no gradient will be asked for and the model is not
///   training (`mode.no_grad && !mode.train`): only then may nothing be recorded for the
///   backward pass and dropout be skipped. It gives the same result in memory proportional
///   to the bag instead of to `n × m` (a 150,000-patch bag fits in a couple of gigabytes).
/// - [`NystromPath::FusedLayer`] otherwise, for a whole layer on an `f32` CPU tensor: one op
///   instead of about a dozen, no tensors at the op boundaries (the fastest training path).
/// - [`NystromPath::FusedCore`] for the rest: attention alone, or a layer on another dtype
///   or device.
///
/// The fused ops keep `F1` and `F3` ([`AttentionMemory::Keep`]) while they take at most
/// [`KEEP_ATTENTION_BYTES`] ([`attention_matrix_bytes`]), and rebuild them in the backward
/// pass ([`AttentionMemory::Recompute`]) on larger bags.
pub fn choose_path(mode: &Mode, whole_layer: bool, x: &Tensor, cfg: &NystromConfig) -> NystromPath {
    if streams(mode) {
        return NystromPath::Streaming;
    }
    let memory = if attention_matrix_bytes(x, cfg) <= keep_attention_limit() {
        AttentionMemory::Keep
    } else {
        AttentionMemory::Recompute
    };
    if whole_layer && x.dtype() == DType::F32 && x.device().is_cpu() {
        NystromPath::FusedLayer(memory)
    } else {
        NystromPath::FusedCore(memory)
    }
}

/// Parameters by the reference's names: `to_qkv.weight`, `to_out.0.weight`, `to_out.0.bias`,
/// `res_conv.weight` (`[heads, 1, kernel, 1]`).
pub struct NystromAttention {
    pub cfg: NystromConfig,
    to_qkv: Linear,
    to_out: Linear,
    res_conv: Option<Tensor>,
}

impl NystromAttention {
    pub fn new(s: &Scope, cfg: NystromConfig) -> Result<Self> {
        let inner = cfg.heads * cfg.dim_head;
        let to_qkv = Linear::new(&s.pp("to_qkv"), cfg.dim, 3 * inner, false)?;
        let to_out = Linear::new(&s.pp("to_out.0"), inner, cfg.dim, true)?;
        let res_conv = if cfg.residual {
            Some(s.get(
                "res_conv.weight",
                &[cfg.heads, 1, cfg.residual_kernel, 1],
                Init::torch_default(cfg.residual_kernel),
            )?)
        } else {
            None
        };
        Ok(Self {
            cfg,
            to_qkv,
            to_out,
            res_conv,
        })
    }

    fn geometry(&self, n: usize) -> Geometry {
        Geometry::new(n, self.cfg.landmarks, self.cfg.legacy_front_slice)
    }

    /// `to_qkv` of the input front-padded with zero rows to a multiple of the landmarks, and
    /// the layout.
    fn padded_qkv(&self, x: &Tensor) -> Result<(Tensor, Geometry)> {
        let (_, n, _) = x.dims3()?;
        if self.cfg.landmarks == 0 {
            candle_core::bail!("nystrom attention: 0 landmarks");
        }
        let geo = self.geometry(n);
        let xp = if geo.pad > 0 {
            x.pad_with_zeros(1, geo.pad, 0)?
        } else {
            x.clone()
        };
        Ok((self.to_qkv.forward(&xp)?, geo))
    }

    /// The output projection and dropout of the merged heads `[b, n', H·d]`, un-padded to
    /// `[b, n, dim]`.
    fn project_and_unpad(&self, merged: &Tensor, geo: &Geometry, mode: &Mode) -> Result<Tensor> {
        let out = ops::dropout(&self.to_out.forward(merged)?, self.cfg.dropout, mode)?;
        out.narrow(1, geo.start, geo.n)
    }

    /// `x`: `[b, n, dim]` → `[b, n, dim]`, on the path [`choose_path`] picks for attention
    /// alone: streaming at inference, else the fused core op.
    pub fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        match choose_path(mode, false, x, &self.cfg) {
            NystromPath::Streaming => self.forward_streaming_batch(x),
            // Attention alone never takes the fused layer.
            NystromPath::FusedCore(memory) | NystromPath::FusedLayer(memory) => {
                self.forward_fused_core(x, mode, memory)
            }
        }
    }

    /// [`Self::forward_streaming`] on each bag of the batch.
    fn forward_streaming_batch(&self, x: &Tensor) -> Result<Tensor> {
        let items: Vec<Tensor> = (0..x.dim(0)?)
            .map(|i| self.forward_streaming(&x.narrow(0, i, 1)?.detach(), STREAM_CHUNK))
            .collect::<Result<_>>()?;
        Tensor::cat(&items, 0)
    }

    /// Everything between the two projections as one op (`core_op`).
    fn forward_fused_core(
        &self,
        x: &Tensor,
        mode: &Mode,
        memory: AttentionMemory,
    ) -> Result<Tensor> {
        let (qkv, geo) = self.padded_qkv(x)?;
        let conv = match &self.res_conv {
            Some(w) => w.reshape((self.cfg.heads, self.cfg.residual_kernel))?,
            None => Tensor::zeros((self.cfg.heads, 1), DType::F32, x.device())?,
        };
        let op = NystromCore::new(self.core_shape()).with_memory(memory);
        let out = qkv.contiguous()?.apply_op2(&conv.contiguous()?, op)?;
        self.project_and_unpad(&out, &geo, mode)
    }

    /// The aggregator's pre-norm residual layer, `x + forward(norm(x))`, on the path
    /// [`choose_path`] picks for a whole layer.
    pub fn forward_prenorm_residual(
        &self,
        norm: &LayerNorm,
        x: &Tensor,
        mode: &Mode,
    ) -> Result<Tensor> {
        self.forward_prenorm_residual_rows(norm, x, mode, None)
    }

    /// [`Self::forward_prenorm_residual`] at the tokens `rows` only (increasing): `[b, |rows|,
    /// dim]`. All tokens still serve as keys and values; the fused op skips the queries, the
    /// output projection and the residual of the others (the last layer of masked patch
    /// modelling needs half of them).
    pub fn forward_prenorm_residual_rows(
        &self,
        norm: &LayerNorm,
        x: &Tensor,
        mode: &Mode,
        rows: Option<&[usize]>,
    ) -> Result<Tensor> {
        let path = choose_path(mode, true, x, &self.cfg);
        let attended = match path {
            NystromPath::Streaming => {
                // At inference the layer updates a copy of the tokens in place
                // (`infer::layer_inplace` with the norm and the residual): the tokens, their
                // copy, K and V, and chunk-sized scratch — no normalised copy, no separate
                // output and sum. Nothing is recorded for backpropagation.
                let (b, n, dim) = x.dims3()?;
                let mut items = Vec::with_capacity(b);
                for i in 0..b {
                    let mut tokens: Vec<f32> = x.narrow(0, i, 1)?.flatten_all()?.to_vec1()?;
                    self.prenorm_residual_inplace(norm, &mut tokens, None)?;
                    items.push(Tensor::from_vec(tokens, (1, n, dim), x.device())?);
                }
                let out = match items.len() {
                    1 => items.remove(0),
                    _ => Tensor::cat(&items, 0)?,
                };
                return match rows {
                    Some(r) => out.index_select(&crate::loss::index_tensor(r, x.device())?, 1),
                    None => Ok(out),
                };
            }
            NystromPath::FusedCore(memory) => {
                self.forward_fused_core(&norm.forward(x)?, mode, memory)?
            }
            NystromPath::FusedLayer(memory) => {
                let (b, n, _) = x.dims3()?;
                let dim = self.cfg.dim;
                let out_rows = rows.map_or(n, |r| r.len());
                let mask = (mode.train && self.cfg.dropout > 0.0)
                    .then(|| mode.keep_bits(b * out_rows * dim, self.cfg.dropout));
                let shape = LayerShape {
                    core: self.core_shape(),
                    dim,
                    legacy_front_slice: self.cfg.legacy_front_slice,
                    eps: norm.eps as f32,
                };
                let op = NystromLayerOp::with_rows(shape, mask, rows.map(|r| r.to_vec()), n)
                    .with_memory(memory);
                return x
                    .contiguous()?
                    .apply_op2(&self.packed_layer_params(norm, x.device())?, op);
            }
        };
        let out = (x + attended)?;
        match rows {
            Some(r) => out.index_select(&crate::loss::index_tensor(r, x.device())?, 1),
            None => Ok(out),
        }
    }

    /// The fused layer's parameters in one tensor (`layer_op`'s order): `Tensor::cat` is
    /// differentiable, so candle hands each parameter its slice of the packed gradient.
    fn packed_layer_params(&self, norm: &LayerNorm, device: &Device) -> Result<Tensor> {
        let mut parts = vec![
            norm.weight.flatten_all()?,
            norm.bias.flatten_all()?,
            self.to_qkv.weight.flatten_all()?,
            self.to_out.weight.flatten_all()?,
            match &self.to_out.bias {
                Some(b) => b.flatten_all()?,
                None => Tensor::zeros(self.cfg.dim, DType::F32, device)?,
            },
        ];
        if let Some(w) = &self.res_conv {
            parts.push(w.flatten_all()?);
        }
        Tensor::cat(&parts, 0)
    }

    fn core_shape(&self) -> CoreShape {
        CoreShape {
            heads: self.cfg.heads,
            dim_head: self.cfg.dim_head,
            landmarks: self.cfg.landmarks,
            pinv_iterations: self.cfg.pinv_iterations,
            kernel: if self.res_conv.is_some() {
                self.cfg.residual_kernel
            } else {
                0
            },
        }
    }

    /// Runs [`infer::layer_inplace`] with this layer's parameters on `x` (`[n, dim]`).
    fn infer_inplace(
        &self,
        norm: Option<&LayerNorm>,
        x: &mut [f32],
        chunk: usize,
        update: Update,
        attention_of: Option<usize>,
    ) -> Result<Option<Vec<f32>>> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
        let qkv = flat(&self.to_qkv.weight)?;
        let out_weight = flat(&self.to_out.weight)?;
        let out_bias = self.to_out.bias.as_ref().map(flat).transpose()?;
        let conv = self
            .res_conv
            .as_ref()
            .map(flat)
            .transpose()?
            .unwrap_or_default();
        let norm = norm
            .map(|n| Ok::<_, candle_core::Error>((flat(&n.weight)?, flat(&n.bias)?, n.eps as f32)))
            .transpose()?;
        let w = LayerWeights {
            qkv: &qkv,
            out_weight: &out_weight,
            out_bias: out_bias.as_deref(),
            conv: &conv,
            norm: norm
                .as_ref()
                .map(|(g, b, e)| (g.as_slice(), b.as_slice(), *e)),
        };
        infer::layer_inplace(
            self.core_shape(),
            self.cfg.legacy_front_slice,
            &w,
            x,
            chunk,
            update,
            attention_of,
        )
    }

    /// The inference path for one bag `x` `[1, n, dim]`: the same result as [`Self::forward`]
    /// in memory linear in the bag, processed in chunks of `chunk` rows (`infer`).
    pub fn forward_streaming(&self, x: &Tensor, chunk: usize) -> Result<Tensor> {
        let (b, n, dim) = x.dims3()?;
        if b != 1 {
            candle_core::bail!("streaming attention takes one bag at a time, got {b}");
        }
        let mut data: Vec<f32> = x.flatten_all()?.to_vec1()?;
        self.infer_inplace(None, &mut data, chunk, Update::Replace, None)?;
        Tensor::from_vec(data, (1, n, dim), x.device())
    }

    /// `x ← x + attention(norm(x))` on the tokens `x` (`[n, dim]`, row-major) in place, without
    /// gradients: the aggregator's pre-norm residual layer at inference. With `attention_of =
    /// Some(row)` also token `row`'s attention over the tokens, `[H, n]` — what
    /// [`Self::attention_row`] gives on `norm(x)` — computed from the keys the layer holds.
    pub fn prenorm_residual_inplace(
        &self,
        norm: &LayerNorm,
        x: &mut [f32],
        attention_of: Option<usize>,
    ) -> Result<Option<Vec<f32>>> {
        self.infer_inplace(Some(norm), x, STREAM_CHUNK, Update::Residual, attention_of)
    }
}
