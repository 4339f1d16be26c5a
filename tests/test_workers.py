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

GRID = Grid((GridClass(16, 64, 0, True, 64, 64),), (1, 2))  # a workload per worker of the two-worker tests


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
    parent = _driver(db, "lease_s=3.0")
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


def _driver(db: Path, *options: str) -> subprocess.Popen:
    """A two-worker sweep of GRID into ``db`` in a process of its own (interpreter)."""
    code = ("import sys; from dsv4_tune.cache.store import Store; from dsv4_tune.policies.gpu import detect; "
            "from tests.test_workers import GRID; from dsv4_tune.tuner.workers import run_sweep_parallel; "
            f"run_sweep_parallel(Store(sys.argv[1]), GRID, detect(), [0, 1], {', '.join(options)})")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(db)], env=env, cwd=Path(__file__).parents[1])


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


def test_a_working_worker_keeps_its_claim_and_a_dead_one_s_is_taken_over(tmp_path: Path) -> None:
    """Leases are renewed from a thread while the worker lives (a workload may outlast a lease);
    a claim taken over counts as changed (its first holder may have stored every row); a released
    claim is free at once."""
    import threading

    from dsv4_tune.tuner.workers import _renew

    store = Store(tmp_path / "s.db")
    sweep_id, _ = store.open_sweep(sweep_mod.sweep_meta(detect(), GRID))
    assert store.claim(sweep_id, "r", ["w1", "w2"], "a", lease_s=0.4) == "w1"
    stop = threading.Event()
    beat = threading.Thread(target=_renew, args=(str(store.path), sweep_id, "r", "a", 0.4, stop))
    beat.start()
    time.sleep(1.0)
    assert store.claim(sweep_id, "r", ["w1"], "b", lease_s=0.4) is None, "a is alive: its claim holds"
    stop.set()
    beat.join()
    time.sleep(0.5)
    assert store.claim(sweep_id, "r", ["w1"], "b", lease_s=60) == "w1", "a went silent: b takes over"
    store.finish_claim(sweep_id, "r", "w1", "b", changed=False)
    assert store.claims_changed(sweep_id, "r", ["w1"]), "taken over: counts as changed"
    assert store.claim(sweep_id, "r", ["w2"], "c", lease_s=60) == "w2"
    store.release(sweep_id, "r", "c")
    assert store.claim(sweep_id, "r", ["w2"], "d", lease_s=60) == "w2", "released: free at once"
    store.finish_claim(sweep_id, "r", "w2", "c", changed=True)  # c no longer holds it: nothing changes
    assert store.claims_left(sweep_id, "r", ["w1", "w2"]) == 1


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_workers_leave_when_the_driver_is_killed(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    parent = _driver(db)
    deadline, children = time.time() + 120, []
    while time.time() < deadline and len(children) < 2:
        time.sleep(0.2)
        children = _workers_of(parent.pid)
    assert len(children) == 2, children
    parent.kill()
    parent.wait()
    deadline = time.time() + 120
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() and _alive(c) for c in children):
        time.sleep(0.5)
    assert not [c for c in children if Path(f"/proc/{c}").exists() and _alive(c)], "orphaned workers left"


def _alive(pid: int) -> bool:
    """Not a zombie (an orphan that exited is reaped by init, or left as Z until then)."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False
