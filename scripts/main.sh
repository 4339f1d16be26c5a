#!/usr/bin/env bash
# README command one: the main job. Reports the GPU, then sweeps kernel configs on it into dsv4-tune.db;
# with no GPU it runs a tiny sweep on the Triton interpreter, labelled as not a real measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
dsv4-tune info
exec dsv4-tune sweep --gpu auto "$@"
