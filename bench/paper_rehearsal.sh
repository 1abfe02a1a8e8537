#!/usr/bin/env bash
# The paper-size rehearsal (docs/PERFORMANCE.md, "Paper-size rehearsal"): a sample of the
# `paper`-size synthetic cohort through one epoch of each GiMP stage with the paper preset, at
# 2 threads and at 1, each stage under /usr/bin/time -v (time per epoch, peak resident memory).
#   bash bench/paper_rehearsal.sh DIR [PATIENTS]     (default 100 patients; ≈ 0.126 GB each,
#                                                     twice that with the feature cache)
# Writes DIR/cohort (the synthetic cohort), DIR/run-{2,1}t (the runs) and prints one line per
# stage and thread count. Delete DIR afterwards.
set -euo pipefail
dir=$1
patients=${2:-100}
bin=${CARGO_TARGET_DIR:-target}/release/gimp-rs
cargo build --release -q --bin gimp-rs
mkdir -p "$dir"
if [ ! -f "$dir/cohort/cohort.toml" ]; then
    nice "$bin" synth --out "$dir/cohort" --size paper --patients "$patients" --seed 0
fi
# One epoch of each stage, the paper preset otherwise.
cat >"$dir/one-epoch.toml" <<'TOML'
preset = "paper"
[genes]
epochs = 1
[pretrain]
epochs = 1
[finetune]
epochs = 1
TOML
timed() {
    local name=$1
    shift
    /usr/bin/time -v -o "$dir/$name.time" nice "$@" >"$dir/$name.log" 2>&1
    awk -v n="$name" -F': ' '/Elapsed \(wall clock\)/ { t = $2 } /Maximum resident set size/ { m = $2 }
        END { printf "%-22s %12s %10.2f GiB\n", n, t, m / 1048576 }' "$dir/$name.time"
}
# The feature cache once, before any stage, so that no epoch pays for it.
timed cache "$bin" cohort cache "$dir/cohort/cohort.toml"
for t in 2 1; do
    for stage in pretrain-genes pretrain finetune; do
        timed "${stage}-${t}t" "$bin" "$stage" "$dir/cohort/cohort.toml" --config "$dir/one-epoch.toml" \
            --threads "$t" --out "$dir/run-${t}t"
    done
done
