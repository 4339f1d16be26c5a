"""What a report shows, gathered from a sweep's store or from policy files (no plotting here).

Per workload class (decode) and op class (compressor, Q/K norm): the time over the size axis of the
winner, the runner-up and the built-in default plan, and of the plans other policies choose; where
the winner changes variant (the crossovers); the margins and the buckets that were re-timed for
noise.  From a store every curve is a measurement of this sweep (a policy's plan that the sweep
never timed has no point).  From policy files alone, the winner is the policy's own record
(``measured``: time, margin, runner-up) and the default is unknown.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field

from dsv4_tune.cache.store import Store, workload_key
from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.policies.schema import OpClass, Policy, WorkloadClass, lead_text
from dsv4_tune.registry import plans as registry_plans
from dsv4_tune.tuner.grid import Grid, GridClass, OpGridClass
from dsv4_tune.tuner.sweep import STAGES  # the GPU-time stages (host rows are per eager call)

CLOSE_MARGIN = 0.03  # a winner that leads by less than this is a close call worth a look


@dataclass
class Curve:
    label: str
    us: dict[int, float] = field(default_factory=dict)  # size -> microseconds


@dataclass
class ClassView:
    """One class's rows: ``curves[0]`` is the winner."""

    name: str
    decode: bool
    sizes: list[int]
    curves: list[Curve]
    variants: dict[int, str] = field(default_factory=dict)  # size -> the winner's variant
    margins: dict[int, float | None] = field(default_factory=dict)
    flags: dict[int, str] = field(default_factory=dict)  # size -> hygiene / noise flag of the final stage

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def curve(self, label: str) -> Curve | None:
        return next((c for c in self.curves if c.label == label), None)

    def crossovers(self) -> list[tuple[int, str, str]]:
        """(first size of the new winner, old variant, new variant) where the winner's variant changes."""
        sizes = [s for s in self.sizes if s in self.variants]
        return [(b, self.variants[a], self.variants[b]) for a, b in itertools.pairwise(sizes)
                if self.variants[a] != self.variants[b]]

    def speedup(self, over: str = "default") -> dict[int, float]:
        """size -> (time of ``over``) / (winner's time), where both were measured."""
        base, win = self.curve(over), self.curves[0]
        if base is None:
            return {}
        return {s: base.us[s] / win.us[s] for s in self.sizes if s in base.us and s in win.us and win.us[s] > 0}

    def attention(self) -> list[tuple[int, str]]:
        """(size, why) of the buckets worth a second look: re-timed for noise, or a close call."""
        out = []
        for s in self.sizes:
            why = [self.flags[s]] if self.flags.get(s) else []
            m = self.margins.get(s)
            if m is not None and m < CLOSE_MARGIN:
                why.append(f"close call: {lead_text(m)}")
            if why:
                out.append((s, "; ".join(why)))
        return out


@dataclass
class Report:
    title: str
    provenance: list[tuple[str, str]]
    classes: list[ClassView]
    notes: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)  # curve labels a heat map each compares the winner with


