"""Outputs of the original PORPOISE MMF, Pathomic Fusion (MCAT's MIL_Attention_FC_surv with
bilinear fusion), MCAT and DSMIL code on random weights, for the parity tests of gimp-models
(crates/gimp-models/tests/fixtures/). Run once by hand:

    python tools/make_fusion_fixtures.py PORPOISE_REPO DSMIL_REPO OUT_DIR

with torch, safetensors and h5py installed and the two repositories checked out (PORPOISE's
`models/` folder, which also holds its copies of MCAT and MIL_Attention_FC_surv, and DSMIL's
`dsmil.py` are imported; none of their code is copied here). For each model:
`{name}_weights.safetensors` (state_dict by the original names), `{name}_io.safetensors` (logits,
raw attention, and the expression vector for the multimodal ones) and `{name}_bag.h5`.

Reduced widths, so the fixtures stay small. Patch features are 128-d instead of 1024 everywhere:
PorpoiseMMF takes `path_input_dim=128`; MIL_Attention_FC_surv and MCAT_Surv hard-code 1024 in
their `size_dict`s, so their first patch Linear is rebuilt at 128 → hidden by `narrow_linears`
(same name and place). DSMIL is built at input size 128 and its query network, hard-coded at 128
wide in `BClassifier`, is replaced by the same `Linear → ReLU → Linear → Tanh` at 16 wide (the
attention scale is computed from the query width, so nothing else changes). The hidden widths of
PORPOISE MMF, Pathomic Fusion and MCAT (512/256, the bilinear fusion's 256/32, MCAT's 256-wide
transformers) are kept: gimp-models builds those models at fixed widths, reading only the input
widths, gene counts and class counts from a state dict (registry.rs `config_from_weights`).
Seeds as below.
"""
import importlib.util
import sys

import h5py
import numpy as np
import torch
from safetensors.torch import save_file

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


def narrow_linears(model, widths):
    """Rebuilds every nn.Linear of `model` in place with in/out widths mapped through `widths`
    (widths not in the map are kept), under the same attribute name."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, name, torch.nn.Linear(widths.get(child.in_features, child.in_features),
                                                      widths.get(child.out_features, child.out_features),
                                                      bias=child.bias is not None))
    return model


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
m = porpoise.PorpoiseMMF(omic_input_dim=G, path_input_dim=D_IN, n_classes=3).eval()
perturb(m, 11)
bag, expr = torch.rand(90, D_IN), torch.randn(G)
att = capture(m.attention_net)
with torch.no_grad():
    logits = m(x_path=bag, x_omic=expr.unsqueeze(0))
save("porpoise", m, bag, {"logits": logits[0], "attention_raw": att["out"][0].T, "expression": expr})

set_mil = load(f"{porpoise_repo}/models/model_set_mil.py", "set_mil_ref")
torch.manual_seed(12)
m = set_mil.MIL_Attention_FC_surv(omic_input_dim=G, fusion="bilinear", n_classes=3)
m = narrow_linears(m, {1024: D_IN}).eval()
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
torch.manual_seed(14)
m = narrow_linears(coattn.MCAT_Surv(omic_sizes=sizes, n_classes=3), {1024: D_IN}).eval()
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
