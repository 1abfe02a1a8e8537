//! GroupMSA, GiMP's gene encoder (`docs/DESIGN.md` §4): the standardised expression vector is cut
//! into fragments of `f` genes (zero-padded at the end to a multiple of the group count), each
//! fragment tokenised by one shared `Linear(f → d)` plus a fragment position embedding; the
//! fragments form `N_gr` contiguous groups, each prefixed by its own group token and passed
//! through one shared pre-norm transformer block (run as one batch of groups); the group tokens,
//! prefixed by `CLS_ge`, pass through a second block; a LayerNorm; `CLS_ge` is token 0.

use crate::arch::{config, to_value, ArchInfo, InputKind, Training, TrainingDefaults};
use crate::linear_start::{DeepGenes, LinearStart};
use crate::model::{expression, Input, Model, Output};
use candle_core::{Result, Tensor, D};
use gimp_nn::{ops, Activation, Init, LayerNorm, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMsaConfig {
    pub n_genes: usize,
    /// Genes per fragment, `f` *(ours: 252)*.
    pub fragment: usize,
    pub dim: usize,
    /// Groups `N_gr` *(ours: 16)*.
    pub groups: usize,
    pub heads: usize,
    pub mlp_ratio: usize,
    pub dropout: f64,
    pub n_classes: usize,
    /// One `Linear(f → d)` shared by every fragment (`docs/DESIGN.md` §4, ViT-style) or one per
    /// fragment, which keeps each gene's identity in its token *(option)*.
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// A frozen linear model of the genes added to the head's logits, the head starting at
    /// zero (`crate::linear_start`; off in GiMP's gene encoder).
    #[serde(default)]
    pub linear_start: bool,
    /// With a linear start on more genes than `n_genes`: the genes the model is given and the
    /// `n_genes` of them the fragments hold (`crate::linear_start::DeepGenes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deep_genes: Option<DeepGenes>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tokenizer {
    #[default]
    Shared,
    PerFragment,
}

impl GroupMsaConfig {
    pub fn gimp(n_genes: usize, n_classes: usize) -> Self {
        Self {
            n_genes,
            fragment: 252,
            dim: 512,
            groups: 16,
            heads: 8,
            mlp_ratio: 4,
            dropout: 0.1,
            n_classes,
            tokenizer: Tokenizer::Shared,
            linear_start: false,
            deep_genes: None,
        }
    }

    /// The configuration for a cohort of `n_genes` trained from scratch (the registry's
    /// `group_msa` row; `docs/DESIGN.md` §38): [`Self::COHORT_FRAGMENTS`] fragments whatever the
    /// gene count (fewer when there are fewer genes: a 70-gene panel is 35 two-gene tokens, not
    /// one padded fragment), in 4 groups of 16 tokens — the paper's ~15 tokens per group —, a
    /// 64-wide encoder with 4 heads and one tokenizer per fragment, sized for the tens to
    /// hundreds of patients such cohorts have.
    pub fn for_cohort(n_genes: usize, n_classes: usize) -> Self {
        let n_genes = n_genes.max(1);
        let fragment = n_genes.div_ceil(Self::COHORT_FRAGMENTS);
        let fragments = n_genes.div_ceil(fragment);
        Self {
            n_genes,
            fragment,
            dim: 64,
            groups: fragments.min(4),
            heads: 4,
            mlp_ratio: 4,
            dropout: 0.1,
            n_classes,
            tokenizer: Tokenizer::PerFragment,
            linear_start: false,
            deep_genes: None,
        }
    }

    /// Fragments [`Self::for_cohort`] cuts a cohort's genes into.
    pub const COHORT_FRAGMENTS: usize = 64;

    /// Fragments after padding: `ceil(G / f)` rounded up to a multiple of the group count.
    pub fn n_fragments(&self) -> usize {
        let raw = self.n_genes.div_ceil(self.fragment).max(1);
        raw.div_ceil(self.groups) * self.groups
    }
}

/// Multi-head softmax self-attention with a fused `qkv` projection (ViT naming).
struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    /// Attention output of the first token only, `[B, 1, d]`: its query against every key.
    fn forward_first_query(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let q = self.qkv.outputs(0, d)?.forward(&x.narrow(1, 0, 1)?)?; // [B, 1, d]
        let kv = self
            .qkv
            .outputs(d, 2 * d)?
            .forward(x)?
            .reshape((b, t, 2, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?; // [2, B, H, T, hd]
        let (k, v) = (kv.get(0)?.contiguous()?, kv.get(1)?.contiguous()?);
        let q = q.reshape((b, self.heads, 1, hd))?;
        let att = ops::softmax_last(
            &q.matmul(&k.transpose(D::Minus1, D::Minus2)?.contiguous()?)?
                .affine(1.0 / (hd as f64).sqrt(), 0.0)?,
        )?; // [B, H, 1, T]
        let o = att.matmul(&v)?.reshape((b, 1, d))?;
        self.proj.forward(&o)
    }

    #[cfg(test)]
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, d) = x.dims3()?;
        let hd = d / self.heads;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, self.heads, hd))?
            .permute((2, 0, 3, 1, 4))?;
        let (q, k, v) = (
            qkv.get(0)?.contiguous()?,
            qkv.get(1)?.contiguous()?,
            qkv.get(2)?.contiguous()?,
        );
        let att = ops::softmax_last(
            &q.matmul(&k.transpose(D::Minus1, D::Minus2)?.contiguous()?)?
                .affine(1.0 / (hd as f64).sqrt(), 0.0)?,
        )?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, t, d))?;
        self.proj.forward(&o)
    }
}

