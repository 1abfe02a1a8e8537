"""The same computations as crates/gimp-train/examples/bench_steps.rs, in PyTorch with lucidrains'
nystrom-attention, for bench/compare.sh. Set-up (once):

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install torch torchvision nystrom-attention==0.0.14 einops

(torchvision only for extract_32). GiMP's successors (TANGLE, SurvPath, MMP) are the reference
modules as re-declared in tools/successor_modules.py (also used for their parity fixtures).

Prints one JSON object of median seconds. Threads: torch.set_num_threads(--threads, default all).
"""
import argparse
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
from nystrom_attention import NystromAttention

p = argparse.ArgumentParser()
p.add_argument("--repeat", type=int, default=3)
p.add_argument("--skip-150k", action="store_true")
p.add_argument("--threads", type=int, default=os.cpu_count())
p.add_argument("--only", help="run one computation (pretrain_step, forward_6000, forward_150000, "
               "groupmsa_step, extract_32, or a whole-bag training step "
               "{finetune,transmil,clam_sb}_step_{6000,24000,150000}, "
               "{tangle,survpath,survpath_whole,mmp}_step_{6000,150000} or tangle_pretrain_step_{64,8}, "
               "which run only when named); "
               "the others print null")
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


class GimpFinetune(nn.Module):
    """GiMP fine-tuning: the aggregator on the whole bag (CLS), the frozen GroupMSA gene encoder
    (evaluation mode, no gradient), the head Linear(1024, 512), ReLU, Dropout(0.25), Linear(512, 2)."""

    def __init__(self):
        super().__init__()
        self.aggregator = Aggregator()
        self.genes = GroupMSA()
        self.head = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(0.25), nn.Linear(512, 2))

    def forward(self, bag, expr):
        cls_img = self.aggregator.encode(self.aggregator.fc1(bag))[:, 0]
        self.genes.eval()
        with torch.no_grad():
            g = self.genes
            b = expr.shape[0]
            x = nn.functional.pad(expr, (0, g.nf * g.frag - g.n_genes)).view(b, g.nf, g.frag)
            t = (g.tok(x) + g.pos).view(b * g.groups, g.nf // g.groups, -1)
            gt = g.group_tokens[None].expand(b, -1, -1).reshape(b * g.groups, 1, -1)
            groups = g.intra(torch.cat([gt, t], 1))[:, 0].view(b, g.groups, -1)
            seq = torch.cat([g.cls[None].expand(b, -1, -1), groups], 1)
            cls_ge = g.norm(g.inter(seq))[:, 0]
        return self.head(torch.cat([cls_img, cls_ge], 1))


class PPEG(nn.Module):
    """TransMIL's PPEG (szc19990412/TransMIL models/TransMIL.py)."""

    def __init__(self, dim=512):
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x, h, w):
        b, _, c = x.shape
        cls_token, feat_token = x[:, 0], x[:, 1:]
        cnn_feat = feat_token.transpose(1, 2).view(b, c, h, w)
        x = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
        x = x.flatten(2).transpose(1, 2)
        return torch.cat((cls_token.unsqueeze(1), x), dim=1)


class TransMIL(nn.Module):
    """TransMIL as its reference code builds it (square padding by repetition, PPEG)."""

    def __init__(self, n_classes=2):
        super().__init__()
        self.pos_layer = PPEG(512)
        self._fc1 = nn.Sequential(nn.Linear(1024, 512), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, 512))
        self.layer1, self.layer2 = TransLayer(512), TransLayer(512)
        self.norm = nn.LayerNorm(512)
        self._fc2 = nn.Linear(512, n_classes)

    def forward(self, h):
        h = self._fc1(h)
        n = h.shape[1]
        side = int(math.ceil(math.sqrt(n)))
        h = torch.cat([h, h[:, : side * side - n, :]], dim=1)
        h = torch.cat((self.cls_token.expand(h.shape[0], -1, -1), h), dim=1)
        h = self.pos_layer(self.layer1(h), side, side)
        h = self.norm(self.layer2(h))[:, 0]
        return self._fc2(h)


