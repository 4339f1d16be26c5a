#!/usr/bin/env bash
# The H200 sweep deepened with the ws_sm90 variant (issue 29): every ws_sm90 config checked first
# (check_all_configs), then the committed H200 store resumed, so that only the new candidates are
# measured and the final stage re-times the best three of every changed workload side by side.
# Usage on the device machine, wheels from ../shared/tools/device-wheels in .whl/:
#   bash benchmarks/sweep_ws_resume.sh [STORE]   (default: benchmarks/results/sweep-sm90-h200.sqlite)
# Results: $OUT/sweep-ws.{sqlite,log}, $OUT/policy-ws.json, $OUT/check_all_configs-ws_sm90.json.
set -uo pipefail
store=${1:-benchmarks/results/sweep-sm90-h200.sqlite}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
work=$(mktemp -d)
export TRITON_CACHE_DIR=$work/triton
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
date -u +%FT%TZ
timeout "${CHECK_LIMIT_S:-150}" python3 benchmarks/check_all_configs.py --variants ws_sm90 --jobs 15 --out "$OUT" 2>&1 | tail -14
cp "$store" "$work/s.db"
t0=$(date +%s)
COLUMNS=120 timeout "${SWEEP_LIMIT_S:-330}" python3 -m dsv4_tune.cli sweep --db "$work/s.db" --jobs 14 > "$OUT/sweep-ws.log" 2>&1
echo "sweep rc=$? in $(( $(date +%s) - t0 )) s"
tail -5 "$OUT/sweep-ws.log"
python3 -m dsv4_tune.cli export --db "$work/s.db" --out "$OUT/policy-ws.json" 2>&1 | tail -2
python3 -m dsv4_tune.cli status --db "$work/s.db" 2>&1 | tail -8
python3 - "$work/s.db" "$OUT/sweep-ws.sqlite" <<'PY'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1])
src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
src.backup(sqlite3.connect(sys.argv[2]))
PY
python3 - "$OUT/policy-ws.json" <<'PY'
import json, sys, collections
try:
    p = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no policy: {e}")
c = collections.Counter(s["plan"]["variant"] for cl in p["classes"] for s in cl["segments"])
print("segments by variant:", dict(c))
PY
