//! The Vision Transformer body every ViT-family patch encoder shares (timm's
//! `VisionTransformer` in inference, `docs/DESIGN.md` §35): patch embedding, class and register
//! tokens, learned position embeddings (resampled for other grids), pre-norm blocks with
//! optional LayerScale and a GELU or packed-SwiGLU MLP, the final LayerNorm, and the pooling the
//! encoder's reference applies. An encoder is a [`VitConfig`] plus its transform.
//!
//! Widths (embedding, MLP hidden, depth, position grid) come from the weights' shapes, the head
//! width from the config: a narrow network with the same structure runs the same code (the
//! test fixtures are 64–128 wide).
//!
//! The forward pass works on plain `f32` buffers with gimp-nn's CPU kernels: matrix products
//! through `gemm` on all threads, LayerNorm / softmax row kernels compiled for the running CPU,
//! bias + activation and LayerScale + residual fused into single passes, attention one block of
//! query rows at a time (never a whole `T × T` score matrix per head), and the MLP a block of
//! token rows at a time so its wide hidden layer is never held for the whole batch.

use crate::weights::Params;
use gimp_io::Result;
use gimp_nn::cpu::lanes;
use gimp_nn::cpu::matmul::{mm, mm_parallel, View};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;
use std::collections::BTreeSet;

/// The MLP inside each block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mlp {
    /// `fc2(GELU(fc1(x)))`, GELU in its exact erf form (timm's `Mlp`).
    Gelu,
    /// timm's `SwiGLUPacked`: `fc1` gives `2h` values, `fc2(SiLU(first h) ⊙ second h)`.
    SwiGluPacked,
}

/// What the encoder returns from the normalised tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The class token (timm's `global_pool='token'`; HF's `last_hidden_state[:, 0]`).
    ClassToken,
    /// The class token, then the mean of the patch tokens (registers excluded): Virchow's
    /// `cat([x[:, 0], x[:, 1 + reg:].mean(1)])`, twice the width.
    ClassTokenAndPatchMean,
    /// Every token, `[B, T, D]`, for a head outside the body to pool (CONCH's attentional
    /// pooler reads timm's `forward_features`).
    Tokens,
}

/// How the position embeddings are resampled for an input grid other than the learned one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosResample {
    /// timm's `dynamic_img_size`: `resample_abs_pos_embed`, bicubic with antialiasing, to the
    /// new grid's size.
    Antialiased,
    /// DINO / iBOT's `interpolate_pos_encoding` (CONCH v1.5's trunk in TRIDENT): bicubic
    /// without antialiasing, called with the scale factor `(G + 0.1) / G₀` rather than a size,
    /// so PyTorch samples at that (slightly off) scale.
    ScaleFactorPlusTenth,
}

/// What fixes a ViT's computation beyond its widths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitConfig {
    /// Patch side in pixels (the patch-embedding convolution's kernel and stride).
    pub patch: usize,
    /// Width of one attention head; heads = embedding width / this.
    pub head_dim: usize,
    /// Register tokens after the class token.
    pub reg_tokens: usize,
    /// Position embeddings cover the patch tokens only (timm's `no_embed_class`); otherwise they
    /// cover the class and register tokens too.
    pub no_embed_class: bool,
    /// Per-channel LayerScale `ls1.gamma` / `ls2.gamma` (timm's `init_values`).
    pub layer_scale: bool,
    pub mlp: Mlp,
    pub pooling: Pooling,
    /// LayerNorm ε (1e-6 in timm's ViTs).
    pub eps: f32,
    pub pos_resample: PosResample,
}

impl VitConfig {
    /// Tokens before the patch tokens: the class token and the registers.
    pub fn prefix_tokens(&self) -> usize {
        1 + self.reg_tokens
    }

