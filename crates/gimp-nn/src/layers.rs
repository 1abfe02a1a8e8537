//! Linear and LayerNorm with PyTorch's parameter names, shapes and initialisation.

use crate::cpu::fused_linear::{self, Activation};
use crate::init::Init;
use crate::ops;
use crate::params::Scope;
use candle_core::{DType, Result, Tensor};

/// `y = x Wᵀ + b`, weight `[out, in]` named `weight`, bias `bias`.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default initialisation.
    pub fn new(s: &Scope, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = Init::torch_default(in_dim);
        Self::with_init(s, in_dim, out_dim, bias, init, init)
    }

    /// xavier_normal weights and zero bias (CLAM and PORPOISE `initialize_weights`).
    pub fn xavier(s: &Scope, in_dim: usize, out_dim: usize) -> Result<Self> {
        Self::with_init(
            s,
            in_dim,
            out_dim,
            true,
            Init::XavierNormal {
                fan_in: in_dim,
                fan_out: out_dim,
            },
            Init::Constant(0.0),
        )
    }

    pub fn with_init(
        s: &Scope,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        w: Init,
        b: Init,
    ) -> Result<Self> {
        let weight = s.get("weight", &[out_dim, in_dim], w)?;
        let bias = if bias {
            Some(s.get("bias", &[out_dim], b)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Activation::Identity)
    }

    /// The layer restricted to outputs `start .. start + len` (a view of the same parameters:
    /// gradients reach the full weight and bias).
    pub fn outputs(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(0, start, len)?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.narrow(0, start, len))
                .transpose()?,
        })
    }

    /// `act(x Wᵀ + b)`; on the CPU one fused op (`fused_linear`).
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if x.dtype() == DType::F32 && x.device().is_cpu() {
            return fused_linear::linear(x, &self.weight, self.bias.as_ref(), act);
        }
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        match act {
            Activation::Identity => Ok(y),
            Activation::Relu => y.relu(),
            Activation::Gelu => y.gelu_erf(),
        }
    }
}

/// LayerNorm over the last dimension, `weight` 1 and `bias` 0 at init, eps 1e-5.
#[derive(Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    pub fn new(s: &Scope, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: s.get("weight", &[dim], Init::Constant(1.0))?,
            bias: s.get("bias", &[dim], Init::Constant(0.0))?,
            eps: 1e-5,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps)
    }
}
