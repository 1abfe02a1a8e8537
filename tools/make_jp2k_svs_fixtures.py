"""Aperio JPEG 2000 SVS fixtures for gimp-slide (crates/gimp-slide/tests/fixtures/jp2k/), made
from the repository's real slide region, with the pixels OpenSlide reads from them.

    python tools/make_jp2k_svs_fixtures.py [OUT_DIR]
    python tools/make_jp2k_svs_fixtures.py --full OUT_DIR   # the whole slide, for bench/


Needs numpy, pillow, tifffile, imagecodecs (its OpenJPEG encoder) and openslide-python with a
libopenslide >= 3.4 (Debian `libopenslide0`, or the `openslide-bin` wheel).

A 352 x 232 crop of data/slides/cmu_small_region.svs (as OpenSlide reads it) and its 2x
reduction become a two-level SVS, 128-pixel tiles, once per Aperio JPEG 2000 flavour:
- compression 33003: the tile's YCbCr (JPEG's full-range conversion) coded as three components
  without the codestream's colour transform; OpenSlide converts YCbCr to RGB itself. (Aperio's
  scanners halve the chroma horizontally; OpenJPEG's Python encoders cannot, so the chroma is
  full size here and the reader's general subsampled path is the one tested.)
- compression 33005: RGB with the codestream's irreversible colour transform (MCT).
Both lossy (9/7 wavelet, ~30 dB), so the decoder's floating-point path is the one compared.
Edge tiles are padded to the full tile, as Aperio's are. Each level as OpenSlide reads it is
saved as `{name}.level{k}.png`; the Rust test requires every pixel to be equal.
With `--full`, the whole 2220 x 2967 region becomes one level of 240-pixel tiles (Aperio's tile
size), for the speed comparison of bench/slide_formats.sh; no PNG is written.
"""
import os
import sys

import imagecodecs
import numpy as np
import openslide
import tifffile
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = "--full" in sys.argv[1:]
_args = [a for a in sys.argv[1:] if a != "--full"]
OUT = _args[0] if _args else os.path.join(ROOT, "crates/gimp-slide/tests/fixtures/jp2k")
TILE = 240 if FULL else 128
MPP = 0.499


def crop():
    s = openslide.OpenSlide(os.path.join(ROOT, "data/slides/cmu_small_region.svs"))
    if FULL:
        return [np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))]
    rgb = np.asarray(s.read_region((900, 1300), 0, (352, 232)).convert("RGB"))
    half = np.asarray(Image.fromarray(rgb).reduce(2))
    return [rgb, half]


def ycbcr(rgb):
    """JPEG's (JFIF) full-range RGB -> YCbCr, rounded."""
    r, g, b = [rgb[..., i].astype(np.float64) for i in range(3)]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.clip(np.round(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)


def tiles(level, compression):
    h, w, _ = level.shape
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            t = np.zeros((TILE, TILE, 3), np.uint8)
            part = level[ty:ty + TILE, tx:tx + TILE]
            t[:part.shape[0], :part.shape[1]] = part
            if compression == 33003:
                yield imagecodecs.jpeg2k_encode(ycbcr(t), 30, codecformat="J2K", mct=False,
                                                reversible=False)
            else:
                yield imagecodecs.jpeg2k_encode(t, 30, codecformat="J2K", mct=True,
                                                reversible=False)


def write(path, levels, compression):
    h0, w0, _ = levels[0].shape
    kind = "YUV" if compression == 33003 else "RGB"
    with tifffile.TiffWriter(path) as t:
        for k, level in enumerate(levels):
            h, w, _ = level.shape
            desc = (f"Aperio Image Library v12.0.15 \r\n{w0}x{h0} [0,0 {w0}x{h0}] ({TILE}x{TILE}) "
                    f"J2K/{kind}16 Q=30")
            if k == 0:
                desc += f"|AppMag = 20|MPP = {MPP}|Filename = jp2k_{compression}"
            else:
                desc += f" -> {w}x{h} D=2"
            t.write(tiles(level, compression), shape=level.shape, dtype=np.uint8,
                    tile=(TILE, TILE), compression=compression, photometric="rgb",
                    description=desc, subfiletype=0 if k == 0 else 1, metadata=None)


def main():
    os.makedirs(OUT, exist_ok=True)
    levels = crop()
    for compression in (33003, 33005):
        name = f"aperio_{compression}"
        path = os.path.join(OUT, f"{name}.svs")
        write(path, levels, compression)
        s = openslide.OpenSlide(path)
        assert s.properties["openslide.vendor"] == "aperio", s.properties["openslide.vendor"]
        if FULL:
            print("wrote", path)
            continue
        assert s.level_count == 2
        for k in range(s.level_count):
            w, h = s.level_dimensions[k]
            px = s.read_region((0, 0), k, (w, h)).convert("RGB")
            px.save(os.path.join(OUT, f"{name}.level{k}.png"), optimize=True)
            d = np.abs(np.asarray(px).astype(int) - levels[k].astype(int))
            print(f"{name} level {k} {w}x{h}: OpenSlide vs source max |d| {d.max()}, "
                  f"mean {d.mean():.2f} (lossy coding)")
    print("OpenSlide", openslide.__library_version__, "imagecodecs", imagecodecs.__version__,
          imagecodecs.jpeg2k_version())


if __name__ == "__main__":
    main()
