//! MMP, multimodal prototyping (Song et al., ICML 2024; mahmoodlab/MMP at 5878b84): a slide as a
//! few morphological prototypes, expression as pathway tokens, fused by one attention layer.
//!
//! * **Prototypes** (`training/main_prototype.py`, `utils/proto_utils.py::cluster`): k-means
//!   (16 clusters) on patches of the training slides — the first `⌈n_total / slides⌉` patches of
//!   each, `n_total = 16 × n_proto_patches` — fitted once per split before training, by
//!   [`fit_prototypes`] here (seeded k-means++, `n_init` restarts, Lloyd iterations; the reference
//!   runs faiss' k-means, `niter` 50, `nredo` 3). They enter the model as the fixed prior means
//!   `panther.priors.m` ([`install_prototypes`]).
//! * **PANTHER slide representation** (`mil_models/PANTHER/{layers,networks}.py`): one MAP-EM
//!   step (`em_iter` 1, `tau` 1, `ot_eps` 1) of a diagonal Gaussian mixture started at the prior
//!   (`π = 1/p`, `μ = m`, `Σ = ε·softplus(V_)`), giving per prototype `[π_k, μ_k, Σ_k]`
//!   (`2·d_in + 1`, the `allcat` output cut by `PrototypeTokenizer`). The prior is frozen
//!   (`--fix_proto`): it gets no gradient.
//! * **Fusion** (`mil_models/model_multimodal.py::coattn` as `scripts/survival/mmp.sh` builds it:
//!   `histo_model='PANTHER'`, `append_embed='random'`, `num_coattn_layers=1`, `net_indiv`,
//!   `histo_agg='mean'`): pathway tokens (two SNN blocks of 256 per pathway, as SurvPath) and
//!   prototype tokens (`path_proj_net`: `Linear(2·d_in + 1 → 256)`), each with a learned 32-wide
//!   embedding appended (`gene_embedding`, `histo_embedding`: width 288); `MMAttentionLayer` in
//!   `full` mode (one head of 144); one `FeedForward` per token (`FeedForwardEnsemble`); a
//!   LayerNorm; the mean of the pathway tokens and of the prototype tokens concatenated (288) and
//!   `classifier` (`Linear(288 → C)`, no bias).
//!
//! Names are the reference's (`coattn`'s state dict plus PANTHER's `panther.priors.*`).

use crate::arch::{
    config, gene_group_networks, shape, to_value, ArchInfo, InputKind, Training, TrainingDefaults,
};
use crate::model::{bag, expression, Input, Model, Output};
use crate::survpath::{snn_blocks, snn_forward, FeedForward, PathwayAttention, Pattern};
use candle_core::{DType, Device, Result, Tensor, D};
use gimp_nn::{Init, LayerNorm, Linear, Mode, ParamStore, Scope};
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The names of PANTHER's frozen prior in the state dict.
pub const PROTOTYPES: &str = "panther.priors.m";
pub const PRIOR_VARIANCE: &str = "panther.priors.V_";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmpConfig {
    pub d_in: usize,
    pub n_genes: usize,
    pub n_classes: usize,
    /// Genes of each pathway (indices into the expression vector); empty: SurvPath's fallback of
    /// equal contiguous chunks.
    #[serde(default)]
    pub groups: Vec<Vec<u32>>,
    /// Morphological prototypes (16).
    #[serde(default = "default_prototypes")]
    pub n_proto: usize,
    /// `path_proj_dim` (256): the width of the tokens before the appended embedding.
    #[serde(default = "default_d")]
    pub d: usize,
    /// Width of the learned per-token embedding appended to every token (32).
    #[serde(default = "default_append")]
    pub append_dim: usize,
    /// Widths of each pathway's SNN blocks ([256, 256]); the last must be `d`.
    #[serde(default = "default_omic_hidden")]
    pub omic_hidden: Vec<usize>,
    /// Dropout of the feed-forward layers (0.1).
    #[serde(default = "default_dropout")]
    pub dropout: f64,
    /// EM steps of the slide representation (1).
    #[serde(default = "default_em_iter")]
    pub em_iter: usize,
    /// Weight of the prior in the M-step (1.0).
    #[serde(default = "default_one")]
    pub tau: f64,
    /// Scale of the prior variance (`ot_eps`, 1.0).
    #[serde(default = "default_one")]
    pub ot_eps: f64,
}

