"""The sweep: compile, check, time, store, select; resumable at every step.

Stages over the whole grid (coarse, refine, final; see :func:`run_sweep`).  Per workload and
stage: build realistic inputs and the reference; run every new candidate once on NaN-poisoned
outputs and workspace and compare with the reference (a mismatch or a failure is stored as such
and never timed); time the rest interleaved (CUDA graphs, cold L2); commit each row.  The final
stage re-times the best few side by side and :mod:`dsv4_tune.tuner.select` picks the winner.
On the interpreter the same pipeline runs on a tiny grid with wall-clock "timings", and
everything it stores is labelled as not a real measurement.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import torch

from dsv4_tune.cache.store import Store, stable_hash, workload_key
from dsv4_tune.policies.gpu import GpuInfo, driver_version, toolchain
from dsv4_tune.registry import plans as registry_plans
from dsv4_tune.registry.layout import fp8_pairs
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload
from dsv4_tune.tuner.candidates import LAUNCHES, REFINE_SEEDS, coarse_candidates, refine_candidates
from dsv4_tune.tuner.cases import Case
from dsv4_tune.tuner.grid import Grid, GridClass, GridPoint, OpGridClass
from dsv4_tune.tuner.inputs import INPUTS_VERSION
from dsv4_tune.tuner.kernel_versions import kernel_versions
from dsv4_tune.tuner.measure import gpu_state, host_us_per_call, hygiene_flag, interleaved_times, summarize
from dsv4_tune.tuner.select import select_eager, select_winner

STAGE_COARSE = "coarse"
STAGE_REFINE = "refine"
STAGE_FINAL = "final"
STAGES = (STAGE_COARSE, STAGE_REFINE, STAGE_FINAL)
FINALISTS = 3
NOISY_SPREAD = 1.3  # a timing batch with a plan's p80 / p20 above this is measured again
STAGE_HOST = "host"  # measurement rows of host time per eager call (final-stage plans)
HOST_CALLS = 400
# Host time is measured only where the graph winner takes less GPU time than this: above it, any
# plan's GPU time exceeds its host time (tens of microseconds) and the eager winner is the graph one.
EAGER_MAX_US = 150.0


def time_plans(
    case: Case, plans: list[Plan], real: bool, rounds: int, reps: int
) -> tuple[list[list[float]], str | None]:
    """Samples (us) per plan and a hygiene flag; wall-clock samples on the interpreter."""
    if not real:  # one call's wall clock: that of its check on these inputs where there was one
        samples = []
        for p in plans:
            us = case.checked_us.pop(p, None)
            if us is None:
                fn = case.timer(p)
                t0 = time.perf_counter()
                fn()
                us = (time.perf_counter() - t0) * 1e6
            samples.append([us])
        return samples, "interpreter: not a real measurement"
    fns = [case.timer(p) for p in plans]
    samples = interleaved_times(fns, rounds=rounds, reps=reps)
    flag = hygiene_flag(gpu_state())
    if flag:  # throttled or shared: measure once more before keeping it
        samples = interleaved_times(fns, rounds=rounds, reps=reps, seed=1)
        flag = hygiene_flag(gpu_state())
    if max(map(spread, samples)) > NOISY_SPREAD:
        # Bursts of interference (another tenant of the host or GPU) slow some rounds of some plans:
        # a median in the slow mode would misrank the plan (2026-11-26, H100: 167.6 us for a plan
        # whose p20 was 97.5 and which measured 97 in every other run).  Interference only adds
        # time, so each plan keeps the faster of its two measurements (by median; the two runs
        # follow each other, so plans taken from different runs were still timed minutes apart
        # at most, under the same clocks).
        again = interleaved_times(fns, rounds=rounds, reps=reps, seed=2)
        samples = [b if statistics.median(b) < statistics.median(a) else a for a, b in zip(samples, again, strict=True)]
        noisy = max(map(spread, samples)) > NOISY_SPREAD
        flag = "; ".join(x for x in (flag, "noisy: re-timed" + (", still noisy" if noisy else "")) if x)
    return samples, flag


def spread(samples_us: list[float]) -> float:
    """p80 / p20 of one plan's samples: about 1.0-1.1 on a quiet GPU."""
    s = summarize(samples_us)
    return s["p80_us"] / s["p20_us"] if s["p20_us"] > 0 else float("inf")


