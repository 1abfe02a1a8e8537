#!/usr/bin/env bash
# What this machine's kernel charges for first-touching fresh memory, with no gimp-rs code in the
# way: a process maps SIZE GiB of anonymous memory and writes one byte per 4 KiB page, under
# /usr/bin/time. The system time it reports is the floor under any command that peaks at SIZE
# GiB (every page of a process's peak is zeroed by the kernel on first touch), to read beside
# bench/user_commands.sh's rows (docs/PERFORMANCE.md, "What the user's commands cost").
#
#   bash bench/touch_memory.sh 0.8 1.7 6.5      # sizes in GiB, each run twice
set -euo pipefail
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(0.8 1.7 6.5)
for size in "${sizes[@]}"; do
    for run in 1 2; do
        /usr/bin/time -f "$size GiB (run $run): user %U s, sys %S s, %R minor faults" \
            python3 -c '
import mmap, sys
n = int(float(sys.argv[1]) * 2**30)
m = mmap.mmap(-1, n)
for i in range(0, n, 4096):
    m[i] = 1
' "$size"
    done
done
