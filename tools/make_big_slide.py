"""A real-size pyramidal slide for the big-slide benchmark (bench/big_slide.sh), never committed:

    python tools/make_big_slide.py OUT.svs [--width 100000] [--height 80000] [--seed 1]

The same script, small, wrote the committed test fixture
crates/gimp-slide/tests/fixtures/ycbcr_jpeg_40x.svs (`--width 1280 --height 1024`).

Needs numpy, tifffile, imagecodecs and Pillow (PyPI). Writes a BigTIFF in Aperio's layout: level 0 at
40× (`AppMag = 40|MPP = 0.25` in an Aperio ImageDescription), a stripped thumbnail page after it
as Aperio does, then levels at downsample 4, 16 and 64 (sizes rounded down, as Aperio does); every
level in 256 × 256 JPEG tiles (quality 80; each tile a complete JFIF stream in YCbCr 4:2:0, which
tifffile writes for RGB pixels: TIFF photometric YCbCr).

What is on it: a few tissue pieces (ellipses of seeded sizes and places, about 40 % of the slide)
filled with the repository's real tissue (level 0 of data/slides/cmu_small_region.svs, cropped to
a multiple of 64 pixels and mirrored at its edges so the texture is continuous), on glass
(near-white with faint seeded noise). Each pyramid level is made from the same texture shrunk by
the level's downsample (area average) and the same ellipses, so the levels agree with each other.

It streams: tiles are made one at a time from the texture and handed to tifffile as an iterator,
so memory stays a few hundred MB whatever the size (the 100,000 × 80,000 default is 24 GB of RGB).
"""
import argparse
import os
import sys

import numpy as np
import tifffile
from PIL import Image

TILE = 256
DOWNSAMPLES = [1, 4, 16, 64]
QUALITY = 80
GLASS = np.array([242, 240, 244], dtype=np.int16)

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("out")
ap.add_argument("--width", type=int, default=100_000)
ap.add_argument("--height", type=int, default=80_000)
ap.add_argument("--seed", type=int, default=1)
ap.add_argument("--texture", default=os.path.join(here, "..", "data", "slides", "cmu_small_region.svs"))
args = ap.parse_args()
W, H = args.width, args.height
if W < 1024 or H < 1024:
    sys.exit(f"--width/--height must be at least 1024 (got {W} x {H})")
rng = np.random.default_rng(args.seed)

with tifffile.TiffFile(args.texture) as t:
    real = t.pages[0].asarray()[..., :3]
th, tw = (real.shape[0] // 64) * 64, (real.shape[1] // 64) * 64
real = real[:th, :tw]

# Tissue pieces: ellipses (centre, radii, rotation) within the slide, in level-0 pixels.
n_pieces = 5
pieces = []
for _ in range(n_pieces):
    rx = rng.uniform(0.12, 0.22) * W
    ry = rng.uniform(0.15, 0.28) * H
    cx = rng.uniform(rx * 0.8, W - rx * 0.8)
    cy = rng.uniform(ry * 0.8, H - ry * 0.8)
    pieces.append((cx, cy, rx, ry, rng.uniform(0, np.pi)))

noise = rng.integers(-3, 4, size=(TILE, TILE, 1), dtype=np.int16)


def mirrored(idx, n):
    """Index into a texture of length n, mirrored at its edges (period 2n)."""
    m = idx % (2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def level_texture(d):
    if d == 1:
        return real
    img = Image.fromarray(real).resize((tw // d, th // d), Image.BOX)
    return np.asarray(img)


def tissue_mask(x0, y0, d, w, h):
    """Whether the level-0 centre of each pixel of a w × h tile at (x0, y0) of level d is tissue."""
    xs = (x0 + np.arange(w) + 0.5) * d
    ys = (y0 + np.arange(h) + 0.5) * d
    X, Y = np.meshgrid(xs, ys)
    inside = np.zeros((h, w), dtype=bool)
    for cx, cy, rx, ry, a in pieces:
        u = (X - cx) * np.cos(a) + (Y - cy) * np.sin(a)
        v = -(X - cx) * np.sin(a) + (Y - cy) * np.cos(a)
        inside |= (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    return inside


def bounding_boxes(d):
    """Level-d boxes of each piece (to skip the mask where a tile surely misses every piece)."""
    return [
        ((cx - max(rx, ry)) / d, (cy - max(rx, ry)) / d, (cx + max(rx, ry)) / d, (cy + max(rx, ry)) / d)
        for cx, cy, rx, ry, _ in pieces
    ]


def tiles(d, lw, lh):
    tex = level_texture(d)
    tth, ttw = tex.shape[:2]
    boxes = bounding_boxes(d)
    glass = np.clip(GLASS + noise, 0, 255).astype(np.uint8)
    for ty in range(0, lh, TILE):
        rows = mirrored(np.arange(ty, ty + TILE), tth)
        for tx in range(0, lw, TILE):
            near = any(bx0 < tx + TILE and bx1 > tx and by0 < ty + TILE and by1 > ty for bx0, by0, bx1, by1 in boxes)
            if not near:
                yield glass
                continue
            mask = tissue_mask(tx, ty, d, TILE, TILE)
            if not mask.any():
                yield glass
                continue
            cols = mirrored(np.arange(tx, tx + TILE), ttw)
            t = tex[np.ix_(rows, cols)]
            yield np.where(mask[..., None], t, glass)


def description(lw, lh, d):
    head = f"Aperio Image Library v12.0.15 \r\n{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE}) JPEG/RGB Q={QUALITY}"
    if d != 1:
        head = f"Aperio Image Library v12.0.15 \r\n{W}x{H} [0,0 {W}x{H}] ({TILE}x{TILE}) -> {lw}x{lh} JPEG/RGB Q={QUALITY}"
    return head + "|AppMag = 40|MPP = 0.25|ScanScope ID = GIMP-RS-SYNTHETIC|Filename = make_big_slide"


tmp = args.out + ".part"
opts = dict(compression="jpeg", compressionargs={"level": QUALITY}, photometric="rgb", metadata=None)
with tifffile.TiffWriter(tmp, bigtiff=True) as tw_:
    for k, d in enumerate(DOWNSAMPLES):
        lw, lh = W // d, H // d
        print(f"level {k}: downsample {d}, {lw} x {lh}", file=sys.stderr, flush=True)
        tw_.write(
            tiles(d, lw, lh),
            shape=(lh, lw, 3),
            dtype=np.uint8,
            tile=(TILE, TILE),
            description=description(lw, lh, d),
            subfiletype=0 if d == 1 else 1,
            maxworkers=2,
            **opts,
        )
        if d == 1:
            # Aperio's thumbnail: a stripped page right after level 0, made from the texture
            # at downsample 64 (whole, a few MB).
            tdw, tdh = W // 64, H // 64
            rows = []
            gen = tiles(64, tdw, tdh)
            across = -(-tdw // TILE)
            for _ in range(-(-tdh // TILE)):
                rows.append(np.concatenate([next(gen) for _ in range(across)], axis=1))
            thumb = np.concatenate(rows, axis=0)[:tdh, :tdw]
            tw_.write(
                thumb,
                description=f"Aperio Image Library v12.0.15 \r\n{W}x{H} -> {tdw}x{tdh} - |AppMag = 40|MPP = 0.25",
                subfiletype=1,
                rowsperstrip=16,
                **opts,
            )
os.replace(tmp, args.out)
print(f"wrote {args.out} ({os.path.getsize(args.out) / 2**30:.2f} GiB)", file=sys.stderr)