    /// The parameter names of this configuration at `depth` blocks, by timm's names.
    pub fn expected_keys(&self, depth: usize) -> BTreeSet<String> {
        let mut k: BTreeSet<String> = [
            "cls_token",
            "pos_embed",
            "patch_embed.proj.weight",
            "patch_embed.proj.bias",
            "norm.weight",
            "norm.bias",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if self.reg_tokens > 0 {
            k.insert("reg_token".into());
        }
        for i in 0..depth {
            let mut names = vec![
                "norm1.weight",
                "norm1.bias",
                "attn.qkv.weight",
                "attn.qkv.bias",
                "attn.proj.weight",
                "attn.proj.bias",
                "norm2.weight",
                "norm2.bias",
                "mlp.fc1.weight",
                "mlp.fc1.bias",
                "mlp.fc2.weight",
                "mlp.fc2.bias",
            ];
            if self.layer_scale {
                names.extend(["ls1.gamma", "ls2.gamma"]);
            }
            k.extend(names.into_iter().map(|n| format!("blocks.{i}.{n}")));
        }
        k
    }
}

/// Number of `blocks.N.` groups among `keys` (one more than the largest `N`).
pub fn depth_of(keys: &BTreeSet<String>) -> usize {
    depth_under(keys, "")
}

/// Number of `{prefix}blocks.N.` groups among `keys` (a trunk inside a larger model, such as
/// CONCH's `visual.trunk.`).
pub fn depth_under(keys: &BTreeSet<String>, prefix: &str) -> usize {
    keys.iter()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .strip_prefix("blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

struct Block {
    norm1: (Vec<f32>, Vec<f32>),
    qkv_w: Vec<f32>,
    qkv_b: Vec<f32>,
    proj_w: Vec<f32>,
    proj_b: Vec<f32>,
    ls1: Option<Vec<f32>>,
    norm2: (Vec<f32>, Vec<f32>),
    fc1_w: Vec<f32>,
    fc1_b: Vec<f32>,
    fc2_w: Vec<f32>,
    fc2_b: Vec<f32>,
    ls2: Option<Vec<f32>>,
}

/// A loaded ViT body.
pub struct Vit {
    cfg: VitConfig,
    dim: usize,
    heads: usize,
    /// `fc1`'s output width (twice the gated width for SwiGLU).
    fc1_out: usize,
    /// `fc2`'s input width.
    hidden: usize,
    patch_w: Vec<f32>,
    patch_b: Vec<f32>,
    cls: Vec<f32>,
    reg: Vec<f32>,
    /// `[L, D]`: the prefix tokens' rows first unless `no_embed_class`, then a square grid.
    pos: Vec<f32>,
    pos_grid: usize,
    blocks: Vec<Block>,
    norm: (Vec<f32>, Vec<f32>),
}

/// Token rows per MLP step: bounds the hidden activations (`rows × fc1_out` values) while
/// keeping each matrix product large enough for both cores.
const MLP_ROWS: usize = 512;
/// Query rows per attention step: the score block is `ATTN_ROWS × T`.
const ATTN_ROWS: usize = 64;

impl Vit {
    /// Builds the body from timm-named tensors (the caller has checked the key set).
    pub fn load(cfg: VitConfig, p: &mut Params) -> Result<Self> {
        let depth = depth_of(&p.keys());
        let cls = p.take_any("cls_token")?;
        let dim = *cls.0.last().unwrap_or(&0);
        if cls.0.iter().product::<usize>() != dim || dim == 0 {
            return Err(p.shape_error("cls_token", &cls.0, "[1, 1, D]"));
        }
        if !dim.is_multiple_of(cfg.head_dim) {
            return Err(p.shape_error(
                "cls_token",
                &cls.0,
                &format!("a width divisible by the head width {}", cfg.head_dim),
            ));
        }
        let pp = cfg.patch * cfg.patch * 3;
        let patch_w = p.take("patch_embed.proj.weight", &[dim, 3, cfg.patch, cfg.patch])?;
        let patch_b = p.take("patch_embed.proj.bias", &[dim])?;
        debug_assert_eq!(patch_w.len(), dim * pp);
        let reg = if cfg.reg_tokens > 0 {
            p.take("reg_token", &[1, cfg.reg_tokens, dim])?
        } else {
            Vec::new()
        };
        let (pos_shape, pos) = p.take_any("pos_embed")?;
        let prefix = if cfg.no_embed_class {
            0
        } else {
            cfg.prefix_tokens()
        };
        let len = pos.len() / dim.max(1);
        let grid = ((len.saturating_sub(prefix)) as f64).sqrt().round() as usize;
        if pos_shape.len() != 3
            || pos_shape[0] != 1
            || pos_shape[2] != dim
            || grid == 0
            || grid * grid + prefix != len
        {
            return Err(p.shape_error(
                "pos_embed",
                &pos_shape,
                &format!("[1, {prefix} + G², {dim}] for a square grid G"),
            ));
        }
        let mut blocks = Vec::with_capacity(depth);
        let (mut fc1_out, mut hidden) = (0, 0);
        for i in 0..depth {
            let n = |s: &str| format!("blocks.{i}.{s}");
            let norm1 = (
                p.take(&n("norm1.weight"), &[dim])?,
                p.take(&n("norm1.bias"), &[dim])?,
            );
            let qkv_w = p.take(&n("attn.qkv.weight"), &[3 * dim, dim])?;
            let qkv_b = p.take(&n("attn.qkv.bias"), &[3 * dim])?;
            let proj_w = p.take(&n("attn.proj.weight"), &[dim, dim])?;
            let proj_b = p.take(&n("attn.proj.bias"), &[dim])?;
            let ls1 = if cfg.layer_scale {
                Some(p.take(&n("ls1.gamma"), &[dim])?)
            } else {
                None
            };
            let norm2 = (
                p.take(&n("norm2.weight"), &[dim])?,
                p.take(&n("norm2.bias"), &[dim])?,
            );
            let (s1, fc1_w) = p.take_any(&n("mlp.fc1.weight"))?;
            if s1.len() != 2 || s1[1] != dim || (i > 0 && s1[0] != fc1_out) {
                return Err(p.shape_error(&n("mlp.fc1.weight"), &s1, &format!("[H, {dim}]")));
            }
            fc1_out = s1[0];
            hidden = match cfg.mlp {
                Mlp::Gelu => fc1_out,
                Mlp::SwiGluPacked if fc1_out.is_multiple_of(2) => fc1_out / 2,
                Mlp::SwiGluPacked => {
                    return Err(p.shape_error(
                        &n("mlp.fc1.weight"),
                        &s1,
                        "an even output width (packed SwiGLU: value and gate halves)",
                    ))
                }
            };
            let fc1_b = p.take(&n("mlp.fc1.bias"), &[fc1_out])?;
            let fc2_w = p.take(&n("mlp.fc2.weight"), &[dim, hidden])?;
            let fc2_b = p.take(&n("mlp.fc2.bias"), &[dim])?;
            let ls2 = if cfg.layer_scale {
                Some(p.take(&n("ls2.gamma"), &[dim])?)
            } else {
                None
            };
            blocks.push(Block {
                norm1,
                qkv_w,
                qkv_b,
                proj_w,
                proj_b,
                ls1,
                norm2,
                fc1_w,
                fc1_b,
                fc2_w,
                fc2_b,
                ls2,
            });
        }
        let norm = (p.take("norm.weight", &[dim])?, p.take("norm.bias", &[dim])?);
        Ok(Self {
            cfg,
            dim,
            heads: dim / cfg.head_dim,
            fc1_out,
            hidden,
            patch_w,
            patch_b,
            cls: cls.1,
            reg,
            pos,
            pos_grid: grid,
            blocks,
            norm,
        })
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of blocks.
    pub fn depth(&self) -> usize {
        self.blocks.len()
    }

    /// Side of the image the position embeddings were learned for (other multiples of the
    /// patch side are resampled).
    pub fn native_size(&self) -> usize {
        self.pos_grid * self.cfg.patch
    }

    pub fn config(&self) -> &VitConfig {
        &self.cfg
    }

    /// Width of the pooled output (of each token with [`Pooling::Tokens`]).
    pub fn out_dim(&self) -> usize {
        match self.cfg.pooling {
            Pooling::ClassToken | Pooling::Tokens => self.dim,
            Pooling::ClassTokenAndPatchMean => 2 * self.dim,
        }
    }

    /// Tokens per image at input side `side`: the prefix tokens and the patch grid.
    pub fn tokens_for(&self, side: usize) -> usize {
        let g = side / self.cfg.patch;
        self.cfg.prefix_tokens() + g * g
    }

    /// Normalised images `[B, 3, S, S]` (row-major) → pooled features `[B, out_dim]` (with
    /// [`Pooling::Tokens`], `[B, T, D]`: every token after the final LayerNorm).
    /// `S` must be a multiple of the patch side.
    pub fn forward(
        &self,
        x: &[f32],
        b: usize,
        side: usize,
    ) -> std::result::Result<Vec<f32>, String> {
        let (p, d) = (self.cfg.patch, self.dim);
        if side == 0 || !side.is_multiple_of(p) {
            return Err(format!(
                "input side {side} is not a multiple of the patch side {p}"
            ));
        }
        if x.len() != b * 3 * side * side {
            return Err(format!(
                "{} values for {b} images of 3 × {side} × {side}",
                x.len()
            ));
        }
        if b == 0 {
            return Ok(Vec::new());
        }
        let g = side / p;
        let prefix = self.cfg.prefix_tokens();
        let t = prefix + g * g;
        let m = b * t;
        let patches = self.embed_patches(x, b, side);
        let pos = self.pos_embed_for(g);
        let pos_prefix = if self.cfg.no_embed_class { 0 } else { prefix };
        let mut tokens = vec![0f32; m * d];
        tokens
            .par_chunks_mut(t * d)
            .enumerate()
            .for_each(|(bi, seq)| {
                seq[..d].copy_from_slice(&self.cls);
                seq[d..prefix * d].copy_from_slice(&self.reg);
                seq[prefix * d..].copy_from_slice(&patches[bi * g * g * d..(bi + 1) * g * g * d]);
                if pos_prefix > 0 {
                    // The embeddings cover the class and register tokens too.
                    seq.iter_mut().zip(&pos).for_each(|(v, e)| *v += e);
                } else {
                    seq[prefix * d..]
                        .iter_mut()
                        .zip(&pos)
                        .for_each(|(v, e)| *v += e);
                }
            });
        drop(patches);
        let mut scratch = Scratch::new(self, m);
        for blk in &self.blocks {
            self.block(blk, &mut tokens, b, t, &mut scratch);
        }
        Ok(self.pool(&tokens, b, t))
    }

    /// Patch embedding: the stride-`p` convolution as one matrix product over gathered patches.
    fn embed_patches(&self, x: &[f32], b: usize, side: usize) -> Vec<f32> {
        let (p, d) = (self.cfg.patch, self.dim);
        let g = side / p;
        let cols = 3 * p * p;
        let rows = b * g * g;
        let mut gathered = vec![0f32; rows * cols];
        gathered
            .par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| {
                let (bi, gy, gx) = (r / (g * g), (r / g) % g, r % g);
                // PyTorch's weight layout [D, C, kh, kw]: channel, then kernel row, then column.
                for c in 0..3 {
                    for ky in 0..p {
                        let at = ((bi * 3 + c) * side + gy * p + ky) * side + gx * p;
                        row[(c * p + ky) * p..(c * p + ky + 1) * p].copy_from_slice(&x[at..at + p]);
                    }
                }
            });
        let mut out = vec![0f32; rows * d];
        linear(&mut out, &gathered, &self.patch_w, d, cols);
        add_bias(&mut out, &self.patch_b);
        out
    }

    /// Position embeddings of the patch tokens (with the prefix rows first unless
    /// `no_embed_class`) for a `g × g` grid.
    fn pos_embed_for(&self, g: usize) -> Vec<f32> {
        if g == self.pos_grid {
            return self.pos.clone();
        }
        let grid = &self.pos[prefix_rows(&self.cfg) * self.dim..];
        let resampled = match self.cfg.pos_resample {
            PosResample::Antialiased => resample_bicubic_aa(grid, self.pos_grid, g, self.dim),
            PosResample::ScaleFactorPlusTenth => {
                let factor = (g as f64 + 0.1) / self.pos_grid as f64;
                resample_bicubic_by_factor(grid, self.pos_grid, g, factor, self.dim)
            }
        };
        let mut out = self.pos[..prefix_rows(&self.cfg) * self.dim].to_vec();
        out.extend(resampled);
        out
    }

    fn block(&self, blk: &Block, x: &mut [f32], b: usize, t: usize, s: &mut Scratch) {
        let (d, m) = (self.dim, b * t);
        let eps = self.cfg.eps;
        // Attention branch.
        layer_norm(x, &mut s.h, &blk.norm1.0, &blk.norm1.1, eps);
        linear(&mut s.qkv, &s.h, &blk.qkv_w, 3 * d, d);
        add_bias(&mut s.qkv, &blk.qkv_b);
        self.attention(&s.qkv, &mut s.att, t);
        linear(&mut s.h, &s.att, &blk.proj_w, d, d);
        residual(x, &s.h, &blk.proj_b, blk.ls1.as_deref());
        // MLP branch, a block of rows at a time.
        for r0 in (0..m).step_by(MLP_ROWS) {
            let rows = MLP_ROWS.min(m - r0);
            let xr = &mut x[r0 * d..(r0 + rows) * d];
            let h = &mut s.h[..rows * d];
            layer_norm(xr, h, &blk.norm2.0, &blk.norm2.1, eps);
            let z = &mut s.fc1[..rows * self.fc1_out];
            linear(z, h, &blk.fc1_w, self.fc1_out, d);
            let a = match self.cfg.mlp {
                Mlp::Gelu => {
                    bias_gelu(z, &blk.fc1_b);
                    &s.fc1[..rows * self.hidden]
                }
                Mlp::SwiGluPacked => {
                    let gated = &mut s.gated[..rows * self.hidden];
                    bias_swiglu(z, &blk.fc1_b, gated);
                    &s.gated[..rows * self.hidden]
                }
            };
            let y = &mut s.mlp_out[..rows * d];
            linear(y, a, &blk.fc2_w, d, self.hidden);
            residual(xr, y, &blk.fc2_b, blk.ls2.as_deref());
        }
    }

    /// Multi-head self-attention of `qkv` (`[B·T, 3D]`, timm's q | k | v × heads layout) into
    /// `out` (`[B·T, D]`, heads side by side), images in parallel.
    fn attention(&self, qkv: &[f32], out: &mut [f32], t: usize) {
        let (d, hd) = (self.dim, self.cfg.head_dim);
        let scale = (hd as f32).powf(-0.5);
        out.par_chunks_mut(t * d)
            .zip(qkv.par_chunks(t * 3 * d))
            .for_each(|(o, src)| {
                let view = |part: usize, h: usize| {
                    View::rows_of(src, part * d + h * hd, t, hd, 3 * d).to_dense()
                };
                let mut scores = vec![0f32; ATTN_ROWS * t];
                let mut head_out = vec![0f32; ATTN_ROWS * hd];
                for h in 0..self.heads {
                    let (q, k, v) = (view(0, h), view(1, h), view(2, h));
                    let (kv, vv) = (View::dense(&k, t, hd), View::dense(&v, t, hd));
                    for r0 in (0..t).step_by(ATTN_ROWS) {
                        let rows = ATTN_ROWS.min(t - r0);
                        let sc = &mut scores[..rows * t];
                        let qv = View::dense(&q, t, hd).rows(r0, rows);
                        mm(sc, qv, kv.t(), false, scale);
                        lanes::softmax_rows(sc, t);
                        let ho = &mut head_out[..rows * hd];
                        mm(ho, View::dense(sc, rows, t), vv, false, 1.0);
                        for (i, r) in ho.chunks_exact(hd).enumerate() {
                            let at = (r0 + i) * d + h * hd;
                            o[at..at + hd].copy_from_slice(r);
                        }
                    }
                }
            });
    }

    /// The final LayerNorm on the tokens the pooling reads, then the pooling.
    fn pool(&self, x: &[f32], b: usize, t: usize) -> Vec<f32> {
        let (d, eps) = (self.dim, self.cfg.eps);
        let prefix = self.cfg.prefix_tokens();
        let (w, bias) = (&self.norm.0, &self.norm.1);
        let per_image = match self.cfg.pooling {
            Pooling::Tokens => t * d,
            _ => self.out_dim(),
        };
        let mut out = vec![0f32; b * per_image];
        match self.cfg.pooling {
            Pooling::Tokens => layer_norm(x, &mut out, w, bias, eps),
            Pooling::ClassToken => {
                out.par_chunks_mut(d).enumerate().for_each(|(bi, o)| {
                    lanes::layer_norm_rows(&x[bi * t * d..bi * t * d + d], o, w, bias, eps)
                });
            }
            Pooling::ClassTokenAndPatchMean => {
                out.par_chunks_mut(2 * d).enumerate().for_each(|(bi, o)| {
                    let seq = &x[bi * t * d..(bi + 1) * t * d];
                    let mut normed = vec![0f32; t * d];
                    lanes::layer_norm_rows(seq, &mut normed, w, bias, eps);
                    o[..d].copy_from_slice(&normed[..d]);
                    let mean = &mut o[d..];
                    for row in normed[prefix * d..].chunks_exact(d) {
                        mean.iter_mut().zip(row).for_each(|(a, v)| *a += v);
                    }
                    let n = (t - prefix) as f32;
                    mean.iter_mut().for_each(|a| *a /= n);
                });
            }
        }
        out
    }

    /// Random weights of `cfg` at the given widths (normal, scaled by fan-in; LayerScale near
    /// 1), from a seed: for benchmarks, where only the arithmetic matters.
    pub fn random(
        cfg: VitConfig,
        dim: usize,
        depth: usize,
        mlp_hidden: usize,
        grid: usize,
        seed: u64,
    ) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut normal = |n: usize, std: f32| -> Vec<f32> {
            let dist = Normal::new(0.0f32, std).expect("a positive standard deviation");
            (0..n).map(|_| dist.sample(&mut rng)).collect()
        };
        let fc1_out = match cfg.mlp {
            Mlp::Gelu => mlp_hidden,
            Mlp::SwiGluPacked => 2 * mlp_hidden,
        };
        let ln = |n: usize| (vec![1f32; n], vec![0f32; n]);
        let pp = 3 * cfg.patch * cfg.patch;
        let pos_len = grid * grid
            + if cfg.no_embed_class {
                0
            } else {
                cfg.prefix_tokens()
            };
        let mut blocks = Vec::with_capacity(depth);
        for _ in 0..depth {
            blocks.push(Block {
                norm1: ln(dim),
                qkv_w: normal(3 * dim * dim, (dim as f32).powf(-0.5)),
                qkv_b: normal(3 * dim, 0.02),
                proj_w: normal(dim * dim, (dim as f32).powf(-0.5)),
                proj_b: normal(dim, 0.02),
                ls1: cfg.layer_scale.then(|| vec![0.1; dim]),
                norm2: ln(dim),
                fc1_w: normal(fc1_out * dim, (dim as f32).powf(-0.5)),
                fc1_b: normal(fc1_out, 0.02),
                fc2_w: normal(dim * mlp_hidden, (mlp_hidden as f32).powf(-0.5)),
                fc2_b: normal(dim, 0.02),
                ls2: cfg.layer_scale.then(|| vec![0.1; dim]),
            });
        }
        Self {
            cfg,
            dim,
            heads: dim / cfg.head_dim,
            fc1_out,
            hidden: mlp_hidden,
            patch_w: normal(dim * pp, (pp as f32).powf(-0.5)),
            patch_b: normal(dim, 0.02),
            cls: normal(dim, 0.02),
            reg: normal(cfg.reg_tokens * dim, 0.02),
            pos: normal(pos_len * dim, 0.02),
            pos_grid: grid,
            blocks,
            norm: ln(dim),
        }
    }
}

/// Rows of the position embeddings before the patch grid (none with `no_embed_class`).
fn prefix_rows(cfg: &VitConfig) -> usize {
    if cfg.no_embed_class {
        0
    } else {
        cfg.prefix_tokens()
    }
}

/// Buffers one forward pass reuses across its blocks.
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    fc1: Vec<f32>,
    gated: Vec<f32>,
    mlp_out: Vec<f32>,
}

impl Scratch {
    fn new(vit: &Vit, m: usize) -> Self {
        let (d, rows) = (vit.dim, MLP_ROWS.min(m));
        let gated = match vit.cfg.mlp {
            Mlp::Gelu => 0,
            Mlp::SwiGluPacked => rows * vit.hidden,
        };
        Self {
            h: vec![0f32; m * d],
            qkv: vec![0f32; m * 3 * d],
            att: vec![0f32; m * d],
            fc1: vec![0f32; rows * vit.fc1_out],
            gated: vec![0f32; gated],
            mlp_out: vec![0f32; rows * d],
        }
    }
}

/// `dst [rows, out] = src [rows, inp] · Wᵀ` with `W` `[out, inp]` (PyTorch's Linear layout).
fn linear(dst: &mut [f32], src: &[f32], w: &[f32], out: usize, inp: usize) {
    let rows = src.len() / inp;
    mm_parallel(
        dst,
        View::dense(src, rows, inp),
        View::dense(w, out, inp).t(),
        false,
        1.0,
    );
}

/// Rows per parallel task of the elementwise passes.
const ROW_TASK: usize = 16;

fn add_bias(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    x.par_chunks_mut(n * ROW_TASK).for_each(|c| {
        for row in c.chunks_exact_mut(n) {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    });
}

fn layer_norm(src: &[f32], dst: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
    let n = w.len();
    dst.par_chunks_mut(n * ROW_TASK)
        .zip(src.par_chunks(n * ROW_TASK))
        .for_each(|(o, s)| lanes::layer_norm_rows(s, o, w, b, eps));
}

gimp_nn::multiversion! {
    /// `x += γ ⊙ (y + bias)` on rows (γ = 1 without LayerScale).
    fn residual_rows(x: &mut [f32], y: &[f32], bias: &[f32], gamma: Option<&[f32]>) {
        let n = bias.len();
        for (xr, yr) in x.chunks_exact_mut(n).zip(y.chunks_exact(n)) {
            match gamma {
                Some(g) => {
                    for j in 0..n {
                        xr[j] += g[j] * (yr[j] + bias[j]);
                    }
                }
                None => {
                    for j in 0..n {
                        xr[j] += yr[j] + bias[j];
                    }
                }
            }
        }
    }
}

fn residual(x: &mut [f32], y: &[f32], bias: &[f32], gamma: Option<&[f32]>) {
    let n = bias.len();
    x.par_chunks_mut(n * ROW_TASK)
        .zip(y.par_chunks(n * ROW_TASK))
        .for_each(|(xc, yc)| residual_rows(xc, yc, bias, gamma));
}

/// `erf(x)` to within 10⁻⁶ (Abramowitz & Stegun 7.1.26: 1.5·10⁻⁷, plus `f32` rounding), written so a loop of it
/// vectorises (libm's `erff` is a call per element, which made GELU cost more than the
/// product before it).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A: [f32; 5] = [
        0.254_829_6,
        -0.284_496_74,
        1.421_413_7,
        -1.453_152_1,
        1.061_405_4,
    ];
    let ax = x.abs();
    let t = 1.0 / (1.0 + P * ax);
    let poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))));
    let y = 1.0 - poly * lanes::exp(-ax * ax);
    y.copysign(x)
}

