"""A sweep across the GPUs of a Ray cluster: one actor per GPU, the driver's store the one writer.

The passes run in order, as in one process (:func:`~dsv4_tune.tuner.sweep.run_sweep`).  For each
pass the driver works out from its store what is still to measure, has one actor per host compile
the pass's kernels there (``jobs`` processes), hands the workloads out one at a time (the next to
whichever actor is free) and commits the rows each actor sends back as they arrive: the hosts
share no file system and keep no store.  An actor measures a workload with the code a sweep in
one process runs, against a :class:`RowRecorder` that answers what that code reads (the plans that
passed before, the ranking for the final; the driver sends them) and records what it writes.  An
actor that dies loses the workload it held, which the driver gives to another actor; the driver
killed loses nothing committed, and the sweep resumes as any other.  Every actor must report the
same GPU id, torch, Triton and dsv4-tune (one sweep is one GPU id); with no GPU in the cluster the
actors run the Triton interpreter.  Ray is the optional extra ``dsv4-tune[ray]``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections import deque
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from dsv4_tune.cache.store import Store, workload_key
from dsv4_tune.policies.gpu import GpuInfo
from dsv4_tune.registry.workload import Plan
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.sweep import (
    STAGE_COARSE,
    STAGE_REFINE,
    Todo,
    _Progress,
    check_counts,
    compile_pairs,
    search_stages,
    stage_todo,
)
from dsv4_tune.tuner.workers import DeviceError, check_devices

INTERPRETER_WORKERS = 2  # actors of a cluster with no GPU
MAX_DEATHS = 2  # a workload whose measuring took down this many actors stops the sweep
START_S = 600.0  # how long the actors may take to start (import torch, CUDA) and describe their GPU
KEYED = ("gpu_id", "driver", "torch", "triton", "dsv4_tune")  # what every actor must report alike
WRITES = ("add_measurement", "set_winner")  # the store calls an actor may send back


def _version() -> str:
    try:
        return version("dsv4-tune")
    except PackageNotFoundError:  # run from a source tree on PYTHONPATH
        return "not installed"


def _ray():
    try:
        import ray
    except ImportError:
        raise DeviceError("--ray needs Ray: pip install 'dsv4-tune[ray]'") from None
    return ray


class RowRecorder:
    """The store as :func:`~dsv4_tune.tuner.sweep.measure_point` and ``final_point`` see it, for one
    workload on an actor: reads answered from what the driver sent, writes recorded for the driver."""

    def __init__(self, passed: dict[str, float] | None = None, ranked: list[Plan] | None = None) -> None:
        self._passed, self._ranked = passed or {}, ranked or []
        self.calls: list[tuple[str, tuple, dict]] = []

    def passed(self, sweep_id: str, workload: str, other_than: str) -> dict[str, float]:
        return dict(self._passed)

    def ranked(self, sweep_id: str, workload: str, stages: tuple[str, ...]) -> list[Plan]:
        return list(self._ranked)

    def add_measurement(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("add_measurement", args, kwargs))

    def set_winner(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("set_winner", args, kwargs))


def commit(store: Store, calls: list[tuple[str, tuple, dict]]) -> None:
    """Write what an actor recorded (store writes only)."""
    for name, args, kwargs in calls:
        if name not in WRITES:
            raise ValueError(f"ray sweep: an actor sent back {name!r}, not a store write")
        getattr(store, name)(*args, **kwargs)


class Worker:
    """One Ray actor (one GPU, or an interpreter worker): measures what the driver hands it."""

    def __init__(self) -> None:
        from dsv4_tune.policies.gpu import detect

        self.gpu = detect()

    def describe(self, grid: Grid, fp8: str | None) -> dict[str, Any]:
        """This actor's GPU, the sweep row it would open, its host and versions."""
        from dsv4_tune.tuner.sweep import sweep_meta

        return {"gpu": self.gpu, "meta": sweep_meta(self.gpu, grid, fp8), "host": socket.gethostname(),
                "dsv4_tune": _version(), "pid": os.getpid()}

    def compile(self, pairs: list, jobs: int, fp8: str) -> tuple[int, float]:
        from dsv4_tune.tuner.sweep import compile_plans

        return compile_plans(pairs, jobs, fp8) if self.gpu.is_real and pairs else (0, 0.0)

    def measure(self, sweep_id: str, stage: str, item: Todo, passed: dict[str, float],
                retried: set[tuple[str, str]], rounds: int, reps: int, fp8: str) -> tuple[list, bool]:
        from dsv4_tune.tuner.sweep import measure_point

        rows = RowRecorder(passed=passed)
        changed = measure_point(rows, sweep_id, stage, item, self.gpu, rounds, reps, fp8, retried)
        return rows.calls, changed

    def final(self, sweep_id: str, n: int, cls: Any, t: int, ranked: list[Plan], rounds: int, reps: int,
              fp8: str) -> list:
        from dsv4_tune.tuner.sweep import final_point

        rows = RowRecorder(ranked=ranked)
        final_point(rows, sweep_id, n, cls, t, self.gpu, rounds, reps, fp8)
        return rows.calls


