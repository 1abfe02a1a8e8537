"""`gimp-rs extract --encoder NAME` in PyTorch, end to end, for bench/encoders_end_to_end.sh:
the patches of a patch file read with OpenSlide, the encoder's evaluation transform
(torchvision on PIL images, as TRIDENT applies it), the network in batches, the features written
with h5py. The network is built by tools/make_vit_fixtures.py (timm with TRIDENT's arguments;
the CONCH towers as written there) at full size and loaded from the same weights file gimp-rs
reads. Set-up: `pip install torch timm torchvision h5py openslide-python openslide-bin`.

    python bench/pytorch_extract.py --encoder conch_v1 --weights W.safetensors \\
        --slide data/slides/cmu_small_region.svs --patches P.h5 --out F.h5 [--threads 2]

Prints one JSON object: patches, seconds to load the model, seconds to extract (reading,
transform, network, writing), patches per second.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import openslide
import torch
from safetensors.torch import load_file
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_vit_fixtures as mvf  # noqa: E402

IMAGENET = mvf.IMAGENET
# The registry's transforms (crates/gimp-extract/src/encoders/*.rs): resize, filter, crop, norm.
BILINEAR, BICUBIC = T.InterpolationMode.BILINEAR, T.InterpolationMode.BICUBIC
TRANSFORMS = {
    "uni_v1": (224, BILINEAR, 224, IMAGENET),
    "uni_v2": (224, BILINEAR, 224, IMAGENET),
    "virchow2": (224, BICUBIC, None, IMAGENET),
    "gigapath": (256, BICUBIC, 224, IMAGENET),
    "hoptimus0": (224, BILINEAR, None, mvf.HOPTIMUS),
    "phikon_v2": (224, BILINEAR, 224, IMAGENET),
    "conch_v1": (448, BICUBIC, 448, mvf.OPENAI),
    "conch_v15": (448, BILINEAR, 448, IMAGENET),
}

p = argparse.ArgumentParser()
p.add_argument("--encoder", required=True, choices=sorted(TRANSFORMS))
p.add_argument("--weights", required=True)
p.add_argument("--slide", required=True)
p.add_argument("--patches", required=True)
p.add_argument("--out", required=True)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--threads", type=int, default=os.cpu_count())
args = p.parse_args()
torch.set_num_threads(args.threads)

t0 = time.perf_counter()
model, sd, _, _, output = mvf.build(args.encoder, True, torch.Generator().manual_seed(0))
file_sd = load_file(args.weights)
if args.encoder == "conch_v1":
    file_sd = {k[len("visual."):]: v for k, v in file_sd.items() if k.startswith("visual.")}
elif args.encoder == "conch_v15":
    file_sd.pop("trunk.pos_embed")  # written at the trunk's grid; kept as built
elif args.encoder == "phikon_v2":
    model_names = {mvf.published_name(k): k for k in model.state_dict()}
    file_sd = {model_names[k]: v for k, v in file_sd.items()}
model.load_state_dict(file_sd, strict=False)  # copied into the float32 parameters
del file_sd
model.eval()
load_s = time.perf_counter() - t0

resize, interp, crop, (mean, std) = TRANSFORMS[args.encoder]
steps = [T.Resize(resize, interpolation=interp)] + ([T.CenterCrop(crop)] if crop else [])
transform = T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])

t1 = time.perf_counter()
with h5py.File(args.patches, "r") as f:
    coords = f["coords"][:]
    level = int(f["coords"].attrs["patch_level"])
    size = int(f["coords"].attrs["patch_size"])
    target = int(f["coords"].attrs.get("target_patch_size", size))
slide = openslide.OpenSlide(args.slide)
feats = []
with torch.no_grad():
    for i in range(0, len(coords), args.batch):
        imgs = []
        for x, y in coords[i:i + args.batch]:
            img = slide.read_region((int(x), int(y)), level, (size, size)).convert("RGB")
            if target != size:
                img = img.resize((target, target))
            imgs.append(transform(img))
        feats.append(mvf.run(model, output, torch.stack(imgs)).float().numpy())
with h5py.File(args.out, "w") as f:
    f["features"] = np.concatenate(feats)
    f["coords"] = coords
extract_s = time.perf_counter() - t1
print(json.dumps({"implementation": f"pytorch {torch.__version__}", "threads": torch.get_num_threads(),
                  "encoder": args.encoder, "patches": len(coords), "load_s": round(load_s, 2),
                  "extract_s": round(extract_s, 2), "patches_per_s": round(len(coords) / extract_s, 3)}))
