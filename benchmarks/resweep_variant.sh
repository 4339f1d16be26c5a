#!/usr/bin/env bash
# Bring a committed sweep up to date after a variant's kernel changed, on the GPU of that sweep, in one
# visit: the variant's GPU tests and every config of it against the reference at a size where a
# persistent grid loops (check_all_configs --b 50 --s-q 3: 150 tokens), then its rows forgotten
# (benchmarks/forget_variant.py) and the store resumed (only that variant is timed again; the final
# stage re-times each workload's leaders side by side), the policy exported and benchmarked against
# the shipped one.  Stops after a failed test or check: nothing is re-swept on a kernel that is wrong.
# Usage on the device machine, wheels from ../shared/tools/device-wheels in .whl/:
#   bash benchmarks/resweep_variant.sh [VARIANT] [STORE]   (default ws_sm90, the store of this GPU)
# One call of the device tool runs at most 10 minutes, so PHASE=check (tests + every config, ~5 min)
# and PHASE=sweep (forget + resume + export + benchmark, ~8 min) may run as two calls (default: both).
# A sweep cut short by its time limit resumes with STORE=<its sweep.sqlite> FORGET=0 PHASE=sweep.
# CHECK_ALL=0 skips check_all_configs (a short visit: tests, then the sweep, which checks each timed
# candidate against the reference on the sweep's own inputs; every config is checked at a later visit).
# Results under $OUT: pytest.log, check_all_configs-*.json, sweep.{log,sqlite}, policy.json, bench_decode-*.
set -uo pipefail
variant=${1:-ws_sm90}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
work=$(mktemp -d)
export TRITON_CACHE_DIR=$work/triton
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader)
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
date -u +%FT%TZ
case "$gpu" in *H200*) g=sm90-h200;; *H100*) g=sm90-h100;; *) echo "no committed store for $gpu"; exit 2;; esac
store=${2:-${STORE:-benchmarks/results/sweep-$g.sqlite}}
phase=${PHASE:-all}
tests=tests/test_sparse_decode.py; [ "$variant" = ws_sm90 ] && tests=tests/test_ws_sm90.py
if [ "$phase" != sweep ]; then
timeout "${TEST_LIMIT_S:-150}" python3 -m pytest -v -m gpu "$tests" -p no:cacheprovider > "$OUT/pytest.log" 2>&1
rc=$?; echo "pytest rc=$rc"; tail -3 "$OUT/pytest.log"
# A short visit (CHECK_ALL=0) goes on past tests cut by their time limit (rc 124), never past a failure.
[ $rc -eq 0 ] || { [ $rc -eq 124 ] && [ "${CHECK_ALL:-1}" = 0 ]; } || exit 3
if [ "${CHECK_ALL:-1}" = 1 ]; then
timeout "${CHECK_LIMIT_S:-280}" python3 benchmarks/check_all_configs.py --variants "$variant" --jobs 15 --b 50 --s-q 3 \
  --out "$OUT" > "$OUT/check.log" 2>&1
rc=$?; echo "check rc=$rc"; tail -4 "$OUT/check.log"; [ $rc -eq 0 ] || exit 4
fi
fi
[ "$phase" != check ] || exit 0
cp "$store" "$work/s.db"
cp "dsv4_tune/policies/data/$g.json" "$work/before.json"
[ "${FORGET:-1}" = 0 ] || python3 benchmarks/forget_variant.py "$work/s.db" "$variant"
t0=$(date +%s)
COLUMNS=120 timeout "${SWEEP_LIMIT_S:-330}" python3 -m dsv4_tune.cli sweep --db "$work/s.db" --jobs 15 > "$OUT/sweep.log" 2>&1
echo "sweep rc=$? in $(( $(date +%s) - t0 )) s (resumable: run again with STORE=\$OUT/sweep.sqlite)"
grep -v "│" "$OUT/sweep.log" | tail -3
python3 - "$work/s.db" "$OUT/sweep.sqlite" <<'PY'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1])
src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
src.backup(sqlite3.connect(sys.argv[2]))
PY
python3 -m dsv4_tune.cli export --db "$work/s.db" --out "$OUT/policy.json" 2>&1 | tail -1
[ -f "$OUT/policy.json" ] || exit 5
date -u +%FT%TZ
timeout "${BENCH_LIMIT_S:-150}" python3 benchmarks/bench_decode.py --policy "$OUT/policy.json" --before "$work/before.json" \
  --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -3 "$OUT/bench.log"
date -u +%FT%TZ