fn default_prototypes() -> usize {
    16
}
fn default_d() -> usize {
    256
}
fn default_append() -> usize {
    32
}
fn default_omic_hidden() -> Vec<usize> {
    vec![256, 256]
}
fn default_dropout() -> f64 {
    0.1
}
fn default_em_iter() -> usize {
    1
}
fn default_one() -> f64 {
    1.0
}

impl MmpConfig {
    pub fn new(d_in: usize, n_genes: usize, n_classes: usize) -> Self {
        Self {
            d_in,
            n_genes,
            n_classes,
            groups: Vec::new(),
            n_proto: default_prototypes(),
            d: default_d(),
            append_dim: default_append(),
            omic_hidden: default_omic_hidden(),
            dropout: default_dropout(),
            em_iter: default_em_iter(),
            tau: default_one(),
            ot_eps: default_one(),
        }
    }

    fn group_indices(&self) -> Vec<Vec<u32>> {
        crate::survpath::SurvPathConfig {
            groups: self.groups.clone(),
            ..crate::survpath::SurvPathConfig::new(self.d_in, self.n_genes, self.n_classes)
        }
        .group_indices()
    }
}

/// PANTHER's output for one bag: mixture weights `[p]`, means and variances `[p, d_in]`, and the
/// posterior of every patch over the prototypes `[N, p]`.
pub struct Mixture {
    pub pi: Tensor,
    pub mu: Tensor,
    pub sigma: Tensor,
    pub posterior: Tensor,
}

/// `DirNIWNet.map_em` for one bag `x` `[N, d]` from the prior `(m, V)` `[p, d]`.
pub fn map_em(x: &Tensor, m: &Tensor, v: &Tensor, iters: usize, tau: f64) -> Result<Mixture> {
    let (p, d) = m.dims2()?;
    let x2 = x.sqr()?;
    let mut pi = Tensor::full(1.0 / p as f32, p, x.device())?;
    let (mut mu, mut sigma) = (m.clone(), v.clone());
    let mut posterior = Tensor::zeros((x.dim(0)?, p), DType::F32, x.device())?;
    for _ in 0..iters {
        // mog_eval: the joint log-likelihood of every patch under every component.
        let inv = sigma.recip()?;
        let constant = ((sigma.log()?.sum(1)? + d as f64 * (2.0 * std::f64::consts::PI).ln())?
            + (mu.sqr()? * &inv)?.sum(1)?)?; // [p]
        let quad = (x2.matmul(&inv.t()?)? - (x.matmul(&(&mu * &inv)?.t()?)? * 2.0)?)?; // [N, p]
        let jll = (quad.broadcast_add(&constant)?.affine(-0.5, 0.0)?).broadcast_add(&pi.log()?)?;
        let max = jll.max_keepdim(D::Minus1)?;
        let shifted = jll.broadcast_sub(&max)?;
        let mll = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        posterior = shifted.broadcast_sub(&mll)?.exp()?;
        // map_m_step
        let wsum_reg = (posterior.sum(0)? + tau)?; // [p]
        let wxsum = posterior.t()?.matmul(x)?;
        let wxxsum = posterior.t()?.matmul(&x2)?;
        pi = wsum_reg.broadcast_div(&wsum_reg.sum_all()?)?;
        let denom = wsum_reg.unsqueeze(1)?;
        mu = (wxsum + (m * tau)?)?.broadcast_div(&denom)?;
        sigma = ((wxxsum + ((v + m.sqr()?)? * tau)?)?.broadcast_div(&denom)? - mu.sqr()?)?;
    }
    Ok(Mixture {
        pi,
        mu,
        sigma,
        posterior,
    })
}

