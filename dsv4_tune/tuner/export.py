"""A sweep's policy: the winners of one sweep in a store, on the grid it measured."""

from __future__ import annotations

import json

from dsv4_tune.cache.store import Store
from dsv4_tune.policies.schema import Policy
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.select import build_policy


def export_policy(store: Store, sweep_id: str | None, command: str, gpu: str | None = None) -> tuple[Policy, dict]:
    """(policy, sweep row) of ``sweep_id`` (when None: the latest sweep, of GPU id ``gpu`` if named); a
    ValueError names a missing sweep or the first grid point without a winner."""
    if sweep_id is None and gpu is not None:
        mine = [s for s in store.sweeps() if s["gpu_id"] == gpu]
        if not mine:
            raise ValueError(f"export: no sweep of GPU {gpu!r} in {store.path} (it holds {gpu_ids(store)})")
        sweep = mine[-1]
    else:
        sweep = store.sweep(sweep_id)
    grid = Grid.from_json(json.loads(sweep["grid"]))
    return build_policy(grid, store.winners(sweep["id"]), sweep, command), sweep


def gpu_ids(store: Store) -> list[str]:
    """The GPU ids a store holds sweeps of (a store merged from several hosts may hold several)."""
    return sorted({s["gpu_id"] for s in store.sweeps()})
