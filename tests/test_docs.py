"""Every fenced bash and python block of the README and docs/ runs as written (issue 31: the README's
API example gave a k_cache shape the kernels refuse).

Per page, its bash lines run in order in one shell (so a sweep feeds the export after it) and its
python blocks in one interpreter (so a later block uses an earlier block's tensors), in a scratch
folder that links the repository's dsv4_tune/, benchmarks/ and scripts/, with ``dsv4-tune`` the
package under test.  With no GPU the kernels run on the Triton interpreter at the small shapes the
examples use, and ``dsv4-tune sweep`` sweeps the tiny interpreter grid.  The few commands that are
not run as written are in CHEAP, each with the check that stands for it and why.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?ms)^```(\w+)\n(.*?)^```")


def _extras_exist() -> str:
    section = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    missing = {"test", "report", "ray"} - set(re.findall(r"(?m)^(\w+) = \[", section))
    return f"{sys.executable} -c 'import sys; sys.exit({bool(missing)})'"


# A command not run as written -> the command run instead.
CHEAP = {
    # The default grid is minutes on a GPU and the whole suite would run itself: the scripts parse and
    # end in the commands they are named for (docs/cli.md's first session runs the interpreter sweep).
    "bash scripts/main.sh": "bash -n scripts/main.sh && grep -q '^exec dsv4-tune sweep --gpu auto' scripts/main.sh",
    "bash scripts/test.sh": "bash -n scripts/test.sh && grep -q '^exec python3 -m pytest' scripts/test.sh",
    # Installs need the network: torch is importable, and the extras named exist.
    "pip install torch": f"{sys.executable} -c 'import torch'",
    'pip install -e ".[test,report,ray]"': _extras_exist(),
}


def _blocks(page: Path, lang: str) -> list[str]:
    return [code for kind, code in BLOCK.findall(page.read_text()) if kind == lang]


def _cases(lang: str) -> list:
    return [pytest.param(p, id=p.relative_to(ROOT).as_posix()) for p in PAGES if _blocks(p, lang)]


@pytest.fixture
def scratch(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A folder that looks like a checkout to the examples, and the environment to run them in."""
    for name in ("dsv4_tune", "benchmarks", "scripts", "pyproject.toml"):
        (tmp_path / name).symlink_to(ROOT / name)
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    cli = bin_dir / "dsv4-tune"
    cli.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m dsv4_tune.cli "$@"\n')
    cli.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
           "COLUMNS": "200"}
    env.pop("DSV4_TUNE_POLICY", None)
    return tmp_path, env


def _command(line: str) -> str:
    return CHEAP.get(line.split(" #")[0].strip(), line)


@pytest.mark.parametrize("page", _cases("bash"))
def test_bash_blocks_run(page: Path, scratch) -> None:
    folder, env = scratch
    lines = [_command(line) for code in _blocks(page, "bash") for line in code.splitlines() if line.strip()]
    script = "set -euo pipefail\n" + "\n".join(lines)
    done = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{page.name}:\n{script}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n" \
                                 f"{done.stderr[-3000:]}"
    assert "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("page", _cases("python"))
def test_python_blocks_run(page: Path, scratch) -> None:
    folder, env = scratch
    code = "\n".join(_blocks(page, "python"))
    done = subprocess.run([sys.executable, "-c", code], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{page.name}:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("page", _cases("json"))
def test_json_blocks_parse(page: Path) -> None:
    for code in _blocks(page, "json"):
        json.loads(code)


def test_the_readme_begins_with_the_two_commands() -> None:
    first = BLOCK.search((ROOT / "README.md").read_text())
    assert first and first.start() < 20 and first.group(1) == "bash"
    assert [line.split(" #")[0].strip() for line in first.group(2).splitlines()] == [
        "bash scripts/main.sh", "bash scripts/test.sh"]


def test_the_docs_link_only_to_files_that_exist() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links to {target}"