pub struct Mmp {
    pub cfg: MmpConfig,
    groups: Vec<Tensor>,
    prototypes: Tensor,
    prior_v: Tensor,
    sig: Vec<Vec<Linear>>,
    path_proj: Linear,
    histo_embedding: Tensor,
    gene_embedding: Tensor,
    attention: PathwayAttention,
    feed_forward: Vec<FeedForward>,
    layer_norm: LayerNorm,
    classifier: Linear,
}

impl Mmp {
    pub fn new(s: &Scope, cfg: MmpConfig) -> Result<Self> {
        let (d, p) = (cfg.d, cfg.n_proto);
        let width = d + cfg.append_dim;
        if width < 2 || !width.is_multiple_of(2) || p == 0 {
            candle_core::bail!(
                "MMP: d + append_dim = {width} must be even and positive, and prototypes ({p}) at least one"
            );
        }
        if cfg.omic_hidden.last() != Some(&d) {
            candle_core::bail!(
                "MMP: the pathway SNN widths {:?} must end at d = {d}",
                cfg.omic_hidden
            );
        }
        let groups = cfg.group_indices();
        if groups.is_empty()
            || groups.iter().any(|g| g.is_empty())
            || groups.iter().flatten().any(|&i| i as usize >= cfg.n_genes)
        {
            candle_core::bail!(
                "MMP: every pathway needs genes, with indices below {}",
                cfg.n_genes
            );
        }
        let n_path = groups.len();
        let sig = groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                snn_blocks(
                    &s.pp(format!("sig_networks.{i}")),
                    g.len(),
                    &cfg.omic_hidden,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let dev = s.device().clone();
        let half = width / 2;
        let ensemble = s.pp("coattn.1");
        // FeedForwardEnsemble builds a LayerNorm of its own that its forward never uses.
        LayerNorm::new(&ensemble.pp("norm"), half)?;
        Ok(Self {
            groups: groups
                .iter()
                .map(|g| Tensor::new(g.as_slice(), &dev))
                .collect::<Result<_>>()?,
            prototypes: s.get(PROTOTYPES, &[p, cfg.d_in], Init::Normal(0.1))?,
            prior_v: s.get(
                PRIOR_VARIANCE,
                &[p, cfg.d_in],
                Init::Constant((std::f64::consts::E - 1.0).ln()),
            )?,
            sig,
            path_proj: Linear::new(&s.pp("path_proj_net.0"), 2 * cfg.d_in + 1, d, true)?,
            histo_embedding: s.get(
                "histo_embedding",
                &[1, p, cfg.append_dim],
                Init::Normal(1.0),
            )?,
            gene_embedding: s.get(
                "gene_embedding",
                &[1, n_path, cfg.append_dim],
                Init::Normal(1.0),
            )?,
            attention: PathwayAttention::new(&s.pp("coattn.0"), width, Pattern::Full)?,
            feed_forward: (0..n_path + p)
                .map(|i| FeedForward::new(&ensemble.pp(format!("net.{i}")), half, cfg.dropout))
                .collect::<Result<_>>()?,
            layer_norm: LayerNorm::new(&s.pp("coattn.2"), half)?,
            classifier: Linear::new(&s.pp("classifier"), width, cfg.n_classes, false)?,
            cfg,
        })
    }

    /// The frozen prior `(m, V = ε·softplus(V_))`, detached (`--fix_proto`).
    fn prior(&self) -> Result<(Tensor, Tensor)> {
        let v_ = self.prior_v.detach();
        let softplus = (v_.exp()? + 1.0)?.log()?;
        Ok((self.prototypes.detach(), (softplus * self.cfg.ot_eps)?))
    }

    /// PANTHER's representation of a bag: the mixture and its prototype tokens `[p, 2·d_in + 1]`.
    pub fn slide_tokens(&self, x: &Tensor) -> Result<(Mixture, Tensor)> {
        let (m, v) = self.prior()?;
        let mix = map_em(x, &m, &v, self.cfg.em_iter, self.cfg.tau)?;
        let tokens = Tensor::cat(&[&mix.pi.unsqueeze(1)?, &mix.mu, &mix.sigma], 1)?;
        Ok((mix, tokens))
    }

    /// The most probable prototype of every patch of a bag (the prototype map of a heatmap).
    pub fn assignments(&self, x: &Tensor) -> Result<Vec<u32>> {
        self.slide_tokens(x)?
            .0
            .posterior
            .argmax(D::Minus1)?
            .to_vec1()
    }

    /// The fused model on prototype tokens `[p, 2·d_in + 1]` and an expression vector: logits,
    /// embedding and the pre-softmax pathway → prototype scores `[P, p]`.
    pub fn fuse(
        &self,
        proto_tokens: &Tensor,
        g: &Tensor,
        mode: &Mode,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n_path = self.groups.len();
        let omic = self
            .groups
            .iter()
            .zip(&self.sig)
            .map(|(idx, blocks)| snn_forward(blocks, &g.index_select(idx, 0)?.unsqueeze(0)?, mode))
            .collect::<Result<Vec<_>>>()?;
        let omic = Tensor::cat(
            &[&Tensor::cat(&omic, 0)?, &self.gene_embedding.squeeze(0)?],
            1,
        )?;
        let histo = Tensor::cat(
            &[
                &self.path_proj.forward(proto_tokens)?,
                &self.histo_embedding.squeeze(0)?,
            ],
            1,
        )?;
        let tokens = Tensor::cat(&[&omic, &histo], 0)?;
        let a = self.attention.forward(&tokens, n_path)?;
        let h = self
            .feed_forward
            .iter()
            .enumerate()
            .map(|(i, ff)| ff.forward(&a.tokens.narrow(0, i, 1)?, mode))
            .collect::<Result<Vec<_>>>()?;
        let h = self.layer_norm.forward(&Tensor::cat(&h, 0)?)?;
        let p = self.cfg.n_proto;
        let embedding = Tensor::cat(
            &[
                &h.narrow(0, 0, n_path)?.mean(0)?,
                &h.narrow(0, n_path, p)?.mean(0)?,
            ],
            0,
        )?;
        let logits = self
            .classifier
            .forward(&embedding.unsqueeze(0)?)?
            .squeeze(0)?;
        Ok((logits, embedding, a.pathway_to_patch))
    }
}

impl Model for Mmp {
    /// The prototypes, fitted on the training bags with the run's seed ([`fit_prototypes`]).
    fn fit_to_training(
        &self,
        bags: &dyn Fn() -> Result<Vec<Tensor>>,
        seed: u64,
    ) -> Result<Vec<(String, Tensor)>> {
        let fit = PrototypeFitting {
            n_proto: self.cfg.n_proto,
            ..PrototypeFitting::default()
        };
        Ok(vec![(
            PROTOTYPES.to_string(),
            fit_prototypes(&bags()?, &fit, seed)?,
        )])
    }

