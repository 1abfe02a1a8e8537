"""DICOM whole-slide fixtures for gimp-slide (crates/gimp-slide/tests/fixtures/dicom/), made from
the repository's real slide region by wsidicomizer, with the pixels wsidicom reads from them.

    python tools/make_dicom_fixtures.py [OUT_DIR]
    python tools/make_dicom_fixtures.py --full OUT_DIR   # the whole slide, for bench/

Needs numpy, pillow, tifffile, imagecodecs, pydicom, openslide-python (with libopenslide),
wsidicomizer and wsidicom (PyPI); wsidicomizer needs Debian's `libturbojpeg0`.

A 384 x 288 crop of data/slides/cmu_small_region.svs (as OpenSlide reads it) with its 2x and 4x
reductions is written as a three-level tiled TIFF (lossless, 0.499 um/px) and converted by
wsidicomizer (OpenSlide as its source, 128-pixel tiles, no label/overview/thumbnail) into
three VL Whole Slide Microscopy series, one folder each:
- `jpeg/`: JPEG baseline (YBR_FULL_422), every level TILED_FULL, as wsidicomizer writes it;
- `jpeg2000/`: lossy JPEG 2000 (YBR_ICT); level 0 rewritten as TILED_SPARSE: its frames in
  reverse order, each placed by its Per-Frame Plane Position, and one tile left out;
- `uncompressed/`: Explicit VR Little Endian RGB; level 1 rewritten as TILED_SPARSE the same way
  (all tiles present).
wsidicom reads every level of every series whole; the pixels are saved as
`expected/{series}.level{k}.png`, and `expected/expected.json` records the levels, the pixel
spacing and the tiles left out (wsidicom paints a missing tile white; gimp-rs, as OpenSlide,
reads it as black, so the test compares everything else and checks that tile is black).
With `--full`, the whole 2220 x 2967 region is one level of 256-pixel tiles in each series, all
TILED_FULL, for the speed comparison of bench/slide_formats.sh; no PNG is written.
"""
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import openslide
import pydicom
import tifffile
from PIL import Image
from pydicom.encaps import encapsulate, generate_frames
from pydicom.sequence import Sequence
from wsidicom import WsiDicom
from wsidicom.codec import Jpeg2kSettings, JpegSettings, NumpySettings
from wsidicomizer import WsiDicomizer
from wsidicomizer.wsidicomizer import SourceIdentifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = "--full" in sys.argv[1:]
_args = [a for a in sys.argv[1:] if a != "--full"]
OUT = _args[0] if _args else os.path.join(ROOT, "crates/gimp-slide/tests/fixtures/dicom")
TILE = 256 if FULL else 128
MPP = 0.499


def source_tiff(path):
    s = openslide.OpenSlide(os.path.join(ROOT, "data/slides/cmu_small_region.svs"))
    if FULL:
        levels = [np.asarray(s.read_region((0, 0), 0, s.dimensions).convert("RGB"))]
    else:
        l0 = s.read_region((600, 1000), 0, (384, 288)).convert("RGB")
        levels = [np.asarray(l0), np.asarray(l0.reduce(2)), np.asarray(l0.reduce(4))]
    per_cm = 10_000 / MPP
    with tifffile.TiffWriter(path) as t:
        for k, level in enumerate(levels):
            t.write(level, tile=(TILE, TILE), compression="zlib", photometric="rgb",
                    resolution=(per_cm / 2**k, per_cm / 2**k), resolutionunit="CENTIMETER",
                    subfiletype=0 if k == 0 else 1, metadata=None)


def level_files(folder):
    """{level index: file} of a series folder, level 0 the widest."""
    files = []
    for name in os.listdir(folder):
        ds = pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
        files.append((int(ds.TotalPixelMatrixColumns), name))
    return {k: os.path.join(folder, n) for k, (_, n) in enumerate(sorted(files, reverse=True))}


