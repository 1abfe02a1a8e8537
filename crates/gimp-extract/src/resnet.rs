//! ResNet50 truncated after `layer3`, then global average pooling → 1024-d: CLAM's
//! `resnet50_trunc` feature extractor (`docs/DESIGN.md` §13), in inference mode, with BatchNorm
//! folded into a per-channel scale and shift. Weights are read by torchvision's names
//! (`conv1.weight`, `bn1.running_mean`, `layer2.0.downsample.0.weight`, …). Channel widths come
//! from the weights' shapes (`conv1.weight`, `layerN.B.convK.weight`), so a narrower network with
//! the same structure (block counts 3/4/6, bottlenecks ×4) loads too: the test fixture uses base
//! width 8 and gives 128-d features.

use candle_core::{DType, Device, Result, Tensor};
use gimp_nn::cpu::matmul::{mm_parallel, View};
use gimp_nn::cpu::with_data;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// ImageNet normalisation, as CLAM's transforms apply it.
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Activations in channels-last layout (`[B, H, W, C]`, row-major): a 1×1 convolution is then a
/// plain matrix product over `B·H·W` rows, and a k×k one gathers `k·k` contiguous channel
/// vectors per output pixel.
struct Act {
    data: Vec<f32>,
    b: usize,
    h: usize,
    w: usize,
    c: usize,
}

/// Output rows of a convolution computed per matrix product: bounds the gathered patch matrix
/// (at most 4,096 × 2,304 values in `layer3`).
const ROWS_PER_PRODUCT: usize = 4096;

/// A convolution with its BatchNorm folded in, computed as matrix products (channels-last
/// im2col): candle's `conv2d` builds the patch matrix in channels-first order and copies the
/// result back, which cost more than the products themselves.
struct ConvBn {
    /// `[C_out, k, k, C_in]`, BatchNorm's scale folded in.
    weight: Vec<f32>,
    shift: Vec<f32>,
    c_in: usize,
    c_out: usize,
    k: usize,
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
        let (c_out, c_in, kh, kw) = weight.dims4()?;
        if kh != kw || scale.dim(0)? != c_out {
            candle_core::bail!("{conv}: weight {:?} and {bn} do not match", weight.dims());
        }
        let weight = weight
            .broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?
            .permute((0, 2, 3, 1))?
            .flatten_all()?
            .to_vec1()?;
        Ok(Self {
            weight,
            shift: shift.to_vec1()?,
            c_in,
            c_out,
            k: kh,
            stride,
            padding,
        })
    }

    fn forward(&self, x: &Act, relu: bool) -> Result<Act> {
        if x.c != self.c_in {
            candle_core::bail!("convolution of {} channels got {}", self.c_in, x.c);
        }
        let (k, s, p) = (self.k, self.stride, self.padding);
        let (hp, wp) = (x.h + 2 * p, x.w + 2 * p);
        if hp < k || wp < k {
            candle_core::bail!("a {}×{} input is smaller than the {k}×{k} kernel", x.h, x.w);
        }
        let (ho, wo) = ((hp - k) / s + 1, (wp - k) / s + 1);
        let rows = x.b * ho * wo;
        let cols = k * k * self.c_in;
        let wv = View::dense(&self.weight, self.c_out, cols);
        let mut out = vec![0f32; rows * self.c_out];
        if k == 1 && s == 1 && p == 0 {
            mm_parallel(
                &mut out,
                View::dense(&x.data, rows, cols),
                wv.t(),
                false,
                1.0,
            );
        } else {
            let mut patches = vec![0f32; ROWS_PER_PRODUCT.min(rows) * cols];
            for r0 in (0..rows).step_by(ROWS_PER_PRODUCT) {
                let n = ROWS_PER_PRODUCT.min(rows - r0);
                let block = &mut patches[..n * cols];
                block.par_chunks_mut(cols).enumerate().for_each(|(j, row)| {
                    let r = r0 + j;
                    let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
                    for ky in 0..k {
                        let iy = oy * s + ky;
                        let span = &mut row[ky * k * x.c..(ky + 1) * k * x.c];
                        if iy < p || iy - p >= x.h {
                            span.fill(0.0);
                            continue;
                        }
                        let line = (bi * x.h + iy - p) * x.w;
                        let ix0 = ox * s;
                        if ix0 >= p && ix0 - p + k <= x.w {
                            // The k pixels of this kernel row are contiguous in channels-last
                            // order: one copy.
                            let at = (line + ix0 - p) * x.c;
                            span.copy_from_slice(&x.data[at..at + k * x.c]);
                            continue;
                        }
                        for kx in 0..k {
                            let dst = &mut span[kx * x.c..(kx + 1) * x.c];
                            let ix = ix0 + kx;
                            if ix < p || ix - p >= x.w {
                                dst.fill(0.0);
                            } else {
                                let at = (line + ix - p) * x.c;
                                dst.copy_from_slice(&x.data[at..at + x.c]);
                            }
                        }
                    }
                });
                mm_parallel(
                    &mut out[r0 * self.c_out..(r0 + n) * self.c_out],
                    View::dense(block, n, cols),
                    wv.t(),
                    false,
                    1.0,
                );
            }
        }
        let shift = &self.shift;
        out.par_chunks_mut(self.c_out * 64).for_each(|chunk| {
            for row in chunk.chunks_exact_mut(shift.len()) {
                for (v, sh) in row.iter_mut().zip(shift) {
                    let y = *v + sh;
                    *v = if relu { y.max(0.0) } else { y };
                }
            }
        });
        Ok(Act {
            data: out,
            b: x.b,
            h: ho,
            w: wo,
            c: self.c_out,
        })
    }
}

