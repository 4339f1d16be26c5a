"""Re-time a sweep's finalists in a fresh process and count how many winners hold.

For every workload with a stored winner, the plans of its final stage are timed again side by side
(same inputs: same seed), the winner re-selected with the same rule, and compared with the stored
one: same plan, or a different plan whose new time is within ``--noise`` of the stored winner's
new time (then the choice is noise either way), or a real change.

    python benchmarks/reproduce_winners.py --db sweep.db [--sweep ID] [--out DIR]
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
from dsv4_tune.tuner.select import select_winner
from dsv4_tune.tuner.sweep import STAGE_FINAL, time_plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--sweep", default=None, help="sweep id (default: the latest)")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--noise", type=float, default=0.05, help="relative difference counted as noise")
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
        plans = finals.get(key, [])
        if len(plans) < 2:
            continue
        samples, flag = time_plans(cls.build_case(t, device, seed=n), plans, real, args.rounds, args.reps)
        by_plan = dict(zip(plans, samples, strict=True))
        new = select_winner(by_plan)
        med = {str(p): statistics.median(s) for p, s in by_plan.items()}
        ratio = med[win["plan"]] / med[str(new["plan"])]
        verdict = "same" if str(new["plan"]) == win["plan"] else ("noise" if ratio <= 1 + args.noise else "changed")
        rows.append({"workload": key, "verdict": verdict, "stored": win["plan"], "new": str(new["plan"]),
                     "stored/new": round(ratio, 3), "flag": flag})
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("same", "noise", "changed")}
    print_table([r for r in rows if r["verdict"] != "same"], ["workload", "verdict", "stored/new", "stored", "new"],
                f"winners that moved (of {len(rows)}): {counts}")
    print(f"{len(rows)} workloads re-timed in {time.time() - t0:.0f} s: {counts}")
    save_results("reproduce_winners", {"device": device_record(), "sweep": sweep["id"], "noise": args.noise,
                                       "counts": counts, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
