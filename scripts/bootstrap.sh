#!/usr/bin/env bash
# Installs what dsv4-tune needs, once. Never replaces a torch that is already installed (a GPU box
# keeps its own); with no torch at all it installs torch==2.13.0 first, so that the package's
# unpinned torch range cannot pull a CUDA build of several GB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch==2.13.0"
fi
if ! command -v dsv4-tune >/dev/null 2>&1 || \
   ! "$PY" -c "import triton, numpy, pydantic, sqlite_utils, typer, rich, pytest, hypothesis" 2>/dev/null; then
  "$PY" -m pip install -q -e ".[test,report,ray]"
else  # the optional extras: `dsv4-tune report` needs matplotlib, `sweep --ray` Ray (its tests skip without)
  "$PY" -c "import matplotlib" 2>/dev/null || "$PY" -m pip install -q "matplotlib>=3.7" || \
    echo "note: matplotlib not installed: \`dsv4-tune report\` is unavailable"
  "$PY" -c "import ray" 2>/dev/null || "$PY" -m pip install -q "ray>=2.9" || \
    echo "note: Ray not installed: \`dsv4-tune sweep --ray\` is unavailable"
fi