/// `x + MSA(LN x)`, `x + FFN(LN x)` with GELU and dropout.
struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    dropout: f64,
}

impl Block {
    fn new(s: &Scope, dim: usize, heads: usize, mlp_ratio: usize, dropout: f64) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(&s.pp("norm1"), dim)?,
            attn: Attention {
                qkv: Linear::new(&s.pp("attn.qkv"), dim, 3 * dim, true)?,
                proj: Linear::new(&s.pp("attn.proj"), dim, dim, true)?,
                heads,
            },
            norm2: LayerNorm::new(&s.pp("norm2"), dim)?,
            fc1: Linear::new(&s.pp("mlp.fc1"), dim, mlp_ratio * dim, true)?,
            fc2: Linear::new(&s.pp("mlp.fc2"), mlp_ratio * dim, dim, true)?,
            dropout,
        })
    }

    /// The whole block on every token (what [`Self::forward_first_token`] is checked against).
    #[cfg(test)]
    fn forward(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let x = (x + ops::dropout(
            &self.attn.forward(&self.norm1.forward(x)?)?,
            self.dropout,
            mode,
        )?)?;
        let h = self
            .fc1
            .forward_act(&self.norm2.forward(&x)?, Activation::Gelu)?;
        let h = self.fc2.forward(&ops::dropout(&h, self.dropout, mode)?)?;
        x + ops::dropout(&h, self.dropout, mode)?
    }

    /// The block's output at token 0 only, `[B, 1, d]` — all GroupMSA reads of either block
    /// (the group token after the intra block, `CLS_ge` after the inter block). Every token
    /// still serves as key and value, but the query, the output projection and the
    /// feed-forward network act row by row, so they run on token 0 alone: the same values as
    /// the full block's row 0, at a sixteenth of the feed-forward work for 16-token groups.
    fn forward_first_token(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let x0 = x.narrow(1, 0, 1)?;
        let attn = self.attn.forward_first_query(&self.norm1.forward(x)?)?;
        let x0 = (x0 + ops::dropout(&attn, self.dropout, mode)?)?;
        let h = self
            .fc1
            .forward_act(&self.norm2.forward(&x0)?, Activation::Gelu)?;
        let h = self.fc2.forward(&ops::dropout(&h, self.dropout, mode)?)?;
        x0 + ops::dropout(&h, self.dropout, mode)?
    }
}

pub struct GroupMsa {
    pub cfg: GroupMsaConfig,
    tokenizer: Option<Linear>,
    /// Per-fragment weights `[N_f, f, d]` and biases `[N_f, d]` (`Tokenizer::PerFragment`).
    fragment_weights: Option<(Tensor, Tensor)>,
    pos: Tensor,
    group_tokens: Tensor,
    cls: Tensor,
    intra: Block,
    inter: Block,
    norm: LayerNorm,
    head: Linear,
    linear_start: Option<LinearStart>,
}

