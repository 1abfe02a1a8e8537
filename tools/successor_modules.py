"""PyTorch versions of the reference modules of GiMP's successors — TANGLE, SurvPath and MMP —
re-declared statement for statement from the reference repositories, for the parity fixtures
(tools/make_successor_fixtures.py) and the speed comparison (bench/pytorch_reference.py). The
reference repositories are not pip packages and their modules import what they do not need (CUDA
devices, einops, pandas), so the classes are written here from reading them (file at commit):

* mahmoodlab/TANGLE 266a756a2574e18baab0b56a6809b5b274d48f14: core/models/mmssl.py (MMSSL,
  MLP, ProjHead, ABMILEmbedder), core/models/abmil.py (BatchedABMIL), core/loss/tangle_loss.py
  (InfoNCE), train_tangle.py (train_loop's loss: InfoNCE(symmetric) or MSELoss for tanglerec).
* mahmoodlab/SurvPath 3f73ddd6705ec67d643020c5bb04fb13f9f382cc: models/model_SurvPath.py
  (SurvPath, SNN_Block), models/layers/cross_attention.py (FeedForward, MMAttention,
  MMAttentionLayer).
* mahmoodlab/MMP 5878b84fe3119226032988b79a802a519c7e8efd: src/mil_models/PANTHER/networks.py
  (mog_eval, DirNIWNet), src/mil_models/PANTHER/layers.py (PANTHERBase, out 'allcat'),
  src/mil_models/tokenizer.py (PrototypeTokenizer), src/mil_models/components.py (FeedForward,
  FeedForwardEnsemble, MMAttention in every mode SurvPath and MMP use, MMAttentionLayer,
  SNN_Block), src/mil_models/model_multimodal.py (init_per_path_model, construct_proto_embedding,
  coattn as scripts/survival/mmp.sh builds it).

Needs torch and numpy.
"""
import numpy as np

import torch
import torch.nn.functional as F
from torch import nn

# ---------------------------------------------------------------- TANGLE (core/models/abmil.py)
class BatchedABMIL(nn.Module):
    def __init__(self, input_dim=1024, hidden_dim=256, dropout=False, n_classes=1, activation='softmax'):
        super().__init__()
        self.activation = activation
        self.attention_a = [nn.Linear(input_dim, hidden_dim), nn.Tanh()]
        self.attention_b = [nn.Linear(input_dim, hidden_dim), nn.Sigmoid()]
        if dropout:
            self.attention_a.append(nn.Dropout(0.25))
            self.attention_b.append(nn.Dropout(0.25))
        self.attention_a = nn.Sequential(*self.attention_a)
        self.attention_b = nn.Sequential(*self.attention_b)
        self.attention_c = nn.Linear(hidden_dim, n_classes)

    def forward(self, x, return_raw_attention=False):
        a = self.attention_a(x)
        b = self.attention_b(x)
        A = a.mul(b)
        A = self.attention_c(A)
        activated_A = F.softmax(A, dim=1)  # activation == 'softmax' (the default)
        if return_raw_attention:
            return activated_A, A
        return activated_A


# ---------------------------------------------------------------- TANGLE (core/models/mmssl.py)
class MLP(nn.Module):
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.blocks = nn.Sequential(
            self.build_block(in_dim=self.input_dim, out_dim=hidden_dim),
            self.build_block(in_dim=hidden_dim, out_dim=hidden_dim),
            nn.Linear(in_features=hidden_dim, out_features=self.output_dim),
        )

    def build_block(self, in_dim, out_dim):
        return nn.Sequential(
            nn.Linear(in_features=in_dim, out_features=out_dim),
            nn.LayerNorm(out_dim),
            nn.ReLU(),
            nn.Dropout(0.2),
        )

    def forward(self, x):
        return self.blocks(x)


class ProjHead(nn.Module):
    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.layers = nn.Linear(in_features=input_dim, out_features=int(output_dim))

    def forward(self, x):
        return self.layers(x)