# ------------------------------------------------------------------------ parallel compile
def _compile_worker(jobs: list[tuple[GridClass | OpGridClass, int, Plan]], fp8: str | tuple[str, str] | None) -> None:
    for cls, _t, plan in jobs:
        cls.build_case(1, "cuda", with_ref=False, fp8=fp8).compile(plan)  # the sweep's own check stores a failure
    torch.cuda.synchronize()


def compile_plans(
    pairs: list[tuple[GridClass | OpGridClass, Plan]], processes: int, fp8: str | tuple[str, str] | None = None
) -> tuple[int, float]:
    """Fill the Triton cache: one run of every distinct kernel among ``pairs``, in worker processes
    (plans that differ only in SPLIT_K share their kernels), pools in ``fp8`` (None: the GPU's; a
    (main, extra) pair for decode classes only).
    Returns (kernels, seconds)."""
    t0 = time.time()
    firsts: dict[tuple, tuple] = {}
    for cls, plan in pairs:
        firsts.setdefault(cls.compile_key(plan), (cls, 1, plan))
    todo = list(firsts.values())
    processes = max(1, min(processes, len(todo)))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_compile_worker, args=(todo[i::processes], fp8)) for i in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return len(todo), time.time() - t0


# ---------------------------------------------------------------------------------- sweep
def sweep_flavour(gpu: GpuInfo, fp8: str | None = None) -> str:
    """The FP8 flavour a sweep's pools take: ``fp8`` when given, else the GPU arch's (``e4m3fn`` on
    the interpreter)."""
    return fp8 or (gpu.fp8 if gpu.is_real else "e4m3fn")


def sweep_meta(gpu: GpuInfo, grid: Grid, fp8: str | None = None) -> dict:
    runtime = torch.version.cuda or torch.version.hip or "none"  # keys the sweep (as it always has)
    return {"gpu_id": gpu.id, "arch": gpu.arch, "device_name": gpu.name, "multiprocessors": gpu.multiprocessors,
            "pci_device_id": gpu.pci_device_id, "driver": str(runtime),
            "driver_version": driver_version() if gpu.is_real else "none", "fp8": sweep_flavour(gpu, fp8),
            **toolchain(), "interpreter": int(not gpu.is_real), "grid_hash": stable_hash(grid.to_json()),
            "grid": json.dumps(grid.to_json(), sort_keys=True), "inputs": INPUTS_VERSION,
            "kernels": json.dumps(kernel_versions(), sort_keys=True)}


def check_counts(**counts: int) -> None:
    """Every count a sweep takes (rounds, reps, refine rounds, jobs, workers) is at least 1."""
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name}: expected >= 1, got {value}")


