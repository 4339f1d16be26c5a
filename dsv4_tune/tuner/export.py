"""A sweep's policy: the winners of one sweep in a store, on the grid it measured."""

from __future__ import annotations

import json

from dsv4_tune.cache.store import Store
from dsv4_tune.policies.schema import Policy
from dsv4_tune.tuner.grid import Grid
from dsv4_tune.tuner.select import build_policy


def export_policy(store: Store, sweep_id: str | None, command: str) -> tuple[Policy, dict]:
    """(policy, sweep row) of ``sweep_id`` (the latest sweep when None); a ValueError names a missing
    sweep or the first grid point without a winner."""
    sweep = store.sweep(sweep_id)
    grid = Grid.from_json(json.loads(sweep["grid"]))
    return build_policy(grid, store.winners(sweep["id"]), sweep, command), sweep
