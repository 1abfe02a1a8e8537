#!/usr/bin/env bash
# Runs the same computations in gimp-rs and in PyTorch on this machine, one after the other, and
# prints the times and the ratio gimp-rs / PyTorch (below 1: gimp-rs is faster).
#   bash bench/compare.sh [--repeat N] [--skip-150k]
# PyTorch comes from $PYTHON (default .venv-bench/bin/python); see bench/pytorch_reference.py.
# The ViT forward passes (ViT-B/16 and ViT-L/16 on 32 patches, against timm) run each in a
# process of its own under /usr/bin/time -v, which also gives each side's peak memory; skip
# them with GIMP_BENCH_VIT=0.
#
# Then the whole-bag training steps (GiMP fine-tuning, TransMIL, CLAM-SB on 6,000, 24,000 and
# 150,000 patches; --skip-150k or SKIP_150K=1 leaves 150,000 out, SKIP_BAGS=1 all of them),
# each in its own process under /usr/bin/time -v for its peak resident memory (ONLY_BAGS=1 runs
# these alone). A PyTorch step that would not fit runs under a virtual-memory limit of the
# memory available minus $TORCH_SPARE_GB (default 3) and is reported as failed instead of
# pushing the machine into the out-of-memory killer; below $TORCH_150K_MIN_GB (default 16)
# available, PyTorch's 150,000-patch steps are skipped with a note.
#
# Then GiMP's successors (TANGLE fine-tuning, SurvPath as trained — 4096 patches drawn from the
# bag — and on the whole bag, MMP, each on 6,000 and 150,000 patches with 4,999 genes; TANGLE's
# pre-training step on a batch of 64 patients × 2048 patches, and of 8) against the reference
# modules as re-declared in tools/successor_modules.py, by the same rules, memory in MB.
# ONLY_SUCCESSORS=1 runs these rows alone; SUCCESSOR_STEPS (e.g. "survpath_step mmp_step", or
# sized names such as "tangle_step_24000") only those, at the bag sizes in SUCCESSOR_SIZES
# (default "6000 150000"); SUCCESSORS=0 leaves them out. TORCH_MAX_GB caps PyTorch's
# virtual-memory limit (its CUDA-enabled wheel maps about 3 GB on import), GIMP_MAX_GB puts
# gimp-rs's side of these rows under one too. See crates/gimp-train/examples/bench_steps.rs for
# what each computes, docs/PERFORMANCE.md ("GiMP's successors") for a run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv-bench/bin/python}
cargo build --release -q -p gimp-train --example bench_steps
if [ "${ONLY_SUCCESSORS:-0}" != 1 ]; then
    cargo build --release -q -p gimp-extract --example bench_extract --example bench_vit
fi
bin=${CARGO_TARGET_DIR:-target}/release/examples
repeat=3
[ "${1:-}" = "--repeat" ] && repeat=$2
only_succ=${ONLY_SUCCESSORS:-0}
if [ "${ONLY_BAGS:-0}" != 1 ] && [ "$only_succ" != 1 ]; then
rust=$("$bin"/bench_steps "$@")
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

fi

if [ "${GIMP_BENCH_VIT:-1}" != "0" ] && [ "${ONLY_BAGS:-0}" != 1 ] && [ "$only_succ" != 1 ]; then
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
fi

