"""Policy files, bucketing, GPU ids, the dispatcher and serving-time policy selection."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dsv4_tune import Plan, Workload, env, sparse_decode
from dsv4_tune.cli import app
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.policies import dispatcher as dispatch_mod
from dsv4_tune.policies.baseline import BASELINE_FILE, build_baseline_policy, seed_decision
from dsv4_tune.policies.dispatcher import Dispatcher, DSV4TuneWarning, get_dispatcher, reset_dispatcher, select_policy
from dsv4_tune.policies.gpu import GpuInfo
from dsv4_tune.policies.schema import (
    GpuSpec,
    PlanSpec,
    Policy,
    PolicyError,
    Provenance,
    Segment,
    WorkloadClass,
    describe_segments,
    dump_policy,
    load_policy,
    parse_policy,
    save_policy,
)
from dsv4_tune.registry.buckets import bucket_index, bucket_tokens, size_category, token_ranges
from dsv4_tune.registry.gpus import gpu_id
from dsv4_tune.registry.variants import VARIANTS, default_plan, plan_problems
from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink
from dsv4_tune.tuner.tolerance import decode_mismatch
from tests.helpers import record_launched_variants

SHIPPED = sorted((Path(dispatch_mod.DATA_DIR)).glob("*.json"))
MI355X = GpuInfo("gfx950", "AMD Instinct MI355X", 256, "hip")
H100 = GpuInfo("sm90", "NVIDIA H100 80GB HBM3", 132, "cuda")


@pytest.fixture(autouse=True)
def _fresh_dispatcher(monkeypatch):
    monkeypatch.delenv(env.POLICY, raising=False)
    reset_dispatcher()
    yield
    reset_dispatcher()


def test_buckets_as_the_spec_states() -> None:
    ts = (-3, 0, 1, 2, 3, 4, 5, 8, 9, 1024, 1025)
    assert [bucket_tokens(t) for t in ts] == [1, 1, 1, 2, 4, 4, 8, 8, 16, 1024, 2048]
    assert [bucket_index(t) for t in (0, 1, 2, 3, 4, 5, 1024, 1025)] == [0, 0, 1, 2, 2, 3, 10, 11]
    assert [size_category(t, 100) for t in (99, 100, 999, 1000, 9999, 10_000)] == [0, 1, 1, 2, 2, 3]
    assert token_ranges(3276, 640) == [(0, 3276)] and len(token_ranges(3277, 640)) == 2


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_policies_round_trip(path: Path, tmp_path: Path) -> None:
    policy = load_policy(path)
    assert dump_policy(policy) == path.read_text(), "shipped files are canonical: regenerate them"
    (tmp_path / "sub").mkdir()
    copy_path = save_policy(policy, tmp_path / "sub" / path.name)
    assert load_policy(copy_path) == policy
    assert [p.name for p in copy_path.parent.iterdir()] == [path.name], "no temp files left behind"


def test_shipped_baseline_is_what_the_generator_builds() -> None:
    built, shipped = build_baseline_policy(), load_policy(BASELINE_FILE)
    assert [c.model_dump() for c in built.classes] == [c.model_dump() for c in shipped.classes]


# The spec's worked table (dispatch_baseline.md section 8, exact T ranges), as an independent oracle:
# (h_q, total topk) -> [(last T of the range, variant, split_k)].
WORKED = {
    (64, 192): [(256, "fused", 1), (4096, "gather_attend", 1)],
    (64, 384): [(256, "fused", 1), (4096, "gather_attend", 1)],
    (64, 640): [(256, "fused", 1), (4096, "gather_attend", 1)],
    (64, 1152): [(4, "fused_splitk", 8), (8, "fused_splitk", 4), (128, "fused_splitk", 2), (4096, "gather_attend", 1)],
    (128, 192): [(8, "fused_splitk", 4), (256, "fused", 1), (4096, "gather_attend", 1)],
    (128, 384): [(8, "fused_splitk", 4), (256, "fused_splitk", 2), (4096, "gather_attend", 1)],
    (128, 640): [(4, "fused_splitk", 8), (256, "fused_splitk", 4), (4096, "gather_attend", 1)],
    (128, 1152): [(4, "fused_splitk", 8), (256, "fused_splitk", 4), (4096, "gather_attend", 1)],
}


def _variant_split(plan: Plan) -> tuple[str, int]:
    return plan.variant, plan.as_dict().get("SPLIT_K", 1)


def test_baseline_policy_reproduces_the_worked_table() -> None:
    d = Dispatcher(load_policy(BASELINE_FILE))
    for (h, total), ranges in WORKED.items():
        lo = 1
        for hi, variant, split in ranges:
            for t in range(lo, hi + 1):
                got = _variant_split(d.lookup(Workload(t, h, 128, total - 128)))
                assert got == (variant, split), f"h={h} total={total} T={t}"
            lo = hi + 1


def test_baseline_policy_reproduces_the_rules_on_a_dense_grid() -> None:
    d = Dispatcher(load_policy(BASELINE_FILE))
    for c in load_policy(BASELINE_FILE).classes:
        w = c.workload()
        for t in [*range(1, 1100), 1500, 3276, 3277, 4096, 8191, 8192, 16384, 100_000]:
            rule = seed_decision(t, w)
            plan = d.lookup(Workload(t, *c.key))
            assert _variant_split(plan) == (rule.variant, rule.split_k), (c.key, t)
            if plan.variant == "gather_attend":
                assert plan["ONE_LAUNCH"] == int(rule.one_launch), (c.key, t)


def test_nearest_class_and_clamping() -> None:
    d = Dispatcher(load_policy(BASELINE_FILE))
    # No class with extra topk 900: the nearest total (1028 -> 1152, not 640) answers.
    w = Workload(2, 128, 128, 900)
    assert d.class_of(w).key == (128, 128, 1024, True, True, True)
    assert d.lookup(w)["SPLIT_K"] == 8
    # Ties go to the smaller total; a single-scope workload never borrows a dual-scope class.
    assert d.class_of(Workload(1, 64, 128, 160)).topk_extra == 64  # 288: 192 and 384 tie
    assert d.class_of(Workload(1, 64, 256, 0)).key == (64, 128, 0, True, True, True)
    # Different flags borrow the class with the nearest total; plans stay valid for the workload.
    no_sink = Workload(64, 128, 128, 512, has_sink=False)
    assert d.class_of(no_sink).topk_extra == 512 and not plan_problems(no_sink, d.lookup(no_sink))
    # No class of that h_q: the built-in default.
    odd = Workload(8, 16, 64, 0)
    assert d.class_of(odd) is None and d.lookup(odd) == default_plan(odd)
    # T beyond the last boundary uses the last segment.
    huge = Workload(10**7, 128, 128, 1024)
    assert d.lookup(huge) == d.lookup(Workload(300, 128, 128, 1024))


def test_borrowed_plans_that_cannot_run_the_workload_fall_back_to_the_default() -> None:
    d = Dispatcher(load_policy(BASELINE_FILE))
    w = Workload(1, 128, 32, 32)  # total 64: the nearest class splits 4 ways with BLOCK_N 32, too many splits
    plan = d.lookup(w)
    assert not plan_problems(w, plan)


def test_gpu_ids_from_the_alias_table() -> None:
    assert gpu_id("sm90", "NVIDIA H20-3e", 78) == "sm90-h20"
    assert gpu_id("sm90", "NVIDIA H20", 78) == "sm90-h20"
    assert gpu_id("sm90", "NVIDIA H200", 132) == "sm90-h200"
    assert gpu_id("sm90", "NVIDIA H100 80GB HBM3", 132) == "sm90-h100"
    assert gpu_id("gfx942", "AMD Instinct MI308X", 80) == "gfx942-mi308x"
    assert gpu_id("gfx942", "", 80) == "gfx942-mi308x"
    assert gpu_id("gfx942", "AMD Instinct MI325X", 304) == "gfx942-mi325x"
    assert gpu_id("gfx942", "AMD Radeon Graphics", 304) == "gfx942-mi300x"
    assert gpu_id("gfx950", "AMD Instinct MI355X", 256) == "gfx950-mi355x"
    assert gpu_id("sm89", "NVIDIA L40S", 142) == "sm89-l40s"
    assert H100.id == "sm90-h100" and MI355X.id == "gfx950-mi355x"


def _notes_for(gpu: GpuInfo) -> tuple[Dispatcher, list[str]]:
    return select_policy(gpu)


def test_selection_order(monkeypatch, tmp_path: Path) -> None:
    d, notes = _notes_for(MI355X)  # exact shipped match, no warning
    assert d.policy is not None and d.policy.gpu.id == "gfx950-mi355x" and not [n for n in notes if "no policy" in n]
    d, notes = _notes_for(GpuInfo("gfx950", "AMD Instinct MI350X", 256, "hip"))  # same arch, one warning
    assert d.policy is not None and len(notes) == 1 and "same arch gfx950" in notes[0]
    d, notes = _notes_for(H100)  # the shipped H100 policy; measured with other tools than CI's: a warning
    assert d.policy is not None and d.policy.gpu.id == "sm90-h100"
    assert all("other tools" in n for n in notes)
    d, notes = _notes_for(GpuInfo("sm89", "NVIDIA L40S", 142, "cuda"))  # nothing for sm89: default + how-to
    assert d.policy is None and len(notes) == 1 and "dsv4-tune sweep --gpu sm89" in notes[0]
    monkeypatch.setenv(env.POLICY, str(BASELINE_FILE))  # another arch: refused, both named
    d, notes = _notes_for(H100)
    assert d.policy is None and "gfx950" in notes[0] and "sm90" in notes[0]
    broken = tmp_path / "broken.json"
    broken.write_text(BASELINE_FILE.read_text()[:500])
    monkeypatch.setenv(env.POLICY, str(broken))
    d, notes = _notes_for(MI355X)
    assert d.policy is None and "broken" in notes[0] and "not JSON" in notes[0]


def test_the_fallback_warning_is_emitted_once() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        get_dispatcher()
        get_dispatcher()
    assert len([w for w in seen if issubclass(w.category, DSV4TuneWarning)]) == 1


def test_a_broken_policy_never_takes_sparse_decode_down(monkeypatch, tmp_path: Path, device) -> None:
    data = json.loads(BASELINE_FILE.read_text())
    data["classes"][0]["segments"][0]["plan"]["variant"] = "warp_speed"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    monkeypatch.setenv(env.POLICY, str(broken))
    gen = torch.Generator().manual_seed(3)
    main = make_scope(2, 1, 64, 64, fp8="e4m3fn", device=device, gen=gen)
    q, sink = make_query(2, 1, 16, device=device, gen=gen), make_sink(16, device=device, gen=gen)
    with pytest.warns(DSV4TuneWarning, match="unknown variant 'warp_speed'"):
        out, lse = sparse_decode(q, main.kv_cache, main.indices, topk_length=main.topk_length, attn_sink=sink,
                                 sm_scale=0.05)
    ref = sparse_decode_ref(q, main.kv_cache, main.indices, topk_length=main.topk_length, attn_sink=sink,
                            sm_scale=0.05, fp8="e4m3fn", out_dtype=torch.float32)
    assert decode_mismatch(out, lse, *ref) is None


def test_validation_names_the_place_in_the_file(tmp_path: Path) -> None:
    data = json.loads(BASELINE_FILE.read_text())
    data["classes"][9]["segments"][1]["plan"]["config"]["BLOCK_H"] = 48
    with pytest.raises(PolicyError, match=r"classes\.9.*segments\.1\.plan: .*BLOCK_H=48 not in"):
        parse_policy(json.dumps(data), "p.json")
    data = json.loads(BASELINE_FILE.read_text())
    data["classes"][2]["segments"][0]["max_tokens"] = None
    with pytest.raises(PolicyError, match="only the last segment may have max_tokens: null"):
        parse_policy(json.dumps(data))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["validate", str(bad)])
    assert result.exit_code == 1 and "bad.json" in result.output
    assert CliRunner().invoke(app, ["validate", str(BASELINE_FILE)]).exit_code == 0


def test_cli_lookup_json_and_diff(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["lookup", "--policy", str(BASELINE_FILE), "--tokens", "64", "--heads", "128",
                                      "--topk-main", "128", "--topk-extra", "1024", "--json"])
    info = json.loads(result.output)
    assert info["plan"]["variant"] == "fused_splitk" and info["plan"]["config"]["SPLIT_K"] == 4
    assert info["bucket"] == 64 and info["thresholds"]
    data = json.loads(BASELINE_FILE.read_text())
    data["classes"][9]["segments"][1]["plan"]["config"]["SPLIT_K"] = 2
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    result = CliRunner().invoke(app, ["diff", str(BASELINE_FILE), str(other), "--max-tokens", "300"])
    assert "T 5-256" in result.output and "SPLIT_K=2" in result.output
    plain = eager_policy().model_copy(update={"classes": [c.model_copy(update={"segments": [
        s.model_copy(update={"eager_plan": None}) for s in c.segments]}) for c in eager_policy().classes]})
    save_policy(eager_policy(), tmp_path / "eager.json")
    save_policy(plain, tmp_path / "plain.json")
    result = CliRunner().invoke(app, ["diff", str(tmp_path / "eager.json"), str(tmp_path / "plain.json"),
                                      "--max-tokens", "8"], terminal_width=250)
    assert "T 1-8" in result.output and "eager calls: fused(" in result.output


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5000) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, (*prefix, i))


BASE = json.loads(BASELINE_FILE.read_text())
BASE_PATHS = list(_paths(BASE))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(BASE_PATHS) - 1), st.booleans(), _JSON), min_size=1, max_size=3))
def test_mutated_policies_give_a_policy_or_a_clear_error(mutations) -> None:
    data = copy.deepcopy(BASE)
    for index, delete, value in mutations:
        path = BASE_PATHS[index]
        if not path:
            data = value
            continue
        parent = data
        try:
            for step in path[:-1]:
                parent = parent[step]
            if delete and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    try:
        policy = parse_policy(json.dumps(data), "mutated.json")
    except PolicyError as e:
        assert str(e).startswith("mutated.json: ")
        return
    d = Dispatcher(policy)  # a policy that parses must compile and answer
    for t in (1, 7, 300):
        assert isinstance(d.lookup(Workload(t, 128, 128, 512)), Plan)


def test_cli_show_lists_every_class() -> None:
    result = CliRunner().invoke(app, ["show", str(BASELINE_FILE)], terminal_width=240)
    assert result.exit_code == 0
    assert result.output.count("128+1024") == 2 and "T 257-781" in result.output


def eager_policy(h: int = 16, topk: int = 64) -> Policy:
    """An sm90 policy of one class whose plan (two launches) and eager plan (one) differ."""
    w = Workload(1, h, topk, 0)
    graph, eager = VARIANTS["fused_splitk"].default(w), VARIANTS["fused"].default(w)
    seg = Segment(max_tokens=None, plan=PlanSpec.of(graph), eager_plan=PlanSpec.of(eager))
    return Policy(gpu=GpuSpec(id="sm90-h100", arch="sm90"), provenance=Provenance(source="test", created="2026-11-25"),
                  classes=[WorkloadClass(h_q=h, topk_main=topk, topk_extra=0, segments=[seg])])


def test_eager_calls_get_the_eager_plan() -> None:
    policy = eager_policy()
    d = Dispatcher(policy)
    seg = policy.classes[0].segments[0]
    w = Workload(4, 16, 64, 0)
    assert d.has_eager and d.lookup(w) == seg.plan.to_plan() and d.lookup(w, eager=True) == seg.eager_plan.to_plan()
    near = Workload(4, 16, 96, 0)  # a borrowed class brings its eager plan along
    assert d.lookup(near, eager=True).variant == "fused" and d.lookup(near).variant == "fused_splitk"
    base = Dispatcher(load_policy(BASELINE_FILE))  # no eager plans: eager calls get the plan
    w = Workload(2, 128, 128, 1024)
    assert not base.has_eager and base.lookup(w, eager=True) == base.lookup(w)
    assert "eager calls: fused(" in describe_segments(policy.classes[0].segments)[0]


def test_a_bad_eager_plan_is_named(tmp_path: Path) -> None:
    data = json.loads(dump_policy(eager_policy()))
    data["classes"][0]["segments"][0]["eager_plan"]["config"]["BLOCK_H"] = 48
    with pytest.raises(PolicyError, match=r"classes\.0.*segments\.0\.eager_plan: .*BLOCK_H=48 not in"):
        parse_policy(json.dumps(data), "p.json")
    data = json.loads((dispatch_mod.DATA_DIR / "sm90-h100.json").read_text())
    seg = data["ops"][0]["segments"][0]
    seg["eager_plan"] = seg["plan"]
    with pytest.raises(PolicyError, match=r"ops\.0.*segments\.0\.eager_plan: op classes have one plan"):
        parse_policy(json.dumps(data))


def test_a_dispatched_eager_call_runs_the_eager_plan(monkeypatch, device, gen) -> None:
    import dsv4_tune.serving.decode as decode_mod

    ran = record_launched_variants(monkeypatch, decode_mod)
    monkeypatch.setattr(dispatch_mod, "_DISPATCHER", Dispatcher(eager_policy()))
    main = make_scope(2, 1, 64, 64, fp8="e4m3fn", device=device, gen=gen)
    q, sink = make_query(2, 1, 16, device=device, gen=gen), make_sink(16, device=device, gen=gen)
    kw = dict(topk_length=main.topk_length, attn_sink=sink, sm_scale=0.05)
    out, lse = sparse_decode(q, main.kv_cache, main.indices, **kw)
    ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8="e4m3fn", out_dtype=torch.float32, **kw)
    # The first call also runs the graph plan once (a later capture must not compile or allocate).
    assert ran == ["fused_splitk", "fused"] and decode_mismatch(out, lse, *ref) is None
    ran.clear()
    out, lse = sparse_decode(q, main.kv_cache, main.indices, **kw)
    assert ran in ([], ["fused"]) and decode_mismatch(out, lse, *ref) is None  # replayed, or the eager plan
