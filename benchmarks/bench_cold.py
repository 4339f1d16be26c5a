"""What a short call's time is made of after the L2 flush: its kernel's code and its data arriving
cold, and the dirty lines the flush leaves (issues 29, 32).

The sweep times a plan as a graph replay after zeroing a 256 MiB buffer (L2 evicted and left
dirty: ``tuner.measure.time_graph``), and ``time_in_graph`` pairs such a flush with the call inside
one graph.  Per case and plan (the policy's for the case, or ``--plans``), each checked against the
reference first, this gives us a call as differences of CUDA-graph replays (median of ``--reps``),
so that no graph launch is in any of them:

- ``dirty``: [zero flush; call] - [zero flush], ``time_in_graph``'s pairing: code and data cold,
  L2 full of dirty lines;
- ``clean``: [read flush; call] - [read flush]: code and data cold, L2 clean;
- ``code warm``: [zero flush; the plan at T = 1; call] - [zero flush; the plan at T = 1]: the same
  kernel ran just before (T is no constexpr), so its code is warm and nearly all its data cold;
- ``hot``: [call; call] - [call]: the second of two calls, code and data in L2.

    python benchmarks/bench_cold.py --cases "64:SWA 128:64" "128:SWA 128:64" [--plans JSON] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_record, print_table, result_name, save_results

FLUSH_BYTES = 256 * 2**20  # as tuner.measure's flush
Step = Callable[[], object]


def graph_us(steps: Sequence[Step], reps: int) -> float:
    """Median us of one replay of a CUDA graph holding ``steps`` in order (``time_graph`` with no flush
    between replays: each difference below puts its own flush inside the graph)."""
    from dsv4_tune.tuner.measure import time_graph

    timing = time_graph(lambda: [step() for step in steps], flush_bytes=0, reps=reps)
    if not timing["graph"]:  # eager calls would add their launches to every difference
        raise RuntimeError("no CUDA graph could be captured")
    return timing["median_us"]


def breakdown(call: Step, warm_up: Step | None, reps: int) -> dict[str, float]:
    """The four differences of the module docstring, us (no ``code_warm_us`` without ``warm_up``)."""
    import torch

    buf = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")

    def dirty() -> None:
        buf.zero_()

    def clean() -> None:
        buf.max()

    def diff(steps: list[Step]) -> float:
        return round(graph_us([*steps, call], reps) - graph_us(steps, reps), 2)

    out = {"dirty_us": diff([dirty]), "clean_us": diff([clean]), "hot_us": diff([call])}
    if warm_up is not None:
        out["code_warm_us"] = diff([dirty, warm_up])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", metavar="HEADS:LAYER:T", default=["64:SWA 128:64", "128:SWA 128:64"])
    ap.add_argument("--plans", type=json.loads, default=None, metavar="JSON",
                    help="a list of [variant, config] (default: the policy's plan for each case)")
    ap.add_argument("--policy", type=Path, default=None, help="policy file (default: the shipped one of this GPU)")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="result folder (default benchmarks/results/)")
    args = ap.parse_args()

    from benchmarks.bench_decode import parse_point, point_form

    points = [parse_point(text) for text in args.cases]
    if None in points:
        bad = args.cases[points.index(None)]
        print(f"bench_cold: --cases {bad!r} is not {point_form()}")
        return 2
    if args.policy is not None and not args.policy.is_file():
        print(f"bench_cold: --policy {args.policy} does not exist")
        return 2
    import torch

    if not torch.cuda.is_available():
        print("bench_cold: needs a CUDA GPU (it times CUDA graphs)")
        return 2
    from benchmarks.bench_decode import point_case
    from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
    from dsv4_tune.registry.variants import plan_problems
    from dsv4_tune.registry.workload import Plan
    from dsv4_tune.serving.decode import workload_of

    dispatcher = Dispatcher.from_file(args.policy) if args.policy else get_dispatcher()
    rows: list[dict[str, Any]] = []
    for text, (h, layer, t) in zip(args.cases, points, strict=True):
        case = point_case(h, layer, t, args.seed)
        one = point_case(h, layer, 1, args.seed + 1)
        w, w_one = (workload_of(c.q, c.main.indices, c.main.topk_length, c.kw.get("extra_indices"),
                                c.kw.get("extra_topk_length"), c.kw.get("attn_sink")) for c in (case, one))
        plans = [Plan.make(v, c) for v, c in args.plans] if args.plans else [dispatcher.lookup(w)]
        for plan in plans:
            row: dict[str, Any] = {"case": text, "plan": str(plan)}
            if problems := plan_problems(w, plan):
                row["check"] = f"not run: {problems[0]}"
            else:
                status, error, _ = case.check(plan)
                row["check"] = "ok" if status == "ok" else f"!!! {status}: {(error or '')[:160]}"
                if status == "ok":  # (the T = 1 warm-up where the plan is one at T = 1)
                    warm_up = None if plan_problems(w_one, plan) else one.timer(plan)
                    row |= breakdown(case.timer(plan), warm_up, args.reps)
            print(json.dumps(row), flush=True)
            rows.append(row)
    print_table(rows, ["case", "plan", "check", "dirty_us", "clean_us", "code_warm_us", "hot_us"],
                "us a call: differences of CUDA-graph replays (see the docstring)")
    path = save_results(result_name("bench_cold"), {"device": device_record(), "command": sys.argv, "rows": rows},
                        args.out)
    print(f"saved {path}")
    return 1 if any(r["check"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
