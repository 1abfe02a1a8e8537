"""Checks a GeoJSON file written by gimp-rs for QuPath (`export qupath`, `predict --slide`,
`heatmap --qupath`, `patch`'s contours_geojson/) with shapely, as an independent reader:

- a FeatureCollection of Features, each with a Polygon or MultiPolygon geometry that shapely
  reads as valid (`is_valid`: closed, non-crossing rings, holes inside their shell) and
  non-empty;
- QuPath's properties: objectType 'annotation' or 'detection', classification {name, color:
  [r, g, b]}, measurements (when present) a map of names to numbers;
- coordinates non-negative (level-0 pixels), and inside WIDTH x HEIGHT when given (for a
  patch, its top-left corner).

Usage: python tools/check_qupath_geojson.py FILE.geojson [WIDTH HEIGHT]
Needs shapely (PyPI). Prints a summary; exits 1 on the first problem, naming the feature.
"""
import json
import sys

from shapely.geometry import shape
from shapely.validation import explain_validity


def fail(i, msg):
    print(f"{sys.argv[1]}: feature {i}: {msg}")
    sys.exit(1)


def main():
    path = sys.argv[1]
    size = (float(sys.argv[2]), float(sys.argv[3])) if len(sys.argv) > 3 else None
    with open(path) as f:
        fc = json.load(f)
    if fc.get("type") != "FeatureCollection" or not isinstance(fc.get("features"), list):
        print(f"{path}: not a FeatureCollection")
        sys.exit(1)
    counts = {}
    area = 0.0
    for i, feat in enumerate(fc["features"]):
        if feat.get("type") != "Feature":
            fail(i, f"type {feat.get('type')!r}, expected 'Feature'")
        geom = shape(feat["geometry"])
        if geom.geom_type not in ("Polygon", "MultiPolygon"):
            fail(i, f"a {geom.geom_type}")
        if geom.is_empty or not geom.is_valid:
            fail(i, f"invalid: {explain_validity(geom)}")
        p = feat.get("properties") or {}
        kind = p.get("objectType")
        # Tissue lies inside the slide; a patch square starts inside it but may hang over the
        # edge (read as black, as OpenSlide does).
        x0, y0, x1, y1 = geom.bounds
        if kind == "detection":
            x1, y1 = x0, y0
        if x0 < 0 or y0 < 0 or (size and (x1 > size[0] or y1 > size[1])):
            fail(i, f"bounds {geom.bounds} outside the slide")
        if kind not in ("annotation", "detection"):
            fail(i, f"objectType {kind!r}")
        c = p.get("classification") or {}
        color = c.get("color")
        if not isinstance(c.get("name"), str) or not (
            isinstance(color, list) and len(color) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
        ):
            fail(i, f"classification {c!r}, expected {{name, color: [r, g, b]}}")
        m = p.get("measurements", {})
        if not isinstance(m, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in m.values()
        ):
            fail(i, f"measurements {m!r}, expected a map of numbers")
        key = (kind, c["name"])
        counts[key] = counts.get(key, 0) + 1
        if kind == "annotation":
            area += geom.area
    print(f"{path}: {len(fc['features'])} features, all valid; "
          + ", ".join(f"{n} {k} '{c}'" for (k, c), n in sorted(counts.items()))
          + f"; annotation area {area:.0f} px^2")


if __name__ == "__main__":
    main()
