"""Fuzzing the input surface with hypothesis: policy files, grid files, CLI options and explicit plans.

Each property is the promise made to users: a policy problem is a PolicyError and never reaches
serving, a grid problem a GridError, a command line ends with exit 0, 1 or 2 and no traceback, an
explicit plan gives the reference's answer or a ValueError.  CI runs them derandomized (the "ci"
profile in conftest.py), so a red run names an input that fails every time.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dsv4_tune import Plan
from dsv4_tune.cli import app
from dsv4_tune.env import POLICY
from dsv4_tune.policies import dispatcher as dispatcher_mod
from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.schema import PolicyError, load_policy
from dsv4_tune.registry.variants import VARIANTS, plan_problems
from dsv4_tune.registry.workload import Workload
from dsv4_tune.serving.variants import variant_problem
from dsv4_tune.tuner.grid import Grid, GridError, interpreter_grid
from tests.test_sparse_decode import make_case

VALID_TEXT = BASELINE_FILE.read_text()
VALID = json.loads(VALID_TEXT)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON tree (keys and indices from the root)."""
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


VALID_PLACES = _paths(VALID)[1:]


def _replace(data: object, path: tuple, value: object) -> object:
    copy = json.loads(json.dumps(data))
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return copy


def _delete(data: object, path: tuple) -> object:
    copy = json.loads(json.dumps(data))
    node = copy
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return copy


