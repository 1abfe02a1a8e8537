#!/usr/bin/env bash
# Runs the same computations in gimp-rs and in PyTorch on this machine, one after the other, and
# prints the times and the ratio gimp-rs / PyTorch (below 1: gimp-rs is faster).
#   bash bench/compare.sh [--repeat N] [--skip-150k]
# PyTorch comes from $PYTHON (default .venv-bench/bin/python); see bench/pytorch_reference.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv-bench/bin/python}
cargo build --release -q -p gimp-train --example bench_steps
cargo build --release -q -p gimp-extract --example bench_extract
rust=$(target/release/examples/bench_steps "$@")
repeat=3
[ "${1:-}" = "--repeat" ] && repeat=$2
rust_extract=$(target/release/examples/bench_extract --repeat "$repeat")
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
