#!/usr/bin/env bash
# The default sweep on this GPU machine, in one process or with one worker per GPU (issue 24), each
# from a cold Triton cache, with its wall time and its exported policy.  One device visit per mode
# (each fits the 10-minute call); compare the two policies afterwards with `dsv4-tune diff`.
# Usage on the device machine, wheels from ../shared/tools/device-wheels in .whl/:
#   bash benchmarks/sweep_devices.sh one       # dsv4-tune sweep --fresh --jobs 14
#   bash benchmarks/sweep_devices.sh devices   # dsv4-tune sweep --fresh --jobs 14 --devices all
# Results: $OUT/sweep-<mode>.{sqlite,log,json} and $OUT/policy-<mode>.json.
set -uo pipefail
mode=${1:?one or devices}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
work=$(mktemp -d)
export TRITON_CACHE_DIR=$work/triton  # cold: both modes compile every kernel
extra=(); [ "$mode" = devices ] && extra=(--devices all)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
t0=$(date +%s.%N)
COLUMNS=120 timeout "${SWEEP_LIMIT_S:-540}" python3 -m dsv4_tune.cli sweep --db "$work/s.db" --fresh --jobs 14 \
  "${extra[@]}" > "$OUT/sweep-$mode.log" 2>&1
rc=$?
t1=$(date +%s.%N)
python3 -m dsv4_tune.cli export --db "$work/s.db" --out "$OUT/policy-$mode.json" >> "$OUT/sweep-$mode.log" 2>&1
python3 - "$work/s.db" "$OUT/sweep-$mode.sqlite" <<'EOF'
import sqlite3, sys
src = sqlite3.connect(sys.argv[1])
src.execute("PRAGMA wal_checkpoint(TRUNCATE)")
dst = sqlite3.connect(sys.argv[2])
src.backup(dst)
EOF
python3 - "$mode" "$rc" "$t0" "$t1" "$OUT/sweep-$mode.json" <<'EOF'
import json, subprocess, sys, datetime
mode, rc, t0, t1, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
json.dump({"mode": mode, "rc": rc, "wall_s": round(t1 - t0, 1), "gpus": gpu.splitlines(),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": f"bash benchmarks/sweep_devices.sh {mode}"}, open(out, "w"), indent=1)
print(open(out).read())
EOF
tail -4 "$OUT/sweep-$mode.log"
