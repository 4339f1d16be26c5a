"""Bad input ends in one clear line (or a warning and the default), never in a traceback, a silent
wrong answer or a lost result: each case found by trying the tool as a new user would (issue 23)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4_tune import Plan
from dsv4_tune.cache.store import Store, StoreError
from dsv4_tune.cli import app
from dsv4_tune.env import POLICY
from dsv4_tune.policies import dispatcher as dispatcher_mod
from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.gpu import detect
from dsv4_tune.policies.schema import PolicyError, load_policy
from dsv4_tune.tuner import sweep as sweep_mod
from dsv4_tune.tuner.cases import DecodeCase
from dsv4_tune.tuner.grid import Grid, GridClass, GridError
from dsv4_tune.tuner.op_cases import OpCase
from tests.test_sparse_decode import make_case

TINY = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,))


def _cli(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _tiny_grid(tmp_path: Path, grid: Grid = TINY) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid.to_json()))
    return path


@pytest.fixture
def clean_dispatcher():
    dispatcher_mod.reset_dispatcher()
    yield
    dispatcher_mod.reset_dispatcher()


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A store holding one finished interpreter sweep of the tiny grid."""
    db = tmp_path_factory.mktemp("swept") / "s.db"
    sweep_mod.run_sweep(Store(db), TINY, detect())
    return db


# ----------------------------------------------------------------------------- policies
def test_a_non_utf8_policy_is_a_policy_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe{\"gpu\": 1}")
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(bad)
    result = _cli("validate", bad)
    assert result.exit_code == 1 and "not UTF-8" in result.output


def test_a_broken_policy_never_takes_sparse_decode_down(tmp_path: Path, monkeypatch, clean_dispatcher, device,
                                                       gen) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe not a policy")
    monkeypatch.setenv(POLICY, str(bad))
    case = make_case(device, gen, b=1, s_q=1, h=16, topk=32, x_topk=0, sink="finite")
    with pytest.warns(dispatcher_mod.DSV4TuneWarning, match="ignoring broken policy"):
        case.check(None)  # the built-in default plan, against the reference


def test_validate_is_strict_about_types_and_classes(tmp_path: Path) -> None:
    data = json.loads(BASELINE_FILE.read_text())
    for mutate, says in (
        (lambda d: d["classes"][0]["segments"][0]["plan"]["config"].update(BLOCK_H="16"), "valid integer"),
        (lambda d: d["classes"][0]["segments"][0]["plan"]["config"].update(BLOCK_H=True), "valid integer"),
        (lambda d: d["classes"][0].update(h_q=3), "multiple of 8"),
    ):
        broken = json.loads(json.dumps(data))
        mutate(broken)
        path = tmp_path / "p.json"
        path.write_text(json.dumps(broken))
        result = _cli("validate", path)
        assert result.exit_code == 1 and says in result.output, result.output


def test_an_interpreter_policy_applies_on_the_box_that_measured_it(tmp_path: Path, swept: Path, monkeypatch,
                                                                   clean_dispatcher) -> None:
    out = tmp_path / "interpreter.json"
    assert _cli("export", "--db", swept, "--out", out).exit_code == 0
    monkeypatch.setenv(POLICY, str(out))
    dispatcher, notes = dispatcher_mod.select_policy()
    assert dispatcher.policy is not None and dispatcher.source == str(out), notes
    assert not any("refusing" in n for n in notes)


# ----------------------------------------------------------------------------- stores
def test_a_file_that_is_not_a_store_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_text("these are my notes, not a SQLite file " * 20)
    for args in (("status", "--db", db), ("export", "--db", db, "--out", tmp_path / "p.json"),
                 ("sweep", "--db", db, "--grid", _tiny_grid(tmp_path))):
        result = _cli(*args)
        assert result.exit_code == 1 and "not a dsv4-tune store" in result.output, (args, result.output)
    assert db.read_text().startswith("these are my notes"), "left as it was"


def test_export_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    result = _cli("export", "--db", tmp_path / "missing.db", "--out", tmp_path / "p.json")
    assert result.exit_code == 1 and "no store" in result.output
    assert not (tmp_path / "missing.db").exists()
    assert _cli("status", "--db", tmp_path / "missing.db").exit_code == 1


