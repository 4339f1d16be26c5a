"""The sweep on a Ray cluster (issue 24), on a local cluster of interpreter actors: the rows of one
worker, no duplicates, an actor killed mid-way (its workload goes to another), the store the one
writer, mixed GPU kinds and toolchains refused."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from dsv4_tune.cache.store import Store
from dsv4_tune.policies.gpu import GpuInfo
from tests.test_workers import GRID, _keys, _same_rows, one_worker  # noqa: F401 (a fixture)

ray = pytest.importorskip("ray")

from dsv4_tune.tuner.ray_sweep import RowRecorder, _hand_out, _one_gpu, commit, run_sweep_ray  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_ray_sweep_stores_the_rows_of_one_worker(cluster, tmp_path: Path, one_worker) -> None:  # noqa: F811
    store = Store(tmp_path / "s.db")
    sweep_id = run_sweep_ray(store, GRID, interpreter_workers=2)
    rows = _keys(store, sweep_id)
    assert len({r[:3] for r in rows}) == len(rows), "no duplicate keys"
    _same_rows(rows, _keys(*one_worker))
    sweep = store.sweep(sweep_id)
    assert sweep["status"] == "done" and sweep["interpreter"] == 1
    assert len(store.winners(sweep_id)) == len(GRID.points())
    assert not [a for a in ray.util.list_named_actors() if a.startswith("dsv4-tune-")], "actors are gone"
    again = run_sweep_ray(store, GRID, interpreter_workers=2)  # resumed: nothing new to measure
    assert again == sweep_id and _keys(store, sweep_id) == rows


def test_a_killed_actor_s_workload_goes_to_another(cluster, tmp_path: Path, one_worker) -> None:  # noqa: F811
    db, result = tmp_path / "s.db", {}

    def sweep() -> None:
        try:
            result["id"] = run_sweep_ray(Store(db), GRID, interpreter_workers=2)
        except BaseException as e:  # reported below
            result["error"] = e

    thread = threading.Thread(target=sweep)
    thread.start()
    deadline, killed = time.time() + 120, None
    while time.time() < deadline and killed is None and thread.is_alive():
        time.sleep(0.2)
        names = sorted(a for a in ray.util.list_named_actors() if a.startswith("dsv4-tune-"))
        if len(names) == 2 and _rows_so_far(db):
            killed = names[0]
            ray.kill(ray.get_actor(killed), no_restart=True)
    thread.join(timeout=300)
    assert killed is not None, "the sweep should have measured something before the kill"
    assert "error" not in result, result.get("error")
    store = Store(db, readonly=True)
    rows = _keys(store, result["id"])
    assert len({r[:3] for r in rows}) == len(rows)
    _same_rows(rows, _keys(*one_worker))
    assert store.sweep(result["id"])["status"] == "done" and len(store.winners(result["id"])) == len(GRID.points())


def _rows_so_far(db: Path) -> int:
    try:
        store = Store(db, readonly=True)
        sweeps = store.sweeps()
        return store.measurement_count(sweeps[-1]["id"]) if sweeps else 0
    except Exception:  # not created yet
        return 0


def test_mixed_gpus_and_toolchains_are_refused() -> None:
    h200, h100 = GpuInfo("sm90", "NVIDIA H200", 132, "cuda"), GpuInfo("sm90", "NVIDIA H100 80GB HBM3", 132, "cuda")
    meta = {"gpu_id": "sm90-h200", "driver": "12.8", "torch": "2.11", "triton": "3.6"}
    same = [{"gpu": h200, "meta": meta, "dsv4_tune": "0.1.0"}] * 2
    assert _one_gpu(same) == h200
    with pytest.raises(ValueError, match="one sweep is one GPU id"):
        _one_gpu([same[0], {"gpu": h100, "meta": {**meta, "gpu_id": "sm90-h100"}, "dsv4_tune": "0.1.0"}])
    with pytest.raises(ValueError, match="differ in triton"):
        _one_gpu([same[0], {"gpu": h200, "meta": {**meta, "triton": "3.5"}, "dsv4_tune": "0.1.0"}])


def test_an_actor_sends_back_store_writes_only(tmp_path: Path) -> None:
    rows = RowRecorder(passed={"p": 0.0})
    assert rows.passed("s", "w", "coarse") == {"p": 0.0} and rows.ranked("s", "w", ("coarse",)) == []
    with pytest.raises(ValueError, match="not a store write"):
        commit(Store(tmp_path / "s.db"), [("finish_sweep", ("x",), {})])


def test_the_cli_sweeps_on_ray(cluster, tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from dsv4_tune.cli import app
    from dsv4_tune.tuner.grid import Grid, GridClass

    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(Grid((GridClass(16, 64, 0, True, 64, 64),), (1, 2)).to_json()))
    runner = CliRunner()
    both = runner.invoke(app, ["sweep", "--ray", "local", "--devices", "0,1", "--grid", str(grid), "--db",
                               str(tmp_path / "bad.db")])
    assert both.exit_code == 2 and "choose one" in both.output
    wrong = runner.invoke(app, ["sweep", "--ray", "local", "--gpu", "gfx950", "--grid", str(grid), "--db",
                                str(tmp_path / "wrong.db")])
    assert wrong.exit_code == 2 and "does not match the cluster" in wrong.output, wrong.output
    assert not (tmp_path / "wrong.db").exists() and not (tmp_path / "bad.db").exists(), "a refused sweep: no store"
    result = runner.invoke(app, ["sweep", "--ray", "local", "--grid", str(grid), "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "s.db", readonly=True)
    (sweep,) = store.sweeps()
    assert sweep["status"] == "done" and len(store.winners(sweep["id"])) == 2
    assert "export --db" in result.output and "interpreter" in result.output


def test_a_workload_that_kills_actors_stops_the_sweep_and_others_move_on() -> None:
    """_hand_out with a stand-in for Ray: the item 'bad' takes its actor down every time."""
    from types import SimpleNamespace

    class Died(Exception):
        pass

    fake = SimpleNamespace(exceptions=SimpleNamespace(RayActorError=Died),
                           wait=lambda refs, num_returns: ([refs[0]], refs[1:]))

    def get(ref):
        key, actor = ref
        if key == "bad" or (actor == "flaky" and key == "w1"):
            raise Died
        return f"{key} by {actor}"

    fake.get = get
    work = [(k, lambda a, k=k: (k, a)) for k in ("w1", "w2", "w3")]
    got: dict[str, str] = {}
    _hand_out(fake, ["steady", "flaky"], work, lambda key, result, left: got.update({key: result}))
    assert got == {"w1": "w1 by steady", "w2": "w2 by steady", "w3": "w3 by steady"}, "flaky's item went to steady"
    with pytest.raises(RuntimeError, match="took down 2 actors"):
        _hand_out(fake, ["a", "b", "c"], [("bad", lambda a: ("bad", a))], lambda *x: None)
    with pytest.raises(RuntimeError, match="every actor died"):
        _hand_out(fake, ["flaky"], work[:1], lambda *x: None)
