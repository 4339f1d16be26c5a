"""Where a sweep stands, for people and scripts: per stage done / total, the ETA at the pace so far
(compile time counted, since it is part of the elapsed time), and the command to run next."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from dsv4_tune.cache.store import Store

STAGE_ORDER = ("compile", "coarse", "refine", "final", "host")


def sweep_status(store: Store, sweep: dict[str, Any], db: Path) -> dict[str, Any]:
    """One sweep row of ``status``: id, GPU, state, rows, winners, ``stages`` (in the order the sweep runs
    them: ``{"stage", "done", "total"}``, or ``{"stage": "compile", "kernels", "seconds"}``), ``eta_s``
    (None unless running with recorded progress) and ``next``."""
    state = store.state(sweep)
    progress = store.progress(sweep)
    eta = None
    steps = progress.get("steps")
    if state == "running" and steps and steps[0] > 0:
        # the pace of this run of the sweep (a resumed one counts its steps from its own start)
        elapsed = progress.get("seconds") or (time.time() - datetime.fromisoformat(sweep["started"]).timestamp())
        eta = round(elapsed / steps[0] * (steps[1] - steps[0]))
    grid = json.loads(sweep["grid"])
    gpu = sweep["gpu_id"] + (" (interpreter)" if sweep["interpreter"] and sweep["gpu_id"] != "interpreter" else "")
    if state == "running":
        following = f"wait; `dsv4-tune status --db {db}` again to follow it"
    elif state == "interrupted":
        following = (f"resume it with `dsv4-tune sweep --db {db}` and the same grid "
                     f"({len(grid.get('classes', []))} classes; it keeps what was measured)")
    else:
        following = (f"`dsv4-tune export --db {db} --sweep {sweep['id']} --out {sweep['gpu_id']}.json`, then "
                     f"`dsv4-tune report --db {db} --out report/`")
    return {"id": sweep["id"], "gpu": gpu, "state": state, "rows": store.measurement_count(sweep["id"]),
            "winners": len(store.winners(sweep["id"])), "started": sweep["started"], "finished": sweep["finished"],
            "stage": progress.get("stage"), "steps": steps, "eta_s": eta,
            "stages": [{"stage": k, **progress["stages"][k]} for k in sorted(progress["stages"], key=_order)],
            "next": following, "torch": sweep["torch"], "triton": sweep["triton"]}


def _order(stage: str) -> int:
    return STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