class ABMILEmbedder(nn.Module):
    def __init__(self, pre_attention_params=None, attention_params=None, aggregation='regular'):
        super().__init__()
        self.pre_attention_params = pre_attention_params
        if pre_attention_params is not None:
            self._build_pre_attention_params(params=pre_attention_params)
        self.attention_params = attention_params
        if attention_params is not None:
            self.attn = BatchedABMIL(**attention_params['params'])
        self.agg_type = aggregation

    def _build_pre_attention_params(self, params):
        self.pre_attn = nn.Sequential(
            nn.Linear(params['input_dim'], params['hidden_dim']),
            nn.LayerNorm(params['hidden_dim']),
            nn.GELU(),
            nn.Dropout(0.1),
            nn.Linear(params['hidden_dim'], params['hidden_dim']),
            nn.LayerNorm(params['hidden_dim']),
            nn.GELU(),
            nn.Dropout(0.1),
        )

    def forward(self, bags, return_attention=False):
        embeddings = self.pre_attn(bags)
        if return_attention:
            attention, raw_attention = self.attn(embeddings, return_raw_attention=True)
        else:
            attention = self.attn(embeddings)
        embeddings = embeddings * attention
        slide_embeddings = torch.sum(embeddings, dim=1)  # activation 'softmax': sum
        if return_attention:
            return slide_embeddings, raw_attention
        return slide_embeddings


class MMSSL(nn.Module):
    """MMSSL for wsi_encoder 'abmil', rna_encoder 'mlp', study 'brca'/'nsclc' (TANGLE v1)."""

    def __init__(self, config, n_tokens_rna):
        super().__init__()
        self.config = config
        self.patch_embedding_dim = config['embedding_dim']
        pre_params = {"input_dim": self.patch_embedding_dim, "hidden_dim": self.patch_embedding_dim}
        attention_params = {"model": "ABMIL", "params": {
            "input_dim": self.patch_embedding_dim, "hidden_dim": config["hidden_dim"],
            "dropout": True, "activation": config["activation"], "n_classes": 1}}
        self.wsi_embedder = ABMILEmbedder(pre_attention_params=pre_params, attention_params=attention_params)
        self.rna_embedder = MLP(input_dim=n_tokens_rna, hidden_dim=n_tokens_rna, output_dim=config["embedding_dim"])
        if config["rna_reconstruction"]:
            self.rna_reconstruction = MLP(input_dim=config["embedding_dim"], hidden_dim=config["embedding_dim"],
                                          output_dim=n_tokens_rna)
        else:
            self.rna_reconstruction = None
        if config["embedding_dim"] != config["hidden_dim"]:
            self.mean_projector = ProjHead(config["embedding_dim"], config["hidden_dim"])
        else:
            self.mean_projector = None

    def forward(self, wsi_emb, rna_emb=None):
        wsi_emb = self.wsi_embedder(wsi_emb)
        if rna_emb is None or self.config['rna_reconstruction']:
            rna_emb = None
        else:
            rna_emb = self.rna_embedder(rna_emb)
        rna_reconstruction = self.rna_reconstruction(wsi_emb) if self.config["rna_reconstruction"] else None
        return wsi_emb, rna_emb, rna_reconstruction


# ---------------------------------------------------------------- TANGLE (core/loss/tangle_loss.py)
def info_nce_symmetric(query, positive_key, temperature):
    """InfoNCE.info_nce with negative_keys None, symmetric True, reduction 'mean'."""
    query, positive_key = F.normalize(query, dim=-1), F.normalize(positive_key, dim=-1)
    logits = query @ positive_key.transpose(-2, -1)
    labels = torch.arange(len(query))
    logits2 = positive_key @ query.transpose(-2, -1)
    return 0.5 * F.cross_entropy(logits / temperature, labels) + 0.5 * F.cross_entropy(logits2 / temperature, labels)


# ---------------------------------------------------------------- SurvPath (models/layers/cross_attention.py)
class FeedForward(nn.Module):
    def __init__(self, dim, mult=1, dropout=0.):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * mult, dim))

    def forward(self, x):
        return self.net(self.norm(x))


