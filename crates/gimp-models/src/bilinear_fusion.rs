//! Gated bilinear (Kronecker) fusion of two vectors (Pathomic Fusion's `BilinearFusion`, as
//! PORPOISE and MCAT copy it; `docs/DESIGN.md` §21–§22). A component of [`crate::porpoise`] and
//! [`crate::pathomic`], not a model. Parameter names are the reference's (`linear_h1.0`,
//! `linear_z1.0`, `linear_o1.0`, …, `encoder1.0`, `encoder2.0`).

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
    pub mmhid: usize,
    pub dropout: f64,
    /// Dropout after `encoder1` and `encoder2` (MCAT's copy; the spec's PORPOISE has none).
    pub encoder_dropout: bool,
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
            encoder1: Linear::new(&s.pp("encoder1.0"), (r1 + 1) * (r2 + 1), 256, true)?,
            encoder2: Linear::new(&s.pp("encoder2.0"), 256 + skip, cfg.mmhid, true)?,
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