def run_sweep_ray(
    store: Store | Callable[[], Store], grid: Grid | None, *, address: str | None = None, fresh: bool = False,
    jobs: int = 1, rounds: int = 3, reps: int = 10, refine_rounds: int = 1, fp8: str | None = None,
    expect: str = "auto", interpreter_workers: int = INTERPRETER_WORKERS,
    on_point: Callable[[int, int, str], None] | None = None,
    on_open: Callable[[str, bool, int], None] | None = None,
) -> str:
    """Measure ``grid`` (None: the default grid, or the interpreter's when the cluster has no GPU) on
    the Ray cluster at ``address`` (``None``: the one this process is connected to, else a new one on
    this machine; ``"auto"``: the running cluster of this machine), one actor per GPU of the cluster
    (``interpreter_workers`` when it has none), into ``store`` (or the store that function opens,
    once the cluster's GPU passed its checks: a refused sweep creates no file); returns the sweep id.
    The cluster's GPU must match ``expect`` (as ``sweep --gpu``).  Resumes unless ``fresh``, and
    stores the same rows as :func:`~dsv4_tune.tuner.sweep.run_sweep`."""
    check_counts(rounds=rounds, reps=reps, refine_rounds=refine_rounds, jobs=jobs,
                 interpreter_workers=interpreter_workers)
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    run = uuid.uuid4().hex[:12]
    actors: list = []
    sweep_id = None
    try:
        gpus = int(ray.available_resources().get("GPU", 0))  # GPUs others hold could not host an actor
        env = {k: v for k, v in os.environ.items() if k.startswith("DSV4_TUNE_")}
        if not gpus:
            env["TRITON_INTERPRET"] = "1"
        remote = ray.remote(num_gpus=1 if gpus else 0, num_cpus=0 if gpus else 1)(Worker)
        actors = [remote.options(name=f"dsv4-tune-{run}-{i}", runtime_env={"env_vars": env}).remote()
                  for i in range(gpus or interpreter_workers)]
        if grid is None:
            from dsv4_tune.tuner.grid import default_grid, interpreter_grid

            grid = default_grid() if gpus else interpreter_grid()
        try:
            described = ray.get([a.describe.remote(grid, fp8) for a in actors], timeout=START_S)
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(f"ray: {len(actors)} actors did not start within {START_S:.0f} s (are the "
                               "cluster's GPUs taken?)") from None
        gpu = _one_gpu(described)
        if not gpu.matches(expect):
            raise DeviceError(f"--gpu {expect} does not match the cluster's GPU: {gpu.name} ({gpu.id}, arch "
                              f"{gpu.arch})")
        if not isinstance(store, Store):
            store = store()
        sweep_id, resumed = store.open_sweep(described[0]["meta"], fresh=fresh)
        if on_open:
            on_open(sweep_id, resumed, store.measurement_count(sweep_id))
        flavour = described[0]["meta"]["fp8"]
        hosts = [(a, d["host"]) for a, d in zip(actors, described, strict=True)]
        _passes(ray, store, sweep_id, grid, gpu, list(actors), hosts, jobs, rounds, reps, refine_rounds, flavour,
                on_point)
    except BaseException:
        if sweep_id is not None and isinstance(store, Store):
            with contextlib.suppress(Exception):
                store.finish_sweep(sweep_id, "interrupted")
        raise
    finally:
        for a in actors:
            with contextlib.suppress(Exception):
                ray.kill(a)
        if started:
            ray.shutdown()
    assert isinstance(store, Store) and sweep_id is not None
    store.finish_sweep(sweep_id)
    return sweep_id


