#!/usr/bin/env bash
# Reading speed and pixel equality of the slide formats on the repository's slide
# (data/slides/cmu_small_region.svs, 2220 x 2967): the Aperio JPEG original, the same pixels as
# Aperio JPEG 2000 (33003, 33005; tools/make_jp2k_svs_fixtures.py --full) and as DICOM series
# (JPEG, JPEG 2000, uncompressed; tools/make_dicom_fixtures.py --full, wsidicomizer). Each is
# read whole in 256-pixel regions by gimp-rs (crates/gimp-slide/examples/read_speed.rs, one
# thread) and by OpenSlide (and wsidicom for DICOM) from Python (bench/slide_formats_reference.py),
# which also compares gimp-rs's pixels with theirs.
#
#   bash bench/slide_formats.sh            (DIR=/tmp/gimp-slide-formats by default)
#
# Needs the Python packages of the two tools scripts (openslide-python with libopenslide,
# tifffile, imagecodecs, pydicom, wsidicomizer, wsidicom; Debian libturbojpeg0).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DIR:-/tmp/gimp-slide-formats}
rm -rf "$dir" && mkdir -p "$dir"
python tools/make_jp2k_svs_fixtures.py --full "$dir/jp2k" >/dev/null
python tools/make_dicom_fixtures.py --full "$dir/dicom" >/dev/null
CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release -q -p gimp-slide --example read_speed
bin=target/release/examples/read_speed
for slide in data/slides/cmu_small_region.svs "$dir/jp2k/aperio_33003.svs" \
    "$dir/jp2k/aperio_33005.svs" "$dir/dicom/jpeg" "$dir/dicom/jpeg2000" "$dir/dicom/uncompressed"; do
    DUMP="$dir/level0.rgb" "$bin" "$slide" 0 256 >/dev/null   # warm the page cache, dump pixels
    "$bin" "$slide" 0 256
    python bench/slide_formats_reference.py "$slide" "$dir/level0.rgb"
done
