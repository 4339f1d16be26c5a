"""A sweep over several GPUs of one host: one worker process per GPU, the work handed out through the
store.

Each worker claims a workload (a grid point) in the store, runs its whole search there (coarse,
refine, final: each stage of one workload needs only that workload's earlier rows), commits every
row as it goes and takes the next; two workers never hold the same workload, and a worker that dies
loses only its claim, which lapses (:data:`~dsv4_tune.cache.store.CLAIM_LEASE_S` after its last
sign of life) and is taken by another worker, who resumes it from the rows already stored.  A
worker with nothing left to take waits while other workers hold workloads, so that a lapsed claim
always finds a taker.  Every worker writes the same SQLite file (WAL, busy timeout).  One sweep is
one GPU id: GPUs of different kinds are refused.  With no GPU, the workers run the interpreter.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import socket
import time
import uuid
from collections.abc import Callable

from dsv4_tune.cache.store import CLAIM_LEASE_S, Store, workload_key
from dsv4_tune.policies.gpu import GpuInfo, detect
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.sweep import _Progress, _run_stages, sweep_flavour, sweep_meta

POLL_S = 0.5


def check_devices(gpus: list[GpuInfo]) -> None:
    """Refuse GPUs of different kinds in one sweep (one sweep is one GPU id)."""
    ids = sorted({g.id for g in gpus})
    if len(ids) > 1:
        raise ValueError(f"devices: one sweep is one GPU id, these are {ids}: sweep each kind with its own "
                         "--devices (then `dsv4-tune merge` their stores)")


def run_sweep_parallel(
    store: Store, grid: Grid, gpu: GpuInfo, devices: list[int], *, fresh: bool = False, rounds: int = 3,
    reps: int = 10, refine_rounds: int = 1, fp8: str | None = None, lease_s: float = CLAIM_LEASE_S,
    on_point: Callable[[int, int, str], None] | None = None, on_open: Callable[[str, bool, int], None] | None = None,
) -> str:
    """Measure ``grid`` with one worker per entry of ``devices`` (CUDA device indices; with no GPU,
    as many interpreter workers); returns the sweep id.  Resumes unless ``fresh``, like
    :func:`~dsv4_tune.tuner.sweep.run_sweep`, and stores the same rows."""
    if not devices:
        raise ValueError("devices: expected at least one")
    sweep_id, resumed = store.open_sweep(sweep_meta(gpu, grid, fp8), fresh=fresh)
    if on_open:
        on_open(sweep_id, resumed, store.measurement_count(sweep_id))
    run = uuid.uuid4().hex[:12]
    keys = [workload_key(cls.workload(t)) for cls, t in grid.points()]
    args = (str(store.path), sweep_id, run, json.dumps(grid.to_json()), sweep_flavour(gpu, fp8), rounds, reps,
            refine_rounds, lease_s)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_work, args=(*args, f"{socket.gethostname()}:{os.getpid()}:{i}", dev))
             for i, dev in enumerate(devices)]
    try:
        for p in procs:
            p.start()
        while any(p.is_alive() for p in procs):
            left = store.claims_left(sweep_id, run, keys)
            if on_point:
                on_point(len(keys) - left, len(keys), f"{len(keys) - left} of {len(keys)} workloads, "
                                                      f"{sum(p.is_alive() for p in procs)} workers")
            store.beat(sweep_id)
            time.sleep(POLL_S)
        if store.claims_left(sweep_id, run, keys):
            raise RuntimeError(f"sweep {sweep_id}: every worker stopped with workloads left (exit codes "
                               f"{[p.exitcode for p in procs]}); run the sweep again to resume it")
    except BaseException:
        for p in procs:
            if p.is_alive():
                p.terminate()
        with contextlib.suppress(Exception):
            store.finish_sweep(sweep_id, "interrupted")
        raise
    store.finish_sweep(sweep_id)
    return sweep_id


def _work(db: str, sweep_id: str, run: str, grid_json: str, fp8: str, rounds: int, reps: int, refine_rounds: int,
          lease_s: float, worker: str, device: int) -> None:
    """One worker: claim a workload, run its search, repeat; wait while others hold the rest."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(device)
    store, grid, gpu = Store(db), Grid.from_json(json.loads(grid_json)), detect()
    points = list(enumerate(grid.points()))
    keys = [workload_key(cls.workload(t)) for _, (cls, t) in points]
    progress = _Progress(store, sweep_id, 1, refine_rounds, None,
                         record=lambda snapshot: store.renew(sweep_id, run, worker, lease_s))
    while True:
        key = store.claim(sweep_id, run, keys, worker, lease_s)
        if key is None:
            if not store.claims_left(sweep_id, run, keys):
                return
            time.sleep(POLL_S)  # others hold the rest: wait, in case one of them dies
            continue
        _run_stages(store, sweep_id, [points[keys.index(key)]], gpu, 1, rounds, reps, refine_rounds, progress, fp8)
        store.finish_claim(sweep_id, run, key, worker)
