"""Where two policies choose differently, and by how much: per workload class (decode) and op class
(compressor, Q/K norm), runs of T with the same two choices, with what each policy measured at the
T buckets inside the run."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.registry.workload import OpWorkload, Workload


@dataclass(frozen=True)
class Difference:
    """One run of T (``lo``..``hi``) of one class where policy A answers ``a`` and policy B ``b``;
    ``measured``: (T bucket, A's time, B's time) for the buckets in the run that either measured."""

    kind: str  # "decode" or "op"
    key: tuple
    lo: int
    hi: int
    a: str
    b: str
    measured: tuple[tuple[int, float | None, float | None], ...] = ()


def choice(d: Dispatcher, w: Workload) -> str:
    """A dispatcher's answer for ``w`` as text (its eager plan too, where it differs)."""
    plan, eager = d.lookup(w), d.lookup(w, eager=True)
    return str(plan) if eager == plan else f"{plan}; eager calls: {eager}"


def measured_us(d: Dispatcher, kind: str, key: tuple) -> dict[int, float]:
    """{T bucket: the winner's median us} that ``d``'s policy recorded for this exact class."""
    if d.policy is None:
        return {}
    classes = d.policy.classes if kind == "decode" else d.policy.ops
    found = next((c for c in classes if c.key == key), None)
    return {m.total_tokens: m.median_us for m in found.measured if m.median_us is not None} if found else {}


OP_SIZE_LIMIT = 1 << 20  # op sizes compared at most up to this


def _runs(kind: str, key: tuple, a: Dispatcher, b: Dispatcher, answer, sizes: list[int] | range) -> list[Difference]:
    times_a, times_b = measured_us(a, kind, key), measured_us(b, kind, key)
    out: list[Difference] = []
    run: list | None = None
    for t in [*sizes, None]:
        x, y = (answer(a, t), answer(b, t)) if t is not None else (None, None)
        if run and x == run[2] and y == run[3]:
            run[1] = t
            continue
        if run:
            lo, hi = run[0], run[1]
            buckets = sorted(n for n in {*times_a, *times_b} if lo <= n <= hi)
            out.append(Difference(kind, key, lo, hi, run[2], run[3],
                                  tuple((n, times_a.get(n), times_b.get(n)) for n in buckets)))
        run = [t, t, x, y] if x != y else None
    return out


def differences(a: Dispatcher, b: Dispatcher, max_tokens: int) -> list[Difference]:
    """Every run of T in 1..max_tokens over the classes of either policy where the two choose
    differently, then every run of sizes over their op classes: each size up to ``max_tokens``,
    then each power of two up to the largest size measured (prefill sizes reach 32K)."""
    out: list[Difference] = []
    keys = sorted({c.key for d in (a, b) if d.policy for c in d.policy.classes})
    for key in keys:
        out += _runs("decode", key, a, b, lambda d, t, key=key: choice(d, Workload(t, *key)),
                     range(1, max_tokens + 1))
    ops = {o.key: o for d in (a, b) if d.policy for o in d.policy.ops}
    for key in sorted(ops, key=repr):
        largest = min(OP_SIZE_LIMIT, max([0, *(m.total_tokens for m in ops[key].measured)]))
        above = [1 << e for e in range(max_tokens.bit_length(), largest.bit_length()) if 1 << e > max_tokens]
        out += _runs("op", key, a, b, lambda d, t, key=key: str(d.plan_for(OpWorkload(key[0], t, key[1]))),
                     [*range(1, max_tokens + 1), *above])
    return out


def class_name(kind: str, key: tuple) -> str:
    """A class key as people read it: ``h64 topk 128+512 len y/y sink y`` or ``compress head_dim=512 ...``."""
    return (Workload(1, *key) if kind == "decode" else OpWorkload(key[0], 1, key[1])).label


def agreement(a: Dispatcher, b: Dispatcher) -> dict[str, float | int]:
    """B's measured time over A's at every bucket both measured (decode and ops): how far two sweeps
    of one GPU agree (the median ratio and the spread of the middle 90%)."""
    ratios = []
    for kind, classes in (("decode", "classes"), ("op", "ops")):
        keys = {c.key for d in (a, b) if d.policy for c in getattr(d.policy, classes)}
        for key in keys:
            ta, tb = measured_us(a, kind, key), measured_us(b, kind, key)
            ratios += [tb[t] / ta[t] for t in ta.keys() & tb.keys() if ta[t] > 0]
    if not ratios:
        return {"buckets": 0}
    ratios.sort()
    pick = lambda q: ratios[min(len(ratios) - 1, int(q * len(ratios)))]
    return {"buckets": len(ratios), "median": round(statistics.median(ratios), 4), "p05": round(pick(0.05), 4),
            "p95": round(pick(0.95), 4), "min": round(ratios[0], 4), "max": round(ratios[-1], 4)}