impl GroupMsa {
    pub fn new(s: &Scope, cfg: GroupMsaConfig) -> Result<Self> {
        let nf = cfg.n_fragments();
        let tok = Init::Normal(0.02);
        Ok(Self {
            tokenizer: match cfg.tokenizer {
                Tokenizer::Shared => Some(Linear::new(
                    &s.pp("tokenizer"),
                    cfg.fragment,
                    cfg.dim,
                    true,
                )?),
                Tokenizer::PerFragment => None,
            },
            fragment_weights: match cfg.tokenizer {
                Tokenizer::Shared => None,
                Tokenizer::PerFragment => {
                    let init = Init::torch_default(cfg.fragment);
                    Some((
                        s.get(
                            "fragment_tokenizer.weight",
                            &[nf, cfg.fragment, cfg.dim],
                            init,
                        )?,
                        s.get("fragment_tokenizer.bias", &[nf, cfg.dim], init)?,
                    ))
                }
            },
            pos: s.get("pos_embed", &[nf, cfg.dim], tok)?,
            group_tokens: s.get("group_tokens", &[cfg.groups, cfg.dim], tok)?,
            cls: s.get("cls_token", &[1, cfg.dim], tok)?,
            intra: Block::new(
                &s.pp("intra"),
                cfg.dim,
                cfg.heads,
                cfg.mlp_ratio,
                cfg.dropout,
            )?,
            inter: Block::new(
                &s.pp("inter"),
                cfg.dim,
                cfg.heads,
                cfg.mlp_ratio,
                cfg.dropout,
            )?,
            norm: LayerNorm::new(&s.pp("norm"), cfg.dim)?,
            head: {
                let own = Init::torch_default(cfg.dim);
                let w = LinearStart::head_init(cfg.linear_start, own);
                Linear::with_init(&s.pp("head"), cfg.dim, cfg.n_classes, true, w, w)?
            },
            linear_start: match cfg.linear_start {
                true => Some(LinearStart::new(
                    s,
                    cfg.n_genes,
                    cfg.n_classes,
                    cfg.deep_genes.as_ref(),
                )?),
                false => None,
            },
            cfg,
        })
    }

    /// `CLS_ge` `[B, dim]` of standardised expression `[B, G]`.
    pub fn encode(&self, x: &Tensor, mode: &Mode) -> Result<Tensor> {
        let (b, g) = x.dims2()?;
        if g != self.cfg.n_genes {
            candle_core::bail!("GroupMSA expects {} genes, got {g}", self.cfg.n_genes);
        }
        let (nf, f, d, ng) = (
            self.cfg.n_fragments(),
            self.cfg.fragment,
            self.cfg.dim,
            self.cfg.groups,
        );
        let s = nf / ng;
        let x = x.pad_with_zeros(1, 0, nf * f - g)?.reshape((b, nf, f))?;
        let t = match (&self.tokenizer, &self.fragment_weights) {
            (Some(lin), _) => lin.forward(&x)?,
            // [nf, B, f] · [nf, f, d] → [nf, B, d] → [B, nf, d]
            (None, Some((w, b))) => x
                .transpose(0, 1)?
                .contiguous()?
                .matmul(w)?
                .transpose(0, 1)?
                .broadcast_add(b)?,
            (None, None) => candle_core::bail!("GroupMSA has no tokenizer"),
        };
        let t = t.broadcast_add(&self.pos)?; // [B, nf, d]
        let t = t.reshape((b * ng, s, d))?;
        let gt = self
            .group_tokens
            .unsqueeze(0)?
            .broadcast_as((b, ng, d))?
            .reshape((b * ng, 1, d))?;
        let seq = Tensor::cat(&[gt, t], 1)?; // [B·ng, s+1, d]
        let groups = self
            .intra
            .forward_first_token(&seq, mode)?
            .reshape((b, ng, d))?;
        let cls = self.cls.unsqueeze(0)?.broadcast_as((b, 1, d))?;
        let seq = Tensor::cat(&[cls.contiguous()?, groups], 1)?;
        let out = self
            .norm
            .forward(&self.inter.forward_first_token(&seq, mode)?)?;
        out.squeeze(1)
    }
}

