"""The compressor / Q/K-norm ops in the registry, the policy file, the dispatcher and the tuner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dsv4_tune.cache.store import workload_key
from dsv4_tune.cli import app
from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.policies.schema import PolicyError, dump_policy, load_policy, parse_policy
from dsv4_tune.registry.ops import OPS, op_default_plan, op_neighbours, op_plan_problems, op_space
from dsv4_tune.registry.workload import OpWorkload, Plan
from dsv4_tune.tuner import op_cases
from dsv4_tune.tuner.candidates import op_coarse_candidates
from dsv4_tune.tuner.grid import Grid, OpGridClass, default_grid

DECODE = {"ratio": 4, "head_dim": 512, "mode": "decode"}


def test_every_op_class_of_the_default_grid_has_a_valid_default_and_space() -> None:
    classes = {o.workload(1).key: o for o in default_grid().ops}
    assert len(classes) == 8
    for o in classes.values():
        w = o.workload(o.rows[0])
        assert not op_plan_problems(w, op_default_plan(w)), w
        space = op_space(w)
        assert space and all(not op_plan_problems(w, p) for p in space)
        for p in op_coarse_candidates(w, 8):
            assert not op_plan_problems(w, p)
            assert all(not op_plan_problems(w, n) and n.variant == p.variant for n in op_neighbours(w, p))


def test_bad_op_parameters_and_plans_are_named() -> None:
    assert "ratio must be one of" in op_plan_problems(OpWorkload.make("compress", 1, ratio=8, head_dim=512,
                                                                      mode="decode"), Plan.make("fused"))[0]
    w = OpWorkload.make("compress", 1, **DECODE)
    assert "unknown variant" in op_plan_problems(w, Plan.make("nope"))[0]
    assert op_plan_problems(w, Plan.make("fused", BLOCK_S=3, num_warps=4, num_stages=1))
    assert "unknown op" in op_plan_problems(OpWorkload.make("rope", 1), Plan.make("fused"))[0]


def _policy_with_ops(tmp_path: Path, segments: list[dict]) -> Path:
    base = json.loads((Path(__file__).resolve().parents[1] / "dsv4_tune/policies/data/sm90-h100.json").read_text())
    base["ops"] = [{"op": "compress", "params": DECODE, "segments": segments}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(base))
    return path


def test_dispatcher_answers_op_classes_by_size_and_falls_back_to_the_default(tmp_path: Path) -> None:
    small = {"variant": "split", "config": {"BLOCK_D": 64, "BLOCK_S": 8, "num_warps": 4, "num_stages": 1}}
    big = {"variant": "fused", "config": {"BLOCK_S": 8, "num_warps": 8, "num_stages": 1}}
    path = _policy_with_ops(tmp_path, [{"max_tokens": 8, "plan": small}, {"max_tokens": None, "plan": big}])
    policy = load_policy(path)
    assert parse_policy(dump_policy(policy)) == policy
    # A split decode config written before ROWS and PDL existed reads as one request per program
    # and two plain launches.
    old = policy.ops[0].segments[0].plan.to_plan().as_dict()
    assert (old["ROWS"], old["PDL"]) == (1, 0)
    d = Dispatcher(policy, str(path))
    for rows, want in ((1, "split"), (8, "split"), (9, "fused"), (5000, "fused")):
        assert d.lookup_op(OpWorkload.make("compress", rows, **DECODE)).variant == want
    other = OpWorkload.make("compress", 4, ratio=128, head_dim=512, mode="decode")
    assert d.lookup_op(other) == op_default_plan(other)
    with pytest.raises(ValueError, match="head_dim must be one of"):
        d.lookup_op(OpWorkload.make("compress", 4, ratio=4, head_dim=256, mode="decode"))
    result = CliRunner().invoke(app, ["lookup-op", "compress", "--rows", "4", "-p", "ratio=4", "-p", "head_dim=512",
                                      "-p", "mode=decode", "--policy", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["plan"]["variant"] == "split"


def test_a_policy_with_an_invalid_op_plan_is_refused(tmp_path: Path) -> None:
    bad = {"variant": "fused", "config": {"BLOCK_S": 3, "num_warps": 8, "num_stages": 1}}
    path = _policy_with_ops(tmp_path, [{"max_tokens": None, "plan": bad}])
    with pytest.raises(PolicyError, match=r"ops\.0: .*segments\.0\.plan: BLOCK_S"):
        load_policy(path)


def test_op_grid_round_trips_and_keys_are_stable() -> None:
    grid = Grid((), (1,), (OpGridClass.make("compress", (1, 2), **DECODE),))
    assert Grid.from_json(json.loads(json.dumps(grid.to_json()))) == grid
    assert workload_key(grid.ops[0].workload(2)) == "compress-head_dim512-mode_decode-ratio4-R2"
    assert "ops" not in Grid((), (1,)).to_json()


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["compress", "qk_norm"])
def test_the_tuner_check_fails_a_plan_that_writes_nothing(op: str, device: str, monkeypatch) -> None:
    w = (OpWorkload.make("compress", 3, ratio=4, head_dim=128, mode="decode") if op == "compress"
         else OpWorkload.make("qk_norm", 2, h_q=4, h_k=1, head_dim_q=128, head_dim_k=128))
    case = op_cases.build_op_case(w, device, seed=3)
    problem, err = case.check_fn(op_default_plan(w))
    assert problem is None and err is not None and err < 0.1
    monkeypatch.setattr(op_cases, "run_compress" if op == "compress" else "run_qk_norm", lambda *a, **k: None)
    problem, err = case.check_fn(op_default_plan(w))
    assert problem is not None and err > 0.1


def test_every_op_of_the_registry_has_a_tuner_runner() -> None:
    for spec in OPS.values():
        assert callable(op_cases.RUNNERS[spec.name])


def test_qk_norm_default_is_valid_for_any_head_dims_that_have_a_config() -> None:
    from dsv4_tune.registry.compressor_space import qk_norm_default, qk_norm_problems, qk_norm_space

    for dq in (4, 8, 64, 100, 128, 192, 512):
        for dk in (4, 8, 128, 512):
            if qk_norm_space(dq, dk):
                assert not qk_norm_problems(dq, dk, qk_norm_default(dq, dk)), (dq, dk)


def test_compressor_entry_points_pick_the_same_variant_as_the_dispatcher_default() -> None:
    from dsv4_tune.serving.compressor import _config

    for ratio in (4, 128):
        for mode in ("decode", "prefill"):
            w = OpWorkload.make("compress", 1, ratio=ratio, head_dim=512, mode=mode)
            variant, cfg = _config(ratio, 512, mode, None, None, 1, Dispatcher())  # no policy: the default
            assert Plan.make(variant, cfg) == op_default_plan(w)
    split_cfg = op_space(OpWorkload.make("compress", 1, ratio=4, head_dim=512, mode="decode"))[-1]
    assert split_cfg.variant == "split"
    assert _config(4, 512, "decode", split_cfg.as_dict(), None, 1, Dispatcher())[0] == "split"