class MMAttention(nn.Module):
    """residual=False, mask=None (as SurvPath builds and calls it)."""

    def __init__(self, dim, dim_head=64, heads=8, residual=True, residual_conv_kernel=33, eps=1e-8, dropout=0.,
                 num_pathways=281):
        super().__init__()
        assert not residual
        self.num_pathways = num_pathways
        self.eps = eps
        inner_dim = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.residual = residual

    def forward(self, x, mask=None, return_attn=False):
        b, n, _, h, m, eps = *x.shape, self.heads, self.num_pathways, self.eps
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        # rearrange 'b n (h d) -> b h n d'
        q, k, v = map(lambda t: t.reshape(b, n, h, -1).permute(0, 2, 1, 3), (q, k, v))
        q = q * self.scale
        q_pathways = q[:, :, :self.num_pathways, :]
        k_pathways = k[:, :, :self.num_pathways, :]
        q_histology = q[:, :, self.num_pathways:, :]
        k_histology = k[:, :, self.num_pathways:, :]
        einops_eq = '... i d, ... j d -> ... i j'
        cross_attn_histology = torch.einsum(einops_eq, q_histology, k_pathways)
        attn_pathways = torch.einsum(einops_eq, q_pathways, k_pathways)
        cross_attn_pathways = torch.einsum(einops_eq, q_pathways, k_histology)
        pre_softmax_cross_attn_histology = cross_attn_histology
        cross_attn_histology = cross_attn_histology.softmax(dim=-1)
        attn_pathways_histology = torch.cat((attn_pathways, cross_attn_pathways), dim=-1).softmax(dim=-1)
        out_pathways = attn_pathways_histology @ v
        out_histology = cross_attn_histology @ v[:, :, :self.num_pathways]
        out = torch.cat((out_pathways, out_histology), dim=2)
        out = out.permute(0, 2, 1, 3).reshape(b, n, -1)  # 'b h n d -> b n (h d)'
        if return_attn:
            return out, attn_pathways.squeeze().detach(), cross_attn_pathways.squeeze().detach(), \
                pre_softmax_cross_attn_histology.squeeze().detach()
        return out


class MMAttentionLayer(nn.Module):
    def __init__(self, norm_layer=nn.LayerNorm, dim=512, dim_head=64, heads=6, residual=True, dropout=0.,
                 num_pathways=281):
        super().__init__()
        self.norm = norm_layer(dim)
        self.num_pathways = num_pathways
        self.attn = MMAttention(dim=dim, dim_head=dim_head, heads=heads, residual=residual, dropout=dropout,
                                num_pathways=num_pathways)

    def forward(self, x=None, mask=None, return_attention=False):
        if return_attention:
            return self.attn(x=self.norm(x), mask=mask, return_attn=True)
        return self.attn(x=self.norm(x), mask=mask)


# ---------------------------------------------------------------- SurvPath (models/model_SurvPath.py)
def SNN_Block(dim1, dim2, dropout=0.25):
    return nn.Sequential(nn.Linear(dim1, dim2), nn.ELU(), nn.AlphaDropout(p=dropout, inplace=False))


