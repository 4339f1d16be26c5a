"""Keep a policy honest on the machine it serves: compile what it can pick ahead of time, and
check that it still beats the default plan after a driver or Triton upgrade."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.policies.schema import OpClass, Policy
from dsv4_tune.registry import plans as registry_plans
from dsv4_tune.registry.layout import fp8_pairs_for_arch
from dsv4_tune.registry.workload import Plan
from dsv4_tune.tuner.grid import GridClass, OpGridClass
from dsv4_tune.tuner.select import ratio_interval
from dsv4_tune.tuner.sweep import compile_plans, time_plans


def grid_class(key: tuple) -> GridClass:
    """Pool geometry for a policy class (SWA pages of 128 tokens, C4 pages of 64), its flags kept."""
    h, tm, tx, len_main, len_extra, sink = key
    return GridClass(h, tm, tx, len_main, 128, 64, extra_length=len_extra, has_sink=sink)


def op_grid_class(o: OpClass) -> OpGridClass:
    """An op class at the sizes its policy entry was measured at (else a small default set)."""
    rows = tuple(m.total_tokens for m in o.measured) or (1, 16, 256)
    return OpGridClass.make(o.op, rows, **o.params)


def policy_plans(policy: Policy) -> list[tuple[GridClass | OpGridClass, Plan]]:
    """Every plan the policy can pick (eager plans included), with the class to build inputs for."""
    return ([(grid_class(c.key), spec.to_plan()) for c in policy.classes for s in c.segments for _, spec in s.plans()]
            + [(op_grid_class(o), s.plan.to_plan()) for o in policy.ops for s in o.segments])


def warmup(policy: Policy, processes: int) -> tuple[int, float]:
    """Compile every kernel the policy can pick, in parallel, for pools in this GPU's flavour and
    the two-scope plans also for the mixed pairs of its arch (gfx942: SWA e4m3fnuz + compressed
    e4m3fn, :func:`~dsv4_tune.registry.layout.fp8_pairs_for_arch`); (kernels, seconds)."""
    plans = policy_plans(policy)
    kernels, seconds = compile_plans(plans, processes)
    dual = [(cls, plan) for cls, plan in plans if cls.decode and cls.topk_extra]  # type: ignore[union-attr]
    for mixed in fp8_pairs_for_arch(policy.gpu.arch)[1:] if dual else ():
        more, took = compile_plans(dual, processes, mixed)
        kernels, seconds = kernels + more, seconds + took
    return kernels, seconds


def verify(
    policy: Policy, tokens: tuple[int, ...] = (1, 16, 256), real: bool = True, max_points: int = 24,
    on_row: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Re-time the policy's plan against the default plan at a sample of (class, T); a row is
    ``stale`` when the default is measurably faster (bootstrap interval of the ratio above 1).
    ``on_row(done, total)`` is told after each sample."""
    rows = []
    n = len(tokens)  # class i takes T = tokens[(i + j) % n] in pass j: the first pass covers every class
    points: list[tuple[GridClass | OpGridClass, int]] = [
        (grid_class(c.key), tokens[(i + j) % n]) for j in range(n) for i, c in enumerate(policy.classes)]
    for o in policy.ops:  # each op class at the first, middle and last size it was measured at
        g = op_grid_class(o)
        points += [(g, r) for r in dict.fromkeys((g.rows[0], g.rows[len(g.rows) // 2], g.rows[-1]))]
    points = points[:max_points] if not policy.ops else _interleave(points, max_points)
    device = "cuda" if real else "cpu"
    dispatcher = Dispatcher(policy)
    for g, t in points:
        w = g.workload(t)
        plan = dispatcher.plan_for(w)
        default = registry_plans.default(w)
        case = g.build_case(t, device, with_ref=False)
        plans = [plan] if plan == default else [plan, default]
        samples, flag = time_plans(case, plans, real, rounds=3, reps=8)
        policy_us = statistics.median(samples[0])
        default_us = statistics.median(samples[-1])
        lo, _ = ratio_interval(samples[0], samples[-1]) if len(plans) == 2 else (1.0, 1.0)
        rows.append({"class": list(w.key), "label": w.label, "T": t, "plan": str(plan), "policy_us": policy_us,
                     "default_us": default_us, "stale": real and lo > 1.0, "flag": flag})
        if on_row:
            on_row(len(rows), len(points))
    return rows


def _interleave(points: list, max_points: int) -> list:
    """At most ``max_points``: decode points first (up to half), then op points taken round-robin
    over the op classes, so that every op class is sampled before any is sampled twice."""
    ops = [p for p in points if not p[0].decode]
    decode = [p for p in points if p[0].decode]
    by_class: dict[OpGridClass, list] = {}
    for p in ops:
        by_class.setdefault(p[0], []).append(p)
    rounds = [p for i in range(max((len(v) for v in by_class.values()), default=0))
              for v in by_class.values() if i < len(v) for p in [v[i]]]
    n_ops = min(len(rounds), max(1, max_points // 2))
    return decode[: max_points - n_ops] + rounds[:n_ops]
