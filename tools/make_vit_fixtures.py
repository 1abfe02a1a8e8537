"""Reference outputs for gimp-extract's patch encoders (crates/gimp-extract/tests/fixtures/vit_*.safetensors).

    python tools/make_vit_fixtures.py OUT_DIR [NAME...]               # the small fixtures the tests read
    python tools/make_vit_fixtures.py OUT_DIR --full [NAME...]        # full-size random networks (GBs; not tracked)
    python tools/make_vit_fixtures.py OUT_DIR --weights-only [NAME...]  # full size, OUT_DIR/NAME.safetensors,
                                                                      # weights only (bench/encoders_end_to_end.sh)

Needs torch, timm, safetensors and numpy (and transformers for Phikon-v2).

Each encoder is built the way TRIDENT's `trident/patch_encoder_models/load.py` builds it (the
same timm model name and keyword arguments; Hugging Face `Dinov2Model` for Phikon-v2; the CONCH
towers below, after the reference code) but, for the tracked fixtures, at reduced width and
depth: embedding width 64 (80 for Virchow2, whose heads are 80 wide; 128 for UNI2-h, so one
fixture has two heads), the published head width, 1 block (2 for Prov-GigaPath), a narrow MLP,
and a 3 × 3 position grid. Every structural feature stays: LayerScale, packed SwiGLU, register
tokens, `no_embed_class`, Virchow2's class ⊕ patch-mean output, CONCH's poolers and its text side
(stand-ins, which must be ignored), CONCH v1.5's file-grid resize and scale-factor resampling.
All parameters are redrawn at random (timm's init leaves LayerScale at 1e-5 and the SwiGLU gate
near zero, which would hide errors) and rounded to float16 so the file stores them in half the
bytes with no loss: the reference runs on exactly the stored values.

Each file holds the weights by the reference's names and:
* `test.rgb_native` u8 [2, 3, S, S]: two crops of real patches of the repository's slide (from
  the ResNet fixture's `patches_rgb_u8`) at the native size S = 3 × patch (at full size: 4
  patches at 224, or at 448 resized from the 256 px patches for CONCH);
* `test.out_native` f32 [2, out]: the reference's output on them (transform: /255, then the
  encoder's mean and std);
* `test.rgb_other` u8 [1, 3, S', S'] and `test.out_other` at S' = 4 × patch (all but Phikon-v2):
  exercises the resampling of the position embeddings (timm's `dynamic_img_size=True`; CONCH
  v1.5's `interpolate_pos_encoding`, which resamples at both sizes);
* CONCH v1.5 only: `test.grid_14` f32 [14, 14, 1] and `test.grid_28`, its `F.interpolate` at the
  tower's scale factor 28.1 / 14 (the upsampling every 448 px patch goes through).
"""
import sys
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.numpy import load_file
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HOPTIMUS = ((0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517))


