#!/usr/bin/env bash
# Which censored patients GiMP's gene-induced triplets should use in a survival run
# (docs/DESIGN.md §34): the demo preset's three stages with the NLL loss on the synthetic demo
# cohort with survival columns (bench/survival_columns.py), once per setting of
# `pretrain.censored` and seed; prints the test c-index of each run and the mean per setting.
#
#   bash bench/survival_triplets.sh [OUT] (SEEDS=3, HORIZON=4, GIMP_RS=target/release/gimp-rs)
#
# HORIZON is the censoring horizon over the median event time (4: a third censored; 1.5: two
# thirds, as in TCGA).
set -euo pipefail
OUT=${1:-/tmp/gimp-survival-triplets}
SEEDS=${SEEDS:-3}
HORIZON=${HORIZON:-4}
BIN=${GIMP_RS:-target/release/gimp-rs}
HERE=$(cd "$(dirname "$0")" && pwd)
if [ ! -f "$OUT/cohort/cohort.toml" ]; then
  "$BIN" synth --out "$OUT/cohort" --seed 0 --threads 2 >/dev/null
  python3 "$HERE/survival_columns.py" "$OUT/cohort" --seed 0 --horizon "$HORIZON"
fi
COHORT="$OUT/cohort/cohort.toml"
for censored in certain_bin leave_out observed_bin; do
  printf 'preset = "demo"\n[task]\nkind = "survival"\n[pretrain]\ncensored = "%s"\n' "$censored" \
    >"$OUT/$censored.toml"
  for seed in $(seq 0 $((SEEDS - 1))); do
    run="$OUT/$censored/seed$seed"
    if [ ! -f "$run/finetune/metrics.json" ]; then
      mkdir -p "$run"
      for stage in pretrain-genes pretrain finetune; do
        "$BIN" "$stage" "$COHORT" --config "$OUT/$censored.toml" --seed "$seed" --out "$run" \
          >"$run/$stage.log" 2>&1
      done
    fi
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(sys.argv[2], sys.argv[3], "test c-index %.3f" % m["test_survival"]["cindex"]["value"])' \
      "$run/finetune/metrics.json" "$censored" "seed$seed"
  done
done | tee "$OUT/results.txt"
python3 - "$OUT/results.txt" <<'PY'
import collections, statistics, sys
by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, _, *_, value = line.split()
    by[name].append(float(value))
for name, v in by.items():
    sd = statistics.stdev(v) if len(v) > 1 else 0.0
    print(f"{name:<13} test c-index {statistics.mean(v):.3f} ± {sd:.3f} over {len(v)} seeds")
PY
