"""Bring a sweep measured on the old timing inputs (version 1: lengths drawn uniformly in [0, topk])
up to ``tuner.inputs.INPUTS_VERSION``: drop its rows of every decode workload with a ``topk_length``
in either scope and record the new version, so that a resume (which now finds the sweep by its
inputs) measures them again on the lengths timing uses (``TIMING_LENGTHS``: full windows, extra
counts in [topk / 2, topk]; issue 32).

The inputs of the other workloads did not change, so their rows stand, and the resumed sweep is what
a fresh one would measure.  Usage: ``python benchmarks/forget_length_workloads.py STORE [--sweep ID]``,
then ``dsv4-tune sweep --db STORE`` on the GPU of that sweep.  ``--mark-only``: the rows with lengths
were measured again already (the committed sm90 stores of 2026-12-05, re-measured before the
version was recorded); only record the version.
"""

from __future__ import annotations

import argparse
import json

from dsv4_tune.cache.store import Store, workload_key
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.inputs import INPUTS_VERSION


def length_workloads(grid: Grid) -> list[str]:
    """The store keys of the grid's decode workloads with a ``topk_length`` in either scope."""
    ws = [cls.workload(t) for cls, t in grid.points() if cls.decode]
    return sorted(workload_key(w) for w in ws if w.has_len_main or w.has_len_extra)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--sweep", default=None, help="sweep id (default: the latest)")
    ap.add_argument("--mark-only", action="store_true", help="only record the inputs version")
    args = ap.parse_args()
    store = Store(args.store)
    sweep = store.sweep(args.sweep)
    if (sweep.get("inputs") or 1) >= INPUTS_VERSION:
        print(f"{args.store}: sweep {sweep['id']} is on inputs version {sweep['inputs']} already: nothing to do")
        return
    said = "recorded"
    if not args.mark_only:
        keys = length_workloads(Grid.from_json(json.loads(sweep["grid"])))
        gone = store.forget(sweep["id"], keys)
        said = f"forgot {len(keys)} workloads with a topk_length ({gone} measurements), recorded"
    store.mark_inputs(sweep["id"], INPUTS_VERSION)
    print(f"{args.store}: sweep {sweep['id']}: {said} inputs version {INPUTS_VERSION}")


if __name__ == "__main__":
    main()
