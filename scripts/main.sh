#!/usr/bin/env bash
# README command one: the main job. For now it reports the GPU, arch, versions and FP8 flavour;
# with no GPU the kernels run on the Triton interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TRITON_INTERPRET=1
fi
exec dsv4-tune info "$@"
