"""Outputs of the original TransMIL, CLAM and PORPOISE code on random weights, for the parity
tests of gimp-models (crates/gimp-models/tests/fixtures/). Run once by hand:

    python tools/make_model_fixtures.py TRANSMIL_REPO CLAM_REPO PORPOISE_REPO OUT_DIR

with torch, nystrom-attention==0.0.14, einops, safetensors and h5py installed and the three
repositories checked out (only their `models/` folders are imported; none of their code is copied
here). For each model: `{name}_weights.safetensors` (the state_dict, by the original names) and
`{name}_io.safetensors` (logits, and raw attention where the model returns it) and the input bag
as a CLAM feature file `{name}_bag.h5` (read by the tests and by `gimp-rs model run`). Also
`clam_sb_state_dict.pt` (torch.save of CLAM-SB's state dict) and `abmil_lightning.ckpt` (the ABMIL
state dict as PyTorch Lightning saves it: `{"epoch", "state_dict"}` with a `model.` prefix), which
must give the same logits as the safetensors files.

Reduced widths, so the fixtures stay small (the Rust loader reads every width from the weights'
shapes, registry.rs `config_from_weights`): each model is built by the reference's own constructor
and then narrowed, keeping its structure, parameter names, activations and dropout layers:
* CLAM-SB/MB and PORPOISE's ABMIL: every `nn.Linear` is rebuilt with widths mapped
  1024 → 128 (patch features), 512 → 32 (hidden), 256 → 16 (attention) by `narrow_linears`
  (the constructors hard-code `size_dict` "small" = [1024, 512, 256]); class counts unchanged.
* TransMIL hard-codes 512 in `TransMIL.__init__`; its parts are replaced by the reference's own
  parametrised blocks at dim 64 (`TransLayer(dim=64)`, `PPEG(dim=64)`: 8 heads of 8, 32
  landmarks, kernel-33 residual conv) plus `_fc1` (128 → 64), `cls_token`, `norm` and `_fc2` at 64.
  The 300-patch bag still pads twice: to an 18 × 18 square (+24 copied rows) and, inside Nyström
  attention, to a multiple of the 32 landmarks (325 → 352 rows, front zero-padding).
Bags have 128-d features (the width of gimp-extract's narrow ResNet fixture, so the CLI test can
run CLAM-SB on features it extracts). Seeds as below.
"""
import importlib.util
import os
import sys

import h5py
import numpy as np
import torch
from safetensors.torch import save_file
from fixture_helpers import narrow_linears

transmil_repo, clam_repo, porpoise_repo, out = sys.argv[1:5]
os.makedirs(out, exist_ok=True)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def perturb(model, seed):
    # Default init leaves LayerNorm at 1/0; perturb every parameter so each one is tested.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


D_IN = 128
NARROW = {1024: D_IN, 512: 32, 256: 16}



def save(name, model, bag, outputs):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{out}/{name}_weights.safetensors")
    tensors = {k: v.detach().contiguous() for k, v in outputs.items()}
    save_file(tensors, f"{out}/{name}_io.safetensors", metadata={"source": name})
    with h5py.File(f"{out}/{name}_bag.h5", "w") as f:
        f.create_dataset("features", data=bag.numpy())
        f.create_dataset("coords", data=np.stack([np.arange(len(bag)) * 256, np.zeros(len(bag))], 1).astype(np.int32))


# TransMIL's forward moves the CLS token with `.cuda()`; on a CPU-only machine make that a no-op.
torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.manual_seed(0)
transmil = load(f"{transmil_repo}/models/TransMIL.py", "transmil_ref")
m = transmil.TransMIL(n_classes=3)
DIM = 64
m._fc1 = torch.nn.Sequential(torch.nn.Linear(D_IN, DIM), torch.nn.ReLU())
m.cls_token = torch.nn.Parameter(torch.randn(1, 1, DIM))
m.layer1, m.layer2 = transmil.TransLayer(dim=DIM), transmil.TransLayer(dim=DIM)
m.pos_layer = transmil.PPEG(dim=DIM)
m.norm = torch.nn.LayerNorm(DIM)
m._fc2 = torch.nn.Linear(DIM, 3)
m = m.eval()
perturb(m, 1)
bag = torch.rand(300, D_IN)
with torch.no_grad():
    r = m(data=bag.unsqueeze(0))
save("transmil", m, bag, {"logits": r["logits"][0]})

sys.path.insert(0, clam_repo)
clam = load(f"{clam_repo}/models/model_clam.py", "clam_ref")
for name, cls in [("clam_sb", clam.CLAM_SB), ("clam_mb", clam.CLAM_MB)]:
    torch.manual_seed(2)
    m = cls(gate=True, size_arg="small", dropout=0.25, n_classes=3, subtyping=True, embed_dim=1024)
    m = narrow_linears(m, NARROW).eval()
    perturb(m, 3)
    bag = torch.rand(200, D_IN)
    with torch.no_grad():
        logits, _, _, a_raw, _ = m(bag)
    save(name, m, bag, {"logits": logits[0], "attention_raw": a_raw})
    if name == "clam_sb":
        # torch.save of the state dict (keys in the safetensors file's sorted order).
        state = {k: v.contiguous() for k, v in sorted(m.state_dict().items())}
        torch.save(state, f"{out}/clam_sb_state_dict.pt")

porpoise = load(f"{porpoise_repo}/models/model_porpoise.py", "porpoise_ref")
torch.manual_seed(4)
m = narrow_linears(porpoise.PorpoiseAMIL(size_arg="small", n_classes=2), NARROW).eval()
perturb(m, 5)
bag = torch.rand(150, D_IN)
with torch.no_grad():
    logits = m(x_path=bag)
    a = m.forward(x_path=bag, attention_only=True)
save("abmil", m, bag, {"logits": logits[0], "attention_raw": a})
# A PyTorch Lightning checkpoint of the same weights: the module's `model.` prefix, an epoch.
state = {f"model.{k}": v.contiguous() for k, v in sorted(m.state_dict().items())}
torch.save({"epoch": 3, "state_dict": state}, f"{out}/abmil_lightning.ckpt")
print("wrote", out)
