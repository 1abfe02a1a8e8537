"""Reference outputs for gimp-extract's patch encoders (crates/gimp-extract/tests/fixtures/vit_*.safetensors).

    python tools/make_vit_fixtures.py OUT_DIR            # the small fixtures the tests read
    python tools/make_vit_fixtures.py OUT_DIR --full     # full-size random networks (GBs; not tracked)

Needs torch, timm, safetensors and numpy (and transformers for Phikon-v2).

Each encoder is built the way TRIDENT's `trident/patch_encoder_models/load.py` builds it (the
same timm model name and keyword arguments; Hugging Face `Dinov2Model` for Phikon-v2) but, for
the tracked fixtures, at reduced width and depth: embedding width 128 (160 for Virchow2, whose
heads are 80 wide), the published head width, 1–2 blocks, a narrow MLP, and a small position
grid (4 × 4). Every structural feature stays: LayerScale, packed SwiGLU, register tokens,
`no_embed_class`, Virchow2's class ⊕ patch-mean output. All parameters are redrawn at random
(timm's init leaves LayerScale at 1e-5 and the SwiGLU gate near zero, which would hide errors)
and rounded to float16 so the file stores them in half the bytes with no loss: the reference runs
on exactly the stored values.

Each file holds the weights by the reference's names and:
* `test.rgb_native` u8 [2, 3, S, S]: two crops of real patches of the repository's slide (from
  the ResNet fixture's `patches_rgb_u8`) at the native size S = 4 × patch;
* `test.out_native` f32 [2, out]: the reference's output on them (transform: /255, then the
  encoder's mean and std);
* `test.rgb_other` u8 [1, 3, S', S'] and `test.out_other` at S' = 5 × patch (timm models only):
  exercises the bicubic resampling of the position embeddings (`dynamic_img_size=True`).
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
            dict(embed_dim=128, depth=2, num_heads=2, mlp_ratio=1),
            16, IMAGENET, "model",
        ),
        "uni_v2": (
            "vit_giant_patch14_224",
            dict(patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                 mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, reg_tokens=8,
                 dynamic_img_size=True, **swiglu),
            dict(embed_dim=128, depth=1, num_heads=2, mlp_ratio=2),
            14, IMAGENET, "model",
        ),
        "virchow2": (
            "vit_huge_patch14_224",
            dict(init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
                 dynamic_img_size=True, **swiglu),
            dict(embed_dim=160, depth=1, num_heads=2, mlp_ratio=2),
            14, IMAGENET, "virchow",
        ),
        "gigapath": (
            "vit_giant_patch14_dinov2",
            dict(in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24,
                 mlp_ratio=5.33334, num_classes=0, dynamic_img_size=True),
            dict(embed_dim=128, depth=1, num_heads=2, mlp_ratio=2),
            16, IMAGENET, "model",
        ),
        "hoptimus0": (
            "vit_giant_patch14_reg4_dinov2",
            dict(num_classes=0, global_pool="token", init_values=1e-5, dynamic_img_size=True),
            dict(embed_dim=128, depth=1, num_heads=2, mlp_ratio=2),
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


def save(path, model, tensors):
    sd = {published_name(k): v.detach().contiguous() for k, v in model.state_dict().items()}
    small = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
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
        cfg = Dinov2Config(hidden_size=128, num_hidden_layers=1, num_attention_heads=2,
                           mlp_ratio=1, image_size=64, **base)
    return Dinov2Model(cfg).eval(), cfg.image_size


def main():
    out_dir = Path(sys.argv[1])
    full = "--full" in sys.argv
    only = [a for a in sys.argv[2:] if not a.startswith("--")]
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    for name, (arch, kwargs, reduced, patch, norm, output) in timm_encoders(full).items():
        if only and name not in only:
            continue
        gen = torch.Generator().manual_seed(14)
        native = 224 if full else 4 * patch
        kw = dict(kwargs, img_size=native)
        if not full:
            kw.update(reduced)
        model = timm.create_model(arch, pretrained=False, **kw).eval()
        randomise(model, gen)
        rgb = patches(native, 2 if not full else 4)
        tensors = {"test.rgb_native": rgb, "test.out_native": run(model, output, normalise(rgb, norm)).float()}
        other = patches(5 * patch, 1)
        tensors["test.rgb_other"] = other
        tensors["test.out_other"] = run(model, output, normalise(other, norm)).float()
        path = out_dir / f"vit_{name}{'_full' if full else ''}.safetensors"
        save(path, model, tensors)
        print(f"{path}: {sum(p.numel() for p in model.parameters())} parameters, out {tuple(tensors['test.out_native'].shape)}")
    if not only or "phikon_v2" in only:
        torch.manual_seed(14)
        gen = torch.Generator().manual_seed(14)
        model, native = phikon_v2(full)
        randomise(model, gen)
        rgb = patches(native, 2 if not full else 4)
        tensors = {"test.rgb_native": rgb,
                   "test.out_native": run(model, "hf_cls", normalise(rgb, IMAGENET)).float()}
        path = out_dir / f"vit_phikon_v2{'_full' if full else ''}.safetensors"
        save(path, model, tensors)
        print(f"{path}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main()
