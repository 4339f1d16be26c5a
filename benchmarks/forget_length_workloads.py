"""Drop a sweep's rows of every decode workload with a ``topk_length`` in either scope, so that a
resume measures them again on the lengths timing now uses (``tuner.inputs.TIMING_LENGTHS``: full
windows, extra counts in [topk / 2, topk], where a uniform [0, topk] draw was used before; issue 32).

The inputs of the other workloads did not change, so their rows stand, and a resumed sweep is what a
fresh one would measure.  Usage: ``python benchmarks/forget_length_workloads.py STORE [--sweep ID]``,
then ``dsv4-tune sweep --db STORE`` on the GPU of that sweep.
"""

from __future__ import annotations

import argparse
import re

from dsv4_tune.cache.store import Store

WITH_LENGTH = re.compile(r"^h\d+-m\d+-x\d+-len(?!00)\d\d-")  # store.workload_key of a decode workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("--sweep", default=None, help="sweep id (default: the latest)")
    args = ap.parse_args()
    store = Store(args.store)
    sweep_id = store.sweep(args.sweep)["id"]
    keys = sorted({r[0] for r in store.db.execute("select distinct workload from measurements where sweep_id = ?",
                                                    [sweep_id]) if WITH_LENGTH.match(r[0])})
    gone = store.forget(sweep_id, keys)
    print(f"{args.store}: sweep {sweep_id}: forgot {len(keys)} workloads with a topk_length ({gone} measurements)")


if __name__ == "__main__":
    main()
