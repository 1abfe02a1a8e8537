"""An OME-TIFF pyramid (levels as SubIFDs, QuPath's and bfconvert's layout) cut from the
repository's real slide, and tifffile's pixels of every level, for gimp-slide's OME-TIFF test
(crates/gimp-slide/tests/fixtures/ome_pyramid.ome.tif and ome_pyramid.json).

Run once by hand: python tools/make_ome_tiff_fixture.py crates/gimp-slide/tests/fixtures
Needs numpy, tifffile and imagecodecs (PyPI; imagecodecs decodes the slide's JPEG tiles).

Level 0 is a 250 x 190 region of data/slides/cmu_small_region.svs at (900, 1400) as tifffile
decodes it; levels 1 and 2 take every second pixel (sizes round up: 125 x 95, 63 x 48; tiles at the right and bottom edges are partial). Tiles
of 64 px, deflate with the horizontal predictor (lossless: the reference is exact), 0.499 um
pixels and a 20x objective in the OME-XML. A second main page (a small label image) follows,
as converters write associated images, and must not be taken for a level.
"""
import hashlib
import json
import os
import sys

import numpy as np
import tifffile

out = sys.argv[1]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
slide = os.path.join(root, "data", "slides", "cmu_small_region.svs")

with tifffile.TiffFile(slide) as t:
    full = t.pages[0].asarray()
x0, y0, w, h = 900, 1400, 250, 190
level0 = np.ascontiguousarray(full[y0:y0 + h, x0:x0 + w, :3])
levels = [level0, level0[::2, ::2].copy(), level0[::4, ::4].copy()]
label = np.full((40, 90, 3), 200, np.uint8)

path = os.path.join(out, "ome_pyramid.ome.tif")
opts = dict(tile=(64, 64), compression="zlib", predictor=True, photometric="rgb")
with tifffile.TiffWriter(path, ome=True) as tif:
    tif.write(levels[0], subifds=len(levels) - 1,
              metadata={"axes": "YXS", "Name": "cmu_small_region crop",
                        "PhysicalSizeX": 0.499, "PhysicalSizeXUnit": "µm",
                        "PhysicalSizeY": 0.499, "PhysicalSizeYUnit": "µm"},
              **opts)
    for lv in levels[1:]:
        tif.write(lv, subfiletype=1, **opts)
    tif.write(label, photometric="rgb", metadata={"axes": "YXS", "Name": "label"})

# The reference: what tifffile reads back from the file just written, level by level.
ref = {"mpp": 0.499, "levels": []}
with tifffile.TiffFile(path) as t:
    assert t.is_ome and len(t.series[0].levels) == len(levels)
    for lv in t.series[0].levels:
        a = lv.asarray()
        ref["levels"].append({
            "width": int(a.shape[1]), "height": int(a.shape[0]),
            "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest(),
            # A few pixels to show where a mismatch is.
            "samples": [[int(x), int(y), [int(v) for v in a[y, x]]]
                        for x, y in [(0, 0), (a.shape[1] - 1, a.shape[0] - 1),
                                     (a.shape[1] // 2, a.shape[0] // 3)]],
        })
with open(os.path.join(out, "ome_pyramid.json"), "w") as f:
    json.dump(ref, f, indent=1)
print("wrote", path, os.path.getsize(path), "bytes")