class SurvPath(nn.Module):
    """`hidden` is the one change: init_per_path_model's literal [256, 256], narrowed here."""

    def __init__(self, omic_sizes=[100, 200, 300, 400, 500, 600], wsi_embedding_dim=1024, dropout=0.1,
                 num_classes=4, wsi_projection_dim=256, hidden=(256, 256)):
        super().__init__()
        self.num_pathways = len(omic_sizes)
        self.dropout = dropout
        self.wsi_embedding_dim = wsi_embedding_dim
        self.wsi_projection_dim = wsi_projection_dim
        self.wsi_projection_net = nn.Sequential(nn.Linear(self.wsi_embedding_dim, self.wsi_projection_dim))
        self.init_per_path_model(omic_sizes, list(hidden))
        self.identity = nn.Identity()
        self.cross_attender = MMAttentionLayer(dim=self.wsi_projection_dim, dim_head=self.wsi_projection_dim // 2,
                                               heads=1, residual=False, dropout=0.1, num_pathways=self.num_pathways)
        self.num_classes = num_classes
        self.feed_forward = FeedForward(self.wsi_projection_dim // 2, dropout=dropout)
        self.layer_norm = nn.LayerNorm(self.wsi_projection_dim // 2)
        self.to_logits = nn.Sequential(nn.Linear(self.wsi_projection_dim, int(self.wsi_projection_dim / 4)), nn.ReLU(),
                                       nn.Linear(int(self.wsi_projection_dim / 4), self.num_classes))

    def init_per_path_model(self, omic_sizes, hidden):
        sig_networks = []
        for input_dim in omic_sizes:
            fc_omic = [SNN_Block(dim1=input_dim, dim2=hidden[0])]
            for i, _ in enumerate(hidden[1:]):
                fc_omic.append(SNN_Block(dim1=hidden[i], dim2=hidden[i + 1], dropout=0.25))
            sig_networks.append(nn.Sequential(*fc_omic))
        self.sig_networks = nn.ModuleList(sig_networks)

    def forward(self, **kwargs):
        wsi = kwargs['x_path']
        x_omic = [kwargs['x_omic%d' % i] for i in range(1, self.num_pathways + 1)]
        return_attn = kwargs["return_attn"]
        h_omic = [self.sig_networks[idx].forward(sig_feat.float()) for idx, sig_feat in enumerate(x_omic)]
        h_omic_bag = torch.stack(h_omic).unsqueeze(0)
        wsi_embed = self.wsi_projection_net(wsi)
        tokens = torch.cat([h_omic_bag, wsi_embed], dim=1)
        tokens = self.identity(tokens)
        if return_attn:
            mm_embed, attn_pathways, cross_attn_pathways, cross_attn_histology = self.cross_attender(
                x=tokens, mask=None, return_attention=True)
        else:
            mm_embed = self.cross_attender(x=tokens, mask=None, return_attention=False)
        mm_embed = self.feed_forward(mm_embed)
        mm_embed = self.layer_norm(mm_embed)
        paths_postSA_embed = torch.mean(mm_embed[:, :self.num_pathways, :], dim=1)
        wsi_postSA_embed = torch.mean(mm_embed[:, self.num_pathways:, :], dim=1)
        embedding = torch.cat([paths_postSA_embed, wsi_postSA_embed], dim=1)
        logits = self.to_logits(embedding)
        if return_attn:
            return logits, attn_pathways, cross_attn_pathways, cross_attn_histology
        return logits


# ---------------------------------------------------------------- MMP (src/mil_models/PANTHER/networks.py)
def mog_eval(mog, data):
    B, N, d = data.shape
    pi, mu, Sigma = mog
    if len(pi.shape) == 1:
        pi = pi.unsqueeze(0).repeat(B, 1)
        mu = mu.unsqueeze(0).repeat(B, 1, 1)
        Sigma = Sigma.unsqueeze(0).repeat(B, 1, 1)
    jll = -0.5 * (d * np.log(2 * np.pi) +
                  Sigma.log().sum(-1).unsqueeze(1) +
                  torch.bmm(data ** 2, 1. / Sigma.permute(0, 2, 1)) +
                  ((mu ** 2) / Sigma).sum(-1).unsqueeze(1) +
                  -2. * torch.bmm(data, (mu / Sigma).permute(0, 2, 1))
                  ) + pi.log().unsqueeze(1)
    mll = jll.logsumexp(-1)
    cll = jll - mll.unsqueeze(-1)
    return jll, cll, mll


class DirNIWNet(nn.Module):
    """load_proto=False: the prototypes are set after construction, as a loaded .pkl would."""

    def __init__(self, p, d, eps=0.1, fix_proto=True):
        super().__init__()
        self.eps = eps
        self.m = nn.Parameter(0.1 * torch.randn(p, d), requires_grad=not fix_proto)
        self.V_ = nn.Parameter(np.log(np.exp(1) - 1) * torch.ones((p, d)), requires_grad=not fix_proto)
        self.p, self.d = p, d

    def forward(self):
        V = self.eps * F.softplus(self.V_)
        return self.m, V

    def mode(self, prior=None):
        m, V = self.forward() if prior is None else prior
        pi = torch.ones(self.p).to(m) / self.p
        return pi.float(), m.float(), V.float()

    def map_m_step(self, data, weight, tau=1.0, prior=None):
        m, V = self.forward() if prior is None else prior
        wsum = weight.sum(1)
        wsum_reg = wsum + tau
        wxsum = torch.bmm(weight.permute(0, 2, 1), data)
        wxxsum = torch.bmm(weight.permute(0, 2, 1), data ** 2)
        pi = wsum_reg / wsum_reg.sum(1, keepdim=True)
        mu = (wxsum + m.unsqueeze(0) * tau) / wsum_reg.unsqueeze(-1)
        Sigma = (wxxsum + (V + m ** 2).unsqueeze(0) * tau) / wsum_reg.unsqueeze(-1) - mu ** 2
        return pi.float(), mu.float(), Sigma.float()

    def map_em(self, data, mask=None, num_iters=3, tau=1.0, prior=None):
        B, N, d = data.shape
        if mask is None:
            mask = torch.ones(B, N).to(data)
        pi, mu, Sigma = self.mode(prior)
        pi = pi.unsqueeze(0).repeat(B, 1)
        mu = mu.unsqueeze(0).repeat(B, 1, 1)
        Sigma = Sigma.unsqueeze(0).repeat(B, 1, 1)
        for emiter in range(num_iters):
            _, qq, _ = mog_eval((pi, mu, Sigma), data)
            qq = qq.exp() * mask.unsqueeze(-1)
            pi, mu, Sigma = self.map_m_step(data, weight=qq, tau=tau, prior=prior)
        return pi, mu, Sigma, qq


# ---------------------------------------------------------------- MMP (src/mil_models/PANTHER/layers.py)
class PANTHERBase(nn.Module):
    """out='allcat' (mmp.sh), one head."""

    def __init__(self, d, p=5, L=3, tau=10.0, ot_eps=0.1, fix_proto=True):
        super().__init__()
        self.L = L
        self.tau = tau
        self.priors = DirNIWNet(p, d, ot_eps, fix_proto)

    def forward(self, S, mask=None):
        B, N_max, d = S.shape
        if mask is None:
            mask = torch.ones(B, N_max).to(S)
        pi, mu, Sigma, qq = self.priors.map_em(S, mask=mask, num_iters=self.L, tau=self.tau, prior=self.priors())
        pis = torch.stack([pi], dim=2)
        mus = torch.stack([mu], dim=3)
        Sigmas = torch.stack([Sigma], dim=3)
        qqs = torch.stack([qq], dim=3)
        out = torch.cat([pis.reshape(B, -1), mus.reshape(B, -1), Sigmas.reshape(B, -1)], dim=1)
        return out, qqs


class PANTHER(nn.Module):
    """model_PANTHER.PANTHER's module names (`panther.priors.m`, `panther.priors.V_`)."""

    def __init__(self, d, p, em_iter, tau, ot_eps):
        super().__init__()
        self.panther = PANTHERBase(d, p=p, L=em_iter, tau=tau, ot_eps=ot_eps, fix_proto=True)


def tokenize(X, p):
    """PrototypeTokenizer('PANTHER', 'allcat', p) and the concatenation of trainer.py."""
    d = (X.shape[1] - p) // (2 * p)
    prob = X[:, :p]
    mean = X[:, p: p * (1 + d)].reshape(-1, p, d)
    cov = X[:, p * (1 + d):].reshape(-1, p, d)
    return torch.cat([prob.unsqueeze(dim=-1), mean, cov], dim=-1)


# ---------------------------------------------------------------- MMP (src/mil_models/components.py)
class FeedForwardMMP(nn.Module):
    def __init__(self, dim, mult=1, dropout=0.):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, int(dim * mult)), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(int(dim * mult), int(dim * mult)))

    def forward(self, x):
        return self.net(self.norm(x))


