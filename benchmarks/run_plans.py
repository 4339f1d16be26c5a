"""Run decode plans on one benchmark point, checked, for a profiler to watch (``ncu``, ``nsys``).

Each plan is checked against the reference on the point's inputs (those of ``bench_decode``), then,
if right, called ``--calls`` times and synchronized: under ``ncu -k regex:KERNEL`` the first two
profiled launches are the check's (on the GPU it calls twice), the rest the plain calls'.  Nothing is
timed here; ``ncu_stalls.py`` reads the result.

    ncu --clock-control none --section SourceCounters --warp-sampling-interval 0 -k regex:_ws_decode -c 1 \\
        -o rep python benchmarks/run_plans.py --case "64:SWA 128:256" \\
        --plans '[["ws_sm90", {"BLOCK_N": 64, "KSTAGES": 2, "PIPE": 0, "SPLIT_K": 1, "STAGED": 1, "PERSIST": 1}]]'
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, metavar="HEADS:LAYER:T", help='e.g. "64:SWA 128:256"')
    ap.add_argument("--plans", required=True, type=json.loads, metavar="JSON", help="a list of [variant, config]")
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    import torch

    from benchmarks.bench_decode import parse_point, point_case, point_form
    from dsv4_tune.registry.workload import Plan

    if (point := parse_point(args.case)) is None:
        print(f"run_plans: --case {args.case!r} is not {point_form()}")
        return 2
    if not torch.cuda.is_available():
        print("run_plans: needs a GPU")
        return 2
    case = point_case(*point, args.seed)
    failed = False
    for variant, config in args.plans:
        plan = Plan.make(variant, config)
        status, error, _ = case.check(plan)
        if status == "ok":
            run = case.timer(plan)
            for _ in range(args.calls):
                run()
            torch.cuda.synchronize()
        print(f"{plan}: {status} {(error or '')[:160]}", flush=True)
        failed |= status != "ok"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
