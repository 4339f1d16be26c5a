#!/usr/bin/env bash
# Host time per eager call before and after a change of structure, side by side on one GPU machine:
# bench_overhead --host-only --dispatched of the code before the change (a copy in .before/, made with
# `git archive BASE dsv4_tune benchmarks | tar -x -C .before`) and after, alternated ROUNDS times
# (host noise moves both alike), then (GPU_TESTS=1) the GPU tests (GPU_TEST_PATHS, default tests/).
# Results: $OUT/<side><round>.json, $OUT/pytest_gpu.log.
# Usage on the device machine, wheels from ../shared/tools/device-wheels in .whl/:
#   ROUNDS=4 GPU_TESTS=0 bash benchmarks/side_by_side_host.sh
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
OUT=${OUT:-/tmp/out}
POLICY=$PWD/dsv4_tune/policies/data/sm90-h100.json
for round in $(seq 1 "${ROUNDS:-2}"); do
  for side in before after; do
    root=$PWD; [ "$side" = before ] && root=$PWD/.before
    tmp=$(mktemp -d)
    (cd "$root" && DSV4_TUNE_POLICY=$POLICY PYTHONPATH=/tmp/site:$root \
       timeout 150 python3 benchmarks/bench_overhead.py --host-only --dispatched --out "$tmp" > /dev/null 2>&1) \
      && cp "$tmp/overhead.json" "$OUT/$side$round.json" || echo "$side$round failed"
  done
done
if [ "${GPU_TESTS:-1}" = 1 ]; then
  PYTHONPATH=/tmp/site:$PWD timeout 330 python3 -m pytest -q -m gpu ${GPU_TEST_PATHS:-tests/} > "$OUT/pytest_gpu.log" 2>&1
  echo "pytest rc $?"; tail -3 "$OUT/pytest_gpu.log"
fi