gimp_nn::multiversion! {
    /// `x ← GELU(x + bias)` on rows, GELU's exact form `x·Φ(x)`.
    fn bias_gelu_rows(x: &mut [f32], bias: &[f32]) {
        let n = bias.len();
        for row in x.chunks_exact_mut(n) {
            for j in 0..n {
                let z = row[j] + bias[j];
                row[j] = 0.5 * z * (1.0 + erf(z * std::f32::consts::FRAC_1_SQRT_2));
            }
        }
    }
}

fn bias_gelu(x: &mut [f32], bias: &[f32]) {
    let n = bias.len();
    x.par_chunks_mut(n * ROW_TASK)
        .for_each(|c| bias_gelu_rows(c, bias));
}

gimp_nn::multiversion! {
    /// Packed SwiGLU on rows: `out = SiLU(z₁ + b₁) ⊙ (z₂ + b₂)` for each row `[z₁ | z₂]`.
    fn bias_swiglu_rows(z: &[f32], bias: &[f32], out: &mut [f32]) {
        let h = bias.len() / 2;
        for (zr, or) in z.chunks_exact(2 * h).zip(out.chunks_exact_mut(h)) {
            for j in 0..h {
                let a = zr[j] + bias[j];
                let g = zr[h + j] + bias[h + j];
                or[j] = a / (1.0 + lanes::exp(-a)) * g;
            }
        }
    }
}

