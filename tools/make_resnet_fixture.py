"""ResNet50-trunc reference for gimp-extract's parity test and the real-slide tests
(crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors). Run once by hand:

    python tools/make_resnet_fixture.py data/slides/cmu_small_region.svs OUT.safetensors

Needs torch, torchvision, safetensors, numpy and openslide-python (+ openslide-bin).

What it holds:
* `patches_rgb_u8` u8 [4, 3, 256, 256]: four real 256 × 256 patches of the repository's slide,
  read with OpenSlide at level 0 from (1024, 256), (1024, 512), (1280, 512), (1024, 768), then
  `convert("RGB")` (the tests compare gimp-slide's pixels with these);
* `param.*`: a torchvision ResNet-50 up to `layer3` at **base width 8 instead of 64** (every
  channel count divided by 8: conv1 8, layer1/2/3 bottleneck widths 8/16/32 with ×4 expansion, so
  layer3 gives 128 channels), the same structure otherwise (block counts 3/4/6, strides, the
  downsample branches), by torchvision's names. It is built by torchvision's own `ResNet` with
  `Bottleneck`: `_make_layer` is wrapped to divide `planes` by 8 (and the network's starting
  `inplanes` likewise), and `conv1`/`bn1` are replaced at 8 channels. Weights: torchvision's
  default init (seed 5); BatchNorm affine parameters and running statistics randomised so the
  folding of BatchNorm is tested;
* `features` f32 [4, 128]: the network on the patches (`/255`, ImageNet mean/std, no resize),
  eval mode, `layer3` then AdaptiveAvgPool2d(1), as CLAM's resnet50_trunc.

gimp-extract reads every width from the weights' shapes, so the narrow network runs the same code
(stem convolution, max-pool, 1×1 and 3×3 convolutions with stride and padding, downsample,
BatchNorm folding, pooling) as the full one.
"""
import sys

import numpy as np
import openslide
import torch
import torchvision
from safetensors.torch import save_file
from torchvision.models.resnet import Bottleneck, ResNet

slide_path, out = sys.argv[1:3]
SHRINK = 8
COORDS = [(1024, 256), (1024, 512), (1280, 512), (1024, 768)]

s = openslide.OpenSlide(slide_path)
patches = np.stack([np.array(s.read_region(c, 0, (256, 256)).convert("RGB")) for c in COORDS])
rgb = torch.from_numpy(patches).permute(0, 3, 1, 2).contiguous()  # [4, 3, 256, 256] u8

make_layer = ResNet._make_layer


def narrow_make_layer(self, block, planes, blocks, stride=1, dilate=False):
    if planes == 64:  # the first stage: the stem's 64 output channels become 64 / SHRINK
        self.inplanes = 64 // SHRINK
    return make_layer(self, block, planes // SHRINK, blocks, stride, dilate)


ResNet._make_layer = narrow_make_layer
torch.manual_seed(5)
net = ResNet(Bottleneck, [3, 4, 6, 3])
ResNet._make_layer = make_layer
net.conv1 = torch.nn.Conv2d(3, 64 // SHRINK, kernel_size=7, stride=2, padding=3, bias=False)
net.bn1 = torch.nn.BatchNorm2d(64 // SHRINK)
torch.nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
g = torch.Generator().manual_seed(5)
with torch.no_grad():
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
            m.bias.copy_(0.1 * torch.randn(c, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
net.eval()

trunc = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                            net.layer3, torch.nn.AdaptiveAvgPool2d(1))
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
x = (rgb.float() / 255 - mean) / std
with torch.no_grad():
    feats = trunc(x).flatten(1)

tensors = {"patches_rgb_u8": rgb, "features": feats.contiguous()}
for k, v in net.state_dict().items():
    if k.startswith(("layer4", "fc")) or k.endswith("num_batches_tracked"):
        continue
    tensors[f"param.{k}"] = v.contiguous()
save_file(tensors, out, metadata={
    "source": f"torchvision {torchvision.__version__} ResNet(Bottleneck, [3, 4, 6, 3]) at base width "
              f"{64 // SHRINK} (channels / {SHRINK}) up to layer3 + AdaptiveAvgPool2d(1); BatchNorm "
              "parameters and running stats randomised; eval mode",
    "seed": "5",
    "preprocessing": "rgb/255, ImageNet mean/std, no resize (256x256 input)",
    "patches": "OpenSlide " + openslide.__library_version__ + " level 0 at " + str(COORDS),
})
print("features", tuple(feats.shape), "scale", float(feats.abs().max()), "->", out)
