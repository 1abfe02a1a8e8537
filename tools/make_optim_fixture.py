"""PyTorch reference for gimp-nn's optimisers (crates/gimp-nn/tests/fixtures/optim_torch.safetensors).

Five steps on two parameters, w [3, 4] (decayed) and b [4] (a bias: excluded from decay), with
fixed gradients: AdamW (decoupled decay) under linear warm-up + cosine decay, gradient clipping to
a global norm of 1.0; and Adam with L2 decay (PyTorch's `weight_decay` in Adam), no schedule.
Run once (needs torch and safetensors); the output is committed.
"""
import math
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "crates/gimp-nn/tests/fixtures/optim_torch.safetensors"
g = torch.Generator().manual_seed(0)
w0 = torch.randn(3, 4, generator=g)
b0 = torch.randn(4, generator=g)
gw = torch.randn(5, 3, 4, generator=g) * 2.0
gb = torch.randn(5, 4, generator=g) * 2.0
tensors = {"w0": w0, "b0": b0, "grad_w": gw, "grad_b": gb}

STEPS, WARMUP, LR, WD = 5, 2, 0.01, 0.1


def lr_lambda(step):
    if step < WARMUP:
        return (step + 1) / WARMUP
    progress = (step - WARMUP) / (STEPS - WARMUP)
    return 0.5 * (1 + math.cos(math.pi * progress))


for name in ["adamw", "adam_l2"]:
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    if name == "adamw":
        opt = torch.optim.AdamW([{"params": [w], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}],
                                lr=LR, betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    else:
        opt = torch.optim.Adam([{"params": [w], "weight_decay": WD}, {"params": [b], "weight_decay": 0.0}],
                               lr=LR, betas=(0.9, 0.999), eps=1e-8)
        sched = None
    for t in range(STEPS):
        w.grad = gw[t].clone()
        b.grad = gb[t].clone()
        if name == "adamw":
            torch.nn.utils.clip_grad_norm_([w, b], max_norm=1.0)
        opt.step()
        if sched is not None:
            sched.step()
        tensors[f"{name}.w.{t}"] = w.detach().clone()
        tensors[f"{name}.b.{t}"] = b.detach().clone()
save_file(tensors, out, metadata={"source": f"torch {torch.__version__}", "lr": str(LR), "wd": str(WD),
                                   "steps": str(STEPS), "warmup": str(WARMUP)})
print("wrote", out)
