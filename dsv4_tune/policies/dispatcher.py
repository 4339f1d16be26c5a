"""Workload in, plan out: a policy compiled into plain lookup tables, and the process-wide choice
of policy at serving time.

``Dispatcher.lookup`` builds one tuple key, indexes a dict, computes the power-of-two bucket of T
with ``int.bit_length`` and indexes a list: no allocation beyond the key and no GPU work.  A bucket
that a segment boundary cuts (the seed's exact element-count thresholds) holds a small sorted list
that is bisected.  A workload class the policy lacks is resolved once to the nearest class (same
h_q and scope count, preferring the same flags, then the nearest total topk; ties to the smaller)
and cached; its plans are re-checked against the registry for the new class and any that cannot
run it is replaced by the default.  With no class of that h_q the built-in default plan is used.
T beyond the last boundary uses the last (open-ended) segment.

``lookup(w, eager=True)`` answers a call made outside a CUDA graph: a segment's ``eager_plan``
where the policy has one (the plan that pays less host time for launches), else its plan.
"""

from __future__ import annotations

import bisect
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

from dsv4_tune.env import POLICY, policy_path
from dsv4_tune.errors import DSV4TuneWarning
from dsv4_tune.policies.gpu import GpuInfo, detect, toolchain
from dsv4_tune.policies.schema import OpClass, Policy, PolicyError, WorkloadClass, load_policy
from dsv4_tune.registry.buckets import bucket_index
from dsv4_tune.registry.gpus import arch_of_id
from dsv4_tune.registry.ops import get_op, op_default_plan
from dsv4_tune.registry.variants import default_plan, plan_problems
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload

DATA_DIR = Path(__file__).resolve().parent / "data"

ClassKey = tuple[int, int, int, bool, bool, bool]
FALLBACK = "; using the built-in default plan"  # how a selection note says that no policy applies


@dataclass(frozen=True)
class _Split:
    """A bucket cut by segment boundaries: ``plans[i]`` serves T <= ``bounds[i]``, the last the rest."""

    bounds: tuple[int, ...]
    plans: tuple[Plan, ...]

    def pick(self, total_tokens: int) -> Plan:
        return self.plans[bisect.bisect_left(self.bounds, total_tokens)]


def _compile_segments(segments: list[tuple[int | None, Plan]]) -> list:
    """Dense per-bucket table: entry b serves T in (2^(b-1), 2^b]; the last entry serves all larger T."""
    finite = [m for m, _ in segments if m is not None]
    last_bucket = bucket_index(finite[-1]) + 1 if finite else 0
    table: list = []
    for b in range(last_bucket + 1):
        lo, hi = (1, 1) if b == 0 else ((1 << (b - 1)) + 1, 1 << b)
        inside = []
        start = 1
        for m, plan in segments:
            end = m if m is not None else 1 << 62
            if end >= lo and start <= hi:
                inside.append((end, plan))
            start = end + 1
        if len(inside) == 1:
            table.append(inside[0][1])
        else:
            table.append(_Split(tuple(e for e, _ in inside[:-1]), tuple(p for _, p in inside)))
    return table


def _class_tables(c: WorkloadClass, w: Workload | None) -> tuple[list, list]:
    """The (graph, eager) lookup tables of a class; for another class's workload ``w``, a plan that
    cannot run ``w`` is replaced by its default."""
    def usable(plan: Plan) -> Plan:
        return default_plan(w) if w is not None and plan_problems(w, plan) else plan

    graph = [(s.max_tokens, usable(s.plan.to_plan())) for s in c.segments]
    eager = [(m, usable(s.eager_plan.to_plan()) if s.eager_plan else p) for (m, p), s in zip(graph, c.segments,
                                                                                          strict=True)]
    return _compile_segments(graph), _compile_segments(eager)