def timm_encoders(full):
    """name -> (timm model name, TRIDENT's kwargs, reduced overrides, patch, norm, output)."""
    swiglu = dict(mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU)
    return {
        "uni_v1": (
            "vit_large_patch16_224",
            dict(patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
            dict(embed_dim=64, depth=1, num_heads=1, mlp_ratio=0.5),
            16, IMAGENET, "model",
        ),
        "uni_v2": (
            "vit_giant_patch14_224",
            dict(patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                 mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, reg_tokens=8,
                 dynamic_img_size=True, **swiglu),
            dict(embed_dim=128, depth=1, num_heads=2, mlp_ratio=0.25),
            14, IMAGENET, "model",
        ),
        "virchow2": (
            "vit_huge_patch14_224",
            dict(init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                 dynamic_img_size=True, **swiglu),
            dict(embed_dim=80, depth=1, num_heads=1, mlp_ratio=0.5),
            14, IMAGENET, "virchow",
        ),
        "gigapath": (
            "vit_giant_patch14_dinov2",
            dict(in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
                 mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True),
            dict(embed_dim=64, depth=2, num_heads=1, mlp_ratio=0.5),
            16, IMAGENET, "model",
        ),
        "hoptimus0": (
            "vit_giant_patch14_reg4_dinov2",
            dict(num_classes=0, global_pool="token", init_values=1e-5, dynamic_img_size=True),
            dict(embed_dim=64, depth=1, num_heads=1, mlp_ratio=0.5),
            14, HOPTIMUS, "model",
        ),
    }


def randomise(model, gen):
    """Every parameter redrawn (fan-in-scaled weights, O(1) LayerScale and norms), rounded to
    float16 values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "token" not in name and "pos_embed" not in name and "position" not in name:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) / fan_in ** 0.5
            elif "gamma" in name or "lambda" in name or (name.endswith("weight") and p.ndim == 1):
                v = 0.5 + torch.rand(p.shape, generator=gen)
            else:
                v = 0.5 * torch.randn(p.shape, generator=gen)
            p.copy_(v.half().float())


def patches(side, count):
    rgb = load_file(str(ROOT / "crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors"))["patches_rgb_u8"]
    out = []
    for i in range(count):
        src = rgb[i % rgb.shape[0]]
        y = 17 * i % (src.shape[1] - side)
        x = 29 * i % (src.shape[2] - side)
        out.append(src[:, y:y + side, x:x + side])
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))


def normalise(rgb, norm):
    mean = torch.tensor(norm[0]).view(1, 3, 1, 1)
    std = torch.tensor(norm[1]).view(1, 3, 1, 1)
    return (rgb.float() / 255.0 - mean) / std


def run(model, output, x):
    with torch.no_grad():
        out = model(x)
        if output == "virchow":
            # TRIDENT's Virchow2InferenceEncoder.forward: class token ⊕ mean of tokens after
            # the class and 4 register tokens.
            return torch.cat([out[:, 0], out[:, 5:].mean(1)], dim=-1)
        if output == "hf_cls":
            return out.last_hidden_state[:, 0, :]
        return out


# transformers 5 saves Dinov2's attention as q_proj/k_proj/v_proj/o_proj; the published
# owkin/phikon-v2 file has transformers 4's names, which the fixture keeps.
HF4_NAMES = {".attention.q_proj.": ".attention.attention.query.",
             ".attention.k_proj.": ".attention.attention.key.",
             ".attention.v_proj.": ".attention.attention.value.",
             ".attention.o_proj.": ".attention.output.dense."}


def published_name(k):
    for new, old in HF4_NAMES.items():
        k = k.replace(new, old)
    return k


def save(path, sd, tensors):
    """The weights in float16 (their values are float16-rounded already) and the test tensors."""
    small = {published_name(k): v.detach().contiguous().half() if v.is_floating_point() else v
             for k, v in sd.items()}
    save_file({**small, **{k: v.contiguous() for k, v in tensors.items()}}, str(path))


def phikon_v2(full):
    from transformers import Dinov2Config, Dinov2Model

    # owkin/phikon-v2 config.json: Dinov2Model, hidden 1024, 24 layers, 16 heads, patch 16,
    # image 224, layerscale 1e-5, mlp_ratio 4, GELU, LayerNorm eps 1e-6.
    base = dict(patch_size=16, layerscale_value=1e-5, hidden_act="gelu", layer_norm_eps=1e-6,
                use_swiglu_ffn=False, qkv_bias=True)
    if full:
        cfg = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           mlp_ratio=4, image_size=224, **base)
    else:
        cfg = Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                           mlp_ratio=1, image_size=48, **base)
    return Dinov2Model(cfg).eval(), cfg.image_size


# --- CONCH v1 and v1.5 -------------------------------------------------------------------
# Neither tower is a timm model and the `conch` package is not on PyPI: the trunks are timm's
# VisionTransformer (what CONCH v1 builds; CONCH v1.5's iBOT copy of it computes the same
# blocks), and the poolers and forward passes below follow the reference code statement by
# statement, with its parameter names:
# mahmoodlab/CONCH conch/open_clip_custom/{coca_model,vision_tower,transformer}.py and
# mahmoodlab/TRIDENT trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py.
OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


class CocaAttentionalPooler(torch.nn.Module):
    """CONCH v1's `transformer.AttentionalPooler`: `nn.MultiheadAttention` with kdim = vdim =
    the trunk's width, the query through `ln_q`, the tokens through `ln_k`."""

    def __init__(self, d_model, context_dim, n_head=8, n_queries=256):
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = torch.nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = torch.nn.LayerNorm(d_model)
        self.ln_k = torch.nn.LayerNorm(context_dim)

    def forward(self, x):
        x = self.ln_k(x).permute(1, 0, 2)  # NLD -> LND
        n = x.shape[1]
        q = self.ln_q(self.query)
        out = self.attn(q.unsqueeze(1).repeat(1, n, 1), x, x, need_weights=False)[0]
        return out.permute(1, 0, 2)


class ConchV1Visual(torch.nn.Module):
    """`vision_tower.VisualModel` with `attentional_pool_contrast` and `_caption`; `forward` is
    `forward_no_head(x, normalize=False)`, what `encode_image(x, proj_contrast=False,
    normalize=False)` runs."""

    def __init__(self, width, depth, heads, mlp_ratio, img_size, embed_dim, embed_dim_caption,
                 n_queries_caption):
        super().__init__()
        self.trunk = timm.models.vision_transformer.VisionTransformer(
            embed_dim=width, depth=depth, num_heads=heads, mlp_ratio=mlp_ratio,
            img_size=img_size, patch_size=16, num_classes=0, dynamic_img_size=True)
        self.attn_pool_contrast = CocaAttentionalPooler(embed_dim, width, n_head=8, n_queries=1)
        self.ln_contrast = torch.nn.LayerNorm(embed_dim)
        self.proj_contrast = torch.nn.Parameter(width ** -0.5 * torch.randn(embed_dim, embed_dim))
        self.attn_pool_caption = CocaAttentionalPooler(embed_dim_caption, width, n_head=8,
                                                       n_queries=n_queries_caption)
        self.ln_caption = torch.nn.LayerNorm(embed_dim_caption)

    def forward(self, x):
        x = self.trunk.forward_features(x)
        pooled = self.attn_pool_contrast(x)[:, 0]
        return self.ln_contrast(pooled)


def conch_v1(full, gen):
    if full:
        model = ConchV1Visual(768, 12, 12, 4, 448, 512, 768, 256)
    else:
        # The pooler's width (512 of 768 in the published model) stays different from the
        # trunk's, so nn.MultiheadAttention keeps separate q/k/v projections, as published.
        model = ConchV1Visual(64, 1, 1, 0.5, 48, 32, 8, 1)
    model.eval()
    randomise(model, gen)
    sd = {f"visual.{k}": v for k, v in model.state_dict().items()}
    # Stand-ins for the CoCa model's text side, which the image tower never reads.
    sd["text.token_embedding.weight"] = torch.randn(4, 8, generator=gen)
    sd["text_decoder.ln_final.weight"] = torch.ones(8)
    sd["logit_scale"] = torch.tensor(2.6592)
    return model, sd, (448 if full else 48), OPENAI


class EinsumAttentionalPooler(torch.nn.Module):
    """CONCH v1.5's `AttentionalPooler` (TRIDENT's conchv1_5.py), its einops spelled with
    reshapes."""

    def __init__(self, d_model, context_dim, n_head=8, n_queries=256):
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(n_queries, d_model))
        dim_head = d_model // n_head
        self.scale = dim_head ** -0.5
        self.heads = n_head
        inner_dim = dim_head * n_head
        self.ln_k = torch.nn.LayerNorm(context_dim)
        self.ln_q = torch.nn.LayerNorm(d_model)
        self.to_q = torch.nn.Linear(d_model, inner_dim, bias=False)
        self.to_kv = torch.nn.Linear(context_dim, inner_dim * 2, bias=False)
        self.to_out = torch.nn.Linear(inner_dim, d_model, bias=False)

    def forward(self, x):
        x = x[:, None]  # 'b n d -> b 1 n d'
        q = self.query[None, None].expand(x.shape[0], x.shape[1], -1, -1)
        x = self.ln_k(x)
        q = self.ln_q(q)
        q = self.to_q(q)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        split = lambda t: t.reshape(*t.shape[:3], self.heads, -1).permute(0, 3, 1, 2, 4)  # 'b t n (h d) -> b h t n d'
        q, k, v = split(q), split(k), split(v)
        q = q * self.scale
        sim = torch.einsum("...id,...jd->...ij", q, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1)
        out = torch.einsum("...ij,...jd->...id", attn, v)
        out = out.permute(0, 2, 3, 1, 4).reshape(*out.shape[:1], out.shape[2], out.shape[3], -1)  # 'b h t n d -> b t n (h d)'
        return self.to_out(out).squeeze(dim=1)


