//! ResNet50 truncated after `layer3`, then global average pooling → 1024-d: CLAM's
//! `resnet50_trunc` feature extractor (`spec/formats.md` §2), in inference mode, with BatchNorm
//! folded into a per-channel scale and shift. Weights are read by torchvision's names
//! (`conv1.weight`, `bn1.running_mean`, `layer2.0.downsample.0.weight`, …).

use candle_core::{DType, Device, Result, Tensor};
use std::collections::BTreeMap;

/// ImageNet normalisation, as CLAM's transforms apply it.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

struct ConvBn {
    weight: Tensor,
    shift: Tensor,
    stride: usize,
    padding: usize,
}

impl ConvBn {
    fn new(w: &Weights, conv: &str, bn: &str, stride: usize, padding: usize) -> Result<Self> {
        let weight = w.get(&format!("{conv}.weight"))?;
        let gamma = w.get(&format!("{bn}.weight"))?;
        let beta = w.get(&format!("{bn}.bias"))?;
        let mean = w.get(&format!("{bn}.running_mean"))?;
        let var = w.get(&format!("{bn}.running_var"))?;
        // y = (x − μ)/√(σ² + ε)·γ + β = x·s + (β − μ·s); the scale is folded into the
        // convolution's weights (conv(x, w)·s = conv(x, w·s)), leaving one bias add.
        let scale = gamma.div(&(var + 1e-5)?.sqrt()?)?;
        let shift = (beta - mean.mul(&scale)?)?;
        let c = scale.dim(0)?;
        Ok(Self {
            weight: weight.broadcast_mul(&scale.reshape((c, 1, 1, 1))?)?,
            shift: shift.reshape((1, c, 1, 1))?,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)?
            .broadcast_add(&self.shift)
    }
}

struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    down: Option<ConvBn>,
}

impl Bottleneck {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c1.forward(x)?.relu()?;
        let h = self.c2.forward(&h)?.relu()?;
        let h = self.c3.forward(&h)?;
        let skip = match &self.down {
            Some(d) => d.forward(x)?,
            None => x.clone(),
        };
        (h + skip)?.relu()
    }
}

/// Weights by name, with the error naming what is missing.
pub struct Weights(pub BTreeMap<String, Tensor>);

impl Weights {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.0
            .get(name)
            .map(|t| t.to_dtype(DType::F32))
            .transpose()?
            .ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "the weights have no '{name}' (torchvision resnet50 names expected)"
                ))
            })
    }
}

pub struct ResNet50Trunc {
    stem: ConvBn,
    blocks: Vec<Bottleneck>,
}

impl ResNet50Trunc {
    /// Builds the network from torchvision-named tensors (a `param.` prefix is accepted).
    pub fn new(weights: BTreeMap<String, Tensor>) -> Result<Self> {
        let w = Weights(
            weights
                .into_iter()
                .map(|(k, v)| (k.strip_prefix("param.").unwrap_or(&k).to_string(), v))
                .collect(),
        );
        let stem = ConvBn::new(&w, "conv1", "bn1", 2, 3)?;
        let mut blocks = Vec::new();
        for (layer, n, stride) in [("layer1", 3, 1), ("layer2", 4, 2), ("layer3", 6, 2)] {
            for b in 0..n {
                let p = format!("{layer}.{b}");
                let s = if b == 0 { stride } else { 1 };
                blocks.push(Bottleneck {
                    c1: ConvBn::new(&w, &format!("{p}.conv1"), &format!("{p}.bn1"), 1, 0)?,
                    c2: ConvBn::new(&w, &format!("{p}.conv2"), &format!("{p}.bn2"), s, 1)?,
                    c3: ConvBn::new(&w, &format!("{p}.conv3"), &format!("{p}.bn3"), 1, 0)?,
                    down: if b == 0 {
                        Some(ConvBn::new(
                            &w,
                            &format!("{p}.downsample.0"),
                            &format!("{p}.downsample.1"),
                            s,
                            0,
                        )?)
                    } else {
                        None
                    },
                });
            }
        }
        Ok(Self { stem, blocks })
    }