class FeedForwardEnsemble(nn.Module):
    def __init__(self, dim, mult=1, dropout=0., num=16):
        super().__init__()
        self.num = num
        self.norm = nn.LayerNorm(dim)
        self.net = nn.ModuleList([FeedForwardMMP(dim, mult, dropout) for _ in range(num)])

    def forward(self, x):
        assert x.shape[1] == self.num
        out = []
        for idx in range(self.num):
            out.append(self.net[idx](x[:, idx:idx + 1, :]))
        return torch.cat(out, dim=1)


class MMAttentionMMP(nn.Module):
    """components.MMAttention, residual=False, mask=None, attn_mode 'full' (MMP) or 'partial'."""

    def __init__(self, dim, dim_head=64, heads=8, residual=True, residual_conv_kernel=33, eps=1e-8, dropout=0.,
                 num_pathways=281, attn_mode='full'):
        super().__init__()
        assert not residual
        self.num_pathways = num_pathways
        inner_dim = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.to_qkv = nn.Linear(dim, inner_dim * 3, bias=False)
        self.attn_mode = attn_mode

    def forward(self, x, mask=None, return_attn=False):
        b, n, _, h = *x.shape, self.heads
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = map(lambda t: t.reshape(b, n, h, -1).permute(0, 2, 1, 3), (q, k, v))
        q = q * self.scale
        q_pathways = q[:, :, :self.num_pathways, :]
        k_pathways = k[:, :, :self.num_pathways, :]
        q_histology = q[:, :, self.num_pathways:, :]
        k_histology = k[:, :, self.num_pathways:, :]
        einops_eq = '... i d, ... j d -> ... i j'
        cross_attn_histology = torch.einsum(einops_eq, q_histology, k_pathways)
        attn_pathways = torch.einsum(einops_eq, q_pathways, k_pathways)
        cross_attn_pathways = torch.einsum(einops_eq, q_pathways, k_histology)
        attn_histology = torch.einsum(einops_eq, q_histology, k_histology)
        pre_softmax_cross_attn_histology = cross_attn_histology
        if self.attn_mode == 'full':
            cross_attn_histology = cross_attn_histology.softmax(dim=-1)
            attn_histology_pathways = torch.cat((cross_attn_histology, attn_histology), dim=-1).softmax(dim=-1)
            attn_pathways_histology = torch.cat((attn_pathways, cross_attn_pathways), dim=-1).softmax(dim=-1)
            out_pathways = attn_pathways_histology @ v
            out_histology = attn_histology_pathways @ v
        elif self.attn_mode == 'partial':
            cross_attn_histology = cross_attn_histology.softmax(dim=-1)
            attn_pathways_histology = torch.cat((attn_pathways, cross_attn_pathways), dim=-1).softmax(dim=-1)
            out_pathways = attn_pathways_histology @ v
            out_histology = cross_attn_histology @ v[:, :, :self.num_pathways]
        else:
            raise NotImplementedError(self.attn_mode)
        out = torch.cat((out_pathways, out_histology), dim=2)
        out = out.permute(0, 2, 1, 3).reshape(b, n, -1)
        if return_attn:
            return out, attn_pathways.squeeze().detach(), cross_attn_pathways.squeeze().detach(), \
                pre_softmax_cross_attn_histology.squeeze().detach()
        return out


