"""gimp-rs's features against TRIDENT's path, on the repository's slide, for every encoder.

    python tools/trident_parity.py OUT_DIR [--gimp-rs target/release/gimp-rs] [--full] [NAME...]
    python tools/trident_parity.py --fixture crates/gimp-extract/tests/fixtures/trident_path.safetensors

Needs torch, torchvision, timm, transformers (Phikon-v2), safetensors, h5py, numpy, Pillow and
openslide-python (+ openslide-bin or the system libopenslide), and a built `gimp-rs`.

The reference is TRIDENT's feature extraction (`WSI.extract_patch_features`) step by step, in
float32: OpenSlide's `read_region` at the patch file's level, `.convert("RGB")`, the patcher's
`tile.resize((patch_size, patch_size))` (PIL's default filter), the encoder's torchvision
transform exactly as `trident/patch_encoder_models/load.py` writes it (PIL image in), and the
network. The networks are those of `tools/make_vit_fixtures.py` — each built by timm (or
`transformers`, or the CONCH towers there) with TRIDENT's arguments and every parameter redrawn
at random (LayerScale, norms, SwiGLU gates included) — at the reduced width of the repository's
fixtures by default (64-128 wide, 1-2 blocks: the whole slide runs in minutes on 2 cores), or at
the published size with `--full`. ResNet50-trunc is CLAM's path (no resize, as read) with the
narrow torchvision ResNet of `tools/make_resnet_fixture.py`'s kind.

gimp-rs runs as a user would: `gimp-rs patch` makes the patch file, `gimp-rs extract --encoder
NAME --weights FILE` the features, from the same weights file. For each encoder the script
prints the largest row-relative difference, max over patches of
max|gimp-rs - reference| / max|reference|, and writes OUT_DIR/trident_parity.json.

`--fixture PATH` writes the small file `crates/gimp-extract/tests/trident_path.rs` reads instead:
`coords` i64 [3, 2] (three 256 px patches at level 0), and in the metadata, for every encoder,
`input.NAME` = the SHA-256 of each patch's bytes after TRIDENT's transform's resize and crop (u8,
channel-first: what gimp-rs feeds the network), and `input.uni_v1.from512` the same for 512 px
reads brought to 256 by the patcher's resize first (a 40x slide at 20x); tensors
`features.NAME` f32 [3, D]: TRIDENT's path through the network whose weights are the encoder's
existing fixture (`tests/fixtures/vit_NAME.safetensors`).
"""
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import openslide
import torch
import torchvision.transforms as T
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_vit_fixtures as vit  # noqa: E402

SLIDES = ROOT / "data/slides"
SLIDE = SLIDES / "cmu_small_region.svs"
BICUBIC = T.InterpolationMode.BICUBIC
BILINEAR = T.InterpolationMode.BILINEAR


def trident_transform(name, norm):
    """The eval transform TRIDENT's load.py (and CONCH's create_model_from_pretrained) builds."""
    mean, std = norm
    tail = [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose({
        # UniInferenceEncoder, UNIv2InferenceEncoder, Phikonv2InferenceEncoder: default bilinear
        "uni_v1": [T.Resize(224), T.CenterCrop(224)],
        "uni_v2": [T.Resize(224), T.CenterCrop(224)],
        "phikon_v2": [T.Resize(224), T.CenterCrop(224)],
        "virchow2": [T.Resize(224, interpolation=BICUBIC)],
        "gigapath": [T.Resize(256, interpolation=BICUBIC), T.CenterCrop(224)],
        "hoptimus0": [T.Resize(224)],
        # conch/open_clip_custom/transform.py: Resize(448, bicubic), CenterCrop(448)
        "conch_v1": [T.Resize(448, interpolation=BICUBIC), T.CenterCrop(448)],
        # TRIDENT's conchv1_5.py create_model_from_pretrained
        "conch_v15": [T.Resize(448, interpolation=BILINEAR), T.CenterCrop(448)],
        # CLAM's resnet50_trunc: as read
        "resnet50_trunc": [],
    }[name] + tail)


def phikon_v2_at_224(full, gen):
    """Phikon-v2 as make_vit_fixtures builds it, but with its 14 x 14 position grid (224 px, what
    the transform feeds) at reduced width too: transformers and gimp-rs run it at 224 only."""
    from transformers import Dinov2Config, Dinov2Model

    base = dict(patch_size=16, layerscale_value=1e-5, hidden_act="gelu", layer_norm_eps=1e-6,
                use_swiglu_ffn=False, qkv_bias=True, image_size=224)
    if full:
        cfg = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           mlp_ratio=4, **base)
    else:
        cfg = Dinov2Config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1,
                           mlp_ratio=1, **base)
    torch.manual_seed(14)
    model = Dinov2Model(cfg).eval()
    vit.randomise(model, gen)
    sd = {vit.published_name(k): v for k, v in model.state_dict().items()}
    return model, sd, vit.IMAGENET, "hf_cls"


