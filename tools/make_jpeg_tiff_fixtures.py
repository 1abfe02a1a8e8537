"""JPEG-tiled TIFFs and OpenSlide's pixels of them, for gimp-slide's JPEG tests
(crates/gimp-slide/tests/fixtures/jpeg_*.tif and jpeg_*.png).

    python tools/make_jpeg_tiff_fixtures.py crates/gimp-slide/tests/fixtures

Needs numpy, Pillow, tifffile and openslide-python (with openslide-bin or the system
libopenslide). The content is a 150 x 100 region of the repository's Aperio slide; each file cuts
it into 48 x 48 JPEG tiles (edge tiles padded by repeating the last row and column, as scanners
do) that Pillow's libjpeg-turbo encodes, with the quantisation and Huffman tables moved out of
every tile into one shared `JPEGTables` tag, the way Aperio and libtiff write JPEG TIFFs:

* `jpeg_ycbcr420.tif`: photometric YCbCr, chroma subsampled 2 x 2 (4:2:0, "fancy" upsampling);
* `jpeg_ycbcr420_restart.tif`: the same with a restart marker every 2 MCUs;
* `jpeg_ycbcr422.tif`: 2 x 1 (4:2:2);
* `jpeg_ycbcr444.tif`: no subsampling, a restart marker every 5 MCUs;
* `jpeg_rgb.tif`: photometric RGB, the components stored as R, G, B (Aperio's "RGB" JPEG).

Next to each, `NAME.png` holds what OpenSlide reads at level 0 (RGBA converted to RGB, as
TRIDENT's reader does). The script checks that PIL decoding each tile (tables + tile as one
stream) gives the same pixels, so the reference is libjpeg-turbo's, whichever reader runs it.
"""
import io
import sys
from pathlib import Path

import numpy as np
import openslide
import tifffile
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SLIDE = ROOT / "data/slides/cmu_small_region.svs"
TILE = 48
# name: (photometric, Pillow's subsampling code, restart interval in MCUs)
VARIANTS = {
    "jpeg_ycbcr420": ("ycbcr", 2, 0),
    "jpeg_ycbcr420_restart": ("ycbcr", 2, 2),
    "jpeg_ycbcr422": ("ycbcr", 1, 0),
    "jpeg_ycbcr444": ("ycbcr", 0, 5),
    "jpeg_rgb": ("rgb", 0, 0),
}
SUBSAMPLING = {0: (1, 1), 1: (2, 1), 2: (2, 2)}


def segments(stream):
    """Splits a JPEG stream into (marker, bytes) up to SOS, then ("scan", rest)."""
    assert stream[:2] == b"\xff\xd8"
    pos, out = 2, []
    while True:
        marker = stream[pos + 1]
        length = int.from_bytes(stream[pos + 2:pos + 4], "big")
        if marker == 0xDA:
            out.append(("scan", stream[pos:]))
            return out
        out.append((marker, stream[pos:pos + 2 + length]))
        pos += 2 + length


def encode_tile(rgb, photometric, subsampling, restart):
    """(tables, abbreviated tile stream) from Pillow's libjpeg-turbo."""
    buf = io.BytesIO()
    kw = dict(quality=80, subsampling=subsampling)
    if restart:
        kw["restart_marker_blocks"] = restart
    if photometric == "rgb":
        kw["keep_rgb"] = True
    Image.fromarray(rgb).save(buf, "JPEG", **kw)
    tables, rest = b"", b""
    for marker, seg in segments(buf.getvalue()):
        if marker in (0xDB, 0xC4):  # DQT, DHT
            tables += seg
        elif marker != 0xE0:  # JFIF APP0 is not kept in TIFF tiles
            rest += seg
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + rest


def main():
    out = Path(sys.argv[1])
    slide = openslide.OpenSlide(str(SLIDE))
    region = np.asarray(slide.read_region((1100, 1500), 0, (150, 100)).convert("RGB"))
    h, w = region.shape[:2]
    padded = np.pad(region, ((0, -h % TILE), (0, -w % TILE), (0, 0)), mode="edge")
    for name, (photometric, subsampling, restart) in VARIANTS.items():
        tiles, tables = [], None
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                t, data = encode_tile(np.ascontiguousarray(padded[ty:ty + TILE, tx:tx + TILE]),
                                      photometric, subsampling, restart)
                assert tables in (None, t), "tiles must share their tables"
                tables = t
                tiles.append(data)
        extratags = [(347, 7, len(tables), tables, True)]  # JPEGTables, UNDEFINED
        kw = {}
        if photometric == "ycbcr":
            kw["subsampling"] = SUBSAMPLING[subsampling]
        path = out / f"{name}.tif"
        with tifffile.TiffWriter(path) as tw:
            tw.write(iter(tiles), shape=(h, w, 3), dtype=np.uint8, tile=(TILE, TILE),
                     compression=7, photometric=photometric, extratags=extratags, **kw)
        if photometric == "rgb":
            # tifffile records JPEG tiles as YCbCr whatever it is told; Aperio's RGB JPEG says
            # RGB (2) and keeps a YCbCrSubSampling tag of (2, 2), as written here.
            with tifffile.TiffFile(path, mode="r+b") as tf:
                tf.pages[0].tags["PhotometricInterpretation"].overwrite(2)
        ref = np.asarray(openslide.OpenSlide(str(path)).read_region((0, 0), 0, (w, h))
                         .convert("RGB"))
        # PIL (libjpeg-turbo) on tables + tile gives the same pixels as OpenSlide.
        i = 0
        for ty in range(0, h, TILE):
            for tx in range(0, w, TILE):
                joined = tables[:-2] + tiles[i][2:]
                im = Image.open(io.BytesIO(joined))
                if photometric == "rgb":
                    im.draft(None, None)
                px = np.asarray(im.convert("RGB"))
                sub = ref[ty:ty + TILE, tx:tx + TILE]
                assert (px[:sub.shape[0], :sub.shape[1]] == sub).all(), (name, ty, tx)
                i += 1
        Image.fromarray(ref).save(out / f"{name}.png")
        diff = np.abs(ref.astype(int) - region.astype(int))
        print(f"{name}: {len(tiles)} tiles, {path.stat().st_size} bytes; JPEG error vs the "
              f"source max {diff.max()}, mean {diff.mean():.2f}")


if __name__ == "__main__":
    main()
