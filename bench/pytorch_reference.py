"""The same computations as crates/gimp-train/examples/bench_steps.rs, in PyTorch with lucidrains'
nystrom-attention, for bench/compare.sh. Set-up (once):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch torchvision nystrom-attention==0.0.14 einops

Prints one JSON object of median seconds. Threads: torch.set_num_threads(--threads, default all).
"""
import argparse
import json
import os
import statistics
import time

import torch
import torch.nn as nn
from nystrom_attention import NystromAttention

p = argparse.ArgumentParser()
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--skip-150k", action="store_true")
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--only", help="run one computation (pretrain_step, forward_6000, forward_150000, "
               "groupmsa_step, extract_32); the others print null")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)


class TransLayer(nn.Module):
    def __init__(self, dim=512):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim=dim, dim_head=dim // 8, heads=8, num_landmarks=dim // 2,
                                     pinv_iterations=6, residual=True, dropout=0.1)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class Aggregator(nn.Module):
    def __init__(self, d_in=1024, dim=512):
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU())
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1, self.layer2 = TransLayer(dim), TransLayer(dim)
        self.norm = nn.LayerNorm(dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.dec_norm, self.dec = nn.LayerNorm(dim), nn.Linear(dim, d_in)

    def encode(self, h):
        x = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1)
        return self.norm(self.layer2(self.layer1(x)))

    def mpm_loss(self, x, mask):
        h = self.fc1(x)
        m = mask[None, :, None].float()
        h = h * (1 - m) + m * self.mask_token
        tokens = self.encode(h)
        rec = self.dec(self.dec_norm(tokens[:, 1:]))
        return (rec - x).abs()[:, mask].mean()


class Block(nn.Module):
    """x + MSA(LN x), x + FFN(LN x): nn.TransformerEncoderLayer with norm_first."""

    def __init__(self, dim):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(dim, 8, 4 * dim, 0.1, activation="gelu", batch_first=True, norm_first=True)

    def forward(self, x):
        return self.layer(x)


class GroupMSA(nn.Module):
    def __init__(self, n_genes=60480, frag=252, dim=512, groups=16, n_classes=2):
        super().__init__()
        self.nf = -(-n_genes // frag)
        self.nf = -(-self.nf // groups) * groups
        self.frag, self.groups, self.n_genes = frag, groups, n_genes
        self.tok = nn.Linear(frag, dim)
        self.pos = nn.Parameter(torch.zeros(self.nf, dim))
        self.group_tokens = nn.Parameter(torch.zeros(groups, dim))
        self.cls = nn.Parameter(torch.zeros(1, dim))
        self.intra, self.inter = Block(dim), Block(dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x):
        b = x.shape[0]
        x = nn.functional.pad(x, (0, self.nf * self.frag - self.n_genes)).view(b, self.nf, self.frag)
        t = (self.tok(x) + self.pos).view(b * self.groups, self.nf // self.groups, -1)
        g = self.group_tokens[None].expand(b, -1, -1).reshape(b * self.groups, 1, -1)
        groups = self.intra(torch.cat([g, t], 1))[:, 0].view(b, self.groups, -1)
        seq = torch.cat([self.cls[None].expand(b, -1, -1), groups], 1)
        return self.head(self.norm(self.inter(seq))[:, 0])


def timed(f, repeat):
    f()
    out = []
    for _ in range(repeat):
        s = time.perf_counter()
        f()
        out.append(time.perf_counter() - s)
    return statistics.median(out)


model = Aggregator()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
window = torch.rand(1, 6000, 1024)
mask = torch.zeros(6000, dtype=torch.bool)
mask[::2] = True


def step():
    opt.zero_grad()
    model.mpm_loss(window, mask).backward()
    opt.step()


def want(name):
    return args.only is None or args.only == name


model.train()
res = {"implementation": "pytorch " + torch.__version__, "threads": torch.get_num_threads()}
res["pretrain_step"] = timed(step, args.repeat) if want("pretrain_step") else None
model.eval()
with torch.no_grad():
    res["forward_6000"] = None
    if want("forward_6000"):
        res["forward_6000"] = timed(lambda: model.encode(model.fc1(window))[:, 0], args.repeat)
    res["forward_150000"] = None
    if not args.skip_150k and want("forward_150000"):
        big = torch.rand(1, 150000, 1024)
        res["forward_150000"] = timed(lambda: model.encode(model.fc1(big))[:, 0], 1)
g = GroupMSA()
gopt = torch.optim.AdamW(g.parameters(), lr=1e-4, weight_decay=1e-4)
genes = torch.rand(8, 60480)
labels = torch.tensor([0, 1] * 4)


def gstep():
    gopt.zero_grad()
    nn.functional.cross_entropy(g(genes), labels).backward()
    gopt.step()


g.train()
res["groupmsa_step"] = timed(gstep, args.repeat) if want("groupmsa_step") else None

# Feature extraction: torchvision's ResNet-50 up to layer3 + average pooling (CLAM's
# resnet50_trunc) on 32 patches of 256 × 256, when torchvision is installed.
res["extract_32"] = None
if want("extract_32"):
    try:
        import torchvision
    except ImportError:
        torchvision = None
    if torchvision is not None:
        r50 = torchvision.models.resnet50(weights=None)
        trunk = nn.Sequential(r50.conv1, r50.bn1, r50.relu, r50.maxpool, r50.layer1, r50.layer2,
                              r50.layer3, nn.AdaptiveAvgPool2d(1)).eval()
        patches = torch.rand(32, 3, 256, 256)
        with torch.no_grad():
            res["extract_32"] = timed(lambda: trunk(patches), args.repeat)
print(json.dumps(res))
