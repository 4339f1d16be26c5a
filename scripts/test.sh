#!/usr/bin/env bash
# README command two: the whole test suite. With no GPU, kernels run on the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
exec python3 -m pytest -q "$@"
