"""Outputs of the original PORPOISE MMF, Pathomic Fusion (MCAT's MIL_Attention_FC_surv with
bilinear fusion), MCAT and DSMIL code on random weights, for the parity tests of gimp-models
(crates/gimp-models/tests/fixtures/). Run once by hand:

    python tools/make_fusion_fixtures.py PORPOISE_REPO DSMIL_REPO OUT_DIR

with torch, safetensors and h5py installed and the two repositories checked out (PORPOISE's
`models/` folder, which also holds its copies of MCAT and MIL_Attention_FC_surv, and DSMIL's
`dsmil.py` are imported; none of their code is copied here). For each model:
`{name}_weights.safetensors` (state_dict by the original names), `{name}_io.safetensors` (logits,
raw attention, and the expression vector for the multimodal ones) and `{name}_bag.h5`.

Reduced widths, so the fixtures stay small. gimp-models reads every width back from a state
dict's shapes (each model's `ARCH.config_from_weights`), so the parity tests run the same code as at
full width. Each reference model is still built by its own constructor, with its structure,
parameter names, activations and dropout layers; its hard-coded widths are narrowed while it is
built, by three kinds of patch that are undone right after (`size_tables`, `overriding`,
`remapping`), plus `narrow_linears` for literals that no argument reaches:

* Patch features are 128-d instead of 1024 everywhere (PorpoiseMMF's `path_input_dim=128`; the
  first entry of the other two models' size tables).
* `size_tables(cls, ...)` replaces the `self.size_dict_*` tables that `cls.__init__` assigns and
  then reads back (by `nn.Module.__setattr__`), e.g. "small" = [1024, 512, 256] → [128, 64, 32].
* `overriding(owner, name, **kw)` makes the reference's keyword calls of `owner.name(...)`
  (`Attn_Net_Gated`, `BilinearFusion`, MCAT's `MultiheadAttention`, `nn.TransformerEncoderLayer`)
  take `kw` instead of their own values for those keywords; for a class it wraps `__init__`, so
  the class stays itself for `super()` and `isinstance`.
* `remapping(owner, name, widths)` maps integer keyword arguments through `widths` (Pathomic's
  SNN blocks, whose `hidden = [256, 256]` is a local list).
* `narrow_linears(part, widths)` rebuilds, after construction, the `nn.Linear`s of one part whose
  widths are literals inside a constructor: the bilinear fusion's `encoder1` (→ 256) and
  `encoder2` (256 + skip →), MCAT's `mm.0` (256*2 →).

Widths (reference → fixture):
* PORPOISE MMF (PorpoiseMMF, G = 120 genes): path 128 → 512 → gated attention 256 → ρ 256 becomes
  128 → 64 → attention 24 → ρ 32; SNN 256, 256 → 48, 40; BilinearFusion dim1/dim2 256/256 →
  32/40 (scale 8 → 4 × 5 gated units), encoder1 256 → 20, skip, mmhid 256 → 32.
* Pathomic Fusion (MIL_Attention_FC_surv(fusion='bilinear'), G = 120): path as PORPOISE (64,
  attention 24, ρ 32); SNN 256, 256 → 40, 40; BilinearFusion 256/256 → 32/40 (4 × 5),
  encoder1 → 20, mmhid → 32.
* MCAT (MCAT_Surv, six groups of 10/20/15/25/30/20 genes): d = 256 → 32 (wsi_net, co-attention,
  transformers, ρ, mm, classifier), SNN 256, 256 → 40, 32, transformer FFN 512 → 48 (8 heads and
  2 layers kept), gated attention heads 256 → 24.
* DSMIL: built at input size 128; its query network, hard-coded at 128 wide in `BClassifier`, is
  replaced by the same `Linear → ReLU → Linear → Tanh` at 16 wide (the attention scale is computed
  from the query width, so nothing else changes).
Seeds as below.
"""
import contextlib
import importlib.util
import sys

import h5py
import numpy as np
import torch
from safetensors.torch import save_file
from fixture_helpers import narrow_linears

porpoise_repo, dsmil_repo, out = sys.argv[1:4]
sys.path.insert(0, porpoise_repo)
# The reference fusion code builds its constant-1 column with torch.cuda.FloatTensor.
torch.cuda.FloatTensor = lambda *shape: torch.FloatTensor(*shape)


def load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


D_IN = 128



@contextlib.contextmanager
def size_tables(cls, **tables):
    """While active, the `self.size_dict_*` tables that `cls.__init__` assigns are replaced by
    `tables` (__init__ reads them back from the attribute)."""
    cls.__setattr__ = lambda self, name, value: torch.nn.Module.__setattr__(self, name, tables.get(name, value))
    try:
        yield
    finally:
        del cls.__setattr__


@contextlib.contextmanager
def patched(owner, name, change_kwargs):
    """While active, calls of `owner.name` (a function, or a class: then its `__init__`, so the
    class keeps its identity for `super()` and `isinstance`) get their keyword arguments through
    `change_kwargs`."""
    target = getattr(owner, name)
    if isinstance(target, type):
        owner, name = target, "__init__"
        assert name in owner.__dict__, target
        f = owner.__dict__[name]
        setattr(owner, name, lambda self, *a, **k: f(self, *a, **change_kwargs(k)))
    else:
        f = target
        setattr(owner, name, lambda *a, **k: f(*a, **change_kwargs(k)))
    try:
        yield
    finally:
        setattr(owner, name, f)