@dataclass(eq=False)  # hashed by identity: it keys the replay cache
class Dispatcher:
    """Compiled lookup tables of one policy (or none: the built-in default for every workload)."""

    policy: Policy | None = None
    source: str = "built-in default"
    _tables: dict[ClassKey, list] = field(default_factory=dict, repr=False)
    _eager_tables: dict[ClassKey, list] = field(default_factory=dict, repr=False)
    has_eager: bool = field(default=False, init=False)  # any eager_plan: callers may skip asking
    resolved_from: dict[ClassKey, ClassKey | None] = field(default_factory=dict, repr=False)

    _op_tables: dict[tuple, list] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.policy is not None:
            for c in self.policy.classes:
                self._tables[c.key], self._eager_tables[c.key] = _class_tables(c, None)
                self.resolved_from[c.key] = c.key
                self.has_eager |= any(s.eager_plan is not None for s in c.segments)
            for o in self.policy.ops:
                self._op_tables[o.key] = _compile_segments([(s.max_tokens, s.plan.to_plan()) for s in o.segments])

    @classmethod
    def from_file(cls, path: str | Path) -> Dispatcher:
        return cls(load_policy(path), str(path))

    def lookup(self, w: Workload, eager: bool = False) -> Plan:
        """The plan for ``w``, for a call outside a CUDA graph if ``eager`` (see the module docstring)."""
        table = (self._eager_tables if eager else self._tables).get(w.key)
        if table is None:
            self._resolve(w.key)
            table = (self._eager_tables if eager else self._tables)[w.key]
        t = w.total_tokens
        try:
            entry = table[(t - 1).bit_length() if t > 1 else 0]
        except IndexError:  # beyond the last boundary: the open-ended segment
            entry = table[-1]
        return entry if entry.__class__ is Plan else entry.pick(t)

    def lookup_op(self, w: OpWorkload) -> Plan:
        """The plan for a compressor / Q/K-norm call: the policy's plans for exactly these
        parameters, else the op's default (checked once: bad parameters raise a ValueError)."""
        table = self._op_tables.get(w.key)
        if table is None:
            problems = get_op(w.op).param_problems(w.params_dict)
            if problems:
                raise ValueError("; ".join(problems))
            table = self._op_tables[w.key] = [op_default_plan(w)]
        t = w.rows
        try:
            entry = table[(t - 1).bit_length() if t > 1 else 0]
        except IndexError:
            entry = table[-1]
        return entry if entry.__class__ is Plan else entry.pick(t)

    def plan_for(self, w: Workload | OpWorkload) -> Plan:
        """:meth:`lookup` of a decode workload (for a graph), :meth:`lookup_op` of an op's."""
        return self.lookup_op(w) if isinstance(w, OpWorkload) else self.lookup(w)

    def op_class_of(self, w: OpWorkload) -> OpClass | None:
        if self.policy is None:
            return None
        return next((o for o in self.policy.ops if o.key == w.key), None)

    def _resolve(self, key: ClassKey) -> None:
        nearest = self.nearest_class(key)
        w = Workload(1, *key)
        if nearest is None:
            self._tables[key] = self._eager_tables[key] = [default_plan(w)]
        else:
            self._tables[key], self._eager_tables[key] = _class_tables(nearest, w)
        self.resolved_from[key] = None if nearest is None else nearest.key

    def nearest_class(self, key: ClassKey) -> WorkloadClass | None:
        """Same h_q and scope count; then same flags first, nearest total topk, smaller on a tie."""
        if self.policy is None:
            return None
        h, tm, te = key[0], key[1], key[2]
        same = [c for c in self.policy.classes if c.h_q == h and (c.topk_extra > 0) == (te > 0)]
        if not same:
            return None
        return min(same, key=lambda c: (c.key[3:] != key[3:], abs(c.topk_main + c.topk_extra - tm - te),
                                        c.topk_main + c.topk_extra))

    def class_of(self, w: Workload) -> WorkloadClass | None:
        """The policy class whose plans answer ``w`` (after nearest-class resolution)."""
        self.lookup(w)
        src = self.resolved_from.get(w.key)
        if src is None or self.policy is None:
            return None
        return next(c for c in self.policy.classes if c.key == src)