def test_status_and_export_write_nothing_to_the_store(tmp_path: Path, swept: Path) -> None:
    """A store they may not write: in rollback-journal mode (as another tool may leave it), reading it
    must not switch it to WAL or create tables (which a read-only filesystem refuses)."""
    db = tmp_path / "copy.db"
    with sqlite3.connect(swept) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
        dst.execute("pragma journal_mode = delete")
    before = db.read_bytes()
    assert _cli("status", "--db", db).exit_code == 0
    assert _cli("export", "--db", db, "--out", tmp_path / "p.json").exit_code == 0
    assert db.read_bytes() == before
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        Store(db, readonly=True).db.execute("insert into sweeps (id, key, gpu_id) values ('x', 'x', 'x')")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write a read-only folder")
def test_a_store_in_a_read_only_folder_can_be_read(tmp_path: Path, swept: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    with sqlite3.connect(swept) as src, sqlite3.connect(folder / "s.db") as dst:
        src.backup(dst)
    folder.chmod(0o555)
    try:
        result = _cli("status", "--db", folder / "s.db")
        assert result.exit_code == 0 and "done" in result.output, result.output
        assert _cli("export", "--db", folder / "s.db", "--out", tmp_path / "p.json").exit_code == 0
        result = _cli("sweep", "--db", folder / "s.db", "--grid", _tiny_grid(tmp_path))
        assert result.exit_code == 1 and "cannot write" in result.output
    finally:
        folder.chmod(0o755)


def test_files_that_cannot_be_written_are_one_line(tmp_path: Path, swept: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    result = _cli("export", "--db", swept, "--out", a_file / "p.json")  # a folder that cannot be made
    assert result.exit_code == 1 and "a-file" in result.output
    result = _cli("sweep", "--db", a_file / "s.db", "--grid", _tiny_grid(tmp_path))
    assert result.exit_code == 1 and "a-file is not a folder" in result.output
    with pytest.raises(StoreError):
        Store(a_file / "s.db")


# ----------------------------------------------------------------------------- sweeps
@pytest.mark.parametrize("grid", [[1, 2], {}, {"classes": [], "tokens": []}, {"classes": [{"h_q": 16}], "tokens": []},
                                  {"classes": [{"h_q": 3}], "tokens": [1]}, {"classes": [{"h_q": 16}], "tokens": [0]},
                                  {"classes": [{"h_q": 16, "topk_main": "64"}], "tokens": [1]},
                                  {"classes": [{"h_q": 16, "colour": 1}], "tokens": [1]}, "[[[[" * 5000],
                         ids=lambda g: "deeply-nested" if isinstance(g, str) else None)
def test_bad_grids_exit_2_naming_the_place(tmp_path: Path, grid) -> None:
    path = tmp_path / "grid.json"
    path.write_text(grid if isinstance(grid, str) else json.dumps(grid))
    result = _cli("sweep", "--db", tmp_path / "s.db", "--grid", path)
    assert result.exit_code == 2 and "grid" in result.output, result.output
    if not isinstance(grid, str):
        with pytest.raises(GridError):
            Grid.from_json(grid)


@pytest.mark.parametrize("args", [("--rounds", "0"), ("--rounds", "-2"), ("--reps", "0"), ("--jobs", "0"),
                                  ("--refine-rounds", "0")])
def test_sweep_options_out_of_range_exit_2(tmp_path: Path, args: tuple[str, str]) -> None:
    result = _cli("sweep", "--db", tmp_path / "s.db", "--grid", _tiny_grid(tmp_path), *args)
    assert result.exit_code == 2 and args[0] in result.output
    assert not (tmp_path / "s.db").exists(), "nothing stored"
    with pytest.raises(ValueError, match=args[0].strip("-").replace("-", "_")):
        sweep_mod.run_sweep(Store(tmp_path / "x.db"), TINY, detect(),
                            **{args[0].strip("-").replace("-", "_"): int(args[1])})


def test_a_sweep_of_nothing_but_errors_exits_1_and_a_resume_tries_them_again(tmp_path: Path, monkeypatch) -> None:
    def broken(self, plan):
        return "launch_error", "RuntimeError: no device", None

    db, grid = tmp_path / "s.db", _tiny_grid(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(DecodeCase, "check", broken)
        m.setattr(OpCase, "check", broken)
        result = _cli("sweep", "--db", db, "--grid", grid)
    assert result.exit_code == 1 and "no candidate could be measured" in result.output, result.output
    assert "launch_error" in result.output and "no device" in result.output
    result = _cli("sweep", "--db", db, "--grid", grid)
    assert result.exit_code == 0, result.output
    assert "resuming sweep" in result.output and "rows kept" in result.output
    store = Store(db, readonly=True)
    (sweep,) = store.sweeps()
    assert store.measurement_count(sweep["id"], "ok") > 0 and store.winners(sweep["id"])


def test_a_killed_sweep_reads_as_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = Store(db)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    sweep_id, _ = store.open_sweep(sweep_mod.sweep_meta(detect(), TINY))
    store.db.execute("update sweeps set pid = ? where id = ?", [dead.pid, sweep_id])  # its owner died (kill -9)
    assert store.state(store.sweep(sweep_id)) == "interrupted"
    result = _cli("status", "--db", db)
    assert result.exit_code == 0 and "interrupted" in result.output and sweep_id in result.output, result.output
    store.db.execute("update sweeps set pid = ? where id = ?", [os.getpid(), sweep_id])
    assert store.state(store.sweep(sweep_id)) == "running"
    store.db.execute("update sweeps set host = 'elsewhere', heartbeat = '2020-01-01T00:00:00+00:00' where id = ?",
                     [sweep_id])
    assert store.state(store.sweep(sweep_id)) == "interrupted", "another host's sweep, silent for years"


def test_a_sweep_stopped_by_an_exception_is_marked_interrupted(tmp_path: Path, monkeypatch) -> None:
    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_mod, "_final", stop)
    store = Store(tmp_path / "s.db")
    with pytest.raises(KeyboardInterrupt):
        sweep_mod.run_sweep(store, TINY, detect())
    (sweep,) = store.sweeps()
    assert sweep["status"] == "interrupted" and store.measurement_count(sweep["id"]) > 0


def test_without_triton_interpret_a_cpu_box_uses_the_interpreter(tmp_path: Path) -> None:
    """`sweep` and `verify-policy` run directly (not through scripts/main.sh) on a box without a GPU:
    real interpreter runs, not a "done" sweep of launch errors; the exported interpreter policy then
    serves on the same box."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", POLICY)}
    env.update(CUDA_VISIBLE_DEVICES="", HIP_VISIBLE_DEVICES="", COLUMNS="200")
    db, policy = tmp_path / "s.db", tmp_path / "interpreter.json"

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "dsv4_tune.cli", *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    assert "Triton interpreter" in cli("sweep", "--db", db, "--grid", _tiny_grid(tmp_path)).stderr
    store = Store(db, readonly=True)
    (sweep,) = store.sweeps()
    assert store.measurement_count(sweep["id"], "launch_error") == 0 and store.winners(sweep["id"])
    cli("export", "--db", db, "--out", policy)
    verified = cli("verify-policy", policy, "--max-points", "1", "--json")
    assert "Triton interpreter" in verified.stderr, "the note goes to stderr..."
    assert len(json.loads(verified.stdout)["samples"]) == 1, "...and stdout is one JSON document (issue 31)"


# ----------------------------------------------------------------------------- lookup and friends
@pytest.mark.parametrize("args", [("--tokens", "0", "--heads", "64"), ("--tokens", "-5", "--heads", "64"),
                                  ("--tokens", "4", "--heads", "0"), ("--tokens", "4", "--heads", "3"),
                                  ("--tokens", "4", "--heads", "64", "--topk-main", "0"),
                                  ("--tokens", "4", "--heads", "64", "--topk-main", "-1"),
                                  ("--tokens", "4", "--heads", "64", "--topk-extra", "-7")])
def test_lookup_refuses_nonsense(args: tuple[str, ...]) -> None:
    result = _cli("lookup", *args, "--policy", BASELINE_FILE)
    assert result.exit_code == 2 and "bucket" not in result.output, result.output


@pytest.mark.parametrize("args", [("--rows", "0"), ("--rows", "-3"), ("--rows", "4", "-p", "ratio=5"),
                                  ("--rows", "4", "-p", "=4"), ("--rows", "4", "-p", "ratio=--5")])
def test_lookup_op_refuses_nonsense(args: tuple[str, ...]) -> None:
    params = ("-p", "head_dim=512", "-p", "mode=decode") + (() if "-p" in args else ("-p", "ratio=4"))
    result = _cli("lookup-op", "compress", *args, *params)
    assert result.exit_code == 2, result.output


def test_lookup_explain_names_the_built_in_default(tmp_path: Path) -> None:
    result = _cli("lookup", "--tokens", "4", "--heads", "16", "--explain", "--policy", BASELINE_FILE)
    assert result.exit_code == 0
    assert "built-in default plan" in result.output and "class: None" not in result.output, result.output


def test_commands_without_a_policy_say_one_thing(monkeypatch, clean_dispatcher) -> None:
    monkeypatch.delenv(POLICY, raising=False)
    for cmd in ("warmup", "verify-policy"):
        result = _cli(cmd)
        assert result.exit_code == 1 and "no policy applies" in result.output, result.output
        assert "using the built-in default" not in result.output, result.output


# ----------------------------------------------------------------------------- explicit plans
@pytest.mark.parametrize(("config", "says"), [
    (dict(BLOCK_H=-16), "BLOCK_H=-16 not in"), (dict(BLOCK_N=-64), "BLOCK_N=-64 not in"),
    (dict(BLOCK_H=0), "BLOCK_H=0 not in"), (dict(BLOCK_H=24), "BLOCK_H=24 not in"),
    (dict(num_stages=None), "missing \\['num_stages'\\]"), (dict(TILE=3), "unknown config keys \\['TILE'\\]"),
])
def test_explicit_plans_that_cannot_run_are_value_errors(config: dict, says: str, device, gen) -> None:
    case = make_case(device, gen, b=1, s_q=2, h=16, topk=32, x_topk=0, sink="finite")
    base = {"BLOCK_H": 16, "BLOCK_N": 32, "num_warps": 4, "num_stages": 1}
    base.update(config)
    plan = Plan.make("fused", {k: v for k, v in base.items() if v is not None})
    with pytest.raises(ValueError, match=says):
        case.run(plan)
    with pytest.raises(ValueError, match=r"expected a dsv4_tune\.Plan"):
        case.run(base)  # type: ignore[arg-type]


def test_a_read_only_store_with_rows_in_its_write_ahead_log_is_refused_not_misread(tmp_path: Path, swept: Path,
                                                                                  monkeypatch) -> None:
    """Where only immutable=1 can open a store (a read-only folder), rows still in the WAL file would
    be missed: the store is refused with the reason instead."""
    import dsv4_tune.cache.store as store_mod

    real = sqlite3.connect

    def no_shm(database, *a, **k):  # what a read-only folder does to mode=ro on a WAL store
        if isinstance(database, str) and "mode=ro" in database:
            raise sqlite3.OperationalError("unable to open database file")
        return real(database, *a, **k)

    db = tmp_path / "s.db"
    with sqlite3.connect(swept) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # every row in the main file (the source's may still sit in its WAL)
    monkeypatch.setattr(store_mod.sqlite3, "connect", no_shm)
    assert Store(db, readonly=True).sweeps(), "no WAL beside it: immutable=1 reads it all"
    (tmp_path / "s.db-wal").write_bytes(b"\0" * 64)
    with pytest.raises(StoreError, match="write-ahead log"):
        Store(db, readonly=True)


def test_report_of_an_empty_store_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    Store(db)
    result = _cli("report", "--db", db, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "no sweeps" in result.output


def test_a_reused_pid_or_an_unknown_owner_reads_as_interrupted(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    sweep_id, _ = store.open_sweep(sweep_mod.sweep_meta(detect(), TINY))
    assert store.state(store.sweep(sweep_id)) == "running"
    store.db.execute("update sweeps set pid_start = '1' where id = ?", [sweep_id])  # this pid, another process
    assert store.state(store.sweep(sweep_id)) == "interrupted"
    store.db.execute("update sweeps set host = null where id = ?", [sweep_id])  # a row from before owners
    assert store.state(store.sweep(sweep_id)) == "interrupted"


def test_plans_with_values_that_are_not_ints_are_value_errors(device, gen) -> None:
    case = make_case(device, gen, b=1, s_q=1, h=16, topk=32, x_topk=0, sink="finite")
    odd = Plan("fused", (("BLOCK_H", [16]), ("BLOCK_N", 32), ("num_stages", 1), ("num_warps", 4)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="config values must be ints"):
        case.run(odd)


def test_a_resume_does_not_retime_a_plan_that_fails_again(tmp_path: Path, monkeypatch) -> None:
    import time

    real_check = DecodeCase.check

    def one_fails(self, plan):
        if plan.variant == "gather_attend":
            return "launch_error", "RuntimeError: flaky device", None
        return real_check(self, plan)

    monkeypatch.setattr(DecodeCase, "check", one_fails)
    store = Store(tmp_path / "s.db")
    sweep_id = sweep_mod.run_sweep(store, TINY, detect())
    before = {(r["workload"], r["plan"]): r["taken"] for r in store.measurements(sweep_id, "final")}
    time.sleep(1.1)  # row times have one-second resolution
    assert sweep_mod.run_sweep(store, TINY, detect()) == sweep_id
    after = {(r["workload"], r["plan"]): r["taken"] for r in store.measurements(sweep_id, "final")}
    assert before and after == before, "the final stage was not re-opened"


@pytest.mark.parametrize("value", ["false", "off", "no"])
def test_an_environment_switch_with_an_unknown_value_warns(monkeypatch, value: str) -> None:
    from dsv4_tune import env
    from dsv4_tune.errors import DSV4TuneWarning

    monkeypatch.setenv("DSV4_TUNE_PDL", value)
    with pytest.warns(DSV4TuneWarning, match=f"DSV4_TUNE_PDL='{value}': expected 0"):
        assert env.pdl_allowed()
    monkeypatch.setenv("DSV4_TUNE_PDL", "0")
    assert not env.pdl_allowed()
