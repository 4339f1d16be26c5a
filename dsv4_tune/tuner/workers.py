"""A sweep over several GPUs of one host: one worker process per GPU, the work handed out through the
store.

The sweep runs its passes (coarse, each refine round, final) one after the other, as a sweep in one
process does.  Before a pass, this process compiles every kernel the pass needs in ``jobs`` processes
(the refine candidates follow from the coarse rows, so a pass can be compiled only once the one
before it ended); then the workers take the pass's workloads one at a time: each claims a workload in
the store, checks and times its plans there, commits every row and takes the next.  Two workers never
hold the same workload, and a worker that dies loses only its claim, which lapses
(:data:`~dsv4_tune.cache.store.CLAIM_LEASE_S` after its last sign of life) and is taken by another
worker, who resumes it from the rows already stored.  A worker with nothing left to take in a pass
waits while other workers hold workloads of it, so that a lapsed claim always finds a taker.  Every
worker writes the same SQLite file (WAL, busy timeout).  One sweep is one GPU id: GPUs of different
kinds are refused.  With no GPU, the workers run the interpreter.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

from dsv4_tune.cache.store import CLAIM_LEASE_S, Store, workload_key
from dsv4_tune.errors import InputError
from dsv4_tune.policies.gpu import GpuInfo, detect
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.sweep import (
    _Progress,
    check_counts,
    compile_stage,
    final_point,
    measure_point,
    search_stages,
    stage_todo,
    sweep_flavour,
    sweep_meta,
)

POLL_S = 0.5
BEAT_S = 10.0  # the driver records the sweep's progress at least this often
JOIN_S = 30.0  # how long a worker may take to leave


class DeviceError(InputError):
    """GPUs one sweep cannot use together (of different kinds; on Ray also: other toolchains, not the
    ``--gpu`` asked for, or no Ray at all): a usage error, the CLI exits 2."""

    exit_code = 2


def check_devices(gpus: list[GpuInfo]) -> None:
    """Refuse GPUs of different kinds in one sweep (one sweep is one GPU id)."""
    ids = sorted({g.id for g in gpus})
    if len(ids) > 1:
        raise DeviceError(f"devices: one sweep is one GPU id, these are {ids}: sweep each kind with its own "
                         "--devices (then `dsv4-tune merge` their stores)")


def claim_key(tag: str, workload: str) -> str:
    """A claim names a pass and a workload: the same workload is claimed once per pass."""
    return f"{tag} {workload}"


def run_sweep_parallel(
    store: Store, grid: Grid, gpu: GpuInfo, devices: list[int], *, fresh: bool = False, jobs: int = 1,
    rounds: int = 3, reps: int = 10, refine_rounds: int = 1, fp8: str | None = None,
    lease_s: float = CLAIM_LEASE_S, on_point: Callable[[int, int, str], None] | None = None,
    on_open: Callable[[str, bool, int], None] | None = None,
) -> str:
    """Measure ``grid`` with one worker per entry of ``devices`` (CUDA device indices; with no GPU,
    as many interpreter workers), compiling each pass's kernels first in ``jobs`` processes (GPU
    only); returns the sweep id.  Resumes unless ``fresh``, like
    :func:`~dsv4_tune.tuner.sweep.run_sweep`, and stores the same rows."""
    if not devices:
        raise ValueError("devices: expected at least one")
    check_counts(rounds=rounds, reps=reps, refine_rounds=refine_rounds, jobs=jobs)
    sweep_id, resumed = store.open_sweep(sweep_meta(gpu, grid, fp8), fresh=fresh)
    if on_open:
        on_open(sweep_id, resumed, store.measurement_count(sweep_id))
    run, flavour = uuid.uuid4().hex[:12], sweep_flavour(gpu, fp8)
    points = list(enumerate(grid.points()))
    keys = [workload_key(cls.workload(t)) for _, (cls, t) in points]
    stages = search_stages(store, sweep_id, gpu, refine_rounds)
    ctx = mp.get_context("spawn")
    gates = [ctx.Event() for _ in stages]  # pass i may start once gates[i] is set
    args = (str(store.path), sweep_id, run, json.dumps(grid.to_json()), flavour, rounds, reps, refine_rounds,
            lease_s, gates)
    names = [f"{socket.gethostname()}:{os.getpid()}:{i}" for i in range(len(devices))]
    procs = [ctx.Process(target=_work, args=(*args, name, dev)) for name, dev in zip(names, devices, strict=True)]
    released: set[int] = set()
    progress = _Progress(store, sweep_id, len(points), refine_rounds, None)
    total = len(points) * len(stages)
    try:
        for p in procs:
            p.start()
        for i, stage in enumerate(stages):
            if stage.candidates is not None and gpu.is_real and jobs > 1:
                if on_point:
                    on_point(i * len(points), total, f"compile {stage.tag}")
                compile_stage(stage, stage_todo(store, sweep_id, stage, points)[0], jobs, flavour, progress)
            gates[i].set()
            stage_keys = [claim_key(stage.tag, k) for k in keys]
            recorded, beaten = None, 0.0
            while (left := store.claims_left(sweep_id, run, stage_keys)) and any(p.is_alive() for p in procs):
                for n, p in enumerate(procs):
                    if n not in released and not p.is_alive():  # its claims need not wait for the lease
                        store.release(sweep_id, run, names[n])
                        released.add(n)
                if on_point:
                    on_point(i * len(points) + len(points) - left, total,
                             f"{stage.tag}: {len(points) - left} of {len(points)} workloads, "
                             f"{sum(p.is_alive() for p in procs)} workers")
                if left != recorded or time.time() - beaten > BEAT_S:  # the sweep's sign of life, few writes
                    progress.at(stages, i, left)
                    recorded, beaten = left, time.time()
                time.sleep(POLL_S)
            if left:
                raise RuntimeError(f"sweep {sweep_id}: every worker stopped with workloads left (exit codes "
                                   f"{[p.exitcode for p in procs]}); run the sweep again to resume it")
            progress.at(stages, i, 0)
        for p in procs:  # every pass is done: the workers are leaving
            p.join(timeout=JOIN_S)
        progress.finish()
    except BaseException:
        with contextlib.suppress(Exception):
            store.finish_sweep(sweep_id, "interrupted")
        raise
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=JOIN_S)
    store.finish_sweep(sweep_id)
    return sweep_id


def _work(db: str, sweep_id: str, run: str, grid_json: str, fp8: str, rounds: int, reps: int, refine_rounds: int,
          lease_s: float, gates: list, worker: str, device: int) -> None:
    """One worker: for each pass once it is open, claim a workload, measure it, repeat; wait while
    others hold the rest of the pass.  Its claims are renewed every third of a lease while it
    lives; it leaves when the driver is gone."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(device)
    store, grid, gpu = Store(db), Grid.from_json(json.loads(grid_json)), detect(device)
    stop = threading.Event()
    threading.Thread(target=_renew, args=(db, sweep_id, run, worker, lease_s, stop), daemon=True).start()
    parent = mp.parent_process()
    orphaned = lambda: parent is not None and not parent.is_alive()
    points = list(enumerate(grid.points()))
    keys = [workload_key(cls.workload(t)) for _, (cls, t) in points]
    stages = search_stages(store, sweep_id, gpu, refine_rounds)
    search_tags = [s.tag for s in stages if s.candidates is not None]
    try:
        for gate, stage in zip(gates, stages, strict=True):
            while not gate.wait(POLL_S):
                if orphaned():
                    return
            stage_keys = [claim_key(stage.tag, k) for k in keys]
            while True:
                claimed = store.claim(sweep_id, run, stage_keys, worker, lease_s)
                if claimed is None:
                    if not store.claims_left(sweep_id, run, stage_keys) or orphaned():
                        break
                    time.sleep(POLL_S)  # others hold the rest: wait, in case one of them dies
                    continue
                n, (cls, t) = points[stage_keys.index(claimed)]
                key = keys[n]
                changed = False
                if stage.candidates is None:
                    # new rows in this run's passes re-open the final, as in a sweep in one process
                    if store.claims_changed(sweep_id, run, [claim_key(tag, key) for tag in search_tags]) \
                            or not store.has_winner(sweep_id, key):
                        final_point(store, sweep_id, n, cls, t, gpu, rounds, reps, fp8)
                else:
                    todo, retried = stage_todo(store, sweep_id, stage, [points[n]])
                    changed = measure_point(store, sweep_id, stage.name, todo[0], gpu, rounds, reps, fp8, retried)
                store.finish_claim(sweep_id, run, claimed, worker, changed=changed)
    finally:
        stop.set()


def _renew(db: str, sweep_id: str, run: str, worker: str, lease_s: float, stop: threading.Event) -> None:
    """A worker's sign of life, from a thread of its own (with its own connection): a workload that
    takes longer than a lease keeps its claim."""
    store = Store(db)
    while not stop.wait(lease_s / 3):
        with contextlib.suppress(Exception):  # a busy store: the next beat
            store.renew(sweep_id, run, worker, lease_s)
