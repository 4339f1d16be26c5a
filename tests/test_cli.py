"""The CLI's contract with scripts and CI (issue 22): `--json` on every command that reports, exit
codes (0 done, 1 failed check, 2 usage; `diff --exit-code`), `--version`, list / enum options,
`status` per stage with what to run next, and `report` as files a reviewer opens."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4_tune.cache.store import Store
from dsv4_tune.cli import Arch, app
from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.dispatcher import shipped_policies
from dsv4_tune.policies.gpu import detect
from dsv4_tune.policies.schema import dump_policy, load_policy
from dsv4_tune.tuner import sweep as sweep_mod
from dsv4_tune.tuner.grid import interpreter_grid

H100 = next(p for p in shipped_policies() if p.stem == "sm90-h100")


def _run(*args: object, code: int = 0) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, (args, result.exit_code, result.output)
    return result.stdout


def _json(*args: object, code: int = 0) -> object:
    return json.loads(_run(*args, "--json", code=code))


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished interpreter sweep of the interpreter grid (a decode class and two op classes)."""
    db = tmp_path_factory.mktemp("cli") / "s.db"
    sweep_mod.run_sweep(Store(db), interpreter_grid(), detect())
    return db


def test_version() -> None:
    assert _run("--version").startswith("dsv4-tune ")


def test_info_and_validate_json(tmp_path: Path) -> None:
    info = _json("info")
    assert info["arch"] == "interpreter" and not info["real"] and info["torch"] and info["triton"]
    ok = _json("validate", BASELINE_FILE)
    assert ok["ok"] and ok["gpu"] == "gfx950-mi355x" and ok["classes"] == len(load_policy(BASELINE_FILE).classes)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    failed = _json("validate", bad, code=1)
    assert not failed["ok"] and "gpu" in failed["error"]


def test_show_json_lists_classes_and_segments() -> None:
    shown = _json("show", H100)
    policy = load_policy(H100)
    assert len(shown["classes"]) == len(policy.classes) and len(shown["ops"]) == len(policy.ops)
    assert all(c["segments"] and c["measured"] for c in shown["classes"])


def test_diff_json_and_exit_code(tmp_path: Path) -> None:
    same = tmp_path / "same.json"
    same.write_text(dump_policy(load_policy(BASELINE_FILE)))
    assert _json("diff", BASELINE_FILE, same, "--exit-code") == []
    found = _json("diff", BASELINE_FILE, H100, "--max-tokens", "64", "--exit-code", code=1)
    assert found and {"class", "from_tokens", "to_tokens", "a", "b"} <= set(found[0])
    _run("diff", BASELINE_FILE, H100, "--max-tokens", "64")  # without --exit-code: 0


def test_diff_says_by_how_much_and_covers_op_classes() -> None:
    h200 = H100.with_name("sm90-h200.json")
    found = _json("diff", H100, h200)
    ops = [d for d in found if d["kind"] == "op"]
    assert ops and all(d["class"].split()[0] in ("compress", "qk_norm") for d in ops)
    timed = [m for d in found for m in d["measured"] if m["a_us"] and m["b_us"]]
    assert timed, "the buckets of a differing run carry both policies' times"
    a, b = load_policy(H100), load_policy(h200)
    d = next(d for d in found if d["kind"] == "decode" and any(m["a_us"] for m in d["measured"]))
    m = next(m for m in d["measured"] if m["a_us"])
    cls = next(c for c in a.classes if list(c.key) == d["key"])
    assert m["a_us"] == next(x.median_us for x in cls.measured if x.total_tokens == m["tokens"])
    assert d["from_tokens"] <= m["tokens"] <= d["to_tokens"]
    assert b.gpu.id == "sm90-h200"
    text = _run("diff", H100, h200)
    assert "measured us, A / B (B/A)" in text and "where both measured" in text and "median" in text


def test_status_json_per_stage_and_next(swept: Path) -> None:
    status = _json("status", "--db", swept)
    (row,) = status["sweeps"]
    assert row["state"] == "done" and row["winners"] == len(interpreter_grid().points())
    points = len(interpreter_grid().points())
    assert row["stages"][:3] == [{"stage": s, "done": points, "total": points} for s in ("coarse", "refine", "final")]
    assert f"--sweep {row['id']}" in row["next"] and row["eta_s"] is None
    text = _run("status", "--db", swept)
    assert row["id"] in text and f"coarse: {points} / {points}" in text and "next: `dsv4-tune export" in text