def run_sweep(
    store: Store,
    grid: Grid,
    gpu: GpuInfo,
    *,
    fresh: bool = False,
    jobs: int = 1,
    rounds: int = 3,
    reps: int = 10,
    refine_rounds: int = 1,
    on_point: Callable[[int, int, str], None] | None = None,
    on_open: Callable[[str, bool, int], None] | None = None,
    fp8: str | None = None,
) -> str:
    """Measure ``grid`` on ``gpu`` into ``store``; returns the sweep id.  Resumes unless ``fresh``.

    Three stages over the whole grid, each resumable from the store: coarse (every variant at good
    configs), refine (the neighbourhoods of each workload's best plans so far, re-timed beside
    them; ``refine_rounds`` rounds, each from the best plans the rounds before found: a round whose
    seeds did not move times nothing) and final (the best few re-timed side by side, the winner stored).
    Before a stage times anything, the kernels it needs are compiled in ``jobs`` worker processes.
    A later call with more rounds deepens a finished sweep and re-opens its final stage where the
    search found new plans.  ``on_open(sweep id, resumed, rows kept)`` is told which sweep this is
    before anything is measured.  A sweep stopped by an exception (Ctrl-C included) is marked
    ``interrupted``; one killed outright reads so too (:meth:`Store.state`).
    """
    check_counts(rounds=rounds, reps=reps, refine_rounds=refine_rounds, jobs=jobs)
    sweep_id, resumed = store.open_sweep(sweep_meta(gpu, grid, fp8), fresh=fresh)
    if on_open:
        on_open(sweep_id, resumed, store.measurement_count(sweep_id))
    points = grid.points()
    progress = _Progress(store, sweep_id, len(points), refine_rounds, on_point)
    try:
        _run_stages(store, sweep_id, list(enumerate(points)), gpu, jobs, rounds, reps, refine_rounds, progress,
                    sweep_flavour(gpu, fp8))
        progress.finish()
    except BaseException:
        with contextlib.suppress(Exception):  # the store itself may be what failed: keep the first error
            store.finish_sweep(sweep_id, "interrupted")
        raise
    store.finish_sweep(sweep_id)
    return sweep_id


@dataclass(frozen=True)
class Stage:
    """One pass of the search over the grid: ``tag`` names it among the passes (``coarse``,
    ``refine1``, ..., ``final``); ``candidates(n, workload)`` are the plans it times (None: the final,
    which re-times the best of the earlier passes)."""

    name: str
    tag: str
    candidates: Callable[[int, Workload | OpWorkload], list[Plan]] | None = None


class Rows(Protocol):
    """What measuring one workload reads and writes of a store: a :class:`Store`, or a stand-in that
    records the writes for another process to commit (a Ray actor's, see :mod:`~dsv4_tune.tuner.ray_sweep`)."""

    def passed(self, sweep_id: str, workload: str, other_than: str) -> dict[str, float]: ...

    def ranked(self, sweep_id: str, workload: str, stages: tuple[str, ...]) -> list[Plan]: ...

    def add_measurement(self, sweep_id: str, workload: str, stage: str, plan: Plan, status: str,
                        error: str | None = None, **fields: Any) -> None: ...

    def set_winner(self, sweep_id: str, workload: str, plan: Plan, **fields: Any) -> None: ...


class Todo(NamedTuple):
    """One workload of a pass: its grid index (which seeds its inputs), class, T, key and the plans
    still to measure there."""

    n: int
    cls: GridClass | OpGridClass
    t: int
    key: str
    plans: list[Plan]


def search_stages(store: Store, sweep_id: str, gpu: GpuInfo, refine_rounds: int) -> list[Stage]:
    """The passes of a sweep in order: coarse, ``refine_rounds`` refine rounds, final."""
    arch = gpu.arch if gpu.is_real else None
    unfit = store.unfit_kernels(arch) if arch else {}
    limit = None if gpu.is_real else 2  # the interpreter's sweep proves the stages, it measures nothing

    def valid(w: Workload | OpWorkload, plans: list[Plan]) -> list[Plan]:
        return [p for p in plans if not registry_plans.problems(w, p, arch, unfit)]

    def refine(round_: int, w: Workload | OpWorkload) -> list[Plan]:
        """Round 1: neighbours of the best coarse plans; later rounds: of the best plans so far (a
        resumed sweep recomputes each round's list from the store and times only what is new)."""
        stages = (STAGE_COARSE,) if round_ == 0 else (STAGE_COARSE, STAGE_REFINE)
        seeds = store.ranked(sweep_id, workload_key(w), stages)[:REFINE_SEEDS]
        return valid(w, refine_candidates(w, seeds, arch, limit)) if seeds else []

    return [Stage(STAGE_COARSE, STAGE_COARSE, lambda n, w: valid(w, coarse_candidates(w, arch, limit))),
            *(Stage(STAGE_REFINE, f"{STAGE_REFINE}{r + 1}", lambda n, w, r=r: refine(r, w))
              for r in range(refine_rounds)),  # a round times only plans no round before it timed
            Stage(STAGE_FINAL, STAGE_FINAL)]