def _one_gpu(described: list[dict[str, Any]]) -> GpuInfo:
    """The cluster's one GPU kind, and one toolchain: else the sweep is refused."""
    check_devices([d["gpu"] for d in described])
    for field in KEYED:
        seen = sorted({str(d["meta"].get(field, d.get(field))) for d in described})
        if len(seen) > 1:
            raise DeviceError(f"ray: the actors differ in {field} ({seen}); one sweep is one GPU id and one "
                             "toolchain: install the same versions on every node")
    return described[0]["gpu"]


def _passes(ray: Any, store: Store, sweep_id: str, grid: Grid, gpu: GpuInfo, actors: list,
            hosts: list[tuple[Any, str]], jobs: int, rounds: int, reps: int, refine_rounds: int, fp8: str,
            on_point: Callable[[int, int, str], None] | None) -> None:
    """The passes in order; ``actors`` (the live ones: a dead one is dropped from it), ``hosts``
    (actor, host) of them all."""
    points = list(enumerate(grid.points()))
    stages = search_stages(store, sweep_id, gpu, refine_rounds)
    progress = _Progress(store, sweep_id, len(points), refine_rounds, None)
    changed: set[str] = set()
    for i, stage in enumerate(stages):
        if stage.candidates is None:  # the final: where the search found something new, or no winner yet
            work = []
            for n, (cls, t) in points:
                key = workload_key(cls.workload(t))
                if key in changed or not store.has_winner(sweep_id, key):
                    ranked = store.ranked(sweep_id, key, (STAGE_COARSE, STAGE_REFINE))
                    work.append((key, lambda a, n=n, cls=cls, t=t, ranked=ranked: a.final.remote(
                        sweep_id, n, cls, t, ranked, rounds, reps, fp8)))
        else:
            todo, retried = stage_todo(store, sweep_id, stage, points)
            pairs = compile_pairs(todo)
            if gpu.is_real and pairs:
                progress.compiling(stage.name, len(pairs))
                firsts = {host: a for a, host in reversed(hosts) if a in actors}  # one live actor per host
                done = []
                for ref in [a.compile.remote(pairs, jobs, fp8) for a in firsts.values()]:
                    with contextlib.suppress(ray.exceptions.RayActorError):  # its host compiles when it measures
                        done.append(ray.get(ref))
                progress.compiled(stage.name, max((k for k, _ in done), default=0),
                                  max((s for _, s in done), default=0.0))
            work = [(item.key, lambda a, item=item, name=stage.name, retried=retried: a.measure.remote(
                sweep_id, name, item, store.passed(sweep_id, item.key, other_than=name),
                {r for r in retried if r[0] == item.key}, rounds, reps, fp8)) for item in todo if item.plans]

        def landed(key: str, result: Any, left: int, stage=stage, i=i) -> None:
            if stage.candidates is None:
                commit(store, result)
            else:
                calls, new = result
                commit(store, calls)
                if new:
                    changed.add(key)
            progress.at(stages, i, left)
            if on_point:
                on_point(i * len(points) + len(points) - left, len(stages) * len(points),
                         f"{stage.tag}: {len(points) - left} of {len(points)} workloads, {len(actors)} actors")

        progress.at(stages, i, len(work))
        _hand_out(ray, actors, work, landed)


def _hand_out(ray: Any, actors: list, work: list[tuple[str, Callable]], landed: Callable[[str, Any, int], None]
              ) -> None:
    """Run ``work`` (key, submit(actor) -> ref) on ``actors``, the next item to whichever is free;
    ``landed(key, result, left)`` as each result arrives, in this thread.  An actor that dies is
    dropped and its item given to another; the last one dying, or an item that took down
    :data:`MAX_DEATHS` actors, raises."""
    queue, idle, pending, deaths = deque(work), list(actors), {}, {}
    while queue or pending:
        while queue and idle:
            actor = idle.pop()
            key, submit = queue.popleft()
            pending[submit(actor)] = (actor, key, submit)
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        actor, key, submit = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            actors.remove(actor)
            deaths[key] = deaths.get(key, 0) + 1
            if deaths[key] >= MAX_DEATHS:
                raise RuntimeError(f"ray: {key} took down {deaths[key]} actors; the sweep stops (run it again "
                                   "to resume it)") from None
            if not actors:
                raise RuntimeError("ray: every actor died; run the sweep again to resume it") from None
            queue.appendleft((key, submit))
            continue
        idle.append(actor)
        landed(key, result, len(queue) + len(pending))
