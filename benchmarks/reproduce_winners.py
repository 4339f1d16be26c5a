"""Re-time a sweep's finalists in a fresh process and count how many winners hold.

For every workload with a stored winner, the plans of its final stage are timed again side by side
(same inputs: same seed), the winner re-selected with the same rule, and compared with the stored
one: same plan, or a different plan whose new time is within ``--noise`` of the stored winner's
new time (then the choice is noise either way), or a real change.

``--in-graph`` times them instead as what a call adds to a graph holding more work
(``tuner.measure.interleaved_in_graph``: a serving step's view, where the kernel before overlaps
a programmatic-dependent launch), with ``--top K`` more of each workload's fastest coarse / refine
plans beside the finalists: whether the sweep's single-call replays pick what serves fastest.
``--max-t`` and ``--match`` keep the workloads of at most that T / whose key holds that text.

    python benchmarks/reproduce_winners.py --db sweep.db [--sweep ID] [--out DIR]
    python benchmarks/reproduce_winners.py --db sweep.db --in-graph --top 3 --max-t 16 --match len00
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_record, print_table, save_results

from dsv4_tune.cache.store import Store, workload_key
from dsv4_tune.registry.workload import Plan
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.measure import interleaved_in_graph
from dsv4_tune.tuner.select import select_winner
from dsv4_tune.tuner.sweep import STAGE_COARSE, STAGE_FINAL, STAGE_REFINE, time_plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--sweep", default=None, help="sweep id (default: the latest)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.05, help="relative difference counted as noise")
    ap.add_argument("--in-graph", action="store_true", help="time what a call adds to a graph of more work")
    ap.add_argument("--top", type=int, default=0, help="with the finalists, each workload's K fastest earlier plans")
    ap.add_argument("--max-t", type=int, default=None, help="only workloads of at most this T")
    ap.add_argument("--match", default="", help="only workloads whose key holds this text")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    store = Store(args.db)
    sweep = store.sweep(args.sweep)
    grid = Grid.from_json(json.loads(sweep["grid"]))
    points = {workload_key(c.workload(t)): (n, c, t) for n, (c, t) in enumerate(grid.points())}
    winners = {w["workload"]: w for w in store.winners(sweep["id"])}
    finals: dict[str, list[Plan]] = {}
    for r in store.measurements(sweep["id"], STAGE_FINAL):
        finals.setdefault(r["workload"], []).append(Plan.make(r["variant"], json.loads(r["config"])))
    real = not sweep["interpreter"]  # an interpreter sweep replays on the CPU: proves the script only
    device = "cuda" if real else "cpu"
    rows, t0 = [], time.time()
    for key, win in winners.items():
        n, cls, t = points[key]
        if (args.max_t is not None and t > args.max_t) or args.match not in key:
            continue
        plans = finals.get(key, [])
        if args.top:
            earlier = store.ranked(sweep["id"], key, (STAGE_COARSE, STAGE_REFINE))[: args.top]
            plans += [p for p in earlier if p not in plans]
        if len(plans) < 2:
            continue
        case = cls.build_case(t, device, seed=n)
        if args.in_graph and real:
            samples = interleaved_in_graph([case.timer(p) for p in plans], rounds=args.rounds, replays=args.reps)
            flag = "in a graph"
        else:
            samples, flag = time_plans(case, plans, real, args.rounds, args.reps)
        by_plan = {p: s for p, s in zip(plans, samples, strict=True) if s}
        if str(win["plan"]) not in {str(p) for p in by_plan} or len(by_plan) < 2:
            continue
        new = select_winner(by_plan)
        med = {str(p): statistics.median(s) for p, s in by_plan.items()}
        ratio = med[win["plan"]] / med[str(new["plan"])]
        verdict = "same" if str(new["plan"]) == win["plan"] else ("noise" if ratio <= 1 + args.noise else "changed")
        rows.append({"workload": key, "verdict": verdict, "stored": win["plan"], "new": str(new["plan"]),
                     "stored/new": round(ratio, 3), "stored_us": round(med[win["plan"]], 2),
                     "new_us": round(med[str(new["plan"])], 2), "flag": flag})
        print(f"{key}: {verdict} {ratio:.3f} ({med[win['plan']]:.2f} -> {med[str(new['plan'])]:.2f} us)", flush=True)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("same", "noise", "changed")}
    print_table([r for r in rows if r["verdict"] != "same"],
                ["workload", "verdict", "stored/new", "stored_us", "new_us", "stored", "new"],
                f"winners that moved (of {len(rows)}): {counts}")
    if rows:
        gain = statistics.geometric_mean([r["stored/new"] for r in rows])
        print(f"geomean stored winner / new winner: {gain:.3f}" + (" (in a graph)" if args.in_graph else ""))
    print(f"{len(rows)} workloads re-timed in {time.time() - t0:.0f} s: {counts}")
    name = "reproduce_winners-in-graph" if args.in_graph else "reproduce_winners"
    save_results(name, {"device": device_record(), "sweep": sweep["id"], "noise": args.noise, "in_graph": args.in_graph,
                        "top": args.top, "max_t": args.max_t, "match": args.match, "counts": counts, "rows": rows},
                 args.out)


if __name__ == "__main__":
    main()