struct Bottleneck {
    c1: ConvBn,
    c2: ConvBn,
    c3: ConvBn,
    down: Option<ConvBn>,
}

impl Bottleneck {
    fn forward(&self, x: Act) -> Result<Act> {
        let h = self.c1.forward(&x, true)?;
        let h = self.c2.forward(&h, true)?;
        let mut h = self.c3.forward(&h, false)?;
        let skip = match &self.down {
            Some(d) => d.forward(&x, false)?,
            None => x,
        };
        h.data
            .par_chunks_mut(1 << 14)
            .zip(skip.data.par_chunks(1 << 14))
            .for_each(|(a, b)| {
                a.iter_mut()
                    .zip(b)
                    .for_each(|(v, s)| *v = (*v + s).max(0.0))
            });
        Ok(h)
    }
}

/// 3×3 max-pool, stride 2, padding 1, over the window's real positions (PyTorch pads with −∞).
fn max_pool_3x3_s2(x: &Act) -> Act {
    let (ho, wo) = ((x.h + 2 - 3) / 2 + 1, (x.w + 2 - 3) / 2 + 1);
    let mut out = vec![f32::NEG_INFINITY; x.b * ho * wo * x.c];
    out.par_chunks_mut(x.c).enumerate().for_each(|(r, o)| {
        let (bi, oy, ox) = (r / (ho * wo), (r / wo) % ho, r % wo);
        for iy in (oy * 2).saturating_sub(1)..(oy * 2 + 2).min(x.h) {
            for ix in (ox * 2).saturating_sub(1)..(ox * 2 + 2).min(x.w) {
                let at = ((bi * x.h + iy) * x.w + ix) * x.c;
                o.iter_mut()
                    .zip(&x.data[at..at + x.c])
                    .for_each(|(a, v)| *a = a.max(*v));
            }
        }
    });
    Act {
        data: out,
        b: x.b,
        h: ho,
        w: wo,
        c: x.c,
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

    /// Width of the features: `layer3`'s output channels (1024 for ResNet50).
    pub fn out_dim(&self) -> usize {
        self.blocks.last().map_or(self.stem.c_out, |b| b.c3.c_out)
    }

    /// Normalised images `[B, 3, H, W]` → features `[B, out_dim]` (`[B, 1024]` for ResNet50).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let device = x.device().clone();
        // Channels-first input to channels-last activations, once.
        let data = with_data(x, |xs| {
            let mut out = vec![0f32; xs.len()];
            for bi in 0..b {
                for ch in 0..c {
                    let plane = &xs[(bi * c + ch) * h * w..(bi * c + ch + 1) * h * w];
                    for (i, v) in plane.iter().enumerate() {
                        out[(bi * h * w + i) * c + ch] = *v;
                    }
                }
            }
            Ok(out)
        })?;
        let x = Act { data, b, h, w, c };
        let mut h = max_pool_3x3_s2(&self.stem.forward(&x, true)?);
        for blk in &self.blocks {
            h = blk.forward(h)?;
        }
        // Global average pooling.
        let per = h.h * h.w;
        let mut feats = vec![0f32; h.b * h.c];
        for (bi, f) in feats.chunks_exact_mut(h.c).enumerate() {
            for px in h.data[bi * per * h.c..(bi + 1) * per * h.c].chunks_exact(h.c) {
                f.iter_mut().zip(px).for_each(|(a, v)| *a += v);
            }
            f.iter_mut().for_each(|a| *a /= per as f32);
        }
        Tensor::from_vec(feats, (h.b, h.c), &device)
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