def from_store(store: Store, sweep_id: str | None = None, policies: list[tuple[str, Policy]] = ()) -> Report:
    """The report of one sweep (the latest when None), with the plans of ``policies`` (label, policy)
    drawn where the sweep timed them."""
    sweep = store.sweep(sweep_id)
    grid = Grid.from_json(json.loads(sweep["grid"]))
    winners = {w["workload"]: w for w in store.winners(sweep["id"])}
    dispatchers = [(label, Dispatcher(p, label)) for label, p in policies]
    views = []
    classes: list[tuple[GridClass | OpGridClass, tuple[int, ...]]] = [(c, grid.tokens) for c in grid.classes]
    classes += [(o, o.rows) for o in grid.ops]
    for cls, sizes in classes:
        curves = [Curve("winner"), Curve("runner-up"), Curve("default"), *(Curve(label) for label, _ in dispatchers)]
        view = ClassView(cls.workload(sizes[0]).label, cls.decode, list(sizes), curves)
        for s in sizes:
            w = cls.workload(s)
            key = workload_key(w)
            medians = {p: r["median_us"] for p, r in store.latest_timings(sweep["id"], key, STAGES).items()}
            win = winners.get(key)
            if win is not None:
                curves[0].us[s] = win["median_us"]
                view.variants[s] = win["variant"]
                view.margins[s] = win["margin"]
                flag = re.search(r"\[(.*)\]$", win["reason"] or "")
                if flag and "interpreter" not in flag.group(1):
                    view.flags[s] = flag.group(1)
                if win["runner_up"] in medians:
                    curves[1].us[s] = medians[win["runner_up"]]
            default = str(registry_plans.default(w))
            if default in medians:
                curves[2].us[s] = medians[default]
            for curve, (_, d) in zip(curves[3:], dispatchers, strict=True):
                plan = str(d.plan_for(w))
                if plan in medians:
                    curve.us[s] = medians[plan]
        views.append(view)
    provenance = [("sweep", sweep["id"]), ("GPU", f"{sweep['gpu_id']} ({sweep['device_name']})"),
                  ("torch / triton", f"{sweep['torch']} / {sweep['triton']}"), ("driver", sweep["driver"]),
                  ("grid", sweep["grid_hash"]), ("status", store.state(sweep)),
                  ("started / finished", f"{sweep['started']} / {sweep['finished'] or '-'}"),
                  ("rows", str(store.measurement_count(sweep["id"])))]
    notes = ["The sweep recorded no GPU ceilings, so no physical floor is drawn."]
    if sweep["interpreter"]:
        notes.insert(0, "Interpreter sweep: wall-clock times of the Triton interpreter, NOT real measurements.")
    return Report(f"sweep {sweep['id']} on {sweep['gpu_id']}", provenance, views, notes,
                  ["default", *(label for label, _ in dispatchers)])


def _policy_classes(policy: Policy) -> list[WorkloadClass | OpClass]:
    return sorted(policy.classes, key=lambda c: c.key) + sorted(policy.ops, key=lambda o: repr(o.key))


def from_policies(policies: list[tuple[str, Policy]]) -> Report:
    """The report of policy files: the first one's classes, each policy's recorded winner times
    (``measured``), the first one's runner-up; two policies are compared in a heat map."""
    (label0, first), others = policies[0], policies[1:]
    d = Dispatcher(first, label0)
    views = []
    for c in _policy_classes(first):
        w = c.workload(1)
        sizes = [m.total_tokens for m in c.measured]
        curves = [Curve("winner"), Curve("runner-up"), *(Curve(label) for label, _ in others)]
        view = ClassView(w.label, isinstance(c, WorkloadClass), sizes, curves)
        for m in c.measured:
            if m.median_us is None:
                continue
            curves[0].us[m.total_tokens] = m.median_us
            view.margins[m.total_tokens] = m.margin
            size_w = c.workload(m.total_tokens)
            view.variants[m.total_tokens] = d.plan_for(size_w).variant
            if m.margin is not None:
                curves[1].us[m.total_tokens] = m.median_us * (1 + m.margin)
        for curve, (_, other) in zip(curves[2:], others, strict=True):
            same = next((o for o in _policy_classes(other) if o.key == c.key), None)
            for m in same.measured if same else []:
                if m.median_us is not None:
                    curve.us[m.total_tokens] = m.median_us
        views.append(view)
    provenance = []
    for label, p in policies:
        provenance.append((label, f"{p.gpu.id}, {p.provenance.source}, created {p.provenance.created}, "
                                  f"torch {p.provenance.torch or '-'} / triton {p.provenance.triton or '-'}"))
    notes = ["From policy files: times are each policy's own record of its winners; the default plan was "
             "not measured, and no physical floor is drawn."]
    if others and others[0][1].gpu.arch != first.gpu.arch:
        notes.append(f"{label0} and {others[0][0]} are for different GPUs ({first.gpu.id}, {others[0][1].gpu.id}): "
                     "their times compare machines, not plans.")
    return Report(f"policy {label0}" + "".join(f" vs {label}" for label, _ in others), provenance, views, notes,
                  [label for label, _ in others])
