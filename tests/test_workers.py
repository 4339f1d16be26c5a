"""Sweeps over several workers of one store (issue 24), on the interpreter: the same rows as one
worker, no duplicates, a killed worker's workload retaken, GPUs of different kinds refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsv4_tune.cache.store import Store
from dsv4_tune.policies.gpu import GpuInfo, detect
from dsv4_tune.tuner import sweep as sweep_mod
from dsv4_tune.tuner.grid import Grid, GridClass
from dsv4_tune.tuner.workers import check_devices, run_sweep_parallel

GRID = Grid((GridClass(16, 64, 0, True, 64, 64),), (1, 2, 3))


def _keys(store: Store, sweep_id: str) -> list[tuple]:
    return sorted((r["workload"], r["stage"], r["plan"], r["status"]) for r in store.measurements(sweep_id))


def _same_rows(rows: list[tuple], ref: list[tuple]) -> None:
    """The same coarse rows and the same (workload, stage) pairs: which plans the later stages time
    follows the timings, which on the interpreter are wall-clock noise."""
    assert [r[:3] for r in rows if r[1] == "coarse"] == [r[:3] for r in ref if r[1] == "coarse"]
    assert sorted({r[:2] for r in rows}) == sorted({r[:2] for r in ref})


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory) -> tuple[Store, str]:
    store = Store(tmp_path_factory.mktemp("one") / "s.db")
    return store, sweep_mod.run_sweep(store, GRID, detect())


@pytest.mark.parametrize("workers", [2, 3])
def test_several_workers_store_the_rows_of_one(tmp_path: Path, one_worker, workers: int) -> None:
    store = Store(tmp_path / "s.db")
    sweep_id = run_sweep_parallel(store, GRID, detect(), list(range(workers)))
    rows = _keys(store, sweep_id)
    assert len({r[:3] for r in rows}) == len(rows), "no duplicate keys"
    ref_store, ref_id = one_worker
    _same_rows(rows, _keys(ref_store, ref_id))
    assert store.sweep(sweep_id)["status"] == "done" and len(store.winners(sweep_id)) == len(GRID.points())
    workers_seen = {w for (w,) in store.db.execute("select distinct worker from claims")}
    assert 1 <= len(workers_seen) <= workers
    # one pass after the other (the next pass's kernels are compiled in between): no refine row
    # before the last coarse row, no final row before the last refine row
    first, last = {}, {}
    for stage, lo, hi in store.db.execute("select stage, min(id), max(id) from measurements where sweep_id = ? "
                                          "group by stage", [sweep_id]):
        first[stage], last[stage] = lo, hi
    assert last["coarse"] < first["refine"] and last["refine"] < first["final"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_killed_worker_s_workload_is_retaken(tmp_path: Path, one_worker) -> None:
    db = tmp_path / "s.db"
    code = ("import sys; from dsv4_tune.cache.store import Store; from dsv4_tune.policies.gpu import detect; "
            "from tests.test_workers import GRID; from dsv4_tune.tuner.workers import run_sweep_parallel; "
            "run_sweep_parallel(Store(sys.argv[1]), GRID, detect(), [0, 1], lease_s=3.0)")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    parent = subprocess.Popen([sys.executable, "-c", code, str(db)], env=env, cwd=Path(__file__).parents[1])
    deadline = time.time() + 120
    victim = None
    while time.time() < deadline and victim is None:
        time.sleep(0.2)
        if db.exists():
            try:
                held = Store(db, readonly=True).db.execute("select worker from claims where done = 0").fetchall()
            except Exception:
                continue
            if held:
                victim = int(held[0][0].rsplit(":", 1)[1])
    assert victim is not None, "a worker should have claimed a workload"
    children = _workers_of(parent.pid)
    assert len(children) == 2, children
    os.kill(children[victim], signal.SIGKILL)  # worker i is the i-th child started
    assert parent.wait(timeout=300) == 0, "the other worker took the lapsed claim and finished the sweep"
    store = Store(db, readonly=True)
    (sweep,) = store.sweeps()
    assert sweep["status"] == "done" and len(store.winners(sweep["id"])) == len(GRID.points())
    rows = _keys(store, sweep["id"])
    assert len({r[:3] for r in rows}) == len(rows)
    ref_store, ref_id = one_worker
    _same_rows(rows, _keys(ref_store, ref_id))


def _workers_of(pid: int) -> list[int]:
    """The worker processes ``pid`` spawned (not its resource tracker), oldest first."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(proc.name))
    return sorted(found)


def test_gpus_of_different_kinds_are_refused() -> None:
    check_devices([GpuInfo("sm90", "NVIDIA H200", 132, "cuda")] * 2)
    with pytest.raises(ValueError, match="one sweep is one GPU id"):
        check_devices([GpuInfo("sm90", "NVIDIA H200", 132, "cuda"), GpuInfo("sm90", "NVIDIA H100 80GB HBM3", 132,
                                                                               "cuda")])


def test_the_cli_sweeps_with_devices(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dsv4_tune.cli import app

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(Grid((GridClass(16, 64, 0, True, 64, 64),), (1, 2)).to_json()))
    runner = CliRunner()
    for bad in ("x", "0,0", "-1", ""):
        result = runner.invoke(app, ["sweep", "--db", str(tmp_path / "bad.db"), "--grid", str(grid), "--devices", bad])
        assert result.exit_code == 2 and "--devices" in result.output, (bad, result.output)
    assert not (tmp_path / "bad.db").exists()
    result = runner.invoke(app, ["sweep", "--db", str(tmp_path / "s.db"), "--grid", str(grid), "--devices", "0,1"])
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "s.db", readonly=True)
    (sweep,) = store.sweeps()
    assert sweep["status"] == "done" and len(store.winners(sweep["id"])) == 2