skip150=${SKIP_150K:-0}
for a in "$@"; do [ "$a" = "--skip-150k" ] && skip150=1; done
[ "${SKIP_BAGS:-0}" = 1 ] && exit 0
sizes="6000 24000 150000"
[ "$skip150" = 1 ] && sizes="6000 24000"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
available_gb() { awk '/MemAvailable/ { printf "%d", $2 / 1048576 }' /proc/meminfo; }
# measure NAME SIDE CMD...: one computation in its own process; prints "seconds peak_GiB peak_MB"
# or "failed peak_GiB peak_MB".
measure() {
    local name=$1 side=$2
    shift 2
    if /usr/bin/time -v -o "$tmp/time" "$@" >"$tmp/out" 2>"$tmp/err"; then
        secs=$(python3 -c 'import json,sys; print(f"{json.load(open(sys.argv[1]))[sys.argv[2]]:.3f}")' "$tmp/out" "$name")
    else
        secs=failed
    fi
    kb=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$tmp/time")
    echo "$secs $(python3 -c "print(f'{$kb / 1048576:.2f} {$kb / 1024:.0f}')")"
}
# torch_measure NAME N: the PyTorch side of a step, under the memory limit (or skipped at 150,000
# patches when too little is free); prints as measure does, or "skipped - -".
torch_measure() {
    local name=$1 n=$2 avail limit_kb
    avail=$(available_gb)
    if [ "$n" -ge 100000 ] && [ "$avail" -lt "${TORCH_150K_MIN_GB:-16}" ]; then
        echo "  (PyTorch's $name skipped: ${avail} GB available)" >&2
        echo "skipped - -"
    else
        limit_kb=$(( (avail - ${TORCH_SPARE_GB:-3}) * 1048576 ))
        # TORCH_MAX_GB: a lower ceiling, on a machine shared with others.
        [ -n "${TORCH_MAX_GB:-}" ] && [ "$limit_kb" -gt $(( TORCH_MAX_GB * 1048576 )) ] && limit_kb=$(( TORCH_MAX_GB * 1048576 ))
        (ulimit -v "$limit_kb"; measure "$name" torch "$PYTHON" bench/pytorch_reference.py --only "$name" --repeat "$repeat")
    fi
}
# rust_measure NAME: the gimp-rs side of a successor's step; under a virtual-memory limit of
# $GIMP_MAX_GB when set (the successors' 150,000-patch steps can outgrow a shared machine).
rust_measure() {
    if [ -n "${GIMP_MAX_GB:-}" ]; then
        (ulimit -v $(( GIMP_MAX_GB * 1048576 )); measure "$1" rust "$bin"/bench_steps --only "$1" --repeat "$repeat")
    else
        measure "$1" rust "$bin"/bench_steps --only "$1" --repeat "$repeat"
    fi
}
if [ "$only_succ" != 1 ]; then
echo
printf '%-22s%12s%12s%12s%12s%9s%9s\n' "whole-bag step" "gimp-rs (s)" "PyTorch (s)" "gimp-rs GiB" "PyTorch GiB" "time" "memory"
for step in finetune_step transmil_step clam_sb_step; do
    for n in $sizes; do
        name=${step}_$n
        read -r rs rm _ < <(measure "$name" rust "$bin"/bench_steps --only "$name" --repeat "$repeat")
        avail=$(available_gb)
        if [ "$n" -ge 100000 ] && [ "$avail" -lt "${TORCH_150K_MIN_GB:-16}" ]; then
            ts="skipped"; tm="(${avail} GB free)"
        else
            limit_kb=$(( (avail - ${TORCH_SPARE_GB:-3}) * 1048576 ))
            read -r ts tm _ < <(ulimit -v "$limit_kb"; measure "$name" torch "$PYTHON" bench/pytorch_reference.py --only "$name" --repeat "$repeat")
        fi
        python3 - "$name" "$rs" "$ts" "$rm" "$tm" <<'PY'
import sys
name, rs, ts, rm, tm = sys.argv[1:]
def num(v):
    try:
        return float(v)
    except ValueError:
        return None
ratio = lambda a, b: f"{num(a) / num(b):.2f}" if num(a) and num(b) else "-"
# A failed PyTorch step stopped at its limit: its real peak is higher, the ratio an upper bound.
mem = ratio(rm, tm) if ts != "failed" or not num(tm) else "<" + ratio(rm, tm)
print(f"{name:<22}{rs:>12}{ts:>12}{rm:>12}{tm:>12}{ratio(rs, ts):>9}{mem:>9}")
PY
    done
done
fi

[ "${SUCCESSORS:-1}" = 0 ] && exit 0
succ_sizes=${SUCCESSOR_SIZES:-6000 150000}
[ "$skip150" = 1 ] && succ_sizes=${succ_sizes//150000/}
echo
echo "GiMP's successors, one training step ($(nproc) cores; load: $(uptime | sed 's/.*load average: //'))"
printf '%-28s%12s%12s%8s%12s%12s%8s\n' "computation" "gimp-rs (s)" "PyTorch (s)" "ratio" "gimp-rs MB" "PyTorch MB" "ratio"
names=""
for step in ${SUCCESSOR_STEPS:-tangle_pretrain_step tangle_step survpath_step survpath_whole_step mmp_step}; do
    # A name with its size (tangle_step_24000) runs as it is.
    case $step in *_[0-9]*) names="$names $step"; continue ;; esac
    # TANGLE's pre-training: batches of 64 patients (the reference's) and 8, 2048 patches each.
    if [ "$step" = tangle_pretrain_step ]; then names="$names ${step}_64 ${step}_8"; continue; fi
    for n in $succ_sizes; do names="$names ${step}_$n"; done
done
for name in $names; do
    n=${name##*_}
    case $name in tangle_pretrain_step_*) n=$(( n * 2048 )) ;; esac
    read -r rs _ rm < <(rust_measure "$name")
    read -r ts _ tm < <(torch_measure "$name" "$n")
    python3 - "$name" "$rs" "$ts" "$rm" "$tm" <<'PY'
import sys
name, rs, ts, rm, tm = sys.argv[1:]
def num(v):
    try:
        return float(v)
    except ValueError:
        return None
ratio = lambda a, b: f"{num(a) / num(b):.2f}" if num(a) and num(b) else "-"
# A failed PyTorch step stopped at its limit: its real peak is higher, the ratio an upper bound.
mem = ratio(rm, tm) if ts != "failed" or not num(tm) else "<" + ratio(rm, tm)
print(f"{name:<28}{rs:>12}{ts:>12}{ratio(rs, ts):>8}{rm:>12}{tm:>12}{mem:>8}")
PY
done
