"""Bring a sweep up to date after one variant's kernel changed: drop that variant's measurements (and
the choices of the workloads it was a candidate of), so that resuming the sweep on the same GPU times
the new kernel and chooses again, while every other variant's rows stand (``Store.forget_variant``).
The final stage re-times each changed workload's leaders side by side, so no stale row decides alone.

    python benchmarks/forget_variant.py STORE VARIANT [--sweep ID]   # then: dsv4-tune sweep --db STORE
"""

from __future__ import annotations

import argparse

from dsv4_tune.cache.store import Store
from dsv4_tune.registry.variants import VARIANTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("variant", choices=sorted(VARIANTS))
    ap.add_argument("--sweep", default=None, help="sweep id (default: the latest)")
    args = ap.parse_args()
    store = Store(args.store)
    sweep = store.sweep(args.sweep)
    gone = store.forget_variant(sweep["id"], args.variant)
    print(f"{args.store}: sweep {sweep['id']}: forgot {gone} measurements of {args.variant}; resume the sweep to "
          "time it again")


if __name__ == "__main__":
    main()
