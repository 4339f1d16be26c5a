"""Files a command writes (issue 31): whole or not at all, readable by another user as the umask says,
errors naming the path the user gave, and no folders made behind a mistyped --out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4_tune.cli import app
from dsv4_tune.files import replacing, write_text
from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.schema import load_policy, save_policy


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_a_new_file_honours_the_umask_and_a_replaced_one_keeps_its_mode(tmp_path: Path, umask, mask: int) -> None:
    umask(mask)
    path = save_policy(load_policy(BASELINE_FILE), tmp_path / "p.json")
    assert _mode(path) == 0o666 & ~mask, "a policy is read by a serving process of another user: not 0600"
    path.chmod(0o600)
    write_text(path, "x")
    assert _mode(path) == 0o600 and path.read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"], "no temporary file left"


def test_errors_name_the_users_path_and_no_folder_is_made(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "sub" / "x.json"
    with pytest.raises(FileNotFoundError) as e:
        write_text(target, "x")
    assert e.value.filename == str(target) and "missing/sub does not exist" in e.value.strerror
    assert not (tmp_path / "missing").exists()
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as e:  # the rename over a folder fails: named as the user's path
        write_text(folder, "x")
    assert e.value.filename == str(folder) and list(tmp_path.iterdir()) == [folder] and not list(folder.iterdir())


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_export_to_a_missing_folder_is_one_line_naming_it(tmp_path: Path) -> None:
    from dsv4_tune.cache.store import Store
    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.tuner import sweep as sweep_mod
    from tests.test_merge import TINY

    db = tmp_path / "s.db"
    sweep_mod.run_sweep(Store(db), TINY, detect())
    out = tmp_path / "nonexistent" / "sub" / "x.json"
    result = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == f"error {out}: its folder {out.parent} does not exist (create it first)"
    assert not (tmp_path / "nonexistent").exists()
    result = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(tmp_path / "p.json")])
    assert result.exit_code == 0 and _mode(tmp_path / "p.json") == 0o666 & ~_umask()


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_commands_that_write_make_no_folders(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = tmp_path / "nonexistent" / "sub"
    for args in (["merge", str(tmp_path / "none.db"), "--out", str(missing / "m.db")],
                 ["report", str(BASELINE_FILE), "--out", str(missing / "report")],
                 ["sweep", "--db", str(missing / "s.db"), "--grid", str(tmp_path / "none.json")],
                 ["compile-check", "--variants", "qk_norm", "--sample", "1", "--arch", "gfx950", "--jobs", "1",
                  "--table-dir", str(missing / "tables")]):
        result = runner.invoke(app, args)
        assert result.exit_code in (1, 2) and "Traceback" not in result.output, (args, result.output)
        assert not (tmp_path / "nonexistent").exists(), args
