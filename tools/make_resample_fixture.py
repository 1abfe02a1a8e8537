"""PIL's resizing, for gimp-slide's bit-exact port (crates/gimp-slide/tests/fixtures/pil_resize.safetensors).

    python tools/make_resample_fixture.py crates/gimp-slide/tests/fixtures

Needs numpy, Pillow, safetensors and openslide-python. Two kinds of cases:

* `random_{i}_in` u8 [h, w, 3] and `random_{i}_out` [h', w', 3]: 48 random images (seeded
  numpy; uniform noise, which makes bicubic overshoot and clip) of 1-32 px sides resized by
  `Image.resize((w', h'), filter)` to 1-48 px sides, up and down, each side independently;
  the filter and sizes are in the metadata (`random_{i}` = "bilinear" or "bicubic").
* `slide_{j}`: a real patch of the repository's slide read by OpenSlide at level 0 (256 px at
  (1024, 512), and 512 px at (1024, 512) for the 40x -> 20x case) resized as the encoders'
  transforms and TRIDENT's patcher do; the metadata holds `slide_{j}` =
  "x,y,side,out,filter,sha256 of the output bytes" (the test reads the same pixels with
  gimp-slide, which are OpenSlide's to the bit).
"""
import hashlib
import sys
from pathlib import Path

import numpy as np
import openslide
from PIL import Image
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parent.parent
FILTERS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
SLIDE_CASES = [
    # (x, y, side read, side out, filter): what each transform does to a patch
    (1024, 512, 256, 224, "bilinear"),  # UNI, UNI2-h, Phikon-v2, H-optimus-0
    (1024, 512, 256, 224, "bicubic"),  # Virchow2
    (1024, 512, 256, 448, "bicubic"),  # CONCH v1 (upsampling)
    (1024, 512, 256, 448, "bilinear"),  # CONCH v1.5
    (1024, 512, 512, 256, "bicubic"),  # TRIDENT's patcher: 40x read to 20x (PIL's default)
    (1024, 512, 256, 256, "bicubic"),  # same size: unchanged
]


def main():
    out = Path(sys.argv[1])
    rng = np.random.default_rng(27)
    tensors, meta = {}, {}
    for i in range(48):
        h, w = rng.integers(1, 33, size=2)
        oh, ow = rng.integers(1, 49, size=2)
        name = ["bilinear", "bicubic"][i % 2]
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        res = np.asarray(Image.fromarray(img).resize((int(ow), int(oh)), FILTERS[name]))
        tensors[f"random_{i}_in"] = img
        tensors[f"random_{i}_out"] = np.ascontiguousarray(res)
        meta[f"random_{i}"] = name
    slide = openslide.OpenSlide(str(ROOT / "data/slides/cmu_small_region.svs"))
    for j, (x, y, side, size, name) in enumerate(SLIDE_CASES):
        patch = slide.read_region((x, y), 0, (side, side)).convert("RGB")
        res = np.asarray(patch.resize((size, size), FILTERS[name]))
        digest = hashlib.sha256(np.ascontiguousarray(res).tobytes()).hexdigest()
        meta[f"slide_{j}"] = f"{x},{y},{side},{size},{name},{digest}"
    save_file(tensors, str(out / "pil_resize.safetensors"), metadata=meta)
    print("wrote", out / "pil_resize.safetensors", "with Pillow", Image.__version__)


if __name__ == "__main__":
    main()