fn bias_swiglu(z: &[f32], bias: &[f32], out: &mut [f32]) {
    let h = bias.len() / 2;
    out.par_chunks_mut(h * ROW_TASK)
        .zip(z.par_chunks(2 * h * ROW_TASK))
        .for_each(|(o, zc)| bias_swiglu_rows(zc, bias, o));
}

/// Interpolation taps along one axis: for each output sample, `(input index, weight)` pairs.
type Taps = Vec<Vec<(usize, f32)>>;

/// PyTorch's antialiased bicubic interpolation taps (`F.interpolate(mode='bicubic',
/// antialias=True, align_corners=False)`, the cubic with a = −0.5 whose support widens by the
/// scale when shrinking) for `n_in → n_out` samples.
fn aa_bicubic_taps(n_in: usize, n_out: usize) -> Taps {
    let cubic = |x: f64| {
        let a = -0.5;
        let x = x.abs();
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    };
    let scale = n_in as f64 / n_out as f64;
    let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
    let inv = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
    (0..n_out)
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            // Truncation toward zero, as the C++ casts to int64.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(n_in as i64) as usize;
            let w: Vec<f64> = (lo..hi)
                .map(|j| cubic((j as f64 - center + 0.5) * inv))
                .collect();
            let total: f64 = w.iter().sum();
            let norm = if total != 0.0 { total } else { 1.0 };
            (lo..hi)
                .zip(w)
                .map(|(j, v)| (j, (v / norm) as f32))
                .collect()
        })
        .collect()
}

