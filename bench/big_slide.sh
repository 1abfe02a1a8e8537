#!/usr/bin/env bash
# The slide path at the size of a real 40× resection (docs/PERFORMANCE.md, "A real-size slide"):
#
#   bash bench/big_slide.sh
#
# 1. tools/make_big_slide.py writes a 100,000 × 80,000 Aperio-style BigTIFF at 40× (256-px JPEG
#    tiles, levels at downsample 4, 16, 64; the repository's real tissue mirrored into five
#    tissue pieces) — 0.7 GB, about 6 min and 0.4 GB of memory the first time, kept in $DIR;
# 2. `gimp-rs predict --slide` on it, whole pipeline, under /usr/bin/time -v: patch count, the
#    time of each stage (from the record), peak resident memory. The encoder is the test
#    fixtures' narrow ResNet-50 (the same code as ResNet50-trunc at 1/8 of the width) with the
#    fixtures' CLAM-SB, so the run takes minutes, not the hours full-width features take on
#    2 cores;
#    Then the same at --magnification 40 (256-px patches at 40×: four times as many);
# 3. full-width ResNet50-trunc (random weights, tools/make_random_predict_weights.py) with a
#    1024-d CLAM-SB on a 24,000 × 19,200 slide of the same design: features per patch and
#    peak memory, from which the full slide's feature time is projected. FULL=1 runs full width
#    on the big slide itself instead (hours on 2 cores);
# 4. `gimp-rs view` on a folder of $N_SLIDES links to the big slide plus its prediction: time to
#    listen, then the first page's requests (page, script, slide list, slide 0's info,
#    descriptor, prediction scores, first tile), the server's peak memory, and Ctrl-C (SIGINT)
#    must end it with exit code 0;
# 5. the viewer's load test (crates/gimp-view/examples/load_test.rs) on the big slide.
#
# Environment: DIR (default /tmp/gimp-big-slide), PYTHON (with numpy, tifffile, imagecodecs,
# Pillow; default python3), GIMP_RS (default target/release/gimp-rs, built when missing),
# THREADS (default 2), N_SLIDES (default 500), FULL (1: full-width features on the big slide).
# The machine's load average is printed before and after: latencies on a shared machine are noisy.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${DIR:-/tmp/gimp-big-slide}"
python="${PYTHON:-python3}"
threads="${THREADS:-2}"
n_slides="${N_SLIDES:-500}"
mkdir -p "$dir"
if [ -z "${GIMP_RS:-}" ]; then
    (cd "$repo" && cargo build --release --bin gimp-rs -q)
    GIMP_RS="${CARGO_TARGET_DIR:-$repo/target}/release/gimp-rs"
fi
bin="$GIMP_RS"
fixtures_model="$repo/crates/gimp-models/tests/fixtures/clam_sb_weights.safetensors"
fixtures_encoder="$repo/crates/gimp-extract/tests/fixtures/resnet50_trunc_real_patches.safetensors"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) cores)"

big="$dir/big.svs"
if [ ! -f "$big" ]; then
    echo "writing $big (once)"
    /usr/bin/time -v "$python" "$repo/tools/make_big_slide.py" "$big" 2>"$dir/make_big_slide.log" ||
        { cat "$dir/make_big_slide.log"; exit 1; }
    grep -E "Elapsed|Maximum resident" "$dir/make_big_slide.log"
fi
"$bin" slide info "$big" 2>/dev/null | head -12 || true
[ -f "$dir/weights/resnet50_trunc.safetensors" ] ||
    "$python" "$repo/tools/make_random_predict_weights.py" "$dir/weights" >/dev/null

# The record's numbers: patches and each stage's seconds.
summary() {
    "$python" - "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))[0]
times = ", ".join(f"{t['stage']} {t['seconds']:.1f} s" for t in r["times"])
feat = next(t["seconds"] for t in r["times"] if t["stage"] == "features")
print(f"  {r['n_patches']} patches; {times}; features {1000 * feat / max(r['n_patches'], 1):.1f} ms/patch")
EOF
}
peak() { awk -F': ' '/Maximum resident/ { printf "%.2f GiB", $2 / 1048576 }' "$1"; }
wall() { awk -F': ' '/Elapsed \(wall/ { print $2 }' "$1"; }

run_predict() { # NAME SLIDE MODEL ENCODER [predict's options]
    local out="$dir/pred-$1" name="$1" slide="$2" model="$3" encoder="$4"
    shift 4
    rm -rf "$out"
    /usr/bin/time -v "$bin" --threads "$threads" predict --arch clam_sb --weights "$model" \
        --slide "$slide" --encoder-weights "$encoder" --out "$out" "$@" >"$dir/$name.json" 2>"$dir/$name.log" ||
        { tail -20 "$dir/$name.log"; exit 1; }
    echo "predict --slide ($name): wall $(wall "$dir/$name.log"), peak $(peak "$dir/$name.log")"
    summary "$dir/$name.json"
}