# ----------------------------------------------------------------------------- selection at serving
_DISPATCHER: Dispatcher | None = None
_SCOPED: ContextVar[Dispatcher | None] = ContextVar("dsv4_tune_dispatcher", default=None)

PolicySource = str | Path | Policy | Dispatcher | None
_BY_FILE: dict[tuple, Dispatcher] = {}  # (path, mtime, size) -> its dispatcher, for explicit choices by file


def _warn(msg: str) -> None:
    warnings.warn(msg, DSV4TuneWarning, stacklevel=3)


def _versions_drift(policy: Policy) -> str | None:
    got = toolchain()
    want = {"torch": policy.provenance.torch, "triton": policy.provenance.triton}
    diff = [f"{k} {want[k]} -> {got[k]}" for k in got if want[k] and want[k] != got[k]]
    return ", ".join(diff) or None


def shipped_policies() -> list[Path]:
    return sorted(DATA_DIR.glob("*.json"))


def _try_load(path: Path) -> Policy | None:
    try:
        return load_policy(path)
    except Exception:  # selection never raises; the loop of select_policy says what is wrong
        return None


def _closest(loaded: dict[Path, Policy | None], gpu: GpuInfo) -> list[Path]:
    """Same-arch policies, the one measured on the SM / CU count nearest this GPU's first (then by name;
    a policy that does not load, or does not say, comes last)."""
    def distance(path: Path) -> tuple[int, str]:
        policy = loaded[path]
        count = policy.gpu.multiprocessors if policy else 0
        return (abs(count - gpu.multiprocessors) if count else 1 << 20, path.name)

    return sorted(loaded, key=distance)


def _measured_on(policy: Policy | None) -> str:
    if policy is None:
        return "which does not load"
    g = policy.gpu
    return f"measured on {g.device_name or g.id}" + (f" ({g.multiprocessors} SMs / CUs)" if g.multiprocessors else "")


def select_policy(gpu: GpuInfo | None = None) -> tuple[Dispatcher, list[str]]:
    """Choose the policy for this process; never raises.  Returns the dispatcher and the warnings.

    Order: ``$DSV4_TUNE_POLICY``; else the shipped policy whose GPU id matches exactly; else one of
    the same arch (with a warning); else the built-in default (with one warning saying how to make a
    policy).  A policy for another arch, or one that fails to load, is refused with a warning.
    """
    gpu = gpu or detect()
    notes: list[str] = []
    env = policy_path()
    candidates: list[Path] = []
    loaded: dict[Path, Policy | None] = {}  # same-arch policies, each loaded once
    if env:
        candidates = [Path(env)]
    else:
        shipped = shipped_policies()
        exact = [p for p in shipped if p.stem == gpu.id]
        same_arch = [p for p in shipped if arch_of_id(p.stem) == gpu.arch and p not in exact]
        loaded = {} if exact else {p: _try_load(p) for p in same_arch}
        candidates = exact or _closest(loaded, gpu)[:1]
        if not exact and candidates:
            notes.append(f"dsv4-tune: no policy for GPU id {gpu.id}; using {candidates[0].name} of the same arch "
                         f"{gpu.arch}, {_measured_on(loaded[candidates[0]])}: its plans run here, its timings are that "
                         f"GPU's (`dsv4-tune verify-policy` re-times them here; a sweep here replaces them)")
    for path in candidates:
        try:
            policy = loaded.get(path) or load_policy(path)  # a failed preload: load again for the error
        except Exception as e:  # a broken policy never takes serving down: PolicyError, or anything else
            why = str(e) if isinstance(e, PolicyError) else f"{path}: {type(e).__name__}: {e}"
            notes.append(f"dsv4-tune: ignoring broken policy ({why}){FALLBACK}")
            return Dispatcher(), notes
        if policy.gpu.arch != gpu.arch:
            notes.append(f"dsv4-tune: refusing policy {path} for arch {policy.gpu.arch} on this {gpu.arch} GPU "
                         f"({gpu.name}){FALLBACK}")
            return Dispatcher(), notes
        drift = _versions_drift(policy)
        if drift:
            notes.append(f"dsv4-tune: policy {path} was measured with other tools ({drift}); using it anyway")
        return Dispatcher(policy, str(path)), notes
    searched = env or f"{DATA_DIR}/{gpu.id}.json and any {gpu.arch}-*.json there"
    notes.append(
        f"dsv4-tune: no policy for GPU {gpu.id} (searched {searched}){FALLBACK}. "
        f"Make one with `dsv4-tune sweep --gpu {gpu.arch if gpu.is_real else 'auto'}` then `dsv4-tune export`, "
        f"and point {POLICY} at it."
    )
    return Dispatcher(), notes


