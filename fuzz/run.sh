#!/usr/bin/env bash
# Fuzzes every reader for SECONDS each (default 600), one target after another, starting from the
# test files of the repository as seeds; a failing input (crash, hang, or more than 2 GB of memory) is kept in
# fuzz/artifacts/TARGET/ and makes the script exit 1 after the other targets ran.
#   bash fuzz/run.sh [SECONDS] [TARGET ...]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). cargo-fuzz asks for a nightly compiler; on a
# stable-only machine RUSTC_BOOTSTRAP=1 (set here) lets the stable compiler accept its flags.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(h5 pt npy safetensors tables gdc config slide)
export RUSTC_BOOTSTRAP=1
seed() { # seed TARGET FILES...
  local t=$1; shift
  mkdir -p "fuzz/corpus/$t"
  for f in "$@"; do [ -f "$f" ] && cp -n "$f" "fuzz/corpus/$t/" 2>/dev/null || true; done
}
d=crates/gimp-io/tests/data
seed h5 $d/reference/*.h5 $d/bad/*.h5 crates/gimp-models/tests/fixtures/abmil_bag.h5
seed pt $d/reference/*.pt $d/bad/*.pt
seed npy $d/reference/*.npy $d/bad/*.npy
seed safetensors $d/reference/*.safetensors $d/bad/*.safetensors crates/gimp-models/tests/fixtures/abmil_io.safetensors
seed tables $d/bad/*.csv $d/bad/matrix_*.tsv $d/bad/matrix_truncated.tsv.gz
seed gdc $d/bad/star_*.tsv $d/bad/sample_sheet_missing_col.tsv $d/bad/legacy_three_cols.FPKM.txt
seed config fuzz/seeds/config/*.toml
seed slide crates/gimp-slide/tests/fixtures/*.tif crates/gimp-slide/tests/fixtures/jp2k/*.svs \
  crates/gimp-slide/tests/fixtures/dicom/jpeg/level2.dcm crates/gimp-slide/tests/fixtures/dicom/jpeg2000/level2.dcm
failed=()
for t in "${targets[@]}"; do
  echo "== $t ($secs s)"
  # -rss_limit_mb: a reader must refuse a huge allocation from the header, not attempt it.
  cargo fuzz run --sanitizer none -O "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=20 -max_len=1048576 -print_final_stats=1 \
    2>&1 | grep -a -E "^(#[0-9]+ +DONE|Done|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY|artifact_prefix|Test unit written)" || true
  if [ -n "$(find fuzz/artifacts/"$t" -name "crash-*" -o -name "oom-*" -o -name "timeout-*" 2>/dev/null)" ]; then
    echo "$t: found a failing input in fuzz/artifacts/$t"
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failing inputs for: ${failed[*]}"
  exit 1
fi
echo "no crash, hang or over-limit allocation in ${targets[*]}"
