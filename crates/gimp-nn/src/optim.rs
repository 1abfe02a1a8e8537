//! Optimisers with PyTorch's exact semantics, parameter groups (no weight decay on biases and
//! norms), learning-rate schedules, gradient clipping and accumulation.

use crate::cpu::with_data;
use crate::params::ParamStore;
use candle_core::backprop::GradStore;
use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Decoupled weight decay (Loshchilov & Hutter; `torch.optim.AdamW`).
    AdamW,
    /// L2 penalty added to the gradient (`torch.optim.Adam(weight_decay=…)`).
    AdamL2,
}

impl std::str::FromStr for Kind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "adamw" => Ok(Kind::AdamW),
            "adam_l2" => Ok(Kind::AdamL2),
            other => Err(format!(
                "unknown optimizer '{other}', expected adamw or adam_l2"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub kind: Kind,
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl AdamConfig {
    /// AdamW with PyTorch's β (0.9, 0.999) and ε 1e-8.
    pub fn adamw(lr: f64, weight_decay: f64) -> Self {
        Self {
            kind: Kind::AdamW,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }
}

impl AdamConfig {
    /// `docs/DESIGN.md` §9: AdamW, lr 1e-4, weight decay 1e-4.
    pub fn gimp() -> Self {
        Self {
            kind: Kind::AdamW,
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-4,
        }
    }
}

/// Whether a parameter is decayed: not 1-D tensors (biases, LayerNorm, tokens of one row are
/// 2-D+), not names ending in `.bias` — TransMIL's `add_weight_decay` rule.
pub fn decays(name: &str, shape: &[usize]) -> bool {
    shape.len() > 1 && !name.ends_with(".bias")
}

/// A parameter's first and second moment estimates, updated in place at each step.
struct State {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// Adam / AdamW over the trainable parameters of a store.
pub struct Adam {
    pub cfg: AdamConfig,
    params: Vec<(String, Var, bool)>,
    state: BTreeMap<String, State>,
    pub step: u64,
}

impl Adam {
    pub fn new(store: &ParamStore, cfg: AdamConfig) -> Self {
        let params = store
            .params()
            .into_iter()
            .filter(|(_, p)| p.trainable)
            .map(|(n, p)| {
                let d = decays(&n, p.var.dims());
                (n, p.var, d)
            })
            .collect();
        Self {
            cfg,
            params,
            state: BTreeMap::new(),
            step: 0,
        }
    }

    pub fn param_names(&self) -> Vec<String> {
        self.params.iter().map(|(n, _, _)| n.clone()).collect()
    }

    /// One update at learning rate `lr` with these gradients (parameters without a gradient are
    /// left alone, as PyTorch skips `grad is None`).
    pub fn step_with(&mut self, grads: &BTreeMap<String, Tensor>, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        for (name, var, decay) in &self.params {
            let Some(g) = grads.get(name) else { continue };
            let wd = if *decay { self.cfg.weight_decay } else { 0.0 };
            // Decay as a factor on the gradient's or the weight's side (0 and 1 where it does
            // not apply: exact for finite values), so the loop has no branch to stop it from
            // being vectorised.
            let l2 = matches!(self.cfg.kind, Kind::AdamL2);
            let (g_decay, shrink) = match (wd != 0.0, l2) {
                (true, true) => (wd as f32, 1.0f32),
                (true, false) => (0.0, (1.0 - lr * wd) as f32),
                (false, _) => (0.0, 1.0),
            };
            let (b1f, b1c, b2f, b2c) = (b1 as f32, (1.0 - b1) as f32, b2 as f32, (1.0 - b2) as f32);
            let (inv_bc2, eps, step) = (
                (1.0 / bc2.sqrt()) as f32,
                self.cfg.eps as f32,
                (lr / bc1) as f32,
            );
            // One pass over the parameter, its gradient and both moments, the moments updated
            // where they are kept and the work split over the cores: the update is
            // element-wise, so the result does not depend on the thread count. (Copying the
            // moments out of tensors and building three new ones per parameter and step was
            // over a quarter of a gene model's training time.)
            let p = var.as_tensor().detach();
            let n = p.elem_count();
            let st = self.state.entry(name.clone()).or_insert_with(|| State {
                m: vec![0f32; n],
                v: vec![0f32; n],
            });
            let p_new = with_data(&p, |ps| {
                with_data(&g.detach(), |gs| {
                    if gs.len() != n || ps.len() != n || st.m.len() != n {
                        candle_core::bail!("optimiser: gradient of {name} has the wrong size");
                    }
                    let mut out = vec![0f32; n];
                    const CHUNK: usize = 1 << 14;
                    out.par_chunks_mut(CHUNK)
                        .zip(st.m.par_chunks_mut(CHUNK))
                        .zip(st.v.par_chunks_mut(CHUNK))
                        .zip(ps.par_chunks(CHUNK).zip(gs.par_chunks(CHUNK)))
                        .for_each(|(((out, ms), vs), (ps, gs))| {
                            for ((((o, m), v), &p), &g) in
                                out.iter_mut().zip(ms).zip(vs).zip(ps).zip(gs)
                            {
                                let g = g + p * g_decay;
                                let p_dec = p * shrink;
                                *m = *m * b1f + g * b1c;
                                *v = *v * b2f + g * g * b2c;
                                let denom = v.sqrt() * inv_bc2 + eps;
                                *o = p_dec - (*m / denom) * step;
                            }
                        });
                    Ok(out)
                })
            })?;
            var.set(&Tensor::from_vec(p_new, p.shape().clone(), p.device())?)?;
        }
        Ok(())
    }

    /// Gradients of the trainable parameters from a backward pass, by name.
    pub fn collect(&self, grads: &GradStore) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            // Detached: a gradient computed through tracked weights carries its own graph, which
            // the moment estimates would otherwise keep alive from one step to the next.
            .filter_map(|(n, v, _)| grads.get(v.as_tensor()).map(|g| (n.clone(), g.detach())))
            .collect()
    }

    /// Moment estimates by name (`{name}.exp_avg`, `{name}.exp_avg_sq`), to checkpoint.
    pub fn state_tensors(&self) -> BTreeMap<String, Tensor> {
        let mut out = BTreeMap::new();
        for (n, var, _) in &self.params {
            let Some(s) = self.state.get(n) else { continue };
            let shape = var.shape().clone();
            for (suffix, values) in [("exp_avg", &s.m), ("exp_avg_sq", &s.v)] {
                // The shapes match by construction (checked at each step and on loading).
                if let Ok(t) = Tensor::from_slice(values, shape.clone(), var.device()) {
                    out.insert(format!("{n}.{suffix}"), t);
                }
            }
        }
        out
    }

    /// Restores moments saved by [`Self::state_tensors`] and the step count.
    pub fn load_state(&mut self, tensors: &BTreeMap<String, Tensor>, step: u64) -> Result<()> {
        self.state.clear();
        for (n, var, _) in &self.params {
            if let (Some(m), Some(v)) = (
                tensors.get(&format!("{n}.exp_avg")),
                tensors.get(&format!("{n}.exp_avg_sq")),
            ) {
                let flat = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
                let (m, v) = (flat(m)?, flat(v)?);
                if m.len() != var.elem_count() || v.len() != var.elem_count() {
                    candle_core::bail!(
                        "optimiser state: the moments of {n} have {} and {} values, the parameter {}",
                        m.len(),
                        v.len(),
                        var.elem_count()
                    );
                }
                self.state.insert(n.clone(), State { m, v });
            }
        }
        self.step = step;
        Ok(())
    }
}

/// Scales gradients so their global L2 norm is at most `max_norm`
/// (`torch.nn.utils.clip_grad_norm_`, coefficient `max_norm / (norm + 1e-6)`). Returns the norm.
pub fn clip_grad_norm(grads: &mut BTreeMap<String, Tensor>, max_norm: f64) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.values() {
        total += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    let norm = total.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.values_mut() {
            *g = g.affine(coef, 0.0)?;
        }
    }
    Ok(norm)
}

/// Sums gradients over several backward passes before one optimiser step.
#[derive(Default)]
pub struct GradAccumulator {
    pub grads: BTreeMap<String, Tensor>,
    pub count: usize,
}

impl GradAccumulator {
    pub fn add(&mut self, grads: BTreeMap<String, Tensor>) -> Result<()> {
        for (n, g) in grads {
            let e = match self.grads.remove(&n) {
                Some(prev) => (prev + g)?,
                None => g,
            };
            self.grads.insert(n, e);
        }
        self.count += 1;
        Ok(())
    }

    /// The accumulated gradients, averaged over the passes, and a reset accumulator.
    pub fn take_mean(&mut self) -> Result<BTreeMap<String, Tensor>> {
        let k = self.count.max(1) as f64;
        let out = std::mem::take(&mut self.grads)
            .into_iter()
            .map(|(n, g)| Ok((n, g.affine(1.0 / k, 0.0)?)))
            .collect::<Result<_>>()?;
        self.count = 0;
        Ok(out)
    }
}

/// Linear warm-up over `warmup` steps, then cosine decay towards 0 at step `total`
/// (`CosineAnnealingLR(T_max = total)` when there is no warm-up).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cosine {
    pub base: f64,
    pub warmup: usize,
    pub total: usize,
}

impl Cosine {
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.base * (step + 1) as f64 / self.warmup as f64;
        }
        let span = self.total.saturating_sub(self.warmup).max(1) as f64;
        let progress = ((step - self.warmup) as f64 / span).min(1.0);
        self.base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}
