"""Where a kernel's warps wait, from an Nsight Compute source page: per kernel, the warp-state samples
by stall reason, the instructions with the most samples, and the samples per run of instructions
(prologue, gather, dequant, MMA, epilogue show as separate runs).  The samples of all warps add up,
so a warpgroup that waits for another shows as ``barrier`` / ``long_sb`` at its wait.

    ncu --clock-control none --section SourceCounters --warp-sampling-interval 0 -k regex:KERNEL -o rep CMD
    ncu -i rep.ncu-rep --page source --csv --print-source sass > source.csv
    python benchmarks/ncu_stalls.py source.csv [--kernel N] [--top 25] [--step 100]
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import Path

SAMPLES = "Warp Stall Sampling (All Samples)"


def kernels(path: Path) -> list[tuple[str, list[dict[str, str]]]]:
    """(kernel name, one dict per SASS instruction) per profiled launch, in the file's order."""
    out: list[tuple[str, list[dict[str, str]]]] = []
    header: list[str] | None = None
    with path.open(newline="") as f:
        for row in csv.reader(f):
            if row and row[0] == "Kernel Name":
                out.append((row[1], []))
                header = None
            elif row and row[0] == "Address":
                header = row
            elif out and header is not None and len(row) == len(header):
                out[-1][1].append(dict(zip(header, row, strict=True)))
    return out


def _count(ins: dict[str, str], key: str) -> int:
    """A sample count of the CSV ("1,234" and "3.0" read as numbers; empty as 0)."""
    value = (ins.get(key) or "0").replace(",", "")
    try:
        return int(float(value))
    except ValueError:
        return 0


def report(name: str, ins: list[dict[str, str]], top: int, step: int) -> str:
    reasons = [k for k in (ins[0] if ins else {}) if k.startswith("stall_") and "Not Issued" not in k]
    total = collections.Counter({r[6:]: sum(_count(i, r) for i in ins) for r in reasons})
    lines = [f"{name}: {len(ins)} instructions, {sum(_count(i, SAMPLES) for i in ins)} samples",
             "  by reason: " + ", ".join(f"{r} {n}" for r, n in total.most_common(10) if n)]
    lines.append("  most sampled instructions:")
    for n, i in sorted(enumerate(ins), key=lambda x: -_count(x[1], SAMPLES))[:top]:
        why = sorted(((_count(i, r), r[6:]) for r in reasons), reverse=True)[:2]
        lines.append(f"    #{n:<5d}{_count(i, SAMPLES):7d}  {i['Source'].strip()[:58]:58s} "
                     + ", ".join(f"{r} {c}" for c, r in why if c))
    lines.append(f"  samples per {step} instructions:")
    for a in range(0, len(ins), step):
        seg = ins[a:a + step]
        why = collections.Counter({r[6:]: sum(_count(i, r) for i in seg) for r in reasons})
        ops = collections.Counter(i["Source"].split()[1] if i["Source"].lstrip().startswith("@") else
                                  i["Source"].split()[0] for i in seg if i["Source"].strip())
        lines.append(f"    {a:5d}-{a + len(seg) - 1:<5d}{sum(_count(i, SAMPLES) for i in seg):7d}  "
                     + ", ".join(f"{r} {c}" for r, c in why.most_common(3) if c) + "  | "
                     + ", ".join(f"{o} {c}" for o, c in ops.most_common(5)))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source_csv", type=Path)
    ap.add_argument("--kernel", type=int, action="append", help="launch index in the file (default: all)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--step", type=int, default=100)
    args = ap.parse_args()
    if args.step < 1 or args.top < 0:
        ap.error("--step: at least 1; --top: at least 0")
    if not args.source_csv.is_file():
        ap.error(f"source_csv: {args.source_csv} does not exist")
    found = kernels(args.source_csv)
    if not found:
        ap.error(f"source_csv: no kernel in {args.source_csv} (write it with --page source --csv)")
    for n in args.kernel or range(len(found)):
        if not 0 <= n < len(found):
            ap.error(f"--kernel: {n} not in 0..{len(found) - 1}")
        print(f"[{n}] " + report(*found[n], args.top, args.step))


if __name__ == "__main__":
    main()
