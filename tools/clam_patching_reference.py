"""CLAM's segmentation + four_pt patching, re-expressed with OpenCV + OpenSlide, to compare
`gimp-rs patch` with on a slide (used for docs/SLIDES.md; not needed by the tests).

    python tools/clam_patching_reference.py SLIDE PATCH_H5 --seg-level 0 --sthresh 15 \
        --mthresh 11 --close 2 --a-t 1 --a-h 1 --max-n-holes 2

Prints how many patches each side found and how many coordinates they share.
Needs: openslide-python (+ openslide-bin), opencv-python-headless, h5py, numpy.
"""
import argparse

import cv2
import h5py
import numpy as np
import openslide


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("slide")
    ap.add_argument("ours")
    ap.add_argument("--seg-level", type=int, default=0)
    ap.add_argument("--sthresh", type=int, default=8)
    ap.add_argument("--mthresh", type=int, default=7)
    ap.add_argument("--close", type=int, default=4)
    ap.add_argument("--a-t", type=float, default=16)
    ap.add_argument("--a-h", type=float, default=4)
    ap.add_argument("--max-n-holes", type=int, default=8)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--write", help="also write CLAM's coordinates here (x<TAB>y per line)")
    a = ap.parse_args()

    s = openslide.OpenSlide(a.slide)
    ds = s.level_downsamples[a.seg_level]
    img = np.array(s.read_region((0, 0), a.seg_level, s.level_dimensions[a.seg_level]).convert("RGB"))
    sat = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[:, :, 1]
    med = cv2.medianBlur(sat, a.mthresh)
    _, binary = cv2.threshold(med, a.sthresh, 255, cv2.THRESH_BINARY)
    if a.close > 0:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, np.ones((a.close, a.close), np.uint8))
    ref = int(512 ** 2 / (ds * ds))
    contours, hier = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    hier = hier[0][:, 2:]
    kept = []
    for i in np.flatnonzero(hier[:, 1] == -1):
        holes = [contours[j] for j in np.flatnonzero(hier[:, 1] == i)]
        area = cv2.contourArea(contours[i]) - sum(cv2.contourArea(h) for h in holes)
        if area > 0 and area > a.a_t * ref:
            holes = sorted(holes, key=cv2.contourArea, reverse=True)[: a.max_n_holes]
            holes = [h for h in holes if cv2.contourArea(h) > a.a_h * ref]
            kept.append(((contours[i] * ds).astype(np.int32), [(h * ds).astype(np.int32) for h in holes]))

    size = a.patch  # level 0 = target magnification here
    shift = int(size // 2 * 0.5)
    found = []
    for cont, holes in kept:
        x0, y0, w, h = cv2.boundingRect(cont)
        for x in range(x0, x0 + w, size):
            for y in range(y0, y0 + h, size):
                cx, cy = x + size // 2, y + size // 2
                pts = [(cx - shift, cy - shift), (cx + shift, cy + shift), (cx + shift, cy - shift), (cx - shift, cy + shift)]
                if not any(cv2.pointPolygonTest(cont, (float(px), float(py)), False) >= 0 for px, py in pts):
                    continue
                if any(cv2.pointPolygonTest(hh, (cx + size / 2 - size // 2, cy), False) > 0 for hh in holes):
                    continue
                found.append((x, y))
    if a.write:
        with open(a.write, "w") as f:
            f.write("".join(f"{x}\t{y}\n" for x, y in found))
    with h5py.File(a.ours) as f:
        ours = {tuple(map(int, c)) for c in f["coords"][:]}
    ref_set = set(found)
    print(f"CLAM (OpenCV): {len(ref_set)} patches; gimp-rs: {len(ours)}; shared {len(ours & ref_set)}; "
          f"only CLAM {len(ref_set - ours)}; only gimp-rs {len(ours - ref_set)}")


if __name__ == "__main__":
    main()