def _run_stages(
    store: Store, sweep_id: str, points: list[tuple[int, GridPoint]], gpu: GpuInfo, jobs: int, rounds: int,
    reps: int, refine_rounds: int, progress: _Progress, fp8: str,
) -> None:
    """The stages of :func:`run_sweep` over ``points`` (each with its index in the grid, which seeds
    its inputs), pools in the ``fp8`` flavour."""
    changed: set[str] = set()
    for stage in search_stages(store, sweep_id, gpu, refine_rounds):
        if stage.candidates is None:
            for n, (cls, t) in points:
                key = workload_key(cls.workload(t))
                progress(f"{stage.name} {key}")
                if key in changed or not store.has_winner(sweep_id, key):  # new candidates re-open the final
                    final_point(store, sweep_id, n, cls, t, gpu, rounds, reps, fp8)
            continue
        todo, retried = stage_todo(store, sweep_id, stage, points)
        if gpu.is_real and jobs > 1:
            compile_stage(stage, todo, jobs, fp8, progress)
        for item in todo:
            progress(f"{stage.name} {item.key}")
            if measure_point(store, sweep_id, stage.name, item, gpu, rounds, reps, fp8, retried):
                changed.add(item.key)


class _Progress:
    """Counts steps (one per workload and stage) for the caller's progress bar, and records them per
    stage in the store with the compile phases (kernels, seconds): the sweep's sign of life and
    what ``status`` shows."""

    def __init__(self, store: Store, sweep_id: str, points: int, refine_rounds: int,
                 on_point: Callable[[int, int, str], None] | None,
                 record: Callable[[dict], None] | None = None) -> None:
        """``record(progress)``: where each step is recorded (default: the sweep row's progress)."""
        self.store, self.sweep_id, self.on_point = store, sweep_id, on_point
        self.record = record or (lambda snapshot: store.beat(sweep_id, snapshot))
        self.total, self.done = points * (len(STAGES) + refine_rounds - 1), 0
        self.stages: dict[str, dict] = {
            STAGE_COARSE: {"done": 0, "total": points}, STAGE_REFINE: {"done": 0, "total": points * refine_rounds},
            STAGE_FINAL: {"done": 0, "total": points}}
        self.started = time.time()

    def __call__(self, label: str) -> None:
        """A step begins: ``label`` is '<stage> <workload>'."""
        if self.on_point:
            self.on_point(self.done, self.total, label)
        stage = label.split(" ", 1)[0]
        if self.done:
            self._record(stage)
        self.done += 1
        if stage in self.stages:
            self.stages[stage]["done"] += 1

    def compiling(self, stage: str, plans: int) -> None:
        """A compile phase begins (its kernels are the distinct ones among ``plans``)."""
        if self.on_point:
            self.on_point(self.done, self.total, f"compile {stage}: the kernels of {plans} plans")
        self._record(f"compile {stage}")

    def compiled(self, stage: str, kernels: int, seconds: float) -> None:
        entry = self.stages.setdefault("compile", {"kernels": 0, "seconds": 0.0})
        entry["kernels"] += kernels
        entry["seconds"] = round(entry["seconds"] + seconds, 1)
        self._record(stage)

    def _record(self, stage: str) -> None:
        self.record({"stages": self.stages, "steps": [self.done, self.total], "stage": stage,
                     "seconds": round(time.time() - self.started, 1)})

    def at(self, stages: list[Stage], index: int, left: int) -> None:
        """Record a parallel sweep's state: the passes before ``stages[index]`` are done, and
        ``left`` workloads of that one are still to be measured."""
        points = self.stages[STAGE_COARSE]["total"]
        for name in STAGES:
            self.stages[name]["done"] = sum(points for s in stages[:index] if s.name == name) + \
                (points - left if stages[index].name == name else 0)
        self.done = index * points + points - left
        self._record(stages[index].name)

    def finish(self) -> None:
        self._record("done")