    fn forward(&self, input: &Input, mode: &Mode) -> Result<Output> {
        let x = &*bag(input)?;
        let (mix, tokens) = self.slide_tokens(x)?;
        let (logits, embedding, pathway_to_proto) = self.fuse(&tokens, expression(input)?, mode)?;
        // Per patch: the pathways' mean pre-softmax score for each prototype, weighted by the
        // patch's posterior over the prototypes.
        let per_proto = pathway_to_proto.mean(0)?.unsqueeze(1)?; // [p, 1]
        let attention = mix.posterior.matmul(&per_proto)?.squeeze(1)?;
        Ok(Output {
            logits,
            embedding,
            attention: Some(attention),
        })
    }
}

/// How the prototypes are fitted (`scripts/prototype/clustering.sh`: 16 prototypes,
/// `n_proto_patches` 100,000, `n_init` 3; `main_prototype.py`'s `n_iter` 50).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrototypeFitting {
    pub n_proto: usize,
    pub n_proto_patches: usize,
    pub n_init: usize,
    pub n_iter: usize,
}

impl Default for PrototypeFitting {
    fn default() -> Self {
        Self {
            n_proto: 16,
            n_proto_patches: 100_000,
            n_init: 3,
            n_iter: 50,
        }
    }
}

/// The patches `cluster` reads: the first `⌈n_total / slides⌉` rows of each training bag, in
/// order, until `n_total = n_proto · n_proto_patches` rows are taken; as `[rows, d]` values.
pub fn prototype_patches(bags: &[Tensor], fit: &PrototypeFitting) -> Result<(Vec<f32>, usize)> {
    let n_total = fit.n_proto * fit.n_proto_patches;
    let per_bag = n_total.div_ceil(bags.len().max(1));
    let mut rows = Vec::new();
    let mut d = 0;
    let mut taken = 0;
    for b in bags {
        if taken >= n_total {
            break;
        }
        let (n, width) = b.dims2()?;
        if d != 0 && width != d {
            candle_core::bail!("MMP prototypes: bags of widths {d} and {width}");
        }
        d = width;
        let k = n.min(per_bag).min(n_total - taken);
        rows.extend(b.narrow(0, 0, k)?.flatten_all()?.to_vec1::<f32>()?);
        taken += k;
    }
    Ok((rows, d))
}

