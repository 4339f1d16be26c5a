"""What a new user reads (issue 31): one JSON document on stdout under --json in every situation,
notes on stderr, square brackets kept, ratios and margins that say what they are, classes in words,
and a word on stderr whenever an answer is the built-in default rather than the policy's."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from dsv4_tune.cli import app
from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.dispatcher import shipped_policies
from dsv4_tune.policies.schema import lead_text, load_policy
from tests.test_cli import H100

ROOT = Path(__file__).resolve().parents[1]
H200 = next(p for p in shipped_policies() if p.stem == "sm90-h200")


def _invoke(*args: object, env: dict | None = None):
    return CliRunner().invoke(app, [str(a) for a in args], env=env, terminal_width=200)


def test_every_json_command_is_tested_here() -> None:
    """A new --json command joins JSON_COMMANDS (below, or a test of test_cli.py; verify-policy on a CPU
    box with the interpreter off: test_bad_input.py), so its stdout is parsed."""
    with_json = {name for name, cmd in get_command(app).commands.items() if any("--json" in p.opts for p in cmd.params)}
    assert with_json == set(JSON_COMMANDS) | {"verify-policy", "compile-check", "report", "status", "merge"}


JSON_COMMANDS = {
    "info": [],
    "lookup": ["--tokens", 4, "--heads", 256, "--policy", H100],  # a fallback: its note goes to stderr
    "lookup-op": ["compress", "--rows", 4, "-p", "ratio=4", "-p", "head_dim=512", "-p", "mode=decode"],
    "validate": [ROOT / "missing[1].json"],  # exit 1, still one JSON document
    "show": [BASELINE_FILE],
    "diff": [H100, H200, "--max-tokens", 4],
}


@pytest.mark.parametrize("name", sorted(JSON_COMMANDS))
def test_json_stdout_is_one_document(name: str) -> None:
    result = _invoke(name, *JSON_COMMANDS[name], "--json", env={"DSV4_TUNE_POLICY": str(ROOT / "missing.json")})
    assert result.exit_code in (0, 1), result.output
    json.loads(result.stdout)


def test_square_brackets_are_printed(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as without the [report] extra
    result = _invoke("report", H100, "--out", tmp_path / "report")
    assert result.exit_code == 1 and "pip install 'dsv4-tune[report]'" in result.stderr, result.stderr
    assert not (tmp_path / "report").exists(), "a failed report leaves no folder"
    result = _invoke("validate", "no[such].json")
    assert result.exit_code == 1 and "no[such].json" in result.stderr, result.stderr


def test_diff_ratio_is_labelled_and_runs_of_one_t_read_as_one() -> None:
    text = _invoke("diff", H100, H200, "--max-tokens", 64).stdout
    assert "measured us, A / B (B/A): " in text
    pairs = re.findall(r"T=\d+ ([\d.]+) / ([\d.]+) \(([\d.]+)x\)", text)
    assert pairs, text
    apart = [(a, b, r) for a, b, r in ([float(x) for x in p] for p in pairs) if abs(b / a - 1) > 0.1]
    assert apart, "some bucket where A and B differ enough to tell B/A from A/B"
    for a, b, ratio in apart:  # times printed to 0.1 us
        assert ratio == pytest.approx(b / a, abs=0.02)
    assert not re.search(r"T (\d+)-\1\b", text), "a run of one T reads 'T = n'"


@pytest.mark.parametrize(("margin", "smallest", "says"), [
    (0.12, True, "leads the runner-up by >= 12%"), (0.004, True, "ties the runner-up (within 0.5%)"),
    (-0.004, True, "ties"), (-0.013, True, "the runner-up is up to 1% faster"),
    (0.013, False, "leads the runner-up by 1.3%"), (-0.013, False, "the runner-up is 1.3% faster"),
])
def test_margins_in_words(margin: float, smallest: bool, says: str) -> None:
    assert lead_text(margin, smallest).startswith(says)


def test_no_policy_claims_a_lead_it_does_not_have() -> None:
    for path in shipped_policies():
        text = _invoke("show", path).stdout + _invoke("lookup", "--tokens", 2, "--heads", 64, "--policy", path).stdout
        assert not re.search(r"by >= -|by >= 0%|by -", text), path


def test_classes_are_printed_in_words() -> None:
    result = _invoke("lookup", "--tokens", 4, "--heads", 64, "--topk-extra", 512, "--policy", H100, "--explain")
    assert "class h64 topk 128+512 len y/y sink y (exact class)" in result.stdout and "(64," not in result.stdout
    found = json.loads(_invoke("diff", H100, H200, "--json").stdout)
    classes = {tuple(c.key) for c in load_policy(H100).classes}
    assert all(tuple(d["key"]) in classes and "(" not in d["class"] for d in found if d["kind"] == "decode")


def test_fallbacks_are_said_on_stderr() -> None:
    missing = str(ROOT / "missing.json")
    result = _invoke("lookup", "--tokens", 4, "--heads", 64, env={"DSV4_TUNE_POLICY": missing})
    assert result.exit_code == 0 and "missing.json" in result.stderr and "built-in default" in result.stderr
    result = _invoke("lookup", "--tokens", 4, "--heads", 256, "--policy", H100)
    assert result.exit_code == 0 and "no class for h256" in result.stderr and "built-in default" in result.stderr
    result = _invoke("lookup-op", "compress", "--rows", 4, "-p", "ratio=4", "-p", "head_dim=512", "-p", "mode=decode",
                     env={"DSV4_TUNE_POLICY": missing})
    assert "built-in default" in result.stderr
    result = _invoke("lookup", "--tokens", 4, "--heads", 64, "--policy", H100)
    assert result.exit_code == 0 and result.stderr == "", "the policy's own answer: nothing to say"


def test_jobs_defaults_follow_the_machine(monkeypatch) -> None:
    from dsv4_tune import cli

    commands = get_command(app).commands
    defaults = {name: p.default for name, cmd in commands.items() for p in cmd.params if "--jobs" in p.opts}
    assert set(defaults) == {"sweep", "warmup", "compile-check"}
    assert set(defaults.values()) == {cli.default_jobs()}
    for cpus, jobs in ((2, 2), (1, 1), (64, 12)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda _pid, n=cpus: set(range(n)), raising=False)
        assert cli.default_jobs() == jobs


def test_long_work_says_where_it_is_when_output_is_redirected(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from dsv4_tune import cli

    monkeypatch.setattr(cli, "PROGRESS_EVERY_S", 0.01)
    result = _invoke("report", H100, "--out", tmp_path / "report", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["images"]
    assert re.search(r"drawing figures: \d+ of \d+ done, \d+ s", result.stderr), result.stderr


def test_diff_max_tokens_is_bounded() -> None:
    """diff walks every T up to --max-tokens (and listed every op size up to it): --max-tokens 3e7 took
    1.2 GB in 20 s, and the CLI fuzzer draws up to 2^33, unseeded when CI is unset: the likely cause
    of the test run that grew past 12 GB."""
    from dsv4_tune.cli import MAX_DIFF_TOKENS

    assert _invoke("diff", H100, H200, "--max-tokens", MAX_DIFF_TOKENS + 1).exit_code == 2
