#!/usr/bin/env bash
# Bring a committed sweep up to date after a variant's kernel changed, on the GPU of that sweep: the
# variant's GPU tests and every config of it against the reference at a size where a persistent grid
# loops (check_all_configs --b 50 --s-q 3: 150 tokens), then its rows forgotten
# (benchmarks/forget_variant.py) and the store resumed (only that variant is timed again; the final
# stage re-times each workload's leaders side by side), the policy exported and benchmarked against
# the shipped one.  Stops after a failed test or check: nothing is re-swept on a kernel that is wrong.
# Usage on the device machine, wheels from ../shared/tools/device-wheels in .whl/:
#   bash benchmarks/resweep_variant.sh [VARIANT] [STORE]   (default ws_sm90, the store of this GPU)
# One call of the device tool runs at most 10 minutes, hence phases (PHASE, default all):
#   check  the tests and every config (~5 min);
#   sweep  forget + resume + export + verify-policy + benchmark (~8 min; cut short, it exports nothing
#          and resumes with STORE=<its sweep.sqlite, carried> FORGET=0 PHASE=sweep). FORGET=0 on the committed store
#          re-times only what changed: a resume forgets every variant whose kernel sources changed
#          (after a change to shared kernel files that is every decode variant: ~7.5 min on an H100);
#          FORGET=all forgets every variant of every op (a store whose sweep recorded no kernel versions,
#          such as the H200's of 2026-12-05, cannot tell what changed); FORGET=decode every decode variant
#          (such a store after changes to the decode kernels alone: the H200's since 2026-12-05);
#   quick  one short call when device time is scarce (QUICK_S seconds, default 540): the tests (ws_sm90's
#          persistent-grid test first and on its own, where any failure or cut stops: a hang looks like
#          a cut; then the rest, where a time-limit cut goes on and a failure stops), the shipped policy's plans and a few of the
#          variant's configs timed on the new kernel beside the seed and the floor (bench_decode
#          --policy SHIPPED --before SHIPPED, BENCH_ARGS e.g. "--quick --heads 64 128"), then the
#          sweep for the time left unless a plan disagreed with the reference (each timed candidate is checked against the reference on the
#          sweep's inputs; resume it later as above, export on any machine).
# Results under $OUT: pytest.log, check_all_configs-*.json, sweep.{log,sqlite}, policy.json, verify-policy.log,
# bench_decode-*.
set -uo pipefail
variant=${1:-ws_sm90}
t0=$(date +%s)
phase=${PHASE:-all}
case "$phase" in check|sweep|all|quick) ;; *) echo "PHASE=$phase: not one of check, sweep, all, quick"; exit 2;; esac
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
work=$(mktemp -d)
export TRITON_CACHE_DIR=$work/triton
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader)
nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader
date -u +%FT%TZ
case "$gpu" in *H200*) g=sm90-h200;; *H100*) g=sm90-h100;; *) echo "no committed store for $gpu"; exit 2;; esac
store=${2:-${STORE:-benchmarks/results/sweep-$g.sqlite}}
shipped=dsv4_tune/policies/data/$g.json
tests=tests/test_sparse_decode.py; [ "$variant" = ws_sm90 ] && tests=tests/test_ws_sm90.py
elapsed() { echo $(( $(date +%s) - t0 )); }

if [ "$phase" != sweep ]; then
  if [ "$variant" = ws_sm90 ]; then  # the persistent grid first, on its own: a hang there must not pass as a cut
    timeout 120 python3 -m pytest -v -m gpu "$tests" -k persistent -p no:cacheprovider > "$OUT/pytest-persist.log" 2>&1
    rc=$?; echo "persistent test rc=$rc at $(elapsed) s"; tail -2 "$OUT/pytest-persist.log"; [ $rc -eq 0 ] || exit 3
    only=(-k "not persistent")
  else
    only=()
  fi
  timeout "${TEST_LIMIT_S:-150}" python3 -m pytest -v -m gpu "$tests" "${only[@]}" -p no:cacheprovider > "$OUT/pytest.log" 2>&1
  rc=$?; echo "pytest rc=$rc at $(elapsed) s"; tail -3 "$OUT/pytest.log"
  [ $rc -eq 0 ] || { [ $rc -eq 124 ] && [ "$phase" = quick ]; } || exit 3
fi
if [ "$phase" = check ] || [ "$phase" = all ]; then
  timeout "${CHECK_LIMIT_S:-360}" python3 benchmarks/check_all_configs.py --variants "$variant" --jobs 15 --b 50 --s-q 3 \
    --out "$OUT" > "$OUT/check.log" 2>&1
  rc=$?; echo "check rc=$rc at $(elapsed) s"; tail -4 "$OUT/check.log"; [ $rc -eq 0 ] || exit 4
fi
[ "$phase" != check ] || exit 0
if [ "$phase" = quick ]; then
  # ${BENCH_ARGS} unquoted on purpose: several arguments.
  # shellcheck disable=SC2086
  timeout "${BENCH_LIMIT_S:-200}" python3 benchmarks/bench_decode.py --policy "$shipped" --before "$shipped" \
    ${BENCH_ARGS:-} --out "$OUT" > "$OUT/bench.log" 2>&1
  rc=$?; echo "bench rc=$rc at $(elapsed) s"; tail -3 "$OUT/bench.log"
  [ $rc -eq 0 ] || [ $rc -eq 124 ] || exit 6  # a plan that disagreed with the reference: nothing is swept
fi

cp "$store" "$work/s.db"
case "${FORGET:-1}" in
  0) ;;
  all) python3 benchmarks/forget_variant.py "$work/s.db" --all | tail -1;;
  decode) python3 benchmarks/forget_variant.py "$work/s.db" --decode | tail -1;;
  *) python3 benchmarks/forget_variant.py "$work/s.db" "$variant";;
esac
limit=${SWEEP_LIMIT_S:-330}
[ "$phase" != quick ] || limit=$(( ${QUICK_S:-540} - $(elapsed) - 15 ))
[ "$limit" -gt 30 ] || { echo "no time left for the sweep"; exit 0; }
s0=$(date +%s)
COLUMNS=120 timeout "$limit" python3 -m dsv4_tune.cli sweep --db "$work/s.db" --jobs 15 > "$OUT/sweep.log" 2>&1
sweep_rc=$?
echo "sweep rc=$sweep_rc in $(( $(date +%s) - s0 )) s (resumable: run again with STORE=\$OUT/sweep.sqlite FORGET=0)"
grep -v "│" "$OUT/sweep.log" | tail -3
python3 - "$work/s.db" "$OUT/sweep.sqlite" <<'PY'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1])
src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
src.backup(sqlite3.connect(sys.argv[2]))
PY
[ "$phase" != quick ] || exit 0
[ "$sweep_rc" -ne 124 ] || { echo "sweep cut at ${limit} s: nothing exported (resume it as above)"; exit 0; }
python3 -m dsv4_tune.cli export --db "$work/s.db" --out "$OUT/policy.json" 2>&1 | tail -1
[ -f "$OUT/policy.json" ] || exit 5
timeout "${VERIFY_LIMIT_S:-60}" python3 -m dsv4_tune.cli verify-policy "$OUT/policy.json" > "$OUT/verify-policy.log" 2>&1
echo "verify-policy rc=$?"; tail -2 "$OUT/verify-policy.log"
date -u +%FT%TZ
timeout "${BENCH_LIMIT_S:-150}" python3 benchmarks/bench_decode.py --policy "$OUT/policy.json" --before "$shipped" \
  --out "$OUT" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -3 "$OUT/bench.log"
date -u +%FT%TZ
