"""Winners with honest statistics, and the policy they make.

The fastest candidate wins unless a simpler one (fewer launches, fewer splits) is not measurably
slower: a bootstrap interval on the ratio of medians decides "measurably" (if the interval's low
end does not clear 1, the difference is noise and the simpler plan wins).  The margin over the
runner-up is kept.  Thresholds are where the winners change along T, written into the policy.

Eager calls (outside a CUDA graph) pay host time for every launch, and the host and the GPU work
side by side, so the slower of the two sets the pace: the eager winner is chosen by the same rule
on samples ``max(host time, GPU time)``, and kept only where it launches fewer kernels than the
graph winner (saving launches is what it is for).  Host time depends on the number of launches,
and one plan's host time is noisy (other tenants of the host), so each plan is charged the median
host time of the finalists with its number of launches.
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict

from dsv4_tune.cache.store import workload_key
from dsv4_tune.policies.schema import (
    BucketSpec,
    GpuSpec,
    Measured,
    OpClass,
    PlanSpec,
    Policy,
    Provenance,
    Segment,
    WorkloadClass,
    describe_segments,
)
from dsv4_tune.registry.workload import Plan
from dsv4_tune.tuner.candidates import simplicity
from dsv4_tune.tuner.grid import Grid

BOOTSTRAP = 400


def ratio_interval(slow: list[float], fast: list[float], seed: int = 0) -> tuple[float, float]:
    """90% bootstrap interval of median(slow) / median(fast)."""
    rng = random.Random(seed)
    ratios = []
    for _ in range(BOOTSTRAP):
        a = statistics.median(rng.choices(slow, k=len(slow)))
        b = statistics.median(rng.choices(fast, k=len(fast)))
        ratios.append(a / b if b > 0 else float("inf"))
    ratios.sort()
    return ratios[int(0.05 * BOOTSTRAP)], ratios[int(0.95 * BOOTSTRAP) - 1]


def select_winner(samples: dict[Plan, list[float]]) -> dict:
    """The winner of one workload from its final interleaved samples (see the module docstring)."""
    ranked = sorted(samples, key=lambda p: statistics.median(samples[p]))
    best = ranked[0]
    winner, reason = best, "fastest"
    for simpler in sorted((p for p in ranked[1:] if simplicity(p) < simplicity(best)), key=simplicity):
        lo, _ = ratio_interval(samples[simpler], samples[best])
        if lo <= 1.0:
            winner, reason = simpler, f"simpler; within noise of {best}"
            break
    others = [p for p in ranked if p != winner]
    runner_up = others[0] if others else None
    med = statistics.median(samples[winner])
    margin = (statistics.median(samples[runner_up]) / med - 1.0) if runner_up is not None else None
    return {"plan": winner, "median_us": med, "runner_up": runner_up, "margin": margin, "reason": reason}


def select_eager(samples: dict[Plan, list[float]], host_us: dict[Plan, float], graph_winner: Plan) -> dict | None:
    """The winner for eager calls (see the module docstring), or None where it does not launch
    fewer kernels than the graph winner, or host times were not measured."""
    if not host_us or set(host_us) != set(samples):
        return None
    by_launches: dict[int, list[float]] = defaultdict(list)
    for p, us in host_us.items():
        by_launches[simplicity(p)[0]].append(us)
    host = {p: statistics.median(by_launches[simplicity(p)[0]]) for p in samples}
    eager = select_winner({p: [max(host[p], g) for g in s] for p, s in samples.items()})
    return eager if saves_launches(eager["plan"], graph_winner) else None


def saves_launches(eager: Plan | None, plan: Plan) -> bool:
    """Whether ``eager`` launches fewer kernels than ``plan`` (else it has no place in a policy)."""
    return eager is not None and simplicity(eager)[0] < simplicity(plan)[0]


def build_policy(grid: Grid, winners: list[dict], sweep: dict, command: str) -> Policy:
    """The policy of a sweep: per class (and op class), one segment per size bucket of the grid,
    equal neighbours merged, the last open-ended.  Refuses a grid point that no winner covers."""
    by_key = {w["workload"]: w for w in winners}
    runs: dict[tuple, list[tuple[int, Plan, float | None, Plan | None]]] = defaultdict(list)
    measured: dict[tuple, list[Measured]] = defaultdict(list)
    decode: dict[tuple, bool] = {}
    missing = []
    for cls, t in grid.points():
        w = cls.workload(t)
        row = by_key.get(workload_key(w))
        if row is None:
            missing.append(workload_key(w))
            continue
        plan, eager = row["winner_plan"], row["eager_plan"]
        decode[w.key] = cls.decode
        runs[w.key].append((t, plan, row["margin"], eager if saves_launches(eager, plan) else None))
        measured[w.key].append(Measured(
            total_tokens=t, median_us=None if row["median_us"] is None else round(row["median_us"], 2),
            margin=None if row["margin"] is None else round(row["margin"], 4), runner_up=row["runner_up"]))
    if missing:
        raise ValueError(f"export: {len(missing)} grid points have no measured winner (first: {missing[0]}); "
                         "finish or resume the sweep first")
    classes, ops = [], []
    for key, points in runs.items():
        segments = _segments(points)
        common = {"segments": segments, "thresholds": describe_segments(segments),
                  "measured": sorted(measured[key], key=lambda m: m.total_tokens)}
        if not decode[key]:  # an op class: (op, params)
            ops.append(OpClass(op=key[0], params=dict(key[1]), **common))
            continue
        h, tm, tx, lm, lx, sink = key
        classes.append(WorkloadClass(h_q=h, topk_main=tm, topk_extra=tx, has_len_main=lm, has_len_extra=lx,
                                     has_sink=sink, **common))
    return Policy(
        gpu=GpuSpec(id=sweep["gpu_id"], arch=sweep["arch"], device_name=sweep["device_name"] or "",
                    multiprocessors=sweep.get("multiprocessors") or 0, fp8=sweep.get("fp8")),
        provenance=Provenance(source=f"sweep:{sweep['id']}", created=(sweep["finished"] or sweep["started"])[:10],
                              torch=sweep["torch"], triton=sweep["triton"], command=command),
        buckets=BucketSpec(max_tokens=max(grid.tokens)),
        classes=classes,
        ops=ops,
    )


def _segments(points: list[tuple[int, Plan, float | None, Plan | None]]) -> list[Segment]:
    """Merge equal neighbours (same plan and eager plan) along the size axis, keeping the smallest
    known margin."""
    points = sorted(points, key=lambda r: r[0])
    merged: list[tuple[int, Plan, float | None, Plan | None]] = []
    for t, plan, margin, eager in points:
        if merged and merged[-1][1] == plan and merged[-1][3] == eager:
            known = [m for m in (merged[-1][2], margin) if m is not None]
            merged[-1] = (t, plan, min(known) if known else None, eager)
        else:
            merged.append((t, plan, margin, eager))
    return [Segment(max_tokens=None if i == len(merged) - 1 else t, plan=PlanSpec.of(p),
                    margin=None if m is None else round(m, 4), eager_plan=None if e is None else PlanSpec.of(e))
            for i, (t, p, m, e) in enumerate(merged)]
