"""Reads a slide's level 0 whole in 256-pixel regions with OpenSlide (and, for a DICOM folder,
wsidicom), prints the time, and compares the pixels with gimp-rs's (the raw RGB file that
crates/gimp-slide/examples/read_speed.rs wrote with DUMP=FILE). Run by bench/slide_formats.sh.

    python bench/slide_formats_reference.py SLIDE GIMP_RGB_FILE
"""
import os
import sys
import time

import numpy as np
import openslide

path, dump = sys.argv[1], sys.argv[2]
REGION = 256


def compare(name, read, w, h, seconds_open):
    t = time.perf_counter()
    out = np.zeros((h, w, 3), np.uint8)
    for y in range(0, h, REGION):
        for x in range(0, w, REGION):
            tile = read(x, y)[: h - y, : w - x]
            out[y:y + tile.shape[0], x:x + tile.shape[1]] = tile
    s = time.perf_counter() - t
    ours = np.fromfile(dump, np.uint8).reshape(h, w, 3)
    d = np.abs(ours.astype(int) - out.astype(int))
    print(f"  {name}: open {seconds_open:.3f} s, read {s:.3f} s ({w * h / 1e6 / s:.1f} Mpx/s); "
          f"gimp-rs vs {name}: max |d| {d.max()}, mean {d.mean():.4f}, "
          f"{(d.max(-1) > 0).mean() * 100:.3f}% of pixels differ")


is_dicom = os.path.isdir(path)
t = time.perf_counter()
osr = openslide.OpenSlide(os.path.join(path, sorted(os.listdir(path))[0]) if is_dicom else path)
w, h = osr.dimensions
compare(f"OpenSlide {openslide.__library_version__}",
        lambda x, y: np.asarray(osr.read_region((x, y), 0, (REGION, REGION)).convert("RGB")),
        w, h, time.perf_counter() - t)
if is_dicom:
    import wsidicom

    t = time.perf_counter()
    wsi = wsidicom.WsiDicom.open(path)
    compare(f"wsidicom {wsidicom.__version__}",
            lambda x, y: np.asarray(wsi.read_region((x, y), 0, (min(REGION, w - x), min(REGION, h - y))).convert("RGB")),
            w, h, time.perf_counter() - t)
