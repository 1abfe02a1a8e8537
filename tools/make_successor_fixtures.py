"""Parity fixtures of GiMP's successors — TANGLE, SurvPath and MMP — for crates/gimp-models/tests/
successors_parity.rs. Run once by hand from the repository root:

    python tools/make_successor_fixtures.py crates/gimp-models/tests/fixtures

with torch, safetensors and numpy from PyPI. The reference modules (TANGLE, SurvPath, MMP at the
commits listed there) are re-declared in tools/successor_modules.py, which bench/pytorch_reference.py
also imports.

Weights are the constructors' PyTorch initialisation perturbed by 0.05 * N(0, 1) (so LayerNorms
and biases are tested), at reduced widths; everything is run in eval mode (dropout off) and in
float32. Gradients are taken of the pre-training losses (TANGLE) and of a sum of the logits
(SurvPath, MMP) with respect to every parameter, and saved as `grad.{name}`.

Files: `{name}_weights.safetensors` (the state dict by the reference's names) and
`{name}_io.safetensors` (inputs, outputs, gradients).
"""
import os
import sys

import torch
from torch import nn
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from successor_modules import (  # noqa: E402
    MMSSL, PANTHER, Coattn, SurvPath, info_nce_symmetric, tokenize,
)

out = sys.argv[1]


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def contiguous(d):
    return {k: v.detach().contiguous() for k, v in d.items()}


def tangle_fixture(name, reconstruction, seed):
    torch.manual_seed(seed)
    D, HIDDEN, G, C, B, N = 32, 24, 40, 3, 5, 60
    config = {"embedding_dim": D, "hidden_dim": HIDDEN, "activation": "softmax",
              "rna_reconstruction": reconstruction}
    model = MMSSL(config, n_tokens_rna=G)
    # The downstream head (linear probe / fine-tuning) that gimp-rs adds, on the slide embedding.
    model.classifier = nn.Linear(D, C)
    perturb(model, seed + 1)
    model.eval()
    bags = torch.randn(B, N, D)  # n_tokens patches already drawn from each of B slides
    rna = torch.randn(B, G)
    wsi_emb, rna_emb, rna_rec = model(bags, rna)
    if reconstruction:
        loss = nn.MSELoss()(rna_rec, rna)
    else:
        loss = info_nce_symmetric(wsi_emb, rna_emb, 0.01)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    io = {"bags": bags, "expression": rna, "slide_embeddings": wsi_emb, "loss": loss.reshape(1)}
    if rna_emb is not None:
        io["expression_embeddings"] = rna_emb
    for (k, _), g in zip(params.items(), grads):
        if g is not None:
            io[f"grad.{k}"] = g
    # A whole slide of another size through the downstream head: logits and raw attention.
    slide = torch.randn(1, 77, D)
    emb, raw = model.wsi_embedder(slide, return_attention=True)
    io["slide"] = slide[0]
    io["logits"] = model.classifier(emb)[0]
    io["attention"] = raw[0, :, 0]
    save_file(contiguous(model.state_dict()), f"{out}/{name}_weights.safetensors")
    save_file(contiguous(io), f"{out}/{name}_io.safetensors")
    print(name, "loss", float(loss.detach()))


tangle_fixture("tangle", reconstruction=False, seed=11)
tangle_fixture("tangle_rec", reconstruction=True, seed=12)


def survpath_fixture(name, seed):
    torch.manual_seed(seed)
    D_IN, D, HIDDEN, C, N = 32, 32, (40, 32), 4, 50
    sizes = [5, 8, 3, 12, 6, 9, 4]
    model = SurvPath(omic_sizes=sizes, wsi_embedding_dim=D_IN, num_classes=C, wsi_projection_dim=D, hidden=HIDDEN)
    perturb(model, seed + 1)
    model.eval()
    x = torch.randn(1, N, D_IN)
    omics = [torch.randn(k) for k in sizes]
    kw = {"x_path": x, "return_attn": True}
    kw.update({f"x_omic{i + 1}": o for i, o in enumerate(omics)})
    logits, _, cross_attn_pathways, _ = model(**kw)
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    objective = (logits[0] * weights).sum()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(objective, list(params.values()))
    io = {"bag": x[0], "expression": torch.cat(omics), "logits": logits[0],
          "attention": cross_attn_pathways.mean(0), "objective_weights": weights}
    for (k, _), g in zip(params.items(), grads):
        io[f"grad.{k}"] = g
    save_file(contiguous(model.state_dict()), f"{out}/{name}_weights.safetensors")
    save_file(contiguous(io), f"{out}/{name}_io.safetensors")
    print(name, "logits", logits.tolist())


survpath_fixture("survpath", seed=21)


def mmp_fixture(name, seed):
    torch.manual_seed(seed)
    D_IN, P, D, APPEND, HIDDEN, C, N = 16, 4, 24, 8, (20, 24), 4, 60
    sizes = [5, 8, 3, 6]
    panther = PANTHER(D_IN, P, em_iter=1, tau=1.0, ot_eps=1.0)
    model = Coattn(sizes, histo_in_dim=D_IN, num_classes=C, path_proj_dim=D, numOfproto=P, hidden=HIDDEN,
                   append_dim=APPEND)
    perturb(model, seed + 1)
    x = torch.randn(1, N, D_IN)
    with torch.no_grad():
        # Prototypes as k-means would place them: at patches of the bag, slightly moved.
        panther.panther.priors.m.copy_(x[0, :P] + 0.1 * torch.randn(P, D_IN))
        panther.panther.priors.V_.add_(0.05 * torch.randn(P, D_IN))
    model.eval()
    panther.eval()
    X, qqs = panther.panther(x)
    tokens = tokenize(X, P)
    omics = [torch.randn(1, k) for k in sizes]
    out = model.forward_no_loss(tokens, omics, return_attn=True)
    logits = out['logits']
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    objective = (logits[0] * weights).sum()
    params = dict(model.named_parameters())
    # coattn.1.norm (FeedForwardEnsemble's own LayerNorm) is never used: no gradient.
    grads = torch.autograd.grad(objective, list(params.values()), allow_unused=True)
    state = dict(model.state_dict())
    state.update(panther.state_dict())
    cross = out['cross_attn']  # pathways -> prototypes, pre-softmax [P_path, P]
    io = {"bag": x[0], "expression": torch.cat([o[0] for o in omics]), "logits": logits[0],
          "proto_tokens": tokens[0], "posterior": qqs[0, :, :, 0],
          "attention": qqs[0, :, :, 0] @ cross.mean(0), "objective_weights": weights}
    for (k, _), g in zip(params.items(), grads):
        if g is not None:
            io[f"grad.{k}"] = g
    save_file(contiguous(state), f"{out_dir}/{name}_weights.safetensors")
    save_file(contiguous(io), f"{out_dir}/{name}_io.safetensors")
    print(name, "logits", logits.tolist())


out_dir = out
mmp_fixture("mmp", seed=31)
