#!/usr/bin/env bash
# GiMP pre-training's memory on the paper's windows (issue 26, item 3): one epoch of `gimp-rs
# pretrain` with the paper preset (batches of 8 windows of 6,000 patches) on a synthetic cohort
# of 16 patients with bags of 6,000–150,000 patches (eight training patients: one batch), once
# with the batch's windows backpropagated together and once one at a time (`[pretrain]
# window_gradients`, docs/DESIGN.md §42), each under /usr/bin/time -v (bench/measure.sh's row).
# Then the largest difference between the two runs' weights.
#
#   bash bench/pretrain_windows.sh
#
# Environment: DIR (default /tmp/gimp-pretrain-windows; deleted unless KEEP=1), BIN (default
# target/release/gimp-rs), THREADS (default: all cores). Results: docs/PERFORMANCE.md,
# "Pre-training windows".
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${DIR:-/tmp/gimp-pretrain-windows}
BIN=${BIN:-target/release/gimp-rs}
T=()
[ -n "${THREADS:-}" ] && T=(--threads "$THREADS")
if [ ! -x "$BIN" ]; then cargo build --release -q -p gimp-cli; fi
mkdir -p "$DIR"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$DIR"' EXIT
rows=$DIR/rows.tsv
: >"$rows"
source bench/measure.sh

cohort=$DIR/cohort/cohort.toml
if [ ! -f "$cohort" ]; then
    "$BIN" "${T[@]}" synth --difficulty easy --size demo --patients 16 --patches 6000,150000 \
        --dim 1024 --genes 200 --seed 2 --missing-expression 0 --out "$DIR/cohort" >/dev/null
    "$BIN" cohort cache "$cohort" >/dev/null
fi
echo "cohort: 16 patients × 6,000–150,000 patches × 1024 in $DIR ($(uptime))"
for how in together one_at_a_time; do
    printf 'preset = "paper"\n[genes]\nepochs = 1\n[pretrain]\nepochs = 1\nwindow_gradients = "%s"\n[finetune]\nepochs = 1\n' \
        "$how" >"$DIR/$how.toml"
done
"$BIN" "${T[@]}" pretrain-genes "$cohort" --config "$DIR/together.toml" --out "$DIR/genes" >/dev/null
printf 'command\twall s\tuser s\tsys s\tpeak RSS GiB\tpeak anon GiB\tminor faults M\tstatus\n'
for how in together one_at_a_time; do
    RM=("$DIR/$how")
    measure "pretrain_$how" "$BIN" "${T[@]}" pretrain "$cohort" --config "$DIR/$how.toml" \
        --genes "$DIR/genes/genes/model.safetensors" --out "$DIR/$how"
done
python3 - "$DIR/together/pretrain/model.safetensors" "$DIR/one_at_a_time/pretrain/model.safetensors" <<'PY'
import json, struct, sys
def tensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for k, v in head.items():
        if k == "__metadata__" or v["dtype"] != "F32":
            continue
        a, b = v["data_offsets"]
        out[k] = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
    return out
x, y = tensors(sys.argv[1]), tensors(sys.argv[2])
d = max(max(abs(p - q) for p, q in zip(x[k], y[k])) for k in x)
print(f"largest weight difference, together vs one at a time: {d:.3g}")
PY
echo "load: $(uptime)"