def test_status_of_a_running_sweep_has_an_eta(tmp_path: Path, swept: Path) -> None:
    db = tmp_path / "s.db"
    with sqlite3.connect(swept) as src, sqlite3.connect(db) as dst:
        src.backup(dst)  # the store is in WAL mode: a file copy could miss the latest rows
    store = Store(db)
    (sweep,) = store.sweeps()
    progress = {"stages": {"coarse": {"done": 3, "total": 3}, "refine": {"done": 1, "total": 3},
                           "compile": {"kernels": 12, "seconds": 30.0}}, "steps": [4, 9], "stage": "refine",
                "seconds": 40.0}
    store.db.execute("update sweeps set status = 'running', finished = null, pid = ?, progress = ? where id = ?",
                     [os.getpid(), json.dumps(progress), sweep["id"]])
    (row,) = _json("status", "--db", db)["sweeps"]
    assert row["state"] == "running" and row["eta_s"] == 50, "40 s for 4 of 9 steps: 50 s to go"
    assert [s["stage"] for s in row["stages"]] == ["compile", "coarse", "refine"], "in the order the sweep runs them"
    assert "compile: 12 kernels, 30.0 s" in _run("status", "--db", db)


def test_verify_policy_json(swept: Path, tmp_path: Path) -> None:
    policy = tmp_path / "p.json"
    _run("export", "--db", swept, "--out", policy)
    out = _json("verify-policy", policy, "--max-points", "1")
    assert out["stale"] == 0 and len(out["samples"]) == 1 and {"class", "T", "policy_us"} <= set(out["samples"][0])


def test_compile_check_takes_repeated_enum_options_and_json() -> None:
    from dsv4_tune.tuner.crosscompile import ARCHS

    assert {a.value for a in Arch} == set(ARCHS)
    out = _json("compile-check", "--arch", "gfx950", "--variants", "qk_norm", "--sample", "1", "--jobs", "1")
    assert out["arches"] == ["gfx950"] and out["kernels"] >= 1 and out["failed"] == [] and out["sample"] == 1
    assert {r["variant"] for r in out["summary"]} >= {"qk_norm"}
    _run("compile-check", "--arch", "sm80", code=2)
    _run("compile-check", "--variants", "warp_speed", code=2)


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def _check_report(out: Path, names: list[str], listed: dict) -> None:
    page = (out / "index.html").read_text()
    for name in names:
        assert name in page, f"the report does not name {name}"
    assert set(listed["classes"]) == set(names)
    pngs = sorted(out.glob("*.png"))
    assert sorted(listed["images"]) == [str(p) for p in pngs] and len(pngs) >= len(names)
    for png in pngs:
        w, h = _png_size(png)
        assert 300 <= w <= 4000 and 200 <= h <= 4000, (png, w, h)
        assert png.name in page
    assert page.count("data:image/png;base64,") == len(pngs), "every PNG is embedded: the page stands alone"


def test_report_of_an_interpreter_sweep(swept: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    listed = _json("report", "--db", swept, "--out", out, BASELINE_FILE)
    grid = interpreter_grid()
    names = [c.workload(1).label for c in (*grid.classes, *grid.ops)]
    _check_report(out, names, listed)
    page = (out / "index.html").read_text()
    assert "NOT real measurements" in page and "Provenance" in page and "speed-up of the winner over default" in page
    assert (out / "heatmap-classes-vs-default.png").exists() and (out / "heatmap-ops-vs-default.png").exists()


def test_report_of_two_shipped_policies(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    other = next(p for p in shipped_policies() if p != H100)
    out = tmp_path / "report"
    listed = _json("report", H100, other, "--out", out)
    policy = load_policy(H100)
    _check_report(out, [c.workload(1).label for c in (*policy.classes, *policy.ops)], listed)
    page = (out / "index.html").read_text()
    assert f"speed-up of the winner over {other.stem}" in page and "different GPUs" in page


def test_report_needs_a_store_or_a_policy(tmp_path: Path) -> None:
    _run("report", "--out", tmp_path, code=2)
    _run("report", "--out", tmp_path, "--db", tmp_path / "missing.db", code=1)
