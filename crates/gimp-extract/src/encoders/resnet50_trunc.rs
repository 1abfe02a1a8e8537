//! CLAM's ResNet50-trunc (`docs/DESIGN.md` §13): ImageNet ResNet-50 cut after `layer3`, global
//! average pooling, 1024-d; patches fed as read (2021–2023 CLAM) or at `--target-patch-size`,
//! ImageNet mean/std. The network is [`crate::resnet`].

use super::{Arch, EncoderSpec, Filter, PatchEncoder, Transform, IMAGENET_MEAN, IMAGENET_STD};
use crate::resnet::ResNet50Trunc;
use crate::weights::Params;
use candle_core::{Device, Tensor};
use gimp_io::{DataError, ErrorKind, Result};
use std::collections::{BTreeMap, BTreeSet};

pub static SPEC: EncoderSpec = EncoderSpec {
    name: "resnet50_trunc",
    summary: "ResNet50-trunc (CLAM; ImageNet ResNet-50 to layer3, average-pooled)",
    out_dim: 1024,
    width: 64,
    patch: 0,
    arch: Arch::ResNet50Trunc,
    transform: Transform {
        resize: None,
        filter: Filter::Bilinear,
        crop: None,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    },
    weights: "torchvision resnet50 ImageNet weights (resnet50-*.pth), or CLAM's",
};

/// torchvision's names up to `layer3` (a full ResNet-50's `layer4` and `fc`, and BatchNorm's
/// `num_batches_tracked` counters, may be there too; see [`ignored`]).
pub fn expected_keys() -> BTreeSet<String> {
    let mut k = BTreeSet::new();
    let bn = |k: &mut BTreeSet<String>, p: &str| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            k.insert(format!("{p}.{s}"));
        }
    };
    k.insert("conv1.weight".to_string());
    bn(&mut k, "bn1");
    for (layer, n) in [("layer1", 3), ("layer2", 4), ("layer3", 6)] {
        for b in 0..n {
            for c in 1..=3 {
                k.insert(format!("{layer}.{b}.conv{c}.weight"));
                bn(&mut k, &format!("{layer}.{b}.bn{c}"));
            }
            if b == 0 {
                k.insert(format!("{layer}.{b}.downsample.0.weight"));
                bn(&mut k, &format!("{layer}.{b}.downsample.1"));
            }
        }
    }
    k
}

/// The torchvision name of a tensor of a ResNet-50 file (the test fixture's names carry a
/// `param.` prefix); `None` for what the truncated network does not read (`layer4`, `fc`,
/// BatchNorm's `num_batches_tracked` counters).
pub fn own_name(name: &str) -> Option<String> {
    let n = name.strip_prefix("param.").unwrap_or(name);
    let ignored =
        n.starts_with("layer4.") || n.starts_with("fc.") || n.ends_with("num_batches_tracked");
    (!ignored).then(|| n.to_string())
}

pub(super) fn load(spec: &'static EncoderSpec, p: Params) -> Result<Box<dyn PatchEncoder>> {
    let path = p.path().to_path_buf();
    let mut map = BTreeMap::new();
    let mut p = p;
    for k in p.keys() {
        if let Some(t) = p.remove(&k) {
            map.insert(k, t);
        }
    }
    let net = ResNet50Trunc::new(map).map_err(|e| {
        DataError::new(
            ErrorKind::Shape,
            &path,
            format!("not ResNet-50 weights: {e}"),
        )
    })?;
    Ok(Box::new(ResNetEncoder { spec, net }))
}

struct ResNetEncoder {
    spec: &'static EncoderSpec,
    net: ResNet50Trunc,
}

impl PatchEncoder for ResNetEncoder {
    fn name(&self) -> &'static str {
        self.spec.name
    }

    fn out_dim(&self) -> usize {
        self.net.out_dim()
    }

    fn input_size(&self) -> Option<u32> {
        None
    }

    fn transform(&self) -> &Transform {
        &self.spec.transform
    }

    fn forward_sized(
        &self,
        rgb: &[u8],
        batch: usize,
        side: usize,
    ) -> candle_core::Result<Vec<f32>> {
        if rgb.len() != batch * 3 * side * side {
            candle_core::bail!(
                "resnet50_trunc: {} bytes for {batch} patches of 3 × {side} × {side}",
                rgb.len()
            );
        }
        let x = Tensor::from_vec(
            self.spec.transform.normalise(rgb, side),
            (batch, 3, side, side),
            &Device::Cpu,
        )?;
        self.net.forward(&x)?.flatten_all()?.to_vec1::<f32>()
    }
}