echo "== predict --slide on the 100,000 × 80,000 slide (narrow ResNet-50 fixture, CLAM-SB fixture)"
run_predict narrow "$big" "$fixtures_model" "$fixtures_encoder"
echo "== the same, 256-px patches at 40× (four times the patches)"
run_predict narrow40 "$big" "$fixtures_model" "$fixtures_encoder" --magnification 40

if [ "${FULL:-0}" = 1 ]; then
    echo "== predict --slide on the big slide, full-width ResNet50-trunc (random weights)"
    run_predict full "$big" "$dir/weights/clam_sb_1024.safetensors" "$dir/weights/resnet50_trunc.safetensors"
else
    cut="$dir/cut24k.svs"
    [ -f "$cut" ] || "$python" "$repo/tools/make_big_slide.py" "$cut" --width 24000 --height 19200 2>/dev/null
    echo "== predict --slide on a 24,000 × 19,200 slide of the same design, full-width ResNet50-trunc (random weights)"
    run_predict full-cut "$cut" "$dir/weights/clam_sb_1024.safetensors" "$dir/weights/resnet50_trunc.safetensors"
    "$python" - "$dir/full-cut.json" "$dir/narrow.json" "$dir/narrow40.json" <<'EOF'
import json, sys
cut = json.load(open(sys.argv[1]))[0]
per = next(t["seconds"] for t in cut["times"] if t["stage"] == "features") / cut["n_patches"]
for f in sys.argv[2:]:
    n = json.load(open(f))[0]["n_patches"]
    print(f"  projected full-width features for the big slide's {n} patches: "
          f"{per * n / 3600:.1f} h at {per * 1000:.0f} ms/patch")
EOF
fi

echo "== view on $n_slides slides ($n_slides links to the big slide, with its prediction)"
many="$dir/many"
rm -rf "$many"
mkdir -p "$many"
for i in $(seq -f "%04g" 1 "$n_slides"); do ln -s "$big" "$many/slide$i.svs"; done
cp -r "$dir/pred-narrow/." "$many/"
# The record names the slide by its own id ("big"): one more link under that name.
ln -sf "$big" "$many/big.svs"
t0=$(date +%s.%N)
/usr/bin/time -v "$bin" view "$many" --port 0 >"$dir/view.out" 2>"$dir/view.log" &
view_pid=$!
addr=""
for _ in $(seq 1 600); do
    addr=$(grep -o 'http://[^ ]*' "$dir/view.out" 2>/dev/null || true)
    [ -n "$addr" ] && break
    sleep 0.01
done
[ -n "$addr" ] || { cat "$dir/view.log"; exit 1; }
t_listen=$(date +%s.%N)
index=$(curl -sf "${addr}api/slides" | "$python" -c "import json,sys; print(next(s['index'] for s in json.load(sys.stdin) if s['id'] == 'big'))")
for u in "" app/viewer.js app/viewer.css osd/openseadragon.min.js api/slides "api/slides/$index" \
    "slides/$index/image.dzi" "api/slides/$index/scores" "slides/$index/image_files/9/0_0.jpeg"; do
    curl -sf -o /dev/null "$addr$u" || { echo "failed: $addr$u"; exit 1; }
done
t_page=$(date +%s.%N)
"$python" - "$t0" "$t_listen" "$t_page" "$n_slides" <<'EOF'
import sys
t0, tl, tp, n = map(float, sys.argv[1:5])
print(f"  {int(n) + 1} slides listed: listening after {tl - t0:.2f} s; first page (page, scripts, "
      f"list, slide info, descriptor, scores, first tile) {tp - tl:.2f} s later; {tp - t0:.2f} s in all")
EOF
# Ten more slides opened (each link is a slide of its own to the server): still few open.
for i in 0 1 2 3 4 5 6 7 8 9; do curl -sf -o /dev/null "${addr}slides/$i/image_files/9/0_0.jpeg"; done
# SIGINT to gimp-rs itself (GNU time ignores it while it waits), as Ctrl-C in a terminal does.
kill -INT "$(pgrep -P "$view_pid")"
status=0
wait "$view_pid" || status=$?
echo "  Ctrl-C (SIGINT): exit code $status; server peak $(peak "$dir/view.log")"
[ "$status" = 0 ] || exit 1

echo "== the viewer's load test on the big slide"
(cd "$repo" && cargo run --release -q -p gimp-view --example load_test -- "$big")
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
