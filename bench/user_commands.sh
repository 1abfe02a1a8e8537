#!/usr/bin/env bash
# What the user's commands cost on whole slides (issue 26): the commands themselves, not library
# steps, on a synthetic cohort of six patients with one bag of PATCHES patches each (1024-d,
# 200 genes), each command under /usr/bin/time -v, one at a time.
#
#   bash bench/user_commands.sh [PATCHES]        # default 150000; iterate at 30000–50000
#
# Environment: DIR (default /tmp/gimp-user-PATCHES: the cohort and the runs; deleted unless
# KEEP=1), ONLY="train_transmil evaluate …" (a subset, by row name), STEPS=0 (skip the bench-step
# rows), BIN (default target/release/gimp-rs), THREADS (default: all cores).
#
# For every command it prints one row: wall, user and system seconds, peak resident memory
# (/usr/bin/time -v's "Maximum resident set size") and the largest anonymous memory seen
# (RssAnon of /proc/PID/status, sampled every 0.2 s: the memory-mapped feature cache and the
# binary are file-backed, the rest is anonymous), the minor page faults; then the bench step
# of the same computation on a bag of the same size (bench_steps --only NAME_PATCHES, its own
# process, the same measurements). The table ends with the machine's load (uptime).
# PyTorch has no whole-command counterpart here: its side is the step table of bench/compare.sh.
# Results and the diagnosis: docs/PERFORMANCE.md, "What the user's commands cost".
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-150000}
DIR=${DIR:-/tmp/gimp-user-$N}
BIN=${BIN:-target/release/gimp-rs}
STEPS_BIN=${STEPS_BIN:-target/release/examples/bench_steps}
T=()
[ -n "${THREADS:-}" ] && T=(--threads "$THREADS")
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# Built every time (a no-op when up to date), so a step row never comes from a stale binary;
# BIN or STEPS_BIN set by the caller are taken as they are.
if [ "$BIN" = target/release/gimp-rs ]; then cargo build --release -q -p gimp-cli; fi
if [ "${STEPS:-1}" != 0 ] && [ "$STEPS_BIN" = target/release/examples/bench_steps ]; then
    cargo build --release -q -p gimp-train --example bench_steps
fi
mkdir -p "$DIR"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$DIR"' EXIT

rows=$DIR/rows.tsv
: >"$rows"
source bench/measure.sh

echo "cohort: 6 patients × $N patches × 1024 in $DIR ($(uptime))"
if [ ! -f "$DIR/big/cohort.toml" ]; then
    "$BIN" "${T[@]}" synth --difficulty easy --size demo --patients 6 --patches "$N,$N" --dim 1024 \
        --genes 200 --seed 1 --missing-expression 0 --out "$DIR/big" >/dev/null
    "$BIN" cohort cache "$DIR/big/cohort.toml" >/dev/null
fi
cohort=$DIR/big/cohort.toml
# One epoch of each GiMP stage: gene pre-training, pre-training (windows of 6,000), fine-tuning.
cat >"$DIR/one-epoch.toml" <<'EOF'
preset = "paper"
[genes]
epochs = 1
[pretrain]
epochs = 1
[finetune]
epochs = 1
EOF
slide=$(awk -F, 'NR == 2 { print $2 }' "$DIR/big/dataset.csv")
h5=$(find "$DIR/big/features" -name "$slide.h5" | head -1)
printf 'command\twall s\tuser s\tsys s\tpeak RSS GiB\tpeak anon GiB\tminor faults M\tstatus\n'
RM=()
for arch in transmil clam_sb abmil; do
    RM=("$DIR/run_$arch")
    want "train_$arch" && measure "train_$arch" "$BIN" "${T[@]}" train "$cohort" --arch "$arch" \
        --epochs 1 --accumulate 1 --out "$DIR/run_$arch"
done
if want pretrain_genes || want pretrain || want finetune; then
    "$BIN" "${T[@]}" pretrain-genes "$cohort" --config "$DIR/one-epoch.toml" --out "$DIR/gimp" >/dev/null
fi
RM=("$DIR/gimp/pretrain")
want pretrain && measure pretrain "$BIN" "${T[@]}" pretrain "$cohort" --config "$DIR/one-epoch.toml" \
    --out "$DIR/gimp"
RM=("$DIR/gimp/finetune")
want finetune && measure finetune "$BIN" "${T[@]}" finetune "$cohort" --config "$DIR/one-epoch.toml" \
    --out "$DIR/gimp"
ckpt=$DIR/run_transmil/model.safetensors
[ -f "$ckpt" ] || ckpt=$(find "$DIR/run_transmil" -name model.safetensors 2>/dev/null | head -1 || true)
RM=()
if [ -n "$ckpt" ] && [ -f "$ckpt" ]; then
    want evaluate && measure evaluate "$BIN" "${T[@]}" evaluate "$cohort" --checkpoint "$ckpt" --split train
    want predict && measure predict "$BIN" "${T[@]}" predict --checkpoint "$ckpt" --features "$h5"
    want heatmap && measure heatmap "$BIN" "${T[@]}" heatmap --checkpoint "$ckpt" --features "$h5" \
        --patches "$DIR/big/patches/$slide.h5" \
        --out "$DIR/heatmap"
    want embed && measure embed "$BIN" "${T[@]}" embed "$cohort" --checkpoint "$ckpt" --out "$DIR/embed.tsv"
fi
RM=("$DIR/experiment")
want experiment && measure experiment "$BIN" "${T[@]}" experiment table1 "$cohort" --rows transmil \
    --epochs 1 --accumulate 1 --out "$DIR/experiment"

RM=()
if [ "${STEPS:-1}" != 0 ]; then
    for s in transmil_step clam_sb_step abmil_step finetune_step transmil_forward pretrain_step; do
        case $s in
            pretrain_step) key=pretrain_step ;;
            *) key=${s}_$N ;;
        esac
        want "$s" || continue
        measure "step:$key" "$STEPS_BIN" --only "$key" --repeat 1
    done
fi
echo "load: $(uptime)"
