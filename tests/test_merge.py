"""Stores from several hosts merged into one (issue 24): no duplicates, each sweep's GPU identity and
provenance kept, one policy per GPU id exported."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4_tune.cache import merge as merge_mod
from dsv4_tune.cache.merge import merge_stores
from dsv4_tune.cache.store import Store
from dsv4_tune.cli import app
from dsv4_tune.policies.gpu import detect
from dsv4_tune.policies.schema import load_policy
from dsv4_tune.tuner import sweep as sweep_mod
from dsv4_tune.tuner.grid import Grid, GridClass

TINY = Grid((GridClass(16, 64, 0, True, 64, 64),), (1, 2))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("merge") / "a.db"
    sweep_mod.run_sweep(Store(db), TINY, detect())
    return db


def _copy(src: Path, dst: Path) -> Store:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return Store(dst)


def _keys(store: Store) -> list[tuple]:
    return [tuple(r) for r in store.db.execute("select sweep_id, workload, stage, plan from measurements")]


def test_overlapping_copies_merge_into_one_sweep_without_duplicates(swept: Path, tmp_path: Path) -> None:
    b = _copy(swept, tmp_path / "b.db")  # a copy that went further: one more row, a later finish
    (sweep,) = b.sweeps()
    row = dict(b.measurements(sweep["id"])[0])
    b.db.execute("insert into measurements (sweep_id, workload, stage, plan, variant, config, status, taken) "
                 "values (?, ?, 'refine', 'extra(X=1)', 'fused', '{}', 'ok', '2099-01-01T00:00:00+00:00')",
                 [sweep["id"], row["workload"]])
    b.db.execute("update sweeps set finished = '2099-01-01T00:00:00+00:00' where id = ?", [sweep["id"]])
    out = tmp_path / "all.db"
    summary = merge_stores([swept, tmp_path / "b.db"], out)
    merged = Store(out, readonly=True)
    (one,) = merged.sweeps()
    keys = _keys(merged)
    assert len(keys) == len(set(keys)) == len(_keys(b)), "the union, each row once"
    assert summary["sweeps_added"] == 1 and summary["sweeps_merged"] == 1 and not summary["renumbered"]
    assert one["finished"].startswith("2099") and len(json.loads(one["origin"])) == 2
    assert len(merged.winners(one["id"])) == len(TINY.points())
    again = merge_stores([swept, tmp_path / "b.db"], out)  # merging again changes nothing
    assert _keys(Store(out, readonly=True)) == keys and again["sweeps_added"] == 0


def test_sweeps_of_two_hosts_that_share_an_id_are_both_kept(swept: Path, tmp_path: Path) -> None:
    other = _copy(swept, tmp_path / "host2.db")
    (sweep,) = other.sweeps()
    other.db.execute("update sweeps set host = 'host2', started = '2026-12-01T00:00:00+00:00' where id = ?",
                     [sweep["id"]])
    out = tmp_path / "all.db"
    summary = merge_stores([swept, tmp_path / "host2.db"], out)
    merged = Store(out, readonly=True)
    ids = [s["id"] for s in merged.sweeps()]
    assert len(ids) == 2 and sweep["id"] in ids and summary["renumbered"]
    assert len(_keys(merged)) == 2 * len(_keys(other)) and len(set(_keys(merged))) == len(_keys(merged))
    assert {s["host"] for s in merged.sweeps()} == {"host2", Store(swept, readonly=True).sweeps()[0]["host"]}


def test_export_writes_one_policy_per_gpu_id(swept: Path, tmp_path: Path) -> None:
    other = _copy(swept, tmp_path / "b.db")
    (sweep,) = other.sweeps()
    other.db.execute("update sweeps set gpu_id = 'interpreter-b', key = 'otherkey', id = 'otherkey-1' where id = ?",
                     [sweep["id"]])
    other.db.execute("update measurements set sweep_id = 'otherkey-1'")
    other.db.execute("update winners set sweep_id = 'otherkey-1'")
    out = tmp_path / "all.db"
    merge_stores([swept, tmp_path / "b.db"], out)
    runner = CliRunner()
    result = runner.invoke(app, ["export", "--db", str(out), "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 1 and "interpreter-b" in result.output and "--gpu" in result.output
    result = runner.invoke(app, ["export", "--db", str(out), "--gpu", "interpreter-b", "--out",
                                 str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert load_policy(tmp_path / "b.json").gpu.id == "interpreter-b"
    folder = tmp_path / "policies"
    folder.mkdir()
    result = runner.invoke(app, ["export", "--db", str(out), "--out", str(folder)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in folder.iterdir()) == ["interpreter-b.json", "interpreter.json"]
    result = runner.invoke(app, ["merge", str(swept), str(tmp_path / "b.db"), "--out", str(tmp_path / "m.db"),
                                 "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["sweeps_added"] == 2
    assert runner.invoke(app, ["merge", str(out), "--out", str(out)]).exit_code == 1


def test_merge_reports_what_the_merged_store_holds(swept: Path, tmp_path: Path) -> None:
    """`merge A A`: the rows of one sweep, once (issue 31: it said twice the rows)."""
    held = Store(swept, readonly=True)
    (sweep,) = held.sweeps()
    rows, winners = held.measurement_count(sweep["id"]), len(held.winners(sweep["id"]))
    result = CliRunner().invoke(app, ["merge", str(swept), str(swept), "--out", str(tmp_path / "m.db"), "--json"])
    summary = json.loads(result.stdout)
    assert (summary["measurements"], summary["winners"]) == (rows, winners)
    assert (summary["measurements_new"], summary["sweeps_added"], summary["sweeps_merged"]) == (rows, 1, 1)
    text = CliRunner().invoke(app, ["merge", str(swept), "--out", str(tmp_path / "m.db")]).stdout
    assert f"holds {rows} measurements (0 new) and {winners} winners (0 new)" in text


def test_a_failed_merge_leaves_no_output(swept: Path, tmp_path: Path, monkeypatch) -> None:
    not_a_store = tmp_path / "notes.txt"
    not_a_store.write_text("not a database " * 20)
    out = tmp_path / "m.db"
    result = CliRunner().invoke(app, ["merge", str(swept), str(not_a_store), "--out", str(out)])
    assert result.exit_code == 1 and "notes.txt" in result.stderr and not out.exists()
    merge_stores([swept], out)
    before = out.read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("killed half-way")

    copy = _copy(swept, tmp_path / "c.db").path
    monkeypatch.setattr(merge_mod, "_copy_winners", broken)
    with pytest.raises(RuntimeError):
        merge_stores([swept], tmp_path / "other.db")
    with pytest.raises(RuntimeError):
        merge_stores([copy], out)
    assert out.read_bytes() == before, "a failed merge leaves the store it was merging into as it was"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert not (tmp_path / "other.db").exists() and not [n for n in left if ".tmp" in n], left