def make_sparse(path, drop):
    """Rewrites a TILED_FULL instance as TILED_SPARSE: frames in reverse order, each with its
    plane position, leaving out the tiles in `drop` ((column, row) tile indices)."""
    ds = pydicom.dcmread(path)
    n = int(ds.NumberOfFrames)
    across = -(-int(ds.TotalPixelMatrixColumns) // int(ds.Columns))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n))
    else:
        size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel)
        frames = [ds.PixelData[i * size:(i + 1) * size] for i in range(n)]
    keep = [i for i in reversed(range(n)) if (i % across, i // across) not in drop]
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    items = []
    for i in keep:
        col, row = i % across, i // across
        pos = pydicom.Dataset()
        pos.ColumnPositionInTotalImagePixelMatrix = col * int(ds.Columns) + 1
        pos.RowPositionInTotalImagePixelMatrix = row * int(ds.Rows) + 1
        pos.XOffsetInSlideCoordinateSystem = round(float(spacing[1]) * col * int(ds.Columns), 6)
        pos.YOffsetInSlideCoordinateSystem = round(float(spacing[0]) * row * int(ds.Rows), 6)
        pos.ZOffsetInSlideCoordinateSystem = 0
        item = pydicom.Dataset()
        item.PlanePositionSlideSequence = Sequence([pos])
        items.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(items)
    ds.DimensionOrganizationType = "TILED_SPARSE"
    ds.NumberOfFrames = len(keep)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.PixelData = encapsulate([frames[i] for i in keep], has_bot=True)
        ds["PixelData"].is_undefined_length = True
    else:
        ds.PixelData = b"".join(frames[i] for i in keep)
    for tag in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if tag in ds:
            del ds[tag]
    ds.save_as(path, enforce_file_format=True)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "expected"))
    tmp = tempfile.mkdtemp()
    src = os.path.join(tmp, "crop.tif")
    source_tiff(src)
    series = {
        "jpeg": (JpegSettings(quality=90), {}),
        "jpeg2000": (Jpeg2kSettings(levels=[45]), {0: {(1, 1)}}),
        "uncompressed": (NumpySettings(), {1: set()}),
    }
    expected = {"mpp": MPP, "series": {}}
    if FULL:
        series = {name: (encoding, {}) for name, (encoding, _) in series.items()}
    for name, (encoding, sparse) in series.items():
        folder = os.path.join(OUT, name)
        WsiDicomizer.convert(src, folder, tile_size=TILE, include_label=False,
                             include_overview=False, include_thumbnail=False,
                             preferred_source=SourceIdentifier.OPENSLIDE, encoding=encoding,
                             workers=1)
        files = level_files(folder)
        if FULL:
            print("wrote", folder)
            continue
        for k, drop in sparse.items():
            make_sparse(files[k], drop)
        # Stable names: level{k}.dcm.
        for k, f in files.items():
            os.rename(f, os.path.join(folder, f"level{k}.dcm"))
        info = {"levels": [], "missing_tiles": {str(k): sorted(d) for k, d in sparse.items() if d}}
        with WsiDicom.open(folder) as wsi:
            for k, level in enumerate(wsi.levels):
                w, h = level.size.width, level.size.height
                px = wsi.read_region((0, 0), level.level, (w, h)).convert("RGB")
                px.save(os.path.join(OUT, "expected", f"{name}.level{k}.png"), optimize=True)
                ts = pydicom.dcmread(os.path.join(folder, f"level{k}.dcm"),
                                     stop_before_pixels=True)
                info["levels"].append({"width": w, "height": h,
                                       "transfer_syntax": str(ts.file_meta.TransferSyntaxUID),
                                       "tiling": str(ts.DimensionOrganizationType)})
                print(name, k, w, h, ts.file_meta.TransferSyntaxUID.name,
                      ts.DimensionOrganizationType, ts.PhotometricInterpretation)
        expected["series"][name] = info
    if FULL:
        shutil.rmtree(os.path.join(OUT, "expected"))
        shutil.rmtree(tmp)
        return
    with open(os.path.join(OUT, "expected", "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    shutil.rmtree(tmp)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(OUT) for f in fs)
    print(f"wrote {OUT}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
