"""Shared helpers of the benchmark scripts: serving-like timing, hardware ceilings, provenance, output.

Timings replay a CUDA graph with a cold L2 (a 256 MiB buffer is zeroed before every replay),
because decode runs from a captured graph on a cache that the rest of the layer has just evicted:
that is the number serving sees, not a warm eager loop.  Ceilings (copy bandwidth, bf16 matmul
rate) are measured in the same run, so ratios do not depend on a datasheet or on clocks.

Importing this module imports ``dsv4_tune``, so a script imports it before any ``dsv4_tune``
module: it first picks where the kernels run (Triton decides interpreter or compiler when they are
defined): the interpreter for ``--smoke`` on a machine without a GPU, unless ``TRITON_INTERPRET``
is set already.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

# Before Triton and dsv4_tune are imported: Triton reads it when they are (see the module docstring).
os.environ.setdefault("TRITON_INTERPRET", "1" if "--smoke" in sys.argv and not torch.cuda.is_available() else "0")

import triton

from dsv4_tune.policies.gpu import detect
from dsv4_tune.tuner.measure import time_eager, time_graph, timing_available

RESULTS_DIR = Path(__file__).resolve().parent / "results"
INTERPRETER_NOTE = "interpreter: no timing"


def copy_bandwidth_gbps(nbytes: int = 2**30) -> float:
    """Device-to-device copy rate in GB/s (bytes read + written), the bandwidth a gather can hope for."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda").fill_(1)
    dst = torch.empty_like(src)
    t = time_eager(lambda: dst.copy_(src), flush_bytes=0, reps=20, warmup=3)["median_us"]
    return 2 * nbytes / (t * 1e-6) / 1e9


def copy_us(moved_bytes: int) -> float:
    """Median time of a device-to-device copy that moves ``moved_bytes`` (read + written), timed as
    the kernels are (CUDA-graph replay right after the same L2 flush).  The flush leaves L2 full of
    dirty lines whose write-back every kernel after it pays for; a copy timed the same way pays it
    too, so ``copy_us / kernel_us`` compares like with like, where the 1-GiB copy rate (no flush)
    does not.  The smaller median of two measurements: interference from other tenants only adds
    time, and an inflated baseline would flatter every kernel compared with it (one run on a noisy
    H100 timed a 4.5 MB copy at 24 us, its usual 9)."""
    n = max(16, moved_bytes // 2)
    src = torch.ones(n, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return min(time_graph(lambda: dst.copy_(src))["median_us"] for _ in range(2))


def bf16_matmul_tflops(n: int = 8192) -> float:
    """Dense bf16 matmul rate in TFLOP/s (2 n^3 flops per product): the compute ceiling."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    c = torch.empty_like(a)
    t = time_eager(lambda: torch.mm(a, b, out=c), flush_bytes=0, reps=10, warmup=3)["median_us"]
    return 2 * n**3 / (t * 1e-6) / 1e12


def device_record() -> dict[str, Any]:
    """Provenance of a result file: which device, toolchain, date and command produced it."""
    gpu = detect()
    real = timing_available()
    return {
        "device": torch.cuda.get_device_name() if real else "cpu (Triton interpreter)",
        "arch": gpu.arch,
        "sm_count": torch.cuda.get_device_properties(0).multi_processor_count if real else 0,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
    }


def result_name(script: str) -> str:
    """File stem of a result: the script and the GPU arch, so runs on different GPUs never collide."""
    arch = detect().arch if timing_available() else "interpreter"
    return f"{script}-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", arch)


def default_out_dir(smoke: bool) -> Path:
    """``benchmarks/results/``; smoke runs (not real measurements) go to a temporary folder."""
    return Path(tempfile.gettempdir()) / "dsv4_tune_smoke" if smoke else RESULTS_DIR


def parse_gpu_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, bool]:
    """(arguments, whether timings are real) of a GPU benchmark; exits unless there is a GPU or
    ``--smoke`` was asked for."""
    args = parser.parse_args()
    timed = timing_available()
    if not timed and not args.smoke:
        raise SystemExit("no GPU (or TRITON_INTERPRET=1): only --smoke can run here")
    return args, timed


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; the Triton interpreter if no GPU")
    parser.add_argument("--out", type=Path, default=None, help="result folder (default benchmarks/results/)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs")


def save_results(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``out_dir/name.json`` (sorted keys, indented; default ``benchmarks/results/``) and return its path."""
    out_dir = RESULTS_DIR if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        mag = abs(value)
        if mag >= 100:
            return f"{value:.0f}"
        if mag >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if mag < 1 else f"{value:.2f}"
    return str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """Print ``rows`` as a plain aligned table (numbers right-aligned): readable in a terminal or a file."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), int | float) or r.get(c) is None for r in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True))

    print(f"\n{title}")
    print(line(columns).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(line(row).rstrip())
    sys.stdout.flush()