impl GroupMsa {
    /// `CLS_ge` `[B, dim]` and head logits `[B, C]` of the genes the model is given `[B, G]`.
    pub fn encode_with_logits(&self, x: &Tensor, mode: &Mode) -> Result<(Tensor, Tensor)> {
        let cls = match &self.linear_start {
            Some(l) => self.encode(&l.deep_input(x)?, mode)?,
            None => self.encode(x, mode)?,
        };
        let mut logits = self.head.forward(&cls)?;
        if let Some(l) = &self.linear_start {
            logits = l.add(x, &logits)?;
        }
        Ok((cls, logits))
    }
}

impl Model for GroupMsa {
    fn expression_batch_logits(&self, x: &Tensor, mode: &Mode) -> Result<Option<Tensor>> {
        Ok(Some(self.encode_with_logits(x, mode)?.1))
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let (cls, logits) = self.encode_with_logits(&expression(input)?.unsqueeze(0)?, mode)?;
        Ok(Output {
            logits: logits.squeeze(0)?,
            embedding: cls.squeeze(0)?,
            attention: None,
        })
    }

    fn has_linear_start(&self) -> bool {
        self.linear_start.is_some()
    }
}

/// GroupMSA with a linear head in the registry.
pub const ARCH: ArchInfo = ArchInfo {
    name: "group_msa",
    summary: "GroupMSA gene encoder with a linear head (GiMP, Jin et al. 2023)",
    reference: "gimp-rs (the paper published no code)",
    input: InputKind::Expression,
    training: Training::Supervised(TrainingDefaults::GENE_ENCODER),
    default_config: |d, c| to_value(&GroupMsaConfig::for_cohort(d.genes, c)),
    build: |s, v| Ok(Box::new(GroupMsa::new(s, config(v)?)?)),
    config_from_weights: |_| {
        Err(candle_core::Error::Msg(
            "GroupMSA's gene count cannot be read from its weights: use a gimp-rs checkpoint, which stores its config".into(),
        ))
    },
    set_gene_groups: None,
};

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use gimp_nn::ParamStore;

    /// Token 0 of the whole block equals the token-0-only path, values and every gradient.
    #[test]
    fn first_token_path_equals_row_zero_of_the_whole_block() {
        let store = ParamStore::new(3);
        let block = Block::new(&store.root(), 32, 4, 4, 0.1).unwrap();
        let x = Var::from_tensor(&Tensor::randn(0f32, 1f32, (5, 16, 32), &Device::Cpu).unwrap())
            .unwrap();
        let mode = Mode::eval();
        let run = |first: bool| {
            let y = if first {
                block.forward_first_token(x.as_tensor(), &mode).unwrap()
            } else {
                block
                    .forward(x.as_tensor(), &mode)
                    .unwrap()
                    .narrow(1, 0, 1)
                    .unwrap()
            };
            let w = Tensor::from_vec(
                (0..y.elem_count())
                    .map(|i| (i % 7) as f32 - 3.0)
                    .collect::<Vec<_>>(),
                y.dims(),
                &Device::Cpu,
            )
            .unwrap();
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let mut grads = vec![g.get(x.as_tensor()).unwrap().clone()];
            for (_, p) in store.params() {
                grads.push(g.get(p.var.as_tensor()).unwrap().clone());
            }
            (y, grads)
        };
        let (a, ga) = run(true);
        let (b, gb) = run(false);
        let diff = |p: &Tensor, q: &Tensor| -> f32 {
            (p - q)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert_eq!(a.dims(), &[5, 1, 32]);
        assert!(diff(&a, &b) < 1e-5, "{}", diff(&a, &b));
        for (i, (p, q)) in ga.iter().zip(&gb).enumerate() {
            assert!(diff(p, q) < 1e-4, "gradient {i}: {}", diff(p, q));
        }
    }
}