def smooth_top1_svm(logits, targets, alpha=1.0, tau=1.0):
    """A smooth top-1 SVM loss (CLAM's instance loss, Berrada et al.), averaged."""
    margin = alpha * (1 - nn.functional.one_hot(targets, logits.shape[1]).float())
    return (tau * torch.logsumexp((logits + margin) / tau, 1) - logits.gather(1, targets[:, None])[:, 0]).mean()


class ClamSB(nn.Module):
    """CLAM-SB (mahmoodlab/CLAM models/model_clam.py): fc + ReLU + Dropout, gated attention,
    bag classifier, instance classifiers with k_sample 8, subtyping, bag weight 0.7."""

    def __init__(self, n_classes=2, k=8):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(1024, 512), nn.ReLU(), nn.Dropout(0.25))
        self.attention_a = nn.Sequential(nn.Linear(512, 256), nn.Tanh(), nn.Dropout(0.25))
        self.attention_b = nn.Sequential(nn.Linear(512, 256), nn.Sigmoid(), nn.Dropout(0.25))
        self.attention_c = nn.Linear(256, 1)
        self.classifiers = nn.Linear(512, n_classes)
        self.instance_classifiers = nn.ModuleList([nn.Linear(512, 2) for _ in range(n_classes)])
        self.k, self.n_classes = k, n_classes

    def loss(self, h, label):
        h = self.fc(h)
        a = self.attention_c(self.attention_a(h).mul(self.attention_b(h)))
        a = torch.softmax(a.transpose(1, 0), dim=1)
        inst = 0.0
        for c, clf in enumerate(self.instance_classifiers):
            top = torch.topk(a, self.k)[1][-1]
            if c == label:
                bottom = torch.topk(-a, self.k, dim=1)[1][-1]
                x = torch.cat([h.index_select(0, top), h.index_select(0, bottom)])
                t = torch.cat([torch.ones(self.k), torch.zeros(self.k)]).long()
            else:
                x, t = h.index_select(0, top), torch.zeros(self.k).long()
            inst = inst + smooth_top1_svm(clf(x), t)
        inst = inst / self.n_classes
        logits = self.classifiers(torch.mm(a, h))
        ce = nn.functional.cross_entropy(logits, torch.tensor([label]))
        return 0.7 * ce + 0.3 * inst


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
# GiMP's successors on a bag and an expression vector of 4,999 genes (as bench_steps.rs), the
# reference modules from tools/successor_modules.py; AdamW (lr, decay) at gimp-rs's training
# defaults for each.
SUCCESSOR_GENES = 4999
SUCCESSORS = {"tangle_step": (1e-4, 1e-4), "survpath_step": (1e-4, 1e-5),
              "survpath_whole_step": (1e-4, 1e-5), "mmp_step": (1e-4, 1e-5)}


def successor_modules():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
    import successor_modules as sm
    return sm


def tangle_model(sm):
    """TANGLE's MMSSL (ABMIL slide encoder, expression MLP of width G) with gimp-rs's linear head."""
    config = {"embedding_dim": 1024, "hidden_dim": 1024, "activation": "softmax",
              "rna_reconstruction": False}
    m = sm.MMSSL(config, n_tokens_rna=SUCCESSOR_GENES)
    m.classifier = nn.Linear(1024, 2)
    return m


