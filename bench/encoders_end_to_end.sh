#!/usr/bin/env bash
# Patches per second of every patch encoder end to end on the repository's slide
# (docs/PERFORMANCE.md, "Every encoder end to end"): `gimp-rs patch`, then for each encoder
# random full-size weights written once by tools/make_vit_fixtures.py --weights-only (ResNet-50:
# torchvision's), and `gimp-rs extract --encoder NAME --weights FILE` under /usr/bin/time -v
# (patches/s from extract's own count and seconds: reading, resizing, the network and writing;
# wall time and peak resident memory of the whole command, loading the weights included).
# With PYTORCH="conch_v1 hoptimus0" the same extraction also runs in PyTorch
# (bench/pytorch_extract.py: OpenSlide, torchvision's transform, timm) at the same threads.
#
#   bash bench/encoders_end_to_end.sh [ENCODER...]        # default: every registered encoder
#
# Environment: DIR (default /tmp/gimp-encoders; weights are GBs: ViT-g 2.3 GB in float16),
# PATCHES=N (first N patches of the slide's patch file; default all), THREADS (default 2),
# KEEP=1 (keep the weights files; by default each is deleted after its run), PYTORCH (encoders
# to also run in PyTorch), PYTHON (default python3; needs torch, timm, safetensors, h5py, and for
# PYTORCH torchvision, openslide-python and openslide-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${DIR:-/tmp/gimp-encoders}
threads=${THREADS:-2}
python=${PYTHON:-python3}
slide=data/slides/cmu_small_region.svs
mkdir -p "$dir"

cargo build --release -q -p gimp-cli
bin=${CARGO_TARGET_DIR:-target}/release/gimp-rs
encoders=("$@")
if [ ${#encoders[@]} -eq 0 ]; then
    mapfile -t encoders < <("$bin" extract --list | awk 'NR > 1 && $1 !~ /^weights/ { print $1 }')
fi

"$bin" patch "$slide" --preset bwh_biopsy --out "$dir/patched" >/dev/null 2>&1
id=$(basename "$slide" .svs)
patch_dir="$dir/patched/patches"
if [ -n "${PATCHES:-}" ]; then
    patch_dir="$dir/patches_$PATCHES"
    mkdir -p "$patch_dir"
    "$python" - "$dir/patched/patches/$id.h5" "$patch_dir/$id.h5" "$PATCHES" <<'EOF'
import sys, h5py
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
    d = g.create_dataset("coords", data=f["coords"][:n])
    for k, v in f["coords"].attrs.items():
        d.attrs[k] = v
EOF
fi

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'); threads $threads"
for enc in "${encoders[@]}"; do
    w="$dir/$enc.safetensors"
    if [ ! -f "$w" ]; then
        if [ "$enc" = resnet50_trunc ]; then
            "$python" -c "import torch, torchvision; from safetensors.torch import save_file; save_file(torchvision.models.resnet50().state_dict(), '$w')"
        else
            OMP_NUM_THREADS=$threads "$python" tools/make_vit_fixtures.py "$dir" --weights-only "$enc" >/dev/null
        fi
    fi
    log="$dir/$enc.time"
    /usr/bin/time -v "$bin" --threads "$threads" extract "$slide" --patches "$patch_dir" \
        --encoder "$enc" --weights "$w" --out "$dir/out" --overwrite >/dev/null 2>"$log"
    line=$(grep -E '^[0-9]+ patches in' "$log" | tail -1)
    n=$(echo "$line" | awk '{print $1}')
    secs=$(echo "$line" | awk '{print $4}')
    wall=$(grep 'Elapsed (wall clock)' "$log" | awk '{print $NF}')
    rss=$(grep 'Maximum resident' "$log" | awk '{print $NF}')
    cpu=$(grep 'Percent of CPU' "$log" | awk '{print $NF}')
    printf '{"side": "gimp-rs", "encoder": "%s", "patches": %s, "extract_s": %s, "patches_per_s": %.3f, "wall": "%s", "cpu": "%s", "peak_rss_mb": %d}\n' \
        "$enc" "$n" "$secs" "$(echo "$n / $secs" | bc -l)" "$wall" "$cpu" "$((rss / 1024))"
    if [[ " ${PYTORCH:-} " == *" $enc "* ]]; then
        plog="$dir/$enc.pytorch.time"
        out=$(OMP_NUM_THREADS=$threads /usr/bin/time -v "$python" bench/pytorch_extract.py --encoder "$enc" \
            --weights "$w" --slide "$slide" --patches "$patch_dir/$id.h5" --out "$dir/$enc.pytorch.h5" \
            --threads "$threads" 2>"$plog")
        prss=$(grep 'Maximum resident' "$plog" | awk '{print $NF}')
        pcpu=$(grep 'Percent of CPU' "$plog" | awk '{print $NF}')
        echo "${out%\}}, \"side\": \"pytorch\", \"cpu\": \"$pcpu\", \"peak_rss_mb\": $((prss / 1024))}"
    fi
    [ -n "${KEEP:-}" ] || rm -f "$w"
    echo "# $(uptime | sed 's/.*load/load/')"
done
