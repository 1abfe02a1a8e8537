//! Gated bilinear (Kronecker) fusion of two vectors (Pathomic Fusion's `BilinearFusion`, as
//! PORPOISE and MCAT copy it; `docs/DESIGN.md` §21–§22). A component of [`crate::porpoise`] and
//! [`crate::pathomic`], not a model. Parameter names are the reference's (`linear_h1.0`,
//! `linear_z1.0`, `linear_o1.0`, …, `encoder1.0`, `encoder2.0`).

use crate::arch::shape;
use candle_core::{Result, Tensor};
use gimp_nn::{ops, Linear, Mode, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BilinearFusionConfig {
    pub dim1: usize,
    pub dim2: usize,
    pub scale1: usize,
    pub scale2: usize,
    pub gate1: bool,
    pub gate2: bool,
    /// Append the two input vectors before `encoder2` (PORPOISE: yes; MCAT's copy: no).
    pub skip: bool,
    /// Output width of `encoder1` (256 in the reference, a literal there).
    #[serde(default = "default_encoder_dim")]
    pub encoder_dim: usize,
    pub mmhid: usize,
    pub dropout: f64,
    /// Dropout after `encoder1` and `encoder2` (MCAT's copy; the spec's PORPOISE has none).
    pub encoder_dropout: bool,
}

fn default_encoder_dim() -> usize {
    256
}

impl BilinearFusionConfig {
    /// The reference's `BilinearFusion(dim1, dim2, scale_dim1 = scale_dim2 = 8, mmhid)` with both
    /// gates and `encoder1` 256 wide.
    pub fn new(dim1: usize, dim2: usize, mmhid: usize, skip: bool, encoder_dropout: bool) -> Self {
        Self {
            dim1,
            dim2,
            scale1: 8,
            scale2: 8,
            gate1: true,
            gate2: true,
            skip,
            encoder_dim: default_encoder_dim(),
            mmhid,
            dropout: 0.25,
            encoder_dropout,
        }
    }

    /// The widths a state dict's `{prefix}linear_h1.0`, `linear_h2.0`, `encoder1.0` and
    /// `encoder2.0` imply (`dim1`, `dim2`, the scales, `encoder_dim`, `mmhid` and `skip`); gates,
    /// dropout and `encoder_dropout` are kept from `self`.
    pub fn with_widths_from(
        mut self,
        w: &std::collections::BTreeMap<String, Tensor>,
        prefix: &str,
    ) -> Result<Self> {
        let h1 = shape(w, &format!("{prefix}linear_h1.0.weight"))?;
        let h2 = shape(w, &format!("{prefix}linear_h2.0.weight"))?;
        let e1 = shape(w, &format!("{prefix}encoder1.0.weight"))?;
        let e2 = shape(w, &format!("{prefix}encoder2.0.weight"))?;
        let scale = |d: usize, r: usize| -> Result<usize> {
            let s = d / r.max(1);
            if s == 0 || d / s != r {
                candle_core::bail!("bilinear fusion: no scale takes {d} to {r} gated units");
            }
            Ok(s)
        };
        (self.dim1, self.dim2) = (h1[1], h2[1]);
        (self.scale1, self.scale2) = (scale(h1[1], h1[0])?, scale(h2[1], h2[0])?);
        (self.encoder_dim, self.mmhid) = (e1[0], e2[0]);
        self.skip = e2[1] != e1[0];
        Ok(self)
    }
}

pub struct BilinearFusion {
    cfg: BilinearFusionConfig,
    h1: Linear,
    z1: Linear,
    o1: Linear,
    h2: Linear,
    z2: Linear,
    o2: Linear,
    encoder1: Linear,
    encoder2: Linear,
}

impl BilinearFusion {
    pub fn new(s: &Scope, cfg: BilinearFusionConfig) -> Result<Self> {
        let (d1, d2) = (cfg.dim1, cfg.dim2);
        let (r1, r2) = (d1 / cfg.scale1.max(1), d2 / cfg.scale2.max(1));
        let skip = if cfg.skip { d1 + d2 } else { 0 };
        Ok(Self {
            h1: Linear::new(&s.pp("linear_h1.0"), d1, r1, true)?,
            z1: Linear::new(&s.pp("linear_z1.0"), d1 + d2, r1, true)?,
            o1: Linear::new(&s.pp("linear_o1.0"), r1, r1, true)?,
            h2: Linear::new(&s.pp("linear_h2.0"), d2, r2, true)?,
            z2: Linear::new(&s.pp("linear_z2.0"), d1 + d2, r2, true)?,
            o2: Linear::new(&s.pp("linear_o2.0"), r2, r2, true)?,
            encoder1: Linear::new(
                &s.pp("encoder1.0"),
                (r1 + 1) * (r2 + 1),
                cfg.encoder_dim,
                true,
            )?,
            encoder2: Linear::new(&s.pp("encoder2.0"), cfg.encoder_dim + skip, cfg.mmhid, true)?,
            cfg,
        })
    }

    /// `v1 [B, d1]`, `v2 [B, d2]` → `[B, mmhid]`.
    pub fn forward(&self, v1: &Tensor, v2: &Tensor, mode: &Mode) -> Result<Tensor> {
        let p = self.cfg.dropout;
        let both = Tensor::cat(&[v1, v2], 1)?;
        let unit = |h: &Linear, z: &Linear, o: &Linear, v: &Tensor, gate: bool| -> Result<Tensor> {
            let h = h.forward(v)?.relu()?;
            let g = if gate {
                ops::sigmoid(&z.forward(&both)?)?.mul(&h)?
            } else {
                h
            };
            ops::dropout(&o.forward(&g)?.relu()?, p, mode)
        };
        let o1 = unit(&self.h1, &self.z1, &self.o1, v1, self.cfg.gate1)?;
        let o2 = unit(&self.h2, &self.z2, &self.o2, v2, self.cfg.gate2)?;
        // Append a constant 1 (last), then the outer product, row-major: index i·(r2+1) + j.
        let b = o1.dim(0)?;
        let one = Tensor::ones((b, 1), o1.dtype(), o1.device())?;
        let o1 = Tensor::cat(&[&o1, &one], 1)?;
        let o2 = Tensor::cat(&[&o2, &one], 1)?;
        let o12 = o1
            .unsqueeze(2)?
            .matmul(&o2.unsqueeze(1)?)?
            .flatten_from(1)?;
        let o12 = ops::dropout(&o12, p, mode)?;
        let enc_p = if self.cfg.encoder_dropout { p } else { 0.0 };
        let mut e = ops::dropout(&self.encoder1.forward(&o12)?.relu()?, enc_p, mode)?;
        if self.cfg.skip {
            e = Tensor::cat(&[&e, v1, v2], 1)?;
        }
        ops::dropout(&self.encoder2.forward(&e)?.relu()?, enc_p, mode)
    }
}