def stage_todo(
    store: Store, sweep_id: str, stage: Stage, points: list[tuple[int, GridPoint]]
) -> tuple[list[Todo], set[tuple[str, str]]]:
    """What ``stage`` still has to measure at each of ``points``, skipping what the store holds, and
    the (workload, plan) rows of it that failed to launch before (measured again)."""
    assert stage.candidates is not None
    workloads = [(n, cls, t, cls.workload(t)) for n, (cls, t) in points]
    keys = [workload_key(w) for *_, w in workloads]
    only = keys[0] if len(keys) == 1 else None  # one workload (a worker's claim): read its rows only
    done = store.measured(sweep_id, stage.name, workload=only)
    todo = [Todo(n, cls, t, key, [p for p in stage.candidates(n, w) if (key, str(p)) not in done])
            for (n, cls, t, w), key in zip(workloads, keys, strict=True)]
    return todo, store.measured(sweep_id, stage.name, retried=True, workload=only)


def compile_pairs(todo: list[Todo]) -> list[tuple[GridClass | OpGridClass, Plan]]:
    """(class, plan) of every plan ``todo`` still has to measure: what a pass compiles first."""
    return [(item.cls, p) for item in todo for p in item.plans]


def compile_stage(stage: Stage, todo: list[Todo], jobs: int, fp8: str, progress: _Progress) -> None:
    """Compile the kernels ``todo`` needs in ``jobs`` processes, before anything of the stage is timed
    (two-scope plans also in the mixed pairs of pool flavours they are checked in: gfx942's)."""
    pairs = compile_pairs(todo)
    if not pairs:  # a resumed sweep's finished pass: no processes to start
        return
    progress.compiling(stage.name, len(pairs))
    progress.compiled(stage.name, *compile_plans(pairs, jobs, fp8))
    dual = [(cls, plan) for cls, plan in pairs if cls.decode and cls.topk_extra]
    for mixed in fp8_pairs(fp8)[1:] if dual else ():
        progress.compiled(stage.name, *compile_plans(dual, jobs, mixed))


def mixed_failures(cls: GridClass | OpGridClass, t: int, device: str, seed: int, fp8: str,
                   plans: list[Plan]) -> dict[Plan, tuple]:
    """The plans among ``plans`` that fail their check (status, error, max error) with the two-scope
    class's pools in a mixed pair of flavours (:func:`~dsv4_tune.registry.layout.fp8_pairs` of the
    sweep's ``fp8``: gfx942's), so that no plan wrong for those pools is measured or shipped."""
    failed: dict[Plan, tuple] = {}
    for mixed in fp8_pairs(fp8)[1:] if cls.decode and cls.topk_extra and plans else ():  # type: ignore[union-attr]
        case = cls.build_case(t, device, seed=seed, fp8=mixed)
        for plan in plans:
            status, error, max_err = case.check(plan)
            if status != "ok" and plan not in failed:
                failed[plan] = (status, f"pools {mixed[0]} + {mixed[1]}: {error}", max_err)
    return failed


