"""Small TIFF files for the generic-TIFF tests of gimp-slide and the slide fuzzer's seeds
(crates/gimp-slide/tests/fixtures/). Run once by hand: python tools/make_tiff_fixtures.py OUT_DIR
Needs numpy, tifffile and imagecodecs. The pixels are a known pattern the test recomputes."""
import sys

import numpy as np
import tifffile

out = sys.argv[1]


def pattern(w, h):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([(x * 3) % 256, (y * 5) % 256, ((x + y) * 7) % 256], -1).astype(np.uint8)


level0 = pattern(300, 200)
level1 = level0[::2, ::2].copy()
# A two-level pyramid, LZW tiles with the horizontal predictor, 0.5 µm pixels (20,000 px/cm).
with tifffile.TiffWriter(f"{out}/pyramid_lzw.tif") as t:
    t.write(level0, tile=(64, 64), compression="lzw", predictor=True, photometric="rgb",
            resolution=(20000, 20000), resolutionunit="CENTIMETER")
    t.write(level1, tile=(64, 64), compression="lzw", predictor=True, photometric="rgb",
            subfiletype=1)
# Deflate tiles, grey.
tifffile.imwrite(f"{out}/grey_deflate.tif", level0[:, :, 1], tile=(32, 32), compression="zlib",
                 photometric="minisblack")
# A stripped (untiled) RGB image, no compression, no resolution.
tifffile.imwrite(f"{out}/stripped.tif", level0, photometric="rgb", rowsperstrip=16)
print("wrote", out)