/// PyTorch's plain bicubic taps (`F.interpolate(mode='bicubic', align_corners=False)` without
/// antialiasing: the cubic with A = −0.75, four taps, indices clamped to the edge) when called
/// with `scale_factor`: the source position is `(i + 0.5) / factor − 0.5`, computed in `f32` as
/// the CPU kernel does.
fn bicubic_taps_by_factor(n_in: usize, n_out: usize, factor: f64) -> Taps {
    const A: f32 = -0.75;
    let near = |x: f32| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f32| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = (1.0 / factor) as f32;
    let last = n_in as i64 - 1;
    (0..n_out)
        .map(|i| {
            let real = scale * (i as f32 + 0.5) - 0.5;
            let index = (real.floor() as i64).min(last);
            let t = (real - index as f32).clamp(0.0, 1.0);
            let w = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
            (0..4)
                .map(|j| ((index - 1 + j as i64).clamp(0, last) as usize, w[j]))
                .collect()
        })
        .collect()
}

/// PyTorch's bilinear taps (`F.interpolate(mode='bilinear', align_corners=False)`, no
/// antialiasing) for `n_in → n_out` samples.
fn bilinear_taps(n_in: usize, n_out: usize) -> Taps {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|i| {
            let real = (scale * (i as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (real as usize).min(n_in - 1);
            let i1 = (i0 + 1).min(n_in - 1);
            let l1 = (real - i0 as f32).clamp(0.0, 1.0);
            vec![(i0, 1.0 - l1), (i1, l1)]
        })
        .collect()
}

/// Resamples a `g_in × g_in` grid of `d`-vectors (row-major, `[g_in², d]`) to `g_out × g_out`
/// with the same taps along both axes, separably (columns, then rows).
fn resample_grid(src: &[f32], g_in: usize, g_out: usize, d: usize, taps: &Taps) -> Vec<f32> {
    // Along x: [g_in, g_out, d].
    let mut tmp = vec![0f32; g_in * g_out * d];
    for y in 0..g_in {
        for (xo, row) in taps.iter().enumerate() {
            let o = &mut tmp[(y * g_out + xo) * d..(y * g_out + xo + 1) * d];
            for &(j, wj) in row {
                let s = &src[(y * g_in + j) * d..(y * g_in + j + 1) * d];
                o.iter_mut().zip(s).for_each(|(a, v)| *a += wj * v);
            }
        }
    }
    // Along y: [g_out, g_out, d].
    let mut out = vec![0f32; g_out * g_out * d];
    for (yo, row) in taps.iter().enumerate() {
        for xo in 0..g_out {
            let o = &mut out[(yo * g_out + xo) * d..(yo * g_out + xo + 1) * d];
            for &(j, wj) in row {
                let s = &tmp[(j * g_out + xo) * d..(j * g_out + xo + 1) * d];
                o.iter_mut().zip(s).for_each(|(a, v)| *a += wj * v);
            }
        }
    }
    out
}

/// Resamples a `g_in × g_in` grid of `d`-vectors to `g_out × g_out` as timm's
/// `resample_abs_pos_embed` does through `F.interpolate(..., mode='bicubic', antialias=True)`.
pub fn resample_bicubic_aa(src: &[f32], g_in: usize, g_out: usize, d: usize) -> Vec<f32> {
    resample_grid(src, g_in, g_out, d, &aa_bicubic_taps(g_in, g_out))
}

/// Resamples a `g_in × g_in` grid to `g_out × g_out` as `F.interpolate(..., scale_factor=
/// factor, mode='bicubic')` does (DINO's `interpolate_pos_encoding`; `g_out` is
/// `⌊g_in · factor⌋`).
pub fn resample_bicubic_by_factor(
    src: &[f32],
    g_in: usize,
    g_out: usize,
    factor: f64,
    d: usize,
) -> Vec<f32> {
    resample_grid(
        src,
        g_in,
        g_out,
        d,
        &bicubic_taps_by_factor(g_in, g_out, factor),
    )
}

/// Resamples a `g_in × g_in` grid to `g_out × g_out` as `F.interpolate(..., size=g_out,
/// mode='bilinear')` does (timm's `resample_abs_pos_embed` with `interpolation='bilinear'`,
/// `antialias=False`).
pub fn resample_bilinear(src: &[f32], g_in: usize, g_out: usize, d: usize) -> Vec<f32> {
    resample_grid(src, g_in, g_out, d, &bilinear_taps(g_in, g_out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_libm() {
        let mut worst = 0f32;
        let mut x = -6.0f32;
        while x < 6.0 {
            worst = worst.max((erf(x) - libm_erf(x)).abs());
            x += 0.001_3;
        }
        assert!(worst < 1e-6, "largest error {worst}");
    }

    fn libm_erf(x: f32) -> f32 {
        libm::erf(x as f64) as f32
    }

    #[test]
    fn resampling_to_the_same_grid_is_the_identity_and_keeps_constants() {
        let d = 3;
        let src: Vec<f32> = (0..4 * 4 * d).map(|i| i as f32 * 0.1).collect();
        let same = resample_bicubic_aa(&src, 4, 4, d);
        for (a, b) in same.iter().zip(&src) {
            assert!((a - b).abs() < 1e-5);
        }
        let ones = vec![1f32; 5 * 5 * d];
        for g in [3, 7] {
            assert!(resample_bicubic_aa(&ones, 5, g, d)
                .iter()
                .all(|v| (v - 1.0).abs() < 1e-5));
        }
    }
}