/// The prototypes `[n_proto, d]` of the training bags: k-means on [`prototype_patches`], the
/// best of `n_init` seeded k-means++ starts by inertia, each refined by `n_iter` Lloyd steps
/// (an empty cluster restarts at the patch farthest from its centre). Distances and means go
/// through matrix products (`‖x‖² − 2·x·cᵀ + ‖c‖²`): 50,000 1024-d patches, 16 prototypes, 3 × 50
/// steps took 47 s on 2 shared cores (so the reference's 1.6 million patches about 25 minutes;
/// its faiss run is on a GPU). Run once per split on the training patients, before the model is
/// built; the result goes in with [`install_prototypes`].
pub fn fit_prototypes(bags: &[Tensor], fit: &PrototypeFitting, seed: u64) -> Result<Tensor> {
    let (rows, d) = prototype_patches(bags, fit)?;
    let n = rows.len().checked_div(d).unwrap_or(0);
    let k = fit.n_proto;
    if n < k || k == 0 {
        candle_core::bail!("MMP prototypes: {n} training patches for {k} prototypes");
    }
    let x = Tensor::from_vec(rows, (n, d), &Device::Cpu)?;
    let x_sq = x.sqr()?.sum_keepdim(1)?; // [n, 1]
                                         // Squared distances `[n, c]` of every patch to every row of `c`, never below 0.
    let distances = |c: &Tensor| -> Result<Tensor> {
        x.matmul(&c.t()?)?
            .affine(-2.0, 0.0)?
            .broadcast_add(&c.sqr()?.sum(1)?)?
            .broadcast_add(&x_sq)?
            .relu()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut best: Option<(f64, Tensor)> = None;
    for _ in 0..fit.n_init.max(1) {
        // k-means++ seeding: each next centre drawn with probability ∝ its squared distance to
        // the nearest centre so far.
        let mut picks = vec![rng.gen_range(0..n)];
        let mut nearest: Vec<f32> = distances(&x.narrow(0, picks[0], 1)?)?
            .flatten_all()?
            .to_vec1()?;
        while picks.len() < k {
            let total: f64 = nearest.iter().map(|&v| v as f64).sum();
            let mut pick = rng.gen_range(0..n);
            if total > 0.0 {
                let mut r = rng.gen::<f64>() * total;
                for (i, &v) in nearest.iter().enumerate() {
                    r -= v as f64;
                    if r <= 0.0 {
                        pick = i;
                        break;
                    }
                }
            }
            let to_new: Vec<f32> = distances(&x.narrow(0, pick, 1)?)?
                .flatten_all()?
                .to_vec1()?;
            for (v, t) in nearest.iter_mut().zip(to_new) {
                *v = v.min(t);
            }
            picks.push(pick);
        }
        let idx: Vec<u32> = picks.iter().map(|&i| i as u32).collect();
        let mut centres = x.index_select(&Tensor::new(idx.as_slice(), &Device::Cpu)?, 0)?;
        for _ in 0..fit.n_iter.max(1) {
            let dist = distances(&centres)?;
            let assign: Vec<u32> = dist.argmin(1)?.to_vec1()?;
            let mut counts = vec![0f32; k];
            let mut one_hot = vec![0f32; n * k];
            for (i, &a) in assign.iter().enumerate() {
                counts[a as usize] += 1.0;
                one_hot[i * k + a as usize] = 1.0;
            }
            let sums = Tensor::from_vec(one_hot, (n, k), &Device::Cpu)?
                .t()?
                .matmul(&x)?; // [k, d]
            let divisor: Vec<f32> = counts.iter().map(|&c| c.max(1.0)).collect();
            let means = sums.broadcast_div(&Tensor::from_vec(divisor, (k, 1), &Device::Cpu)?)?;
            let mut rows: Vec<Tensor> = (0..k).map(|c| means.get(c)).collect::<Result<_>>()?;
            // An empty cluster restarts at the patch farthest from its nearest centre.
            if counts.contains(&0.0) {
                let own: Vec<f32> = dist.min(1)?.to_vec1()?;
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&i, &j| own[j].total_cmp(&own[i]));
                let mut far = order.into_iter();
                for (c, &count) in counts.iter().enumerate() {
                    if count == 0.0 {
                        if let Some(i) = far.next() {
                            rows[c] = x.get(i)?;
                        }
                    }
                }
            }
            centres = Tensor::stack(&rows, 0)?;
        }
        let inertia = distances(&centres)?
            .min(1)?
            .to_dtype(DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        if best.as_ref().is_none_or(|(b, _)| inertia < *b) {
            best = Some((inertia, centres));
        }
    }
    best.map(|(_, c)| c)
        .ok_or_else(|| candle_core::Error::Msg("MMP prototypes: no k-means run".into()))
}

/// Puts fitted prototypes `[n_proto, d_in]` into a built model's store, as `panther.priors.m`.
pub fn install_prototypes(store: &ParamStore, prototypes: &Tensor) -> Result<()> {
    let params = store.params();
    let p = params.get(PROTOTYPES).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "the model has no '{PROTOTYPES}' (not an MMP model)"
        ))
    })?;
    if p.var.dims() != prototypes.dims() {
        candle_core::bail!(
            "MMP prototypes of shape {:?} for a model that takes {:?}",
            prototypes.dims(),
            p.var.dims()
        );
    }
    p.var
        .set(&prototypes.to_dtype(DType::F32)?.to_device(p.var.device())?)
}