def measure_point(
    store: Rows, sweep_id: str, stage: str, item: Todo, gpu: GpuInfo, rounds: int, reps: int, fp8: str,
    retried: set[tuple[str, str]],
) -> bool:
    """Check and time one workload's plans of a stage, committing each row.  A plan that passed its
    check on the same inputs in an earlier stage is not checked again; a two-scope plan is checked
    in the mixed pairs of pool flavours too (:func:`mixed_failures`) and timed in ``fp8``.  Returns whether the workload
    got new rows (which re-opens its final)."""
    n, cls, t, key, plans = item
    if not plans:
        return False
    device = "cuda" if gpu.is_real else "cpu"
    case = cls.build_case(t, device, seed=n, fp8=fp8)
    passed_before = store.passed(sweep_id, key, other_than=stage)
    checked = {p: ("ok", None, passed_before[str(p)]) if str(p) in passed_before else case.check(p) for p in plans}
    new = [p for p in plans if checked[p][0] == "ok" and str(p) not in passed_before]
    checked |= mixed_failures(cls, t, device, n, fp8, new)
    passing, errors = [], {}
    for plan in plans:
        status, error, errors[plan] = checked[plan]
        if status != "ok":
            store.add_measurement(sweep_id, key, stage, plan, status, error, max_error=errors[plan])
        else:
            passing.append(plan)
    if passing:
        samples, flag = time_plans(case, passing, gpu.is_real, rounds, reps)
        for plan, s in zip(passing, samples, strict=True):
            store.add_measurement(sweep_id, key, stage, plan, "ok", **summarize(s), rounds=rounds, flagged=flag,
                                  max_error=errors[plan])
    # New rows re-open the final; a plan tried again after a failed launch does so only if it now runs.
    return bool(passing) or any((key, str(p)) not in retried for p in plans)


def final_point(
    store: Rows, sweep_id: str, n: int, cls: GridClass | OpGridClass, t: int, gpu: GpuInfo, rounds: int,
    reps: int, fp8: str,
) -> None:
    """The final stage at one workload (see :func:`_final`)."""
    _final(store, sweep_id, workload_key(cls.workload(t)),
           lambda: cls.build_case(t, "cuda" if gpu.is_real else "cpu", seed=n, fp8=fp8), gpu.is_real, rounds, reps)


def _final(
    store: Rows, sweep_id: str, key: str, make_case: Callable[[], Case], real: bool, rounds: int, reps: int
) -> None:
    """Re-time the best few side by side (with the best one-launch plan of a decode workload among
    them), time their host cost per eager call, and store the winner and the eager winner."""
    ranked = store.ranked(sweep_id, key, (STAGE_COARSE, STAGE_REFINE))
    plans = ranked[:FINALISTS]
    if not plans:
        return
    case = make_case()
    one_launch = next((p for p in ranked if LAUNCHES.get(p.variant) == 1), None)
    if case.decode and one_launch is not None and one_launch not in plans:
        plans.append(one_launch)
    samples, flag = time_plans(case, plans, real, rounds * 2, reps)
    by_plan = dict(zip(plans, samples, strict=True))
    for plan, s in by_plan.items():
        store.add_measurement(sweep_id, key, STAGE_FINAL, plan, "ok", **summarize(s), rounds=rounds * 2, flagged=flag)
    win = select_winner(by_plan)
    plan = win["plan"]
    host = host_times(case, plans) if real and case.decode and win["median_us"] < EAGER_MAX_US else {}
    for p, us in host.items():
        store.add_measurement(sweep_id, key, STAGE_HOST, p, "ok", median_us=us, samples=HOST_CALLS)
    eager = select_eager(by_plan, host, plan)
    store.set_winner(sweep_id, key, plan, median_us=win["median_us"], runner_up=win["runner_up"],
                     margin=win["margin"], reason=win["reason"] + (f" [{flag}]" if flag else ""),
                     eager=eager["plan"] if eager else None, eager_us=eager["median_us"] if eager else None,
                     eager_reason=eager["reason"] if eager else None)


def host_times(case: Case, plans: list[Plan]) -> dict[Plan, float]:
    """Median host microseconds of one eager call of each plan (replayed launches, as serving)."""
    return {p: host_us_per_call(case.timer(p), calls=HOST_CALLS, burst=50)[0] for p in plans}
