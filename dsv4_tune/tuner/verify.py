"""Keep a policy honest on the machine it serves: compile what it can pick ahead of time, and
check that it still beats the default plan after a driver or Triton upgrade."""

from __future__ import annotations

import statistics

from dsv4_tune.kernels.variants import default_plan
from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.policies.schema import Policy
from dsv4_tune.tuner.grid import GridClass
from dsv4_tune.tuner.select import ratio_interval
from dsv4_tune.tuner.sweep import build_case, compile_plans, time_plans
from dsv4_tune.workload import Plan


def grid_class(key: tuple) -> GridClass:
    """Pool geometry for a policy class: SWA pages of 128 tokens, C4 pages of 64."""
    h, tm, tx, len_main, _len_extra, _sink = key
    return GridClass(h, tm, tx, len_main, 128, 64)


def policy_plans(policy: Policy) -> list[tuple[GridClass, Plan]]:
    return [(grid_class(c.key), s.plan.to_plan()) for c in policy.classes for s in c.segments]


def warmup(policy: Policy, processes: int) -> tuple[int, float]:
    """Compile every kernel the policy can pick, in parallel; (kernels, seconds)."""
    return compile_plans(policy_plans(policy), processes)


def verify(
    policy: Policy, tokens: tuple[int, ...] = (1, 16, 256), real: bool = True, max_points: int = 24
) -> list[dict]:
    """Re-time the policy's plan against the default plan at a sample of (class, T); a row is
    ``stale`` when the default is measurably faster (bootstrap interval of the ratio above 1)."""
    rows = []
    n = len(tokens)  # class i takes T = tokens[(i + j) % n] in pass j: the first pass covers every class
    points = [(c, tokens[(i + j) % n]) for j in range(n) for i, c in enumerate(policy.classes)][:max_points]
    device = "cuda" if real else "cpu"
    dispatcher = Dispatcher(policy)
    for c, t in points:
        w = c.workload(t)
        plan = dispatcher.lookup(w)
        default = default_plan(w)
        case = build_case(grid_class(c.key), t, device, with_ref=False)
        plans = [plan] if plan == default else [plan, default]
        samples, flag = time_plans(case, plans, real, rounds=3, reps=8)
        policy_us = statistics.median(samples[0])
        default_us = statistics.median(samples[-1])
        lo, _ = ratio_interval(samples[0], samples[-1]) if len(plans) == 2 else (1.0, 1.0)
        rows.append({"class": list(c.key), "T": t, "plan": str(plan), "policy_us": policy_us,
                     "default_us": default_us, "stale": real and lo > 1.0, "flag": flag})
    return rows
