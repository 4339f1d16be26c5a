"""What the L2 flush before each timed replay costs the kernel after it (why 'of copy' compares
with a copy timed the same way).

The benchmarks evict L2 before every CUDA-graph replay by zeroing a 256 MiB buffer
(``tuner/measure.time_graph``).  Zeroing leaves L2 full of dirty lines, and the next kernel pays to
write them back; a read-only flush leaves clean lines.  This times one device-to-device copy of
several sizes after each kind of flush and with none (back-to-back replays, where the previous
copy's writes are the dirty lines).

    python benchmarks/bench_l2_flush.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_record, print_table, result_name, save_results, time_graph

FLUSHES = {  # time_graph keywords of each kind of flush
    "zero_ (dirty L2)": {},
    "read (clean L2)": {"clean_flush": True},
    "none": {"flush_bytes": 0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    rows = []
    for mb in (4, 16, 64, 128, 512):
        src = torch.ones(mb * 2**20 // 2, dtype=torch.uint8, device="cuda")
        dst = torch.empty_like(src)
        row = {"moved_MB": mb}
        for name, kw in FLUSHES.items():
            us = time_graph(lambda dst=dst, src=src: dst.copy_(src), reps=30, **kw)["median_us"]
            row[f"{name} us"] = round(us, 1)
            row[f"{name} GB/s"] = round(mb * 2**20 / us / 1e3)
        rows.append(row)
    print_table(rows, list(rows[0]), "one copy (bytes moved = read + written) timed after each flush, median of 30")
    save_results(result_name("bench_l2_flush"), {"device": device_record(), "rows": rows}, args.out)


if __name__ == "__main__":
    main()
