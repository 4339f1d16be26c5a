"""Where two policies choose differently: per workload class, runs of T with the same two choices."""

from __future__ import annotations

from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.registry.workload import Workload

Difference = tuple[tuple, int, int, str, str]  # class key, first T, last T, choice in A, choice in B


def choice(d: Dispatcher, w: Workload) -> str:
    """A dispatcher's answer for ``w`` as text (its eager plan too, where it differs)."""
    plan, eager = d.lookup(w), d.lookup(w, eager=True)
    return str(plan) if eager == plan else f"{plan}; eager calls: {eager}"


def differences(a: Dispatcher, b: Dispatcher, max_tokens: int) -> list[Difference]:
    """Every run of T in 1..max_tokens over the classes of either policy where the two choose differently."""
    keys = sorted({c.key for d in (a, b) if d.policy for c in d.policy.classes})
    out: list[Difference] = []
    for key in keys:
        run: tuple[int, int, str, str] | None = None
        for t in range(1, max_tokens + 1):
            w = Workload(t, *key)
            x, y = choice(a, w), choice(b, w)
            if x != y and run and (run[2], run[3]) == (x, y):
                run = (run[0], t, x, y)
            else:
                if run:
                    out.append((key, *run))
                run = (t, t, x, y) if x != y else None
        if run:
            out.append((key, *run))
    return out