    /// Normalised images `[B, 3, H, W]` → features `[B, 1024]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.stem.forward(x)?.relu()?;
        // 3×3 max-pool, stride 2, padding 1: after the ReLU every value is ≥ 0, so zero padding
        // never wins a window that holds a real value, exactly as PyTorch's −∞ padding.
        let h = h
            .pad_with_zeros(2, 1, 1)?
            .pad_with_zeros(3, 1, 1)?
            .max_pool2d_with_stride(3, 2)?;
        let mut h = h;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        h.mean((2, 3))
    }
}

/// RGB patches `u8 [B, 3, H, W]` → the network's input: `/255`, then ImageNet mean and std
/// (CLAM's `ToTensor + Normalize`; 2021–2023 CLAM feeds 256 × 256 patches without resizing).
pub fn normalise(rgb: &[u8], b: usize, h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let x = Tensor::from_vec(
        rgb.iter().map(|&v| v as f32 / 255.0).collect::<Vec<_>>(),
        (b, 3, h, w),
        device,
    )?;
    let mean = Tensor::new(&MEAN, device)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&STD, device)?.reshape((1, 3, 1, 1))?;
    x.broadcast_sub(&mean)?.broadcast_div(&std)
}

/// Random weights with torchvision's names and shapes (He-normal convolutions, BatchNorm near
/// identity), from a seed: for benchmarks and tests that need the network but not ImageNet.
pub fn random_weights(seed: u64) -> Result<BTreeMap<String, Tensor>> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut w = BTreeMap::new();
    let dev = Device::Cpu;
    let mut conv = |w: &mut BTreeMap<String, Tensor>, name: &str, o: usize, i: usize, k: usize| {
        let std = (2.0 / (i * k * k) as f32).sqrt();
        let n = Normal::new(0.0f32, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let v: Vec<f32> = (0..o * i * k * k).map(|_| n.sample(&mut rng)).collect();
        w.insert(
            format!("{name}.weight"),
            Tensor::from_vec(v, (o, i, k, k), &dev)?,
        );
        Ok::<(), candle_core::Error>(())
    };
    let bn = |w: &mut BTreeMap<String, Tensor>, name: &str, c: usize| -> Result<()> {
        w.insert(format!("{name}.weight"), Tensor::ones(c, DType::F32, &dev)?);
        w.insert(format!("{name}.bias"), Tensor::zeros(c, DType::F32, &dev)?);
        w.insert(
            format!("{name}.running_mean"),
            Tensor::zeros(c, DType::F32, &dev)?,
        );
        w.insert(
            format!("{name}.running_var"),
            Tensor::ones(c, DType::F32, &dev)?,
        );
        Ok(())
    };
    conv(&mut w, "conv1", 64, 3, 7)?;
    bn(&mut w, "bn1", 64)?;
    let mut c_in = 64;
    for (layer, n, width) in [("layer1", 3, 64), ("layer2", 4, 128), ("layer3", 6, 256)] {
        for b in 0..n {
            let p = format!("{layer}.{b}");
            conv(&mut w, &format!("{p}.conv1"), width, c_in, 1)?;
            bn(&mut w, &format!("{p}.bn1"), width)?;
            conv(&mut w, &format!("{p}.conv2"), width, width, 3)?;
            bn(&mut w, &format!("{p}.bn2"), width)?;
            conv(&mut w, &format!("{p}.conv3"), width * 4, width, 1)?;
            bn(&mut w, &format!("{p}.bn3"), width * 4)?;
            if b == 0 {
                conv(&mut w, &format!("{p}.downsample.0"), width * 4, c_in, 1)?;
                bn(&mut w, &format!("{p}.downsample.1"), width * 4)?;
            }
            c_in = width * 4;
        }
    }
    Ok(w)
}