def overriding(owner, name, **kw):
    """`owner.name(...)` takes `kw` instead of its caller's values for those keywords."""
    return patched(owner, name, lambda k: {**k, **kw})


def remapping(owner, name, widths):
    """`owner.name(...)` gets its integer keyword arguments mapped through `widths`."""
    return patched(owner, name, lambda k: {key: widths.get(v, v) if isinstance(v, int) else v for key, v in k.items()})


def save(name, model, bag, outputs):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, f"{out}/{name}_weights.safetensors")
    save_file({k: v.detach().contiguous().float() for k, v in outputs.items()},
              f"{out}/{name}_io.safetensors", metadata={"source": name})
    with h5py.File(f"{out}/{name}_bag.h5", "w") as f:
        f.create_dataset("features", data=bag.numpy())
        f.create_dataset("coords", data=np.stack([np.arange(len(bag)) * 256, np.zeros(len(bag))], 1).astype(np.int32))


def capture(module):
    box = {}
    module.register_forward_hook(lambda m, i, o: box.__setitem__("out", o))
    return box


G = 120
porpoise = load(f"{porpoise_repo}/models/model_porpoise.py", "porpoise_ref")
torch.manual_seed(10)
with size_tables(porpoise.PorpoiseMMF, size_dict_path={"small": [D_IN, 64, 32]}, size_dict_omic={"small": [48, 40]}), \
        overriding(porpoise, "Attn_Net_Gated", D=24), \
        overriding(porpoise, "BilinearFusion", dim1=32, dim2=40, mmhid=32):
    m = porpoise.PorpoiseMMF(omic_input_dim=G, path_input_dim=D_IN, n_classes=3)
narrow_linears(m.mm.encoder1, {256: 20})
narrow_linears(m.mm.encoder2, {256 + 32 + 40: 20 + 32 + 40})
m = m.eval()
perturb(m, 11)
bag, expr = torch.rand(90, D_IN), torch.randn(G)
att = capture(m.attention_net)
with torch.no_grad():
    logits = m(x_path=bag, x_omic=expr.unsqueeze(0))
save("porpoise", m, bag, {"logits": logits[0], "attention_raw": att["out"][0].T, "expression": expr})

set_mil = load(f"{porpoise_repo}/models/model_set_mil.py", "set_mil_ref")
torch.manual_seed(12)
with size_tables(set_mil.MIL_Attention_FC_surv, size_dict_path={"small": [D_IN, 64, 32]}), \
        overriding(set_mil, "Attn_Net_Gated", D=24), \
        remapping(set_mil, "SNN_Block", {256: 40}), \
        overriding(set_mil, "BilinearFusion", dim1=32, dim2=40, mmhid=32):
    m = set_mil.MIL_Attention_FC_surv(omic_input_dim=G, fusion="bilinear", n_classes=3)
narrow_linears(m.mm.encoder1, {256: 20})
narrow_linears(m.mm.encoder2, {256: 20})
m = m.eval()
perturb(m, 13)
bag, expr = torch.rand(80, D_IN), torch.randn(G)
att, cls = capture(m.attention_net), capture(m.classifier)
with torch.no_grad():
    m(x_path=bag, x_omic=expr)
save("pathomic", m, bag, {"logits": cls["out"], "attention_raw": att["out"][0].T, "expression": expr})

# MCAT's attention module imports a class PyTorch has since renamed (a Linear with bias).
torch.nn.modules.linear._LinearWithBias = torch.nn.modules.linear.NonDynamicallyQuantizableLinear
coattn = load(f"{porpoise_repo}/models/model_coattn.py", "coattn_ref")
sizes = [10, 20, 15, 25, 30, 20]
D = 32
torch.manual_seed(14)
with size_tables(coattn.MCAT_Surv, size_dict_WSI={"small": [D_IN, D, D]}, size_dict_omic={"small": [40, D]}), \
        overriding(torch.nn, "TransformerEncoderLayer", d_model=D, dim_feedforward=48), \
        overriding(coattn, "MultiheadAttention", embed_dim=D), \
        overriding(coattn, "Attn_Net_Gated", D=24):
    m = coattn.MCAT_Surv(omic_sizes=sizes, n_classes=3)
narrow_linears(m.mm, {512: 2 * D})
m = m.eval()
perturb(m, 15)
bag, expr = torch.rand(70, D_IN), torch.randn(sum(sizes))
parts = torch.split(expr, sizes)
cls = capture(m.classifier)
with torch.no_grad():
    _, _, _, scores = m(x_path=bag, **{f"x_omic{i + 1}": p for i, p in enumerate(parts)})
save("mcat", m, bag, {"logits": cls["out"], "coattn_raw": scores["coattn"].reshape(len(sizes), -1), "expression": expr})

dsmil = load(f"{dsmil_repo}/dsmil.py", "dsmil_ref")
torch.manual_seed(16)
m = dsmil.MILNet(dsmil.FCLayer(D_IN, 3), dsmil.BClassifier(D_IN, 3))
Q = 16
m.b_classifier.q = torch.nn.Sequential(torch.nn.Linear(D_IN, Q), torch.nn.ReLU(), torch.nn.Linear(Q, Q), torch.nn.Tanh())
m = m.eval()
perturb(m, 17)
bag = torch.rand(60, D_IN)
with torch.no_grad():
    classes, bag_pred, A, _ = m(bag)
save("dsmil", m, bag, {"logits": bag_pred[0], "max_logits": classes.max(0)[0], "attention": A})
print("wrote", out)
