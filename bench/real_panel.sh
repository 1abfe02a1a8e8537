#!/usr/bin/env bash
# The real-data panel of docs/REAL_DATA.md in one command:
#
#   bash bench/real_panel.sh [--only NAME,...] [--seeds 1,2,3]
#
# 1. a virtual environment with the packages that ship the data (target/panel-venv; made once);
# 2. the eighteen cohort folders, built from them by tools/build_real_panel.py (target/real-panel;
#    built once: delete the folder to rebuild, as after a cohort is added);
# 3. gimp-rs built from this checkout (target/release/gimp-rs), if missing;
# 4. bench/real_panel.py: for every cohort 5 stratified folds x 3 seeds of the linear baseline,
#    SNN and GroupMSA with every default, and the scikit-learn / scikit-survival reference; the
#    table goes to target/real-panel/results/real_panel.md (and .json).
#
# Environment: PANEL_VENV, PANEL_DIR and GIMP override the three paths above; PANEL_JOBS (default:
# the number of cores) runs the deep models' experiment as that many concurrent shards, one
# thread each on two cores (the results do not depend on it; bench/real_panel.py, sh_sharded).
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${PANEL_VENV:-target/panel-venv}"
panel="${PANEL_DIR:-target/real-panel}"
gimp="${GIMP:-target/release/gimp-rs}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sksurv, SurvSet, sklearn, pandas" 2>/dev/null; then
    echo "== installing the data packages into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "scikit-survival==0.28.0" "survset==0.2.11" pandas scikit-learn
fi
# ISLP ships the Khan data; only its data files are read, so none of its (large) dependencies.
if ! "$venv/bin/python" -c "from importlib.resources import files; assert files('ISLP').joinpath('data', 'Khan_xtrain.csv').is_file()" 2>/dev/null; then
    "$venv/bin/pip" install -q --no-deps "ISLP==0.6.0"
fi

if [ ! -f "$panel/panel.json" ]; then
    echo "== building the cohorts into $panel"
    "$venv/bin/python" tools/build_real_panel.py "$panel"
fi

if [ ! -x "$gimp" ]; then
    echo "== building $gimp"
    CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}" cargo build --release --bin gimp-rs
fi

echo "== running the panel"
"$venv/bin/python" bench/real_panel.py "$panel" --gimp "$gimp" "$@"
