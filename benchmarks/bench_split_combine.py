"""Split-K with the combine as a second launch, as a programmatic dependent launch, or merged in
the split kernel (one launch).

For each class of the DSV4 grid (with topk_length; h_q 64 / 128; SWA only, C128, C4) and small T,
the shipped policy's split-K config (or the variant's default where the policy picks no split)
runs as ``fused_splitk`` (two plain launches), as ``fused_splitk`` with PDL = 1 (the combine
launched as a programmatic dependent: CUDA sm90+) and as ``fused_splitk_inline`` with the same
attention config and SPLIT_K (one launch).  GPU time by CUDA-graph replay on a cold L2, the three
interleaved; "two/X" > 1 means X is faster than two plain launches, with its 90% bootstrap interval.

    python benchmarks/bench_split_combine.py [--tokens 1 4 16 64]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_record, print_table, result_name, save_results
from dsv4_tune.policies.dispatcher import get_dispatcher
from dsv4_tune.registry.variants import PDL_KEY, VARIANTS, without_combine, without_pdl
from dsv4_tune.registry.workload import Plan
from dsv4_tune.tuner.grid import default_grid
from dsv4_tune.tuner.measure import timing_available
from dsv4_tune.tuner.select import ratio_interval
from dsv4_tune.tuner.sweep import time_plans


def split_plans(plan: Plan, w) -> tuple[Plan, Plan, Plan]:
    """(two plain launches, the combine as a programmatic dependent, one launch) plans of one
    attention config and SPLIT_K."""
    if plan.variant != "fused_splitk":
        plan = VARIANTS["fused_splitk"].default(w)
    two = Plan.make("fused_splitk", without_pdl(plan.as_dict()))
    return (two, Plan.make("fused_splitk", two.as_dict(), **{PDL_KEY: 1}),
            Plan.make("fused_splitk_inline", without_combine(two.as_dict())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if not timing_available():
        sys.exit("bench_split_combine: needs a GPU (GPU time is what it compares)")
    dispatcher = get_dispatcher()
    rows = []
    for cls in default_grid().classes:
        if not cls.with_length or cls.topk_extra not in (0, 64, 512):
            continue
        for t in args.tokens:
            w = cls.workload(t)
            two, pdl, one = split_plans(dispatcher.lookup(w), w)
            if VARIANTS[one.variant].problems(w, one.as_dict()):
                continue
            case = cls.build_case(t, "cuda", with_ref=False)
            samples, flag = time_plans(case, [two, pdl, one], True, rounds=args.rounds, reps=args.reps)
            a, b, c = (statistics.median(x) for x in samples)
            row = {"h_q": cls.h_q, "topk": f"{cls.topk_main}+{cls.topk_extra}", "T": t,
                   "config": str(one).removeprefix("fused_splitk_inline"), "two_us": round(a, 2),
                   "pdl_us": round(b, 2), "inline_us": round(c, 2)}
            for name, other in (("pdl", samples[1]), ("inline", samples[2])):
                lo, hi = ratio_interval(samples[0], other)
                row[f"two/{name}"] = round(a / statistics.median(other), 3)
                row[f"{name} interval"] = f"{lo:.2f}-{hi:.2f}"
            rows.append({**row, "flag": flag or ""})
            print(rows[-1], flush=True)
    print_table(rows, ["h_q", "topk", "T", "config", "two_us", "pdl_us", "inline_us", "two/pdl", "pdl interval",
                       "two/inline", "inline interval", "flag"],
                "split-K: combine kernel (two plain launches) vs a programmatic dependent combine vs the in-kernel "
                "combine (one launch), GPU time")
    path = save_results(result_name("bench_split_combine"), {"device": device_record(), "rows": rows}, args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
