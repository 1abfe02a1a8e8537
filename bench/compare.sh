#!/usr/bin/env bash
# Runs the same computations in gimp-rs and in PyTorch on this machine, one after the other, and
# prints the times and the ratio gimp-rs / PyTorch (below 1: gimp-rs is faster).
#   bash bench/compare.sh [--repeat N] [--skip-150k]
# PyTorch comes from $PYTHON (default .venv-bench/bin/python); see bench/pytorch_reference.py.
# The ViT forward passes (ViT-B/16 and ViT-L/16 on 32 patches, against timm) run each in a
# process of its own under /usr/bin/time -v, which also gives each side's peak memory; skip
# them with GIMP_BENCH_VIT=0.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv-bench/bin/python}
cargo build --release -q -p gimp-train --example bench_steps
cargo build --release -q -p gimp-extract --example bench_extract --example bench_vit
bin=${CARGO_TARGET_DIR:-target}/release/examples
rust=$("$bin"/bench_steps "$@")
repeat=3
[ "${1:-}" = "--repeat" ] && repeat=$2
rust_extract=$("$bin"/bench_extract --repeat "$repeat")
rust=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a.update(json.loads(sys.argv[2])); print(json.dumps(a))' "$rust" "$rust_extract")
torch=$("$PYTHON" bench/pytorch_reference.py "$@")
python3 - "$rust" "$torch" <<'PY'
import json, sys
r, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"{'computation':<18}{'gimp-rs (s)':>14}{'PyTorch (s)':>14}{'ratio':>9}")
for k in ["pretrain_step", "forward_6000", "forward_150000", "groupmsa_step", "extract_32"]:
    a, b = r.get(k), t.get(k)
    if a is None or b is None:
        continue
    print(f"{k:<18}{a:>14.3f}{b:>14.3f}{a / b:>9.2f}")
print(f"({r['implementation']}, {r['threads']} threads; {t['implementation']}, {t['threads']} threads)")
PY

[ "${GIMP_BENCH_VIT:-1}" = "0" ] && exit 0
# Peak resident memory (MB) and the JSON line of a command run under /usr/bin/time -v.
measured() {
    local log
    log=$(mktemp)
    /usr/bin/time -v "$@" 2>"$log" | tail -1
    awk -F: '/Maximum resident set size/ {printf "%.0f\n", $2 / 1024}' "$log"
    rm -f "$log"
}
echo
printf '%-18s%14s%14s%9s%12s%12s%9s\n' computation "gimp-rs (s)" "PyTorch (s)" ratio "gimp-rs MB" "PyTorch MB" ratio
for m in vit_b16 vit_l16; do
    mapfile -t r < <(measured "$bin"/bench_vit --model "$m" --repeat "$repeat")
    mapfile -t t < <(measured "$PYTHON" bench/pytorch_vit.py --model "$m" --repeat "$repeat")
    python3 - "$m" "${r[0]}" "${r[1]}" "${t[0]}" "${t[1]}" <<'PY'
import json, sys
m, r, rm, t, tm = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), float(sys.argv[5])
k = f"{m}_32"
print(f"{k:<18}{r[k]:>14.3f}{t[k]:>14.3f}{r[k] / t[k]:>9.2f}{rm:>12.0f}{tm:>12.0f}{rm / tm:>9.2f}")
print(f"  ({r['implementation']}, {r['threads']} threads; {t['implementation']}, {t['threads']} threads)")
PY
done