@st.composite
def broken_policy_texts(draw: st.DrawFn) -> str | bytes:
    """Random bytes, truncated or byte-mutated valid files, and valid files with one value replaced
    or one key deleted."""
    kind = draw(st.sampled_from(["bytes", "truncate", "byte", "replace", "delete"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "truncate":
        return VALID_TEXT[: draw(st.integers(0, len(VALID_TEXT) - 1))]
    if kind == "byte":
        raw = bytearray(VALID_TEXT.encode())
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
        return bytes(raw)
    place = draw(st.sampled_from(VALID_PLACES))
    if kind == "delete":
        return json.dumps(_delete(VALID, place))
    return json.dumps(_replace(VALID, place, draw(json_values)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=broken_policy_texts())
def test_policy_loader_raises_only_policy_errors(tmp_path: Path, text: str | bytes) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        policy = load_policy(path)
    except PolicyError as e:
        assert str(path) in str(e)
        return
    # Accepted: a valid policy, whose dispatcher answers every class without raising.
    dispatcher = dispatcher_mod.Dispatcher(policy, str(path))
    for c in policy.classes:
        for t in (1, 3, 64, 5000):
            assert dispatcher.lookup(c.workload(t)).variant in VARIANTS


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=broken_policy_texts())
def test_serving_selection_never_raises_on_a_policy(tmp_path: Path, monkeypatch, text: str | bytes) -> None:
    path = tmp_path / "policy.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    monkeypatch.setenv(POLICY, str(path))
    dispatcher, notes = dispatcher_mod.select_policy()
    assert dispatcher.policy is not None or notes
    w = Workload(4, 64, 128, 512)
    assert dispatcher.lookup(w).variant in VARIANTS and dispatcher.lookup(w, eager=True).variant in VARIANTS


grid_jsons = st.one_of(
    json_values,
    st.builds(lambda place, value: _replace(interpreter_grid().to_json(), place, value),
              st.sampled_from(_paths(interpreter_grid().to_json())[1:]), json_values),
    st.fixed_dictionaries({"classes": st.lists(st.dictionaries(
        st.sampled_from(["h_q", "topk_main", "topk_extra", "with_length", "page_main", "page_extra", "has_sink"]),
        json_values | st.integers(-4, 300), max_size=7), max_size=3),
        "tokens": st.lists(json_values | st.integers(-4, 3000), max_size=4)}),
)


@settings(max_examples=300)
@given(data=grid_jsons)
def test_grid_loader_raises_only_grid_errors(data: object) -> None:
    try:
        grid = Grid.from_json(data)
    except GridError:
        return
    assert grid.points(), "an accepted grid has something to measure"
    for cls, t in grid.points():
        w = cls.workload(t)
        assert t >= 1 and (not isinstance(w, Workload) or w.h_q % 8 == 0)


# ------------------------------------------------------------------------------------ CLI
ints = st.integers(-(2**33), 2**33).map(str) | st.sampled_from(["0", "1", "-1", "3", "16", "64", "128", "1e3", "x", ""])
files = st.sampled_from(["BASELINE", "MISSING", "NOT_JSON", "NOT_DB", "DIR"])


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    cmd = draw(st.sampled_from(["lookup", "lookup-op", "validate", "show", "diff", "status", "export", "info",
                                "compile-check", "nonsense"]))
    args = [cmd]
    if cmd == "lookup":
        for opt in ("--tokens", "--heads", "--topk-main", "--topk-extra"):
            if draw(st.booleans()):
                args += [opt, draw(ints)]
        args += draw(st.lists(st.sampled_from(["--no-sink", "--json", "--explain", "--no-len-main"]), max_size=2))
        args += ["--policy", draw(files)]
    elif cmd == "lookup-op":
        args += [draw(st.sampled_from(["compress", "qk_norm", "zip", ""])), "--rows", draw(ints)]
        for _ in range(draw(st.integers(0, 4))):
            name = draw(st.sampled_from(["ratio", "head_dim", "mode", "h_q", "h_k", "head_dim_q", "head_dim_k", "x"]))
            args += ["-p", f"{name}={draw(ints | st.sampled_from(['decode', 'prefill']))}"]
        args += ["--policy", draw(files)]
    elif cmd in ("validate", "show"):
        args += [draw(files)] + (["--buckets"] if cmd == "show" and draw(st.booleans()) else [])
    elif cmd == "diff":
        args += [draw(files), draw(files), "--max-tokens", draw(ints)]
    elif cmd in ("status", "export"):
        args += ["--db", draw(files)] + (["--out", "OUT", "--sweep", draw(st.text(max_size=5))] if cmd == "export"
                                         else [])
    elif cmd == "compile-check":  # options checked before anything compiles
        args += ["--arch", draw(st.sampled_from(["", "sm80", "gfx900", "sm90,x"])),
                 "--sample", draw(st.sampled_from(["0", "-1", "x"]))]
    else:
        args += draw(st.lists(st.text(max_size=6), max_size=3))
    return args


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    (root / "not.json").write_text("{not json")
    (root / "not.db").write_text("not a database, just some text " * 10)
    return {"BASELINE": str(BASELINE_FILE), "MISSING": str(root / "missing"), "NOT_JSON": str(root / "not.json"),
            "NOT_DB": str(root / "not.db"), "DIR": str(root), "OUT": str(root / "out.json")}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=command_lines())
def test_command_lines_end_in_0_1_or_2_without_a_traceback(cli_files: dict[str, str], args: list[str]) -> None:
    argv = [cli_files.get(a, a) for a in args]
    result = CliRunner().invoke(app, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), (argv, repr(result.exception))
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output)
    assert "Traceback" not in result.output, (argv, result.output)
    assert not (Path(cli_files["MISSING"])).exists(), f"{argv} created a file it was only to read"


# ------------------------------------------------------------------------------ explicit plans
@st.composite
def explicit_plans(draw: st.DrawFn) -> Plan:
    """A config of the registry's space, often with one key changed, dropped or added."""
    w = CASE_WORKLOAD
    variant = draw(st.sampled_from(sorted(VARIANTS)))
    config = dict(draw(st.sampled_from(VARIANTS[variant].space(w))).config)
    how = draw(st.sampled_from(["keep", "keep", "change", "drop", "add"]))
    key = draw(st.sampled_from(sorted(config)))
    if how == "change":
        config[key] = draw(st.integers(-70, 300) | st.sampled_from([0, 1, 16, 24, 32, 48, 64, 128]))
    elif how == "drop":
        del config[key]
    elif how == "add":
        config[draw(st.sampled_from(["TILE", "SPLIT_K", "PDL", "ONE_LAUNCH", "BLOCK_TK"]))] = draw(st.integers(-2, 64))
    return Plan.make(variant, config)


CASE_WORKLOAD = Workload(2, 16, 32, 24, True, True, True)


@pytest.fixture(scope="module")
def plan_case():
    import torch

    case = make_case("cpu", torch.Generator().manual_seed(7), b=2, s_q=1, h=16, topk=32, x_topk=24, sink="finite")
    assert case.workload == CASE_WORKLOAD
    return case


@pytest.mark.parametrize("valid", [True, False])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.filter_too_much])
@given(plan=explicit_plans())
def test_explicit_plans_give_the_reference_or_a_value_error(plan_case, plan: Plan, valid: bool) -> None:
    problems = plan_problems(CASE_WORKLOAD, plan)
    assume(not problems if valid else problems)
    if not problems and variant_problem(plan.variant, plan_case.q.device):  # a valid plan this process
        with pytest.raises(ValueError, match=f"plan: {plan.variant}"):  # cannot launch (ws_sm90 on a CPU)
            plan_case.run(plan)
        return
    if not problems:
        plan_case.check(plan)  # NaN-poisoned outputs and workspace, against the reference
        return
    with pytest.raises(ValueError, match=r"plan|variant"):
        plan_case.run(plan)