def narrow_resnet(gen):
    """torchvision's ResNet-50 to layer3 at base width 8 (make_resnet_fixture.py's network),
    BatchNorm statistics randomised; returns (module giving the 128-d pooled features, state
    dict by torchvision's names)."""
    from torchvision.models.resnet import Bottleneck, ResNet

    make_layer = ResNet._make_layer

    def narrow(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64:
            self.inplanes = 8
        return make_layer(self, block, planes // 8, blocks, stride, dilate)

    ResNet._make_layer = narrow
    torch.manual_seed(5)
    net = ResNet(Bottleneck, [3, 4, 6, 3])
    ResNet._make_layer = make_layer
    net.conv1 = torch.nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False)
    net.bn1 = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=gen))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
    net.eval()
    trunk = torch.nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1,
                                net.layer2, net.layer3, torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten())
    sd = {k: v for k, v in net.state_dict().items()
          if not k.startswith(("layer4", "fc")) and not k.endswith("num_batches_tracked")}
    return trunk, sd


def build(name, full, gen):
    """(module, state dict by the published names, (mean, std), output kind for vit.run)."""
    if name == "resnet50_trunc":
        model, sd = narrow_resnet(gen)
        return model, sd, vit.IMAGENET, "model"
    if name == "phikon_v2":
        return phikon_v2_at_224(full, gen)
    model, sd, _native, norm, output = vit.build(name, full, gen)
    return model, sd, norm, output


def reference_pixels(coords, attrs):
    """TRIDENT's patcher with pil=True: read_region at level 0 (this slide has one level) of
    patch_size_level0 pixels, convert("RGB"), resize to patch_size (PIL's default filter)."""
    slide = openslide.OpenSlide(str(SLIDE))
    size0 = int(attrs["patch_size_level0"])
    target = int(attrs["patch_size"])
    out = []
    for x, y in coords:
        tile = slide.read_region((int(x), int(y)), 0, (size0, size0)).convert("RGB")
        out.append(tile.resize((target, target)))
    return out


FIXTURE_COORDS = [(1024, 256), (1024, 512), (1280, 512)]


def trident_bytes(transform, tile):
    """The u8 image TRIDENT's transform hands to ToTensor, channel-first."""
    steps = [t for t in transform.transforms if isinstance(t, (T.Resize, T.CenterCrop))]
    for t in steps:
        tile = t(tile)
    return np.ascontiguousarray(np.asarray(tile).transpose(2, 0, 1))


