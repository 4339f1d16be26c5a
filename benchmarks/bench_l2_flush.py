"""What the L2 flush before each timed replay costs the kernel after it (why 'of copy' compares
with a copy timed the same way).

The benchmarks evict L2 before every CUDA-graph replay by zeroing a 256 MiB buffer.  Zeroing leaves
L2 full of dirty lines, and the next kernel pays to write them back; a read-only flush leaves clean
lines.  This times one device-to-device copy of several sizes after each kind of flush and with
none (back-to-back replays, where the previous copy's writes are the dirty lines).

    python benchmarks/bench_l2_flush.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_record, print_table, result_name, save_results

FLUSH_BYTES = 256 * 2**20


def _graph(fn) -> torch.cuda.CUDAGraph:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g


def _median_us(g: torch.cuda.CUDAGraph, flush, reps: int = 30) -> float:
    times = []
    for _ in range(reps):
        if flush is not None:
            flush()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    buf = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    flushes = {"zero_ (dirty L2)": buf.zero_, "read (clean L2)": lambda: buf.max(), "none": None}
    rows = []
    for mb in (4, 16, 64, 128, 512):
        src = torch.ones(mb * 2**20 // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        g = _graph(lambda dst=dst, src=src: dst.copy_(src))
        row = {"moved_MB": mb}
        for name, flush in flushes.items():
            us = _median_us(g, flush)
            row[f"{name} us"] = round(us, 1)
            row[f"{name} GB/s"] = round(mb * 2**20 / us / 1e3)
        rows.append(row)
    print_table(rows, list(rows[0]), "one copy (bytes moved = read + written) timed after each flush, median of 30")
    save_results(result_name("bench_l2_flush"), {"device": device_record(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
