#!/usr/bin/env bash
# The viewer's browser test (test/browser.mjs): installs what it needs when it is missing —
# Debian's chromium (apt-get), the npm packages of package-lock.json (npm ci), the release
# binary (cargo build) — then drives headless Chromium against `gimp-rs view`.
set -euo pipefail
web="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$web/../../.." && pwd)"
if [ ! -x /usr/bin/chromium ]; then
  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
fi
if [ ! -f "$web/node_modules/playwright-core/package.json" ]; then
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
fi
target="${CARGO_TARGET_DIR:-$repo/target}"
if [ -z "${GIMP_RS:-}" ]; then
  (cd "$repo" && cargo build --release --bin gimp-rs -q)
  export GIMP_RS="$target/release/gimp-rs"
fi
exec node "$web/test/browser.mjs"