class MMAttentionLayerMMP(nn.Module):
    def __init__(self, norm_layer=nn.LayerNorm, dim=512, dim_head=64, heads=6, residual=True, dropout=0.,
                 num_pathways=281, attn_mode='full'):
        super().__init__()
        self.norm = norm_layer(dim)
        self.num_pathways = num_pathways
        self.attn = MMAttentionMMP(dim=dim, dim_head=dim_head, heads=heads, residual=residual, dropout=dropout,
                                   num_pathways=num_pathways, attn_mode=attn_mode)

    def forward(self, x=None, mask=None, return_attention=False):
        if return_attention:
            return self.attn(x=self.norm(x), mask=mask, return_attn=True)
        return self.attn(x=self.norm(x), mask=mask)


# ---------------------------------------------------------------- MMP (src/mil_models/model_multimodal.py)
def init_per_path_model(omic_sizes, hidden_dim=256, hidden=None):
    """`hidden` narrows the literal [hidden_dim, hidden_dim]."""
    hidden = [hidden_dim, hidden_dim] if hidden is None else list(hidden)
    sig_networks = []
    for input_dim in omic_sizes:
        fc_omic = [SNN_Block(dim1=input_dim, dim2=hidden[0])]
        for i, _ in enumerate(hidden[1:]):
            fc_omic.append(SNN_Block(dim1=hidden[i], dim2=hidden[i + 1], dropout=0.25))
        sig_networks.append(nn.Sequential(*fc_omic))
    return nn.ModuleList(sig_networks)