def interpolate_pos_encoding(trunk, n_tokens, w, h):
    """The iBOT `VisionTransformer.interpolate_pos_encoding` CONCH v1.5's trunk runs."""
    import math
    npatch = n_tokens - 1
    n = trunk.pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return trunk.pos_embed
    class_pos_embed = trunk.pos_embed[:, 0]
    patch_pos_embed = trunk.pos_embed[:, 1:]
    dim = trunk.pos_embed.shape[-1]
    w0 = w // trunk.patch_embed.patch_size[0]
    h0 = h // trunk.patch_embed.patch_size[0]
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = torch.nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1)


class ConchV15Tower(torch.nn.Module):
    """`CONCHVisionTower`: `vit_large(init_values=1.0)` at the default 224 px (a 14 × 14
    position grid), the pooler, `ln_contrast`."""

    def __init__(self, width, depth, heads, mlp_ratio, d_model):
        super().__init__()
        self.trunk = timm.models.vision_transformer.VisionTransformer(
            img_size=224, patch_size=16, embed_dim=width, depth=depth, num_heads=heads,
            mlp_ratio=mlp_ratio, qkv_bias=True, init_values=1.0, num_classes=0)
        self.attn_pool_contrast = EinsumAttentionalPooler(d_model, width, n_head=8, n_queries=1)
        self.ln_contrast = torch.nn.LayerNorm(d_model)

    def forward_features(self, x):
        """The iBOT trunk's `forward_features`: PatchEmbed (conv, flatten, transpose), class
        token, position embeddings resampled by `interpolate_pos_encoding`, blocks, norm."""
        b, nc, w, h = x.shape
        t = self.trunk
        x = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat((t.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + interpolate_pos_encoding(t, x.shape[1], w, h)
        x = t.blocks(x)
        return t.norm(x)

    def forward(self, x):
        x = self.forward_features(x)
        x = self.attn_pool_contrast(x)[:, 0]
        return self.ln_contrast(x)


def conch_v15(full, gen):
    from timm.layers import resample_abs_pos_embed

    if full:
        model, file_grid = ConchV15Tower(1024, 24, 16, 4, 768), 14
    else:
        # The file's position grid (6) differs from the trunk's (14): the loader's bilinear
        # resize runs, then every forward's bicubic resampling.
        model, file_grid = ConchV15Tower(64, 1, 1, 0.5, 32), 6
    model.eval()
    randomise(model, gen)
    sd = dict(model.state_dict())
    d = sd["trunk.pos_embed"].shape[-1]
    sd["trunk.pos_embed"] = (0.5 * torch.randn(1, 1 + file_grid ** 2, d, generator=gen)).half().float()
    # create_model_from_pretrained's loading: resize_pos_embed, then a strict load.
    loaded = dict(sd)
    if file_grid != 14:
        loaded["trunk.pos_embed"] = resample_abs_pos_embed(
            sd["trunk.pos_embed"], new_size=(14, 14), num_prefix_tokens=1,
            interpolation="bilinear", antialias=False)
    model.load_state_dict(loaded, strict=True)
    return model, sd, (448 if full else 48), IMAGENET


def upscaled_patches(side, count):
    """Real patches (256 px) resized to `side` (bilinear), for the full-size 448 px towers."""
    rgb = load_file(str(ROOT / "crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors"))["patches_rgb_u8"]
    rgb = torch.from_numpy(rgb[np.arange(count) % rgb.shape[0]]).float()
    out = torch.nn.functional.interpolate(rgb, size=(side, side), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def build(name, full, gen):
    """Encoder `name` with random weights: (module, state dict by the published file's names,
    native input side, (mean, std), output kind for `run`)."""
    if name == "conch_v1":
        model, sd, native, norm = conch_v1(full, gen)
        return model, sd, native, norm, "model"
    if name == "conch_v15":
        model, sd, native, norm = conch_v15(full, gen)
        return model, sd, native, norm, "model"
    if name == "phikon_v2":
        torch.manual_seed(14)
        model, native = phikon_v2(full)
        randomise(model, gen)
        sd = {published_name(k): v for k, v in model.state_dict().items()}
        return model, sd, native, IMAGENET, "hf_cls"
    arch, kwargs, reduced, patch, norm, output = timm_encoders(full)[name]
    native = 224 if full else 3 * patch
    kw = dict(kwargs, img_size=native)
    if not full:
        kw.update(reduced)
    model = timm.create_model(arch, pretrained=False, **kw).eval()
    randomise(model, gen)
    return model, dict(model.state_dict()), native, norm, output


NAMES = ["uni_v1", "uni_v2", "virchow2", "gigapath", "hoptimus0", "conch_v1", "conch_v15", "phikon_v2"]


def test_inputs(name, full, native):
    """(inputs at the native size, an input at another size or None)."""
    if full:
        if native == 448:
            return upscaled_patches(448, 4), upscaled_patches(448 + 64, 1)
        patch = 16 if name in ("uni_v1", "gigapath", "phikon_v2") else 14
        return patches(native, 4), (None if name == "phikon_v2" else patches(5 * patch, 1))
    patch = 16 if name in ("uni_v1", "gigapath", "phikon_v2", "conch_v1", "conch_v15") else 14
    return patches(native, 2), (None if name == "phikon_v2" else patches(4 * patch, 1))


def main():
    out_dir = Path(sys.argv[1])
    weights_only = "--weights-only" in sys.argv
    full = "--full" in sys.argv or weights_only
    only = [a for a in sys.argv[2:] if not a.startswith("--")]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name in NAMES:
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(14)
        model, sd, native, norm, output = build(name, full, gen)
        tensors = {}
        if weights_only:
            path = out_dir / f"{name}.safetensors"
        else:
            rgb, other = test_inputs(name, full, native)
            tensors["test.rgb_native"] = rgb
            tensors["test.out_native"] = run(model, output, normalise(rgb, norm)).float()
            if other is not None:
                tensors["test.rgb_other"] = other
                tensors["test.out_other"] = run(model, output, normalise(other, norm)).float()
            if name == "conch_v15" and not full:
                # F.interpolate at CONCH v1.5's scale factor on a small grid, upsampling as at
                # 448 px (the tower above only shrinks its 14 × 14 grid).
                grid = torch.randn(1, 1, 14, 14, generator=gen)
                tensors["test.grid_14"] = grid[0].permute(1, 2, 0).contiguous()
                up = torch.nn.functional.interpolate(grid, scale_factor=(28.1 / 14, 28.1 / 14), mode="bicubic")
                tensors["test.grid_28"] = up[0].permute(1, 2, 0).contiguous()
            path = out_dir / f"vit_{name}{'_full' if full else ''}.safetensors"
        save(path, sd, tensors)
        print(f"{path}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
