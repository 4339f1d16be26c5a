"""Bring a sweep up to date after one variant's kernel changed: drop that variant's measurements (and
the choices of the workloads it was a candidate of), so that resuming the sweep on the same GPU times
the new kernel and chooses again, while every other variant's rows stand (``Store.forget_variant``).
The final stage re-times each changed workload's leaders side by side, so no stale row decides alone.

    python benchmarks/forget_variant.py STORE VARIANT [--op OP] [--sweep ID]   # then: dsv4-tune sweep --db STORE
    python benchmarks/forget_variant.py STORE --all [--sweep ID]
    python benchmarks/forget_variant.py STORE --decode [--sweep ID]

VARIANT is a decode variant, or with ``--op`` one of that op's (ops reuse names such as ``fused``).
``--all`` forgets every variant of every op: for a store whose sweep recorded no kernel versions
(made before 2026-12-05 20:00, when a resume cannot tell what changed) after its kernels changed;
``--decode`` every decode variant (such a store after a change to the decode kernels alone: the
ops' rows stand).
"""

from __future__ import annotations

import argparse

from dsv4_tune.cache.store import Store
from dsv4_tune.registry.ops import OPS
from dsv4_tune.registry.variants import VARIANTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store")
    ap.add_argument("variant", nargs="?", default=None)
    ap.add_argument("--all", action="store_true", help="every variant of every op")
    ap.add_argument("--decode", action="store_true", help="every decode variant (the ops' rows stand)")
    ap.add_argument("--op", choices=sorted(OPS), default=None, help="the op whose variant it is (default: decode)")
    ap.add_argument("--sweep", default=None, help="sweep id (default: the latest)")
    args = ap.parse_args()
    if args.all + args.decode + (args.variant is not None) != 1:
        ap.error("name one VARIANT, or --all, or --decode")
    if (args.all or args.decode) and args.op:
        ap.error("--all and --decode name their variants: no --op with them")
    if args.all or args.decode:
        targets = [(None, v) for v in sorted(VARIANTS)]
    if args.all:
        targets += [(op, v) for op in sorted(OPS) for v in sorted(OPS[op].variants)]
    if args.variant is not None:
        known = sorted(OPS[args.op].variants) if args.op else sorted(VARIANTS)
        if args.variant not in known:
            ap.error(f"variant: unknown {args.variant!r} for {args.op or 'decode'}, expected one of {known}")
        targets = [(args.op, args.variant)]
    store = Store(args.store)
    sweep = store.sweep(args.sweep)
    for op, variant in targets:
        gone = store.forget_variant(sweep["id"], variant, op)
        what = f"{op} variant {variant}" if op else variant
        print(f"{args.store}: sweep {sweep['id']}: forgot {gone} measurements of {what}; "
              "resume the sweep to time it again")


if __name__ == "__main__":
    main()
