"""PyTorch reference for gimp-nn's survival losses (crates/gimp-nn/tests/fixtures/survival_loss.safetensors).

The discrete-time negative log-likelihood exactly as MCAT's `nll_loss` (utils/utils.py) and
PORPOISE's `nll_loss` (utils/loss_func.py) write it — hazards = sigmoid(logits), S = cumprod(1 - h),
S padded with a leading 1, gathered terms clamped at eps = 1e-7 before the log, uncensored terms
weighted by alpha — re-typed here from their formula (not imported), on 9 patients x 4 bins with
logits large enough that some clamps bite, for alpha 0 (both mains' default), 0.15 (MCAT's
NLLSurvLoss default) and 0.4 (MCAT's nll_loss default). The Cox partial likelihood as MCAT's
CoxSurvLoss writes it: risk set R[i, j] = time[j] >= time[i] (Breslow's handling of ties), loss
-mean_i event_i * (theta_i - log sum_j R[i, j] exp(theta_j)) over all patients. Losses and their
gradients with respect to the logits / risks, in float64.

Run once (needs torch and safetensors); the output is committed.
"""
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1] if len(sys.argv) > 1 else "crates/gimp-nn/tests/fixtures/survival_loss.safetensors"
torch.set_default_dtype(torch.float64)
g = torch.Generator().manual_seed(0)


def nll_loss(logits, y, c, alpha, eps=1e-7):
    hazards = torch.sigmoid(logits)
    S = torch.cumprod(1 - hazards, dim=1)
    y = y.view(-1, 1)
    c = c.view(-1, 1)
    S_padded = torch.cat([torch.ones_like(c), S], 1)
    uncensored = -(1 - c) * (torch.log(torch.gather(S_padded, 1, y).clamp(min=eps))
                             + torch.log(torch.gather(hazards, 1, y).clamp(min=eps)))
    censored = -c * torch.log(torch.gather(S_padded, 1, y + 1).clamp(min=eps))
    neg_l = censored + uncensored
    loss = (1 - alpha) * neg_l + alpha * uncensored
    return loss.mean()


def cox_loss(theta, time, event):
    n = len(time)
    R = torch.zeros(n, n)
    for i in range(n):
        for j in range(n):
            R[i, j] = float(time[j] >= time[i])
    return -torch.mean((theta - torch.log(torch.sum(torch.exp(theta) * R, dim=1))) * event)


tensors = {}
logits = torch.randn(9, 4, generator=g) * 3.0
# Large hazards in the first bins make S tiny (its clamp bites), very negative logits make the
# hazard itself tiny (the hazard clamp bites).
logits[0] = torch.tensor([9.0, 8.0, 7.5, 9.0])
logits[1] = torch.tensor([-18.0, -2.0, 0.5, 1.0])
bins = torch.tensor([3, 0, 1, 2, 3, 0, 2, 1, 3])
censorship = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
tensors["nll_logits"] = logits.clone()
tensors["nll_bins"] = bins.double()
tensors["nll_censorship"] = censorship
for name, alpha in [("0", 0.0), ("015", 0.15), ("04", 0.4)]:
    x = logits.clone().requires_grad_(True)
    loss = nll_loss(x, bins, censorship, alpha)
    loss.backward()
    tensors[f"nll_loss_alpha{name}"] = loss.detach().reshape(1)
    tensors[f"nll_grad_alpha{name}"] = x.grad.clone()

theta = torch.randn(10, generator=g) * 2.0
time = torch.tensor([5.0, 3.0, 3.0, 8.0, 1.0, 3.0, 9.0, 2.0, 5.0, 7.0])
event = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0])
x = theta.clone().requires_grad_(True)
loss = cox_loss(x, time, event)
loss.backward()
tensors.update({"cox_risk": theta, "cox_time": time, "cox_event": event,
                "cox_loss": loss.detach().reshape(1), "cox_grad": x.grad.clone()})
save_file({k: v.contiguous() for k, v in tensors.items()}, out)
print(f"wrote {out}")
for k, v in tensors.items():
    if "loss" in k:
        print(k, v.item())