def construct_proto_embedding(path_proj_dim, append_embed='modality', numOfproto_histo=16, numOfproto_omics=50,
                              append_dim=32):
    """append_embed 'random'; `append_dim` narrows its literal 32."""
    assert append_embed == 'random'
    path_proj_dim_new = path_proj_dim + append_dim
    histo_embedding = torch.nn.Parameter(torch.randn(1, numOfproto_histo, append_dim), requires_grad=True)
    gene_embedding = torch.nn.Parameter(torch.randn(1, numOfproto_omics, append_dim), requires_grad=True)
    return path_proj_dim_new, histo_embedding, gene_embedding


class Coattn(nn.Module):
    """coattn with histo_model 'PANTHER', append_embed 'random', num_coattn_layers 1, modality 'coattn'
    (attn_mode 'full'), net_indiv True, histo_agg 'mean', mult 1."""

    def __init__(self, omic_sizes, histo_in_dim=1024, dropout=0.1, num_classes=4, path_proj_dim=256,
                 numOfproto=16, hidden=None, append_dim=32):
        super().__init__()
        self.num_pathways = len(omic_sizes)
        self.numOfproto = numOfproto
        self.sig_networks = init_per_path_model(omic_sizes, hidden=hidden)
        self.identity = nn.Identity()
        self.path_proj_net = nn.Sequential(nn.Linear(histo_in_dim * 2 + 1, path_proj_dim))
        self.path_proj_dim, self.histo_embedding, self.gene_embedding = construct_proto_embedding(
            path_proj_dim, 'random', numOfproto, len(omic_sizes), append_dim)
        out_dim = self.path_proj_dim // 2
        cross_attender = MMAttentionLayerMMP(dim=self.path_proj_dim, dim_head=out_dim, heads=1, residual=False,
                                             dropout=0.1, num_pathways=self.num_pathways, attn_mode='full')
        feed_forward = FeedForwardEnsemble(out_dim, 1, dropout=dropout, num=numOfproto + len(omic_sizes))
        layer_norm = nn.LayerNorm(int(out_dim * 1))
        self.coattn = nn.Sequential(cross_attender, feed_forward, layer_norm)
        self.classifier = nn.Linear(out_dim + out_dim, num_classes, bias=False)

    def forward_no_loss(self, x_path, x_omics, return_attn=False):
        h_omic = torch.stack([self.sig_networks[idx](sig_feat.float()) for idx, sig_feat in enumerate(x_omics)], dim=1)
        h_omic = torch.cat([torch.cat([h_omic[idx:idx + 1], self.gene_embedding], dim=-1) for idx in range(len(h_omic))],
                           dim=0)
        h_path = self.path_proj_net(x_path)
        h_path = torch.cat([torch.cat([h_path[idx:idx + 1], self.histo_embedding], dim=-1) for idx in range(len(h_path))],
                           dim=0)
        tokens = torch.cat([h_omic, h_path], dim=1)
        tokens = self.identity(tokens)
        out = {}
        if return_attn:
            with torch.no_grad():
                _, out['omic_attn'], out['cross_attn'], out['path_attn'] = self.coattn[0](x=tokens, mask=None,
                                                                                        return_attention=True)
        mm_embed = self.coattn(tokens)
        paths_postSA_embed = torch.mean(mm_embed[:, :self.num_pathways, :], dim=1)
        wsi_postSA_embed = torch.mean(mm_embed[:, self.num_pathways:, :], dim=1)
        embedding = torch.cat([paths_postSA_embed, wsi_postSA_embed], dim=1)
        out['logits'] = self.classifier(embedding)
        return out
