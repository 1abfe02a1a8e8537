"""The ViT forward pass of crates/gimp-extract/examples/bench_vit.rs in PyTorch (timm), for
bench/compare.sh, which runs it under `/usr/bin/time -v` for the peak memory. A process of its
own, so the peak is the model's and not the other benchmarks'. Set-up: `pip install torch timm`
into $PYTHON's environment.

    python bench/pytorch_vit.py --model vit_l16 [--repeat 3] [--threads N]

timm's `vit_base_patch16_224` / `vit_large_patch16_224` (num_classes=0: the normalised class
token), random init, eval mode, `torch.no_grad()`, 32 random images of 224 × 224. Prints one JSON
object: the median seconds of a forward pass and the thread count.
"""
import argparse
import json
import os
import statistics
import time

import timm
import torch

p = argparse.ArgumentParser()
p.add_argument("--model", default="vit_b16", choices=["vit_b16", "vit_l16"])
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--threads", type=int, default=os.cpu_count())
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)
name = {"vit_b16": "vit_base_patch16_224", "vit_l16": "vit_large_patch16_224"}[args.model]
model = timm.create_model(name, pretrained=False, num_classes=0).eval()
x = torch.rand(32, 3, 224, 224)
times = []
with torch.no_grad():
    model(x)
    for _ in range(max(args.repeat, 1)):
        s = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - s)
print(json.dumps({"implementation": f"pytorch {torch.__version__} timm {timm.__version__}",
                  "threads": torch.get_num_threads(), f"{args.model}_32": statistics.median(times)}))