def as_dispatcher(source: PolicySource, gpu: GpuInfo | None = None) -> Dispatcher:
    """The dispatcher of an explicit choice: a policy file, a loaded ``Policy``, a ``Dispatcher``, or
    None (no policy: the built-in default plans).  Unlike the automatic choice, an explicit one that
    cannot be used raises: a PolicyError for a file that does not load or a policy of another arch."""
    if source is None:
        return Dispatcher()
    if isinstance(source, Dispatcher):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        stat = path.stat() if path.is_file() else None
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size) if stat else None
        if key in _BY_FILE:  # the same file again (a scope entered per request): the same tables and replays
            return _BY_FILE[key]
        policy, label = load_policy(source), str(source)
    elif isinstance(source, Policy):
        policy, label = source, f"policy {source.gpu.id} ({source.provenance.source})"
    else:
        raise TypeError(f"policy: expected a path, a Policy, a Dispatcher or None, got {type(source).__name__}")
    gpu = gpu or detect()
    if policy.gpu.arch != gpu.arch:
        raise PolicyError(f"{label}: a policy for arch {policy.gpu.arch}; this GPU is {gpu.arch} ({gpu.name})")
    dispatcher = Dispatcher(policy, label)
    if isinstance(source, (str, Path)) and key is not None:
        _BY_FILE[key] = dispatcher
    return dispatcher


def use_policy(source: PolicySource) -> Dispatcher:
    """Choose the policy of the whole process (what ``DSV4_TUNE_POLICY`` chooses otherwise): a file, a
    ``Policy``, a ``Dispatcher`` or None (the built-in default plans).  Raises where the choice cannot
    be used (see :func:`as_dispatcher`); :func:`reset_dispatcher` goes back to the automatic choice."""
    global _DISPATCHER
    _DISPATCHER = as_dispatcher(source)
    return _DISPATCHER


@contextmanager
def policy_scope(source: PolicySource) -> Iterator[Dispatcher]:
    """Within the ``with`` block (this thread or task), dispatched calls use ``source``'s plans."""
    token = _SCOPED.set(as_dispatcher(source))
    try:
        yield _SCOPED.get()  # type: ignore[misc]
    finally:
        _SCOPED.reset(token)


def get_dispatcher() -> Dispatcher:
    """The dispatcher of this call: a :func:`policy_scope`'s, else the process-wide one, chosen on
    first use (its warnings are emitted once, then)."""
    global _DISPATCHER
    scoped = _SCOPED.get()
    if scoped is not None:
        return scoped
    if _DISPATCHER is None:
        dispatcher, notes = select_policy()
        for note in notes:
            _warn(note)
        _DISPATCHER = dispatcher
    return _DISPATCHER


def reset_dispatcher() -> None:
    """Forget the process-wide choice (tests, or after changing ``DSV4_TUNE_POLICY``)."""
    global _DISPATCHER
    _DISPATCHER = None
