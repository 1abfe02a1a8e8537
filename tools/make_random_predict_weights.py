"""Random full-size weights for timing `gimp-rs predict --slide` (bench/big_slide.sh), never
committed:

    python tools/make_random_predict_weights.py OUT_DIR [--seed 0] [--classes 2]

Needs numpy only (PyPI). Writes, as safetensors with the reference code's parameter names:

* `resnet50_trunc.safetensors`: torchvision's ResNet-50 up to `layer3` (CLAM's ResNet50-trunc,
  1024-d features): `conv1`, `bn1`, `layer1`–`layer3` at full width, He-normal convolutions
  and BatchNorm near identity (the shapes and names `torchvision.models.resnet50().state_dict()`
  has for these layers; `layer4` and `fc` are not needed and left out);
* `clam_sb_1024.safetensors`: CLAM-SB at CLAM's "small" size (1024 → 512, gated attention of
  256, `--classes` classes), normal weights scaled by fan-in, zero biases.

Random weights cost the same time and memory as trained ones; the answers mean nothing.
"""
import argparse
import json
import os
import struct

import numpy as np

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("out")
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--classes", type=int, default=2)
args = ap.parse_args()
rng = np.random.default_rng(args.seed)


def save(path, tensors):
    """safetensors: 8-byte header length, JSON header, then the tensors' little-endian bytes."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype="<f4")
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        blobs.append(a.tobytes())
        offset += a.nbytes
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".part"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def conv(w, name, o, i, k):
    w[f"{name}.weight"] = rng.normal(0, np.sqrt(2.0 / (i * k * k)), (o, i, k, k))


def bn(w, name, c):
    w[f"{name}.weight"] = np.ones(c)
    w[f"{name}.bias"] = np.zeros(c)
    w[f"{name}.running_mean"] = np.zeros(c)
    w[f"{name}.running_var"] = np.ones(c)


def linear(w, name, o, i):
    w[f"{name}.weight"] = rng.normal(0, np.sqrt(1.0 / i), (o, i))
    w[f"{name}.bias"] = np.zeros(o)


os.makedirs(args.out, exist_ok=True)
r = {}
conv(r, "conv1", 64, 3, 7)
bn(r, "bn1", 64)
c_in = 64
for layer, n, width in [("layer1", 3, 64), ("layer2", 4, 128), ("layer3", 6, 256)]:
    for b in range(n):
        p = f"{layer}.{b}"
        conv(r, f"{p}.conv1", width, c_in, 1)
        bn(r, f"{p}.bn1", width)
        conv(r, f"{p}.conv2", width, width, 3)
        bn(r, f"{p}.bn2", width)
        conv(r, f"{p}.conv3", width * 4, width, 1)
        bn(r, f"{p}.bn3", width * 4)
        if b == 0:
            conv(r, f"{p}.downsample.0", width * 4, c_in, 1)
            bn(r, f"{p}.downsample.1", width * 4)
        c_in = width * 4
save(os.path.join(args.out, "resnet50_trunc.safetensors"), r)

c = {}
linear(c, "attention_net.0", 512, 1024)
linear(c, "attention_net.3.attention_a.0", 256, 512)
linear(c, "attention_net.3.attention_b.0", 256, 512)
linear(c, "attention_net.3.attention_c", 1, 256)
linear(c, "classifiers", args.classes, 512)
for k in range(args.classes):
    linear(c, f"instance_classifiers.{k}", 2, 512)
save(os.path.join(args.out, "clam_sb_1024.safetensors"), c)
print(f"wrote {args.out}/resnet50_trunc.safetensors and {args.out}/clam_sb_1024.safetensors")