fn config_from_weights(w: &BTreeMap<String, Tensor>) -> Result<Value> {
    let proto = shape(w, PROTOTYPES)?;
    let proj = shape(w, "path_proj_net.0.weight")?;
    let g = gene_group_networks(w)?;
    let mut c = MmpConfig::new(proto[1], g.genes, shape(w, "classifier.weight")?[0]);
    c.n_proto = proto[0];
    c.d = proj[0];
    c.append_dim = shape(w, "histo_embedding")?[2];
    c.omic_hidden = g.hidden;
    c.groups = g.groups;
    Ok(to_value(&c))
}

/// MMP in the registry; its pathways come from a composition table when given, its prototypes
/// from [`fit_prototypes`] on the training split.
pub const ARCH: ArchInfo = ArchInfo {
    name: "mmp",
    summary: "MMP: PANTHER Gaussian-mixture prototypes of the slide and pathway tokens, fused by attention (Song et al. 2024)",
    reference: "mahmoodlab/MMP src/mil_models/model_multimodal.py coattn, PANTHER/{layers,networks}.py",
    input: InputKind::Paired,
    // `scripts/survival/mmp.sh`: AdamW, lr 1e-4, decay 1e-5, cosine after one warm-up epoch,
    // 50 epochs, batches of 64 (Cox loss on the batch).
    training: Training::Supervised(TrainingDefaults {
        epochs: 50,
        lr: 1e-4,
        weight_decay: 1e-5,
        cosine: true,
        accumulate: 64,
        ..TrainingDefaults::ADAMW
    }),
    default_config: |d, c| to_value(&MmpConfig::new(d.features, d.genes, c)),
    build: |s, v| Ok(Box::new(Mmp::new(s, config(v)?)?)),
    config_from_weights,
    set_gene_groups: Some(|c, groups| {
        c["groups"] = to_value(&groups);
        Ok(())
    }),
};