def fixture(path):
    import hashlib
    from safetensors.torch import load_file

    slide = openslide.OpenSlide(str(SLIDE))
    tiles = [slide.read_region(c, 0, (256, 256)).convert("RGB") for c in FIXTURE_COORDS]
    big = [slide.read_region(c, 0, (512, 512)).convert("RGB").resize((256, 256))
           for c in FIXTURE_COORDS]
    digest = lambda a: hashlib.sha256(a.tobytes()).hexdigest()
    meta, tensors = {}, {"coords": torch.tensor(FIXTURE_COORDS, dtype=torch.int64)}
    for name in vit.NAMES + ["resnet50_trunc"]:
        norm = vit.OPENAI if name == "conch_v1" else (
            vit.HOPTIMUS if name == "hoptimus0" else vit.IMAGENET)
        transform = trident_transform(name, norm)
        meta[f"input.{name}"] = ",".join(digest(trident_bytes(transform, t)) for t in tiles)
        if name == "uni_v1":
            meta["input.uni_v1.from512"] = ",".join(
                digest(trident_bytes(transform, t)) for t in big)
        if name in ("resnet50_trunc", "phikon_v2"):
            # ResNet50-trunc's network has its own fixture; gimp-rs runs Phikon-v2 at its native
            # size only, which its fixture's 48 px grid is not at 224.
            continue
        weights = ROOT / f"crates/gimp-extract/tests/fixtures/vit_{name}.safetensors"
        sd = {k: v.float() for k, v in load_file(str(weights)).items()
              if not k.startswith("test.")}
        model, _sd, _norm, output = build(name, False, torch.Generator().manual_seed(0))
        if name == "conch_v1":
            sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
        elif name == "conch_v15":
            # create_model_from_pretrained's loading: the file's grid resized to the trunk's.
            from timm.layers import resample_abs_pos_embed
            sd["trunk.pos_embed"] = resample_abs_pos_embed(
                sd["trunk.pos_embed"], new_size=(14, 14), num_prefix_tokens=1,
                interpolation="bilinear", antialias=False)
        model.load_state_dict(sd, strict=True)
        x = torch.stack([transform(t) for t in tiles])
        tensors[f"features.{name}"] = vit.run(model, output, x).reshape(len(tiles), -1)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    print("wrote", path)


def main():
    args = sys.argv[1:]
    if args[0] == "--fixture":
        return fixture(Path(args[1]))
    out = Path(args[0])
    full = "--full" in args
    gimp = ROOT / "target/release/gimp-rs"
    if "--gimp-rs" in args:
        gimp = Path(args[args.index("--gimp-rs") + 1])
    skip = {str(gimp)}
    names = [a for a in args[1:] if not a.startswith("--") and a not in skip] or (
        ["resnet50_trunc"] + vit.NAMES)
    out.mkdir(parents=True, exist_ok=True)
    prep = out / "prep"
    subprocess.run([str(gimp), "patch", str(SLIDES), "--out", str(prep), "--preset", "bwh_biopsy"],
                   check=True,
                   stdout=subprocess.DEVNULL)
    patch_file = prep / "patches" / "cmu_small_region.h5"
    with h5py.File(patch_file, "r") as f:
        coords = f["coords"][:]
        attrs = dict(f["coords"].attrs)
    tiles = reference_pixels(coords, attrs)
    print(f"{len(coords)} patches of {attrs['patch_size']} px from {SLIDE.name}")
    results = {}
    for name in names:
        gen = torch.Generator().manual_seed(27)
        model, sd, norm, output = build(name, full, gen)
        weights = out / f"{name}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(weights))
        transform = trident_transform(name, norm)
        refs = []
        for i in range(0, len(tiles), 16):
            x = torch.stack([transform(t) for t in tiles[i:i + 16]])
            refs.append(vit.run(model, output, x).reshape(x.shape[0], -1))
        ref = torch.cat(refs).numpy()
        feats = out / "features"
        layout = ["--layout", "trident"] if name == "resnet50_trunc" else []
        subprocess.run([str(gimp), "extract", str(SLIDES), "--patches", str(prep / "patches"),
                        "--encoder", name, "--weights", str(weights), "--out", str(feats)]
                       + layout, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with h5py.File(feats / f"features_{name}" / "cmu_small_region.h5", "r") as f:
            ours = f["features"][:]
            assert (f["coords"][:] == coords).all()
        scale = np.abs(ref).max(axis=1)
        rel = (np.abs(ours - ref).max(axis=1) / scale).max()
        results[name] = {"patches": int(len(coords)), "width": int(ref.shape[1]),
                         "max_row_relative_difference": float(rel)}
        print(f"{name:16s} {ref.shape[1]:5d}-d  max row-relative difference {rel:.2e}")
    (out / "trident_parity.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
