//! Named parameters, by the reference implementations' own names, so that a PyTorch
//! `state_dict` saved as safetensors loads without renaming.
//!
//! A [`ParamStore`] owns every trainable tensor of a model; a [`Scope`] is a path into it
//! (`layer1.attn.to_qkv`), the role candle-nn's `VarBuilder::pp` plays.

use crate::init::Init;
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// FNV-1a hash of a parameter name: its random stream.
fn name_stream(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// One parameter and whether the optimiser updates it.
#[derive(Clone)]
pub struct Param {
    pub var: Var,
    pub trainable: bool,
}

struct Inner {
    params: BTreeMap<String, Param>,
    seed: u64,
    /// Tensors to load instead of initialising (e.g. reference weights).
    preset: BTreeMap<String, Tensor>,
    /// Names created by initialisation rather than taken from `preset`.
    fresh: Vec<String>,
}

/// Every parameter of a model, created on first use in a deterministic order.
#[derive(Clone)]
pub struct ParamStore {
    inner: Rc<RefCell<Inner>>,
    pub device: Device,
}

impl ParamStore {
    /// A store whose fresh parameters are drawn from a ChaCha8 stream seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Rc::new(RefCell::new(Inner {
                params: BTreeMap::new(),
                seed,
                preset: BTreeMap::new(),
                fresh: Vec::new(),
            })),
            device: Device::Cpu,
        }
    }

    /// A store that takes these tensors (by name) instead of initialising; names that a model
    /// asks for and that are absent are initialised as usual and reported by [`Self::unused`].
    pub fn with_preset(seed: u64, preset: BTreeMap<String, Tensor>) -> Self {
        let s = Self::new(seed);
        s.inner.borrow_mut().preset = preset;
        s
    }

    /// The root scope; its tensors record operations for backpropagation.
    pub fn root(&self) -> Scope {
        Scope {
            store: self.clone(),
            prefix: String::new(),
            track: true,
        }
    }

    /// A root scope for inference: its tensors are detached, so a forward pass keeps no
    /// intermediate results alive for a backward pass that will never come.
    pub fn root_inference(&self) -> Scope {
        Scope {
            store: self.clone(),
            prefix: String::new(),
            track: false,
        }
    }

    /// The parameter `name`, creating it with `init` if this is its first use. A preset tensor
    /// of the wrong shape is an error naming both shapes.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let mut inner = self.inner.borrow_mut();
        if let Some(p) = inner.params.get(name) {
            if p.var.dims() != shape {
                candle_core::bail!(
                    "parameter '{name}' requested with shape {shape:?} but has {:?}",
                    p.var.dims()
                );
            }
            return Ok(p.var.clone());
        }
        let tensor = match inner.preset.remove(name) {
            Some(t) => {
                if t.dims() != shape {
                    candle_core::bail!("weights file: parameter '{name}' has shape {:?}, the model needs {shape:?}", t.dims());
                }
                t.to_dtype(DType::F32)?
            }
            None => {
                inner.fresh.push(name.to_string());
                // Each parameter draws from its own stream, keyed by its name, so adding or
                // changing one part of a model leaves every other parameter's initial value as it
                // was (a fair comparison between a model and its ablations).
                let mut rng = ChaCha8Rng::seed_from_u64(inner.seed);
                rng.set_stream(name_stream(name));
                init.sample(shape, &mut rng, &self.device)?
            }
        };
        let var = Var::from_tensor(&tensor)?;
        inner.params.insert(
            name.to_string(),
            Param {
                var: var.clone(),
                trainable: true,
            },
        );
        Ok(var)
    }

    /// Preset tensors no layer asked for (a weights file for another architecture, or a typo).
    pub fn unused(&self) -> Vec<String> {
        self.inner.borrow().preset.keys().cloned().collect()
    }

    /// Parameters that were initialised because the preset (a weights file) lacked them.
    pub fn fresh(&self) -> Vec<String> {
        self.inner.borrow().fresh.clone()
    }

    /// All parameters by name.
    pub fn params(&self) -> BTreeMap<String, Param> {
        self.inner.borrow().params.clone()
    }

    /// Stops (or restarts) training every parameter whose name starts with `prefix`.
    pub fn set_trainable(&self, prefix: &str, trainable: bool) {
        for (name, p) in self.inner.borrow_mut().params.iter_mut() {
            if name.starts_with(prefix) {
                p.trainable = trainable;
            }
        }
    }

    /// Current values as plain tensors, by name.
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.inner
            .borrow()
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.var.as_tensor().clone()))
            .collect()
    }

    /// Number of scalar parameters.
    pub fn count(&self) -> usize {
        self.inner
            .borrow()
            .params
            .values()
            .map(|p| p.var.elem_count())
            .sum()
    }
}

/// A name prefix inside a [`ParamStore`].
#[derive(Clone)]
pub struct Scope {
    pub store: ParamStore,
    prefix: String,
    track: bool,
}

impl Scope {
    /// The sub-scope `name` (joined with a dot).
    pub fn pp(&self, name: impl AsRef<str>) -> Scope {
        let name = name.as_ref();
        Scope {
            store: self.store.clone(),
            prefix: if self.prefix.is_empty() {
                name.to_string()
            } else {
                format!("{}.{}", self.prefix, name)
            },
            track: self.track,
        }
    }

    pub fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let t = self
            .store
            .get(&self.path(name), shape, init)?
            .as_tensor()
            .clone();
        Ok(if self.track { t } else { t.detach() })
    }

    pub fn device(&self) -> &Device {
        &self.store.device
    }
}