def chunk_sizes(genes, k):
    """`k` equal contiguous pathways of the genes (as bench_steps.rs's `chunks`)."""
    return [(i + 1) * genes // k - i * genes // k for i in range(k)]


def successor_step(kind, bag):
    """(model, parameters, loss) of one training step of a successor on `bag`."""
    sm = successor_modules()
    expr = torch.rand(SUCCESSOR_GENES)
    label = torch.tensor([1])
    ce = nn.functional.cross_entropy
    if kind == "tangle_step":
        # Fine-tuning: the slide encoder on every patch, the linear head.
        m = tangle_model(sm)
        return m, list(m.parameters()), lambda: ce(m.classifier(m.wsi_embedder(bag[None])), label)
    if kind in ("survpath_step", "survpath_whole_step"):
        # 331 pathways (SurvPath's `combine` table); training reads 4096 patches drawn without
        # replacement, in bag order (SurvivalDataset with sample=True).
        sizes = chunk_sizes(SUCCESSOR_GENES, 331)
        m = sm.SurvPath(omic_sizes=sizes, wsi_embedding_dim=1024, num_classes=4, wsi_projection_dim=256)
        omics = {f"x_omic{i + 1}": o for i, o in enumerate(torch.split(expr, sizes))}
        sample = kind == "survpath_step" and bag.shape[0] > 4096

        def loss():
            x = bag[torch.randperm(bag.shape[0])[:4096].sort().values] if sample else bag
            return ce(m(x_path=x[None], return_attn=False, **omics), label)
        return m, list(m.parameters()), loss
    # MMP: PANTHER's EM step on every patch from a frozen prior of 16 prototypes (no gradient),
    # 50 pathways (Hallmarks), coattn as scripts/survival/mmp.sh builds it.
    sizes = chunk_sizes(SUCCESSOR_GENES, 50)
    panther = sm.PANTHER(1024, 16, em_iter=1, tau=1.0, ot_eps=1.0).eval()
    m = sm.Coattn(sizes, histo_in_dim=1024, num_classes=4, path_proj_dim=256, numOfproto=16)
    omics = [o[None] for o in torch.split(expr, sizes)]

    def loss():
        with torch.no_grad():
            X, _ = panther.panther(bag[None])
        return ce(m.forward_no_loss(sm.tokenize(X, 16), omics)["logits"], label)
    return m, list(m.parameters()), loss


# TANGLE's pre-training step (train_tangle.py), tangle_pretrain_step_B: a batch of B patients (the
# reference's: 64), 2048 patches drawn with replacement from each (bags of 2048 here), symmetric
# InfoNCE at 0.01, AdamW(1e-4) with PyTorch's default decay 0.01 over every parameter.
pretrain = args.only.rsplit("_", 1) if args.only and args.only.startswith("tangle_pretrain_step_") else None
if pretrain is not None:
    patients = int(pretrain[1])
    sm = successor_modules()
    torch.manual_seed(0)
    m = tangle_model(sm).train()
    bags = [torch.rand(2048, 1024) for _ in range(patients)]
    rna = torch.rand(patients, SUCCESSOR_GENES)
    o = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.01)

    def pretrain_step():
        o.zero_grad()
        x = torch.stack([b[torch.randint(0, b.shape[0], (2048,))] for b in bags])
        wsi, expr_emb, _ = m(x, rna)
        sm.info_nce_symmetric(wsi, expr_emb, 0.01).backward()
        o.step()

    res[args.only] = timed(pretrain_step, min(args.repeat, 3))
# Whole-bag training steps (one patient a step, as the trainers run them), only when named.
bag_step = None if pretrain is not None else (
    args.only.rsplit("_", 1) if args.only and args.only.rsplit("_", 1)[-1].isdigit() else None)
if bag_step is not None:
    kind, n = bag_step[0], int(bag_step[1])
    torch.manual_seed(0)
    bag = torch.rand(n, 1024)
    label = torch.tensor([1])
    if kind == "finetune_step":
        m = GimpFinetune()
        expr = torch.rand(1, 60480)
        params = [p for name, p in m.named_parameters() if not name.startswith("genes.")]
        loss = lambda: nn.functional.cross_entropy(m(bag[None], expr), label)
    elif kind == "transmil_step":
        m = TransMIL()
        params = list(m.parameters())
        loss = lambda: nn.functional.cross_entropy(m(bag[None]), label)
    elif kind == "clam_sb_step":
        m = ClamSB()
        params = list(m.parameters())
        loss = lambda: m.loss(bag, 1)
    elif kind in SUCCESSORS:
        m, params, loss = successor_step(kind, bag)
    else:
        raise SystemExit(f"unknown computation {args.only}")
    m.train()
    lr, decay = SUCCESSORS.get(kind, (2e-4, 1e-5))
    o = torch.optim.AdamW(params, lr=lr, weight_decay=decay)

    def bag_train_step():
        o.zero_grad()
        loss().backward()
        o.step()

    res[args.only] = timed(bag_train_step, 1 if n >= 100000 else min(args.repeat, 3))
print(json.dumps(res))
