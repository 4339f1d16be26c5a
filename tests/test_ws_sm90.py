"""The warp-specialized sm90 variant (ws_sm90): where the registry lets it run, what this Triton and
device can build, how serving and the compile check treat it where they cannot, and (GPU) its
results against the reference across the knobs."""

from __future__ import annotations

import warnings

import pytest
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

import dsv4_tune.policies.dispatcher as dispatch_mod
import dsv4_tune.serving.decode as decode_mod
from dsv4_tune import Plan, Workload, sparse_decode
from dsv4_tune.errors import DSV4TuneWarning
from dsv4_tune.kernels import catalog
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.kernels.sm90 import GLUON_PROBLEM, _gluon_problem
from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.policies.schema import GpuSpec, PlanSpec, Policy, Provenance, Segment, WorkloadClass
from dsv4_tune.registry.launches import WS_CROSS_KEY, WS_HEADS32_KEY, WS_MERGE_KEY, plan_kernels
from dsv4_tune.registry.scratch import plan_buffers
from dsv4_tune.registry.variants import VARIANTS, default_plan, plan_problems, sweeps, swept_modes, ws_smem_bytes
from dsv4_tune.serving.variants import variant_problem
from dsv4_tune.tuner.candidates import decode_coarse_candidates, neighbours
from dsv4_tune.tuner.crosscompile import KernelSpec, compile_kernel, problems_of
from tests.helpers import nan_like, record_launched_variants
from tests.test_sparse_decode import check_against_reference, make_case

W = Workload(64, 128, 128, 1024)


def ws(**cfg: int) -> Plan:
    base = {"BLOCK_N": 64, "KSTAGES": 2, "STAGED": 0, "PIPE": 0, "SPLIT_K": 1}
    if cfg.get("SPLIT_K", 1) > 1:
        base |= {"COMBINE_BLOCK_H": 8, "combine_warps": 4}
    return Plan.make("ws_sm90", {**base, **cfg})


def test_only_sm90_may_run_it() -> None:
    space = VARIANTS["ws_sm90"].space(W)
    assert space and VARIANTS["ws_sm90"].space(W, "sm90") == space
    for arch in ("gfx942", "gfx950", "interpreter"):
        assert VARIANTS["ws_sm90"].space(W, arch) == []
        assert any("CUDA sm90" in p and arch in p for p in plan_problems(W, space[0], arch))


def test_its_rules_name_the_knob_at_fault() -> None:
    assert plan_problems(W, ws()) == []
    assert ws_smem_bytes(ws(STAGED=1).as_dict()) < 227 * 1024 < ws_smem_bytes(ws(KSTAGES=3).as_dict())
    # Triton 3.6's figures for the one-warpgroup kernels (64-token tiles; 32-token tiles, pipelined)
    assert ws_smem_bytes(ws(SOLO=1).as_dict()) == 206080 and ws_smem_bytes(ws(SOLO=1, BLOCK_N=32).as_dict()) == 187392
    assert plan_problems(W, ws(SOLO=1, BLOCK_N=32, SPLIT_K=8, PDL=1)) == []
    cases = {ws(KSTAGES=3): "shared memory", ws(BLOCK_N=32, STAGED=1): "STAGED=1 needs BLOCK_N=64",
             ws(PIPE=2): "PIPE=2 not in", ws(BLOCK_N=16): "BLOCK_N=16 not in", ws(PDL=1): "PDL=1 needs SPLIT_K > 1",
             ws(PERSIST=2): "PERSIST=2 not in", ws(SPLIT_K=2, PERSIST=1): "PERSIST=1 needs SPLIT_K=1",
             ws(SPLIT_K=5): "SPLIT_K=5 not in", ws(SPLIT_K=4): "", ws(SOLO=2): "SOLO=2 not in",
             ws(SOLO=1, PIPE=1): "SOLO=1 needs KSTAGES=2, STAGED=0, PIPE=0 and no PERSIST",
             ws(SOLO=1, PERSIST=1): "SOLO=1 needs", ws(SOLO=1, KSTAGES=3): "SOLO=1 needs KSTAGES=2",
             ws(CROSS=2): "CROSS=2 not in", ws(CROSS=1, STAGED=1): "CROSS=1 needs h_q a multiple of 128",
             ws(CROSS=1, SOLO=1): "CROSS=1 needs", ws(CROSS=1, BLOCK_N=32, KSTAGES=4): "BLOCK_N=64 (a sub-block each)",
             ws(HEADS32=1): "HEADS32=1 needs SOLO=1", ws(SOLO=1, HEADS32=2): "HEADS32=2 not in"}
    small = Workload(4, 64, 128, 0)  # 2 blocks of 64: SPLIT_K 4 exceeds them
    for plan, message in cases.items():
        problems = plan_problems(small if plan["SPLIT_K"] == 4 else W, plan)
        assert problems and message in problems[0], (plan, problems)
    assert plan_problems(W, ws(CROSS=1, PERSIST=1)) == [] and plan_problems(W, ws(CROSS=1, SPLIT_K=4, PDL=1)) == []
    assert "CROSS=1 needs h_q a multiple of 128" in plan_problems(Workload(64, 64, 128, 1024), ws(CROSS=1))[0]


def test_a_knob_in_not_swept_is_valid_in_plans_but_never_swept(monkeypatch) -> None:
    """A knob in NOT_SWEPT (CROSS was, until a GPU had run it: a cluster kernel that deadlocked would
    hang a sweep) is valid in an explicit plan, but no space holds it and no refine step turns it on."""
    import dsv4_tune.registry.variants as variants_mod

    monkeypatch.setattr(variants_mod, "NOT_SWEPT", frozenset({WS_CROSS_KEY}))
    assert not any(p.as_dict().get("CROSS") for p in VARIANTS["ws_sm90"].space(W))
    for plan in (ws(), ws(PERSIST=1), ws(SPLIT_K=4, COMBINE_BLOCK_H=8, combine_warps=4)):
        assert not any(n.as_dict().get("CROSS") for n in neighbours(plan))
    (one,) = plan_kernels(ws(CROSS=1), W, "sm90")
    assert dict(one[1])["CROSS"] is True and "CROSS" not in dict(plan_kernels(ws(), W, "sm90")[0][1])
    import dsv4_tune.tuner.candidates as candidates_mod

    monkeypatch.setattr(candidates_mod, "variant_problem", lambda variant, *a: None)  # as under Triton 3.6
    coarse = decode_coarse_candidates(W, "sm90")
    assert any(p.variant == "ws_sm90" for p in coarse) and not any(p.as_dict().get("CROSS") for p in coarse)


def test_its_32_head_programs_are_swept_with_its_one_warpgroup_kernel_only(monkeypatch) -> None:
    """HEADS32 (SOLO's programs of 32 query heads, a kernel of its own: HB=32) is swept since an H100
    ran it (2026-12-07): in the space and the small-T coarse stage beside every SOLO plan and nowhere
    else, and a refine step turns it on or off (a ws plan without SOLO that turns it on is refused)."""
    import dsv4_tune.tuner.candidates as candidates_mod

    assert sweeps(WS_HEADS32_KEY)
    assert plan_problems(W, ws(SOLO=1, HEADS32=1)) == [] == plan_problems(W, ws(SOLO=1, BLOCK_N=32, HEADS32=1))
    space = [p.as_dict() for p in VARIANTS["ws_sm90"].space(W)]
    h32 = [c for c in space if c.get(WS_HEADS32_KEY)]
    assert h32 and all(c.get("SOLO") for c in h32)
    assert len(h32) == sum(1 for c in space if c.get("SOLO") and not c.get(WS_HEADS32_KEY))
    assert any(n.as_dict().get(WS_HEADS32_KEY) for n in neighbours(ws(SOLO=1)))
    assert any(not n.as_dict().get(WS_HEADS32_KEY) for n in neighbours(ws(SOLO=1, HEADS32=1)))
    monkeypatch.setattr(candidates_mod, "variant_problem", lambda variant, *a: None)  # as under Triton 3.6
    coarse = [p.as_dict() for p in decode_coarse_candidates(Workload(4, 64, 128, 1024), "sm90")]
    solo_split = [c for c in coarse if c.get("SOLO") and not c.get(WS_MERGE_KEY)]  # (its MERGE: 64 heads only)
    assert sum(1 for c in coarse if c.get(WS_HEADS32_KEY)) == len(solo_split) // 2
    big_t = decode_coarse_candidates(Workload(256, 64, 128, 1024), "sm90")
    assert not any(p.as_dict().get(WS_HEADS32_KEY) for p in big_t)
    (one,) = plan_kernels(ws(SOLO=1, HEADS32=1), W, "sm90")
    assert dict(one[1])["HB"] == 32 and "HB" not in dict(plan_kernels(ws(SOLO=1), W, "sm90")[0][1])


def test_its_cluster_mode_is_swept_in_h128_spaces_coarse_plans_and_refine_steps(monkeypatch) -> None:
    """CROSS is swept (since 2026-12-06, after GPU runs on an H100 and an H200): unstaged CROSS plans
    (plain, persistent, split) in the space and the coarse stage of h_q % 128 == 0 workloads only,
    and the refine step that flips it."""
    import dsv4_tune.tuner.candidates as candidates_mod

    assert sweeps(WS_CROSS_KEY)
    monkeypatch.setattr(candidates_mod, "variant_problem", lambda variant, *a: None)  # as under Triton 3.6
    space = [p.as_dict() for p in VARIANTS["ws_sm90"].space(W)]
    cross = [c for c in space if c.get("CROSS")]
    assert cross and all(c["STAGED"] == 0 and c["BLOCK_N"] == 64 for c in cross)
    assert any(c.get("PERSIST") for c in cross) and any(c["SPLIT_K"] > 1 for c in cross)
    h64 = Workload(64, 64, 128, 1024)
    assert not any(p.as_dict().get("CROSS") for p in VARIANTS["ws_sm90"].space(h64))
    assert any(p.as_dict().get("CROSS") for p in decode_coarse_candidates(W, "sm90"))
    assert not any(p.as_dict().get("CROSS") for p in decode_coarse_candidates(h64, "sm90"))
    assert any(n.as_dict().get("CROSS") for n in neighbours(ws()))


def test_its_kernels_and_buffers() -> None:
    (one,) = plan_kernels(ws(STAGED=1, PIPE=1), W, "sm90")
    assert one[0] == "_ws_decode_kernel" and dict(one[1])["STAGED"] is True and dict(one[1])["PIPE"] is True
    names = [k[0] for k in plan_kernels(ws(SPLIT_K=4), W, "sm90")]
    assert names == ["_ws_decode_kernel", "_combine_kernel"]
    solo, combine = plan_kernels(ws(SPLIT_K=4, SOLO=1, PDL=1), W, "sm90")
    assert solo[0] == "_solo_decode_kernel" and solo[2:] == (4, 1)
    assert set(dict(solo[1])) == {"HAS_LEN", "HAS_EXTRA", "X_HAS_LEN", "HAS_SINK", "SPLIT", "BLOCK_N", "SUB", "PDL"}
    assert dict(solo[1])["SPLIT"] is True and dict(solo[1])["PDL"] is True
    assert combine[0] == "_combine_kernel" and dict(combine[1])["PDL"] is True
    assert plan_buffers(ws(SPLIT_K=4, SOLO=1), W) == plan_buffers(ws(SPLIT_K=4), W)
    (pipe,) = plan_kernels(ws(SOLO=1, BLOCK_N=32), W, "sm90")
    assert pipe[0] == "_solo_pipe_decode_kernel" and dict(pipe[1])["BLOCK_N"] == 32
    assert plan_buffers(ws(), W) == {} and set(plan_buffers(ws(SPLIT_K=4), W)) == {"part_o", "part_lse"}


def merged(**cfg: int) -> Plan:
    """A MERGE plan: split 2 whose pair merges in the kernel (no combine keys)."""
    return Plan.make("ws_sm90", {"BLOCK_N": 64, "KSTAGES": 2, "STAGED": 0, "PIPE": 0, "SPLIT_K": 2, "MERGE": 1, **cfg})


def test_its_split_pair_merge_is_swept() -> None:
    """MERGE (split 2 as one cluster of two CTAs merging over DSMEM): valid at any h_q, staged or not;
    its rule names the knobs it cannot take; one kernel, no combine, no partial buffers, 672 B more
    shared memory; swept since an H100 ran it exact (2026-12-07): in the space and the coarse stage
    staged and not, and a refine step turns it on from a split-2 plan (its combine keys dropped)."""
    assert plan_problems(W, merged()) == [] == plan_problems(Workload(64, 64, 128, 1024), merged(STAGED=1))
    cases = {merged(SPLIT_K=3): "MERGE=1 needs SPLIT_K=2", merged(BLOCK_N=32): "MERGE=1 needs",
             merged(KSTAGES=3): "MERGE=1 needs", merged(PIPE=1): "MERGE=1 needs", merged(PERSIST=1): "MERGE=1 needs",
             merged(CROSS=1): "MERGE=1 needs", merged(PDL=1): "MERGE=1 needs",
             merged(COMBINE_BLOCK_H=8, combine_warps=4): "the in-kernel combine takes no combine config",
             merged(MERGE=2): "MERGE=2 not in", merged(SPLIT_K=1): "MERGE=1 needs SPLIT_K=2"}
    for plan, message in cases.items():
        assert any(message in p for p in plan_problems(W, plan)), (plan, plan_problems(W, plan))
    (one,) = plan_kernels(merged(), W, "sm90")
    assert one[0] == "_ws_decode_kernel" and dict(one[1])["MERGE"] is True and dict(one[1])["SPLIT"] is True
    assert "MERGE" not in dict(plan_kernels(ws(SPLIT_K=2), W, "sm90")[0][1])
    assert plan_buffers(merged(), W) == {}
    assert ws_smem_bytes(merged().as_dict()) == ws_smem_bytes(ws(SPLIT_K=2).as_dict()) + 672
    assert sweeps(WS_MERGE_KEY)
    space = [c for c in (p.as_dict() for p in VARIANTS["ws_sm90"].space(W))
             if c.get(WS_MERGE_KEY) and not c.get("SOLO")]
    assert sorted(c["STAGED"] for c in space) == [0, 1]
    assert all(plan_problems(W, Plan.make("ws_sm90", c)) == [] for c in space)
    turned_on = [n for n in neighbours(ws(SPLIT_K=2, PDL=1)) if n.as_dict().get(WS_MERGE_KEY)]
    assert turned_on and all(plan_problems(W, n) == [] for n in turned_on)
    assert all("COMBINE_BLOCK_H" not in n.as_dict() for n in neighbours(merged()) if n.as_dict().get(WS_MERGE_KEY))
    import dsv4_tune.tuner.candidates as candidates_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(candidates_mod, "variant_problem", lambda variant, *a: None)  # as under Triton 3.6
        coarse = [p.as_dict() for p in decode_coarse_candidates(W, "sm90") if p.as_dict().get(WS_MERGE_KEY)
                  and not p.as_dict().get("SOLO")]
        assert sorted(c["STAGED"] for c in coarse) == [0, 1]


def solo_merged(**cfg: int) -> Plan:
    """A SOLO MERGE plan: split 4 at 32-token tiles, the splits of each output half one cluster."""
    return merged(**{"BLOCK_N": 32, "SPLIT_K": 4, "SOLO": 1, **cfg})


def test_its_one_warpgroup_kernel_merges_splits_in_clusters_of_2_to_8_swept_at_2_and_3() -> None:
    """SOLO's MERGE: an item's 2, 3, 4 or 8 splits of each output half as one cluster, each CTA
    finalizing every SPLIT_K-th 32-column block (what it receives fits its Q buffer: not 6, 12 or 16);
    either tile size, 32 or 64 heads; no PDL (no combine), no combine keys, no partial buffers; the
    kernel takes the cluster size; every split's LSE and a barrier in shared memory.  A plan may name
    any of them; sweeps try clusters of 2 and 3 only (``swept_modes``: on an H100 they beat the shipped
    plan at T = 16, clusters of 4 lost everywhere): in the space (both tile sizes, 32 or 64 heads), the
    small-T coarse stage (64 heads) and the refine steps, which never make a cluster of 4 or 8 and
    turn an explicit one off."""
    for cfg in ({}, {"BLOCK_N": 64}, {"SPLIT_K": 2}, {"SPLIT_K": 3, "HEADS32": 1}, {"SPLIT_K": 8, "BLOCK_N": 64}):
        assert plan_problems(W, solo_merged(**cfg)) == [], cfg
    for cfg, message in (({"SPLIT_K": 6}, "MERGE=1 needs SPLIT_K in (2, 3, 4, 8) with SOLO=1"),
                         ({"SPLIT_K": 16}, "MERGE=1 needs SPLIT_K in"), ({"PDL": 1}, "MERGE=1 needs SPLIT_K in"),
                         ({"COMBINE_BLOCK_H": 8, "combine_warps": 4}, "the in-kernel combine takes no combine config"),
                         ({"SPLIT_K": 1}, "MERGE=1 needs"), ({"KSTAGES": 3}, "SOLO=1 needs KSTAGES=2")):
        problems = plan_problems(W, solo_merged(**cfg))
        assert any(message in p for p in problems), (cfg, problems)
    (one,) = plan_kernels(solo_merged(), W, "sm90")
    assert one[0] == "_solo_pipe_decode_kernel" and dict(one[1])["MERGE"] == 4 and dict(one[1])["SPLIT"] is True
    assert dict(plan_kernels(solo_merged(BLOCK_N=64, SPLIT_K=8), W, "sm90")[0][1])["MERGE"] == 8
    assert plan_buffers(solo_merged(), W) == {}
    solo_split = ws(SOLO=1, BLOCK_N=32, SPLIT_K=4).as_dict()
    assert ws_smem_bytes(solo_merged().as_dict()) == ws_smem_bytes(solo_split) + 4 * 256 + 8
    assert sweeps(WS_MERGE_KEY) and not swept_modes(solo_merged().as_dict()) and swept_modes(merged().as_dict())
    assert swept_modes(solo_merged(SPLIT_K=2).as_dict()) and swept_modes(solo_merged(SPLIT_K=3, BLOCK_N=64).as_dict())
    in_space = [c for c in (p.as_dict() for p in VARIANTS["ws_sm90"].space(W))
                if c.get(WS_MERGE_KEY) and c.get("SOLO")]
    assert {(c["BLOCK_N"], c["SPLIT_K"], c.get("HEADS32", 0)) for c in in_space} == {
        (bn, sk, h) for bn in (32, 64) for sk in (2, 3) for h in (0, 1)}
    assert all(plan_problems(W, Plan.make("ws_sm90", c)) == [] for c in in_space)
    for plan in (ws(SOLO=1, BLOCK_N=32, SPLIT_K=4, PDL=1), merged(), solo_merged(), ws(SOLO=1, SPLIT_K=2, PDL=1)):
        merging = [n for n in neighbours(plan) if n.as_dict().get(WS_MERGE_KEY) and n.as_dict().get("SOLO")]
        assert all(n["SPLIT_K"] in (2, 3) for n in merging), plan
    turned_on = [n for n in neighbours(ws(SOLO=1, SPLIT_K=2, PDL=1)) if n.as_dict().get(WS_MERGE_KEY)]
    assert turned_on and all(plan_problems(W, n) == [] for n in turned_on)  # (PDL and the combine keys dropped)
    turned_off = [n for n in neighbours(solo_merged()) if n["SPLIT_K"] == 4 and n.as_dict().get("SOLO")]
    assert turned_off and all(plan_problems(W, n) == [] for n in turned_off)
    import dsv4_tune.tuner.candidates as candidates_mod

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(candidates_mod, "variant_problem", lambda variant, *a: None)  # as under Triton 3.6
        coarse = [p.as_dict() for p in decode_coarse_candidates(Workload(16, 64, 128, 0), "sm90")]
        solo_merges = {(c["BLOCK_N"], c["SPLIT_K"], c.get("HEADS32", 0)) for c in coarse if c.get("SOLO")
                       and c.get(WS_MERGE_KEY)}
        assert solo_merges == {(32, 2, 0), (32, 3, 0), (64, 2, 0)}  # (3 splits of 64 exceed 128 candidates)


def test_neighbours_step_its_own_knobs() -> None:
    found = neighbours(ws(STAGED=1, PIPE=1))
    changed = [{k for k, v in p.as_dict().items() if ws(STAGED=1, PIPE=1).as_dict().get(k) != v} for p in found]
    assert {"PIPE"} in changed and {"STAGED"} in changed and {"SPLIT_K", "COMBINE_BLOCK_H", "combine_warps"} in changed
    assert {"PERSIST"} in changed  # the optional switches flip too
    split = ws(SPLIT_K=2, PDL=1)  # its unsplit neighbour drops PDL with the combine
    assert any(p["SPLIT_K"] == 1 and not plan_problems(W, p) for p in neighbours(split))
    refused = [plan_problems(W, p) for p in found if plan_problems(W, p)]  # refine_candidates drops these
    why = ("KSTAGES=3 x BLOCK_N=64", "STAGED=1 needs", "PDL=1 needs", "SOLO=1 needs", "CROSS=1 needs",
           "HEADS32=1 needs", "MERGE=1 needs")
    assert refused and all(ps[0].startswith(why) for ps in refused)


def test_the_gluon_check_names_what_this_triton_lacks(monkeypatch) -> None:
    from triton.experimental.gluon import language as gl

    if hasattr(gl, "thread_barrier"):  # a Triton that offers it: take it away
        monkeypatch.delattr(gl, "thread_barrier")
    problem = _gluon_problem()
    assert problem is not None and "thread_barrier" in problem and "3.6" in problem


def test_where_it_cannot_run_it_is_never_swept_and_says_why() -> None:
    plans = decode_coarse_candidates(W, "sm90")
    assert any(p.variant == "ws_sm90" for p in plans) == (GLUON_PROBLEM is None)
    assert "CUDA sm90" in variant_problem("ws_sm90", torch.device("cpu"))
    assert variant_problem("fused", torch.device("cpu")) is None


def test_its_one_warpgroup_plans_are_coarse_candidates_at_small_t_only(monkeypatch) -> None:
    import dsv4_tune.tuner.candidates as candidates_mod

    monkeypatch.setattr(candidates_mod, "variant_problem", lambda variant, *a: None)  # as under Triton 3.6
    for t, expected in ((4, {1, 2, 4, 8, 16}), (64, {1, 2, 4, 8, 16}), (128, set())):
        solo = [p for p in decode_coarse_candidates(Workload(t, 128, 128, 1024), "sm90") if p.as_dict().get("SOLO")
                and not p.as_dict().get(WS_MERGE_KEY)]  # (its MERGE: test_its_one_warpgroup_kernel_merges_...)
        for bn in (32, 64):
            assert {p["SPLIT_K"] for p in solo if p["BLOCK_N"] == bn} == expected, (t, bn)
        assert all(bool(p.as_dict().get("PDL")) == (p["SPLIT_K"] > 1) for p in solo)


def test_where_gluon_is_there_it_still_needs_e4m3fn_pools_and_an_sm90_gpu(monkeypatch) -> None:
    import dsv4_tune.serving.variants as variants_mod

    monkeypatch.setattr(variants_mod, "GLUON_PROBLEM", None)  # as under Triton 3.6
    assert variant_problem("ws_sm90") is None
    assert "e4m3fn pools, not e4m3fnuz" in variant_problem("ws_sm90", None, "e4m3fnuz")
    assert "here tensors are on cpu" in variant_problem("ws_sm90", torch.device("cpu"))


@pytest.mark.parametrize("solo", [0, 1])
def test_the_compile_check_skips_a_kernel_this_triton_cannot_build(monkeypatch, solo) -> None:
    (launch,) = plan_kernels(ws(SOLO=solo), W, "sm90")
    monkeypatch.setitem(catalog.UNBUILDABLE, launch[0], "Triton 9.9's Gluon lacks it")
    row = compile_kernel(KernelSpec("sm90", launch))
    assert row["status"] == "skipped" and row["error"] == "Triton 9.9's Gluon lacks it" and problems_of(row) == []


def _ws_policy(h: int, topk: int) -> Policy:
    seg = Segment(max_tokens=None, plan=PlanSpec.of(ws()))
    return Policy(gpu=GpuSpec(id="sm90-h100", arch="sm90"), provenance=Provenance(source="test", created="2026-12-05"),
                  classes=[WorkloadClass(h_q=h, topk_main=topk, topk_extra=0, segments=[seg])])


def test_a_policy_that_picks_it_is_served_by_the_default_where_it_cannot_run(monkeypatch, device, gen) -> None:
    if variant_problem("ws_sm90", torch.device(device)) is None:
        pytest.skip("ws_sm90 runs here: the fallback is not taken")
    ran = record_launched_variants(monkeypatch, decode_mod)
    monkeypatch.setattr(dispatch_mod, "_DISPATCHER", Dispatcher(_ws_policy(16, 64)))
    monkeypatch.setattr(decode_mod, "_FELL_BACK", set())
    case = make_case(device, gen, b=2, h=16, topk=64, sink="finite")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, lse = case.run(None)
        case.run(None)
    check_against_reference("fallback", out, lse, *case.ref)
    assert set(ran) == {default_plan(case.workload).variant}
    said = [w for w in caught if issubclass(w.category, DSV4TuneWarning)]
    assert len(said) == 1 and "ws_sm90 cannot run here" in str(said[0].message)


def test_an_explicit_plan_where_it_cannot_run_is_refused(device, gen) -> None:
    if variant_problem("ws_sm90", torch.device(device)) is None:
        pytest.skip("ws_sm90 runs here")
    case = make_case(device, gen, b=1, h=16, topk=64)
    with pytest.raises(ValueError, match="plan: ws_sm90: a warp-specialized Gluon kernel for CUDA sm90"):
        sparse_decode(case.q, case.main.kv_cache, case.main.indices, plan=ws(), **case.kw)


def _knob_case(device, gen, s_q: int, page: int, x_page: int, h: int = 128):
    """Three rows of lengths 0, 57 and 100 (+ random extra lengths), a row with no valid candidate."""
    case = make_case(device, gen, b=3, s_q=s_q, h=h, topk=100, page=page, x_topk=300, x_page=x_page,
                     length=[0, 57, 100], x_length="random")
    case.main.indices[0, 0] = -1  # a row with no valid candidate in either scope
    case.extra.indices[0, 0] = -1
    case.ref = sparse_decode_ref(case.q, case.main.kv_cache, case.main.indices, fp8="e4m3fn",
                                 out_dtype=torch.float32, **case.kw)
    return case


KNOB_CASES = [(3, 61, 2), (1, 2, 64), (2, 64, 61)]


@pytest.mark.gpu
@pytest.mark.gpu_only
@pytest.mark.parametrize(("s_q", "page", "x_page"), KNOB_CASES)
def test_every_knob_against_the_reference(s_q, page, x_page, device, gen) -> None:
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    case = _knob_case(device, gen, s_q, page, x_page)
    for plan in (ws(), ws(STAGED=1), ws(PIPE=1), ws(STAGED=1, PIPE=1), ws(BLOCK_N=32, KSTAGES=4, PIPE=1),
                 ws(SPLIT_K=3, STAGED=1, PIPE=1), ws(SPLIT_K=3, STAGED=1, PIPE=1, PDL=1),
                 ws(BLOCK_N=32, KSTAGES=3, SPLIT_K=12)):  # 13 steps of 32
        case.check(plan)


@pytest.mark.gpu
@pytest.mark.gpu_only
@pytest.mark.parametrize(("s_q", "page", "x_page"), KNOB_CASES)
def test_the_one_warpgroup_kernel_against_the_reference(s_q, page, x_page, device, gen) -> None:
    """SOLO: up to 2 main tiles and 5 extra tiles a row (4 and 10 at 32 tokens), so tiles come from
    either scope in every ring position (a row of length 0 starts in the extra scope); split 6 ways
    (128 each) the last two splits have none, split 12 at 32 tokens five have none."""
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    case = _knob_case(device, gen, s_q, page, x_page)
    for plan in (ws(SOLO=1), ws(SOLO=1, SPLIT_K=3), ws(SOLO=1, SPLIT_K=3, PDL=1), ws(SOLO=1, SPLIT_K=6),
                 ws(SOLO=1, BLOCK_N=32), ws(SOLO=1, BLOCK_N=32, SPLIT_K=3, PDL=1), ws(SOLO=1, BLOCK_N=32, SPLIT_K=12)):
        case.check(plan)


@pytest.mark.gpu
@pytest.mark.gpu_only
@pytest.mark.parametrize(("s_q", "page", "x_page", "h"), [(*KNOB_CASES[0], 128), (*KNOB_CASES[1], 40)])
def test_its_32_head_programs_against_the_reference(s_q, page, x_page, h, device, gen) -> None:
    """HEADS32: the knob cases with programs of 32 query heads (the wgmma's other 32 rows never
    loaded, never stored); h_q = 40 leaves a last block of 8 heads."""
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    case = _knob_case(device, gen, s_q, page, x_page, h=h)
    for plan in (ws(SOLO=1, HEADS32=1), ws(SOLO=1, SPLIT_K=3, PDL=1, HEADS32=1),
                 ws(SOLO=1, BLOCK_N=32, HEADS32=1), ws(SOLO=1, BLOCK_N=32, SPLIT_K=12, PDL=1, HEADS32=1)):
        case.check(plan)


@pytest.mark.gpu
@pytest.mark.gpu_only
def test_a_persistent_grid_loops_over_the_items(monkeypatch, device, gen) -> None:
    """PERSIST=1 on 5 programs: each does 3-4 of the 18 (head block, token) items, rows with no
    candidate among them, so the ring, P and output hand-offs run on across items."""
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    import dsv4_tune.kernels.sm90.decode as ws_decode

    monkeypatch.setattr(ws_decode, "_multiprocessors", lambda index: 5)
    case = make_case(device, gen, b=3, s_q=3, h=128, topk=100, page=61, x_topk=300, x_page=2,
                     length=[0, 57, 100], x_length="random")
    case.main.indices[1, 2] = -1  # a token with no valid candidate between tokens that have some
    case.extra.indices[1, 2] = -1
    case.ref = sparse_decode_ref(case.q, case.main.kv_cache, case.main.indices, fp8="e4m3fn",
                                 out_dtype=torch.float32, **case.kw)
    for plan in (ws(PERSIST=1), ws(STAGED=1, PIPE=1, PERSIST=1), ws(BLOCK_N=32, KSTAGES=4, PIPE=1, PERSIST=1),
                 ws(BLOCK_N=32, KSTAGES=3, PERSIST=1)):
        case.check(plan)


@pytest.mark.gpu
@pytest.mark.gpu_only
@pytest.mark.parametrize(("s_q", "page", "x_page"), KNOB_CASES)
def test_two_ctas_of_a_cluster_share_each_tile(monkeypatch, s_q, page, x_page, device, gen) -> None:
    """CROSS: each CTA of a token's pair converts half of every tile's rows and sends them to the other;
    the ring's hand-offs then span both CTAs (unsplit, split, PIPE, and a persistent grid
    of 5 SMs, rounded down to 4 programs: two clusters looping over 9 item pairs)."""
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    import dsv4_tune.kernels.sm90.decode as ws_decode

    monkeypatch.setattr(ws_decode, "_multiprocessors", lambda index: 5)
    case = _knob_case(device, gen, s_q, page, x_page)
    for plan in (ws(CROSS=1), ws(CROSS=1, PIPE=1), ws(CROSS=1, SPLIT_K=3), ws(CROSS=1, SPLIT_K=3, PDL=1),
                 ws(CROSS=1, PERSIST=1), ws(CROSS=1, PIPE=1, PERSIST=1)):
        case.check(plan)


@pytest.mark.gpu
@pytest.mark.gpu_only
@pytest.mark.parametrize(("s_q", "page", "x_page"), KNOB_CASES)
def test_a_split_pair_merges_in_a_cluster(s_q, page, x_page, device, gen) -> None:
    """MERGE: an item's two splits run as one cluster of two CTAs and merge over DSMEM, each CTA
    finalizing one half of the columns (rows whose second split is empty, a row with no valid
    candidate, +-inf sinks); the output is split 2 with its combine's, bit for bit."""
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    case = _knob_case(device, gen, s_q, page, x_page)
    for plan in (merged(), merged(STAGED=1)):
        case.check(plan)
        out, lse = case.run(plan)
        combined, combined_lse = case.run(ws(SPLIT_K=2, STAGED=plan["STAGED"]))
        assert torch.equal(out, combined) and torch.equal(lse, combined_lse), plan


@pytest.mark.gpu
@pytest.mark.gpu_only
@pytest.mark.parametrize(("s_q", "page", "x_page"), KNOB_CASES)
def test_the_one_warpgroup_kernel_merges_its_splits_in_a_cluster(s_q, page, x_page, device, gen) -> None:
    """SOLO's MERGE: the splits of each output half run as one cluster of 2, 3, 4 or 8 CTAs and merge
    over DSMEM (split 8 of 400 candidates at 32 tokens, two tiles a split: the last split has none; rows
    with no valid candidate, +-inf sinks); the output is the same split with the combine's, bit for bit."""
    if variant_problem("ws_sm90", torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)))
    case = _knob_case(device, gen, s_q, page, x_page)
    for plan in (solo_merged(), solo_merged(SPLIT_K=2, BLOCK_N=64), solo_merged(SPLIT_K=3, HEADS32=1),
                 solo_merged(SPLIT_K=8, HEADS32=1)):
        case.check(plan)
        out, lse = case.run(plan)
        cfg = {k: v for k, v in plan.as_dict().items() if k != WS_MERGE_KEY}
        combined, combined_lse = case.run(Plan.make("ws_sm90", {**cfg, "COMBINE_BLOCK_H": 8, "combine_warps": 4}))
        assert torch.equal(out, combined) and torch.equal(lse, combined_lse), plan


@triton.jit
def _late_copy(src, dst, n, WAIT_NS: tl.constexpr, BLOCK: tl.constexpr):
    """Let a programmatic dependent start at once, then spin ``WAIT_NS`` ns before copying ``src`` into
    ``dst``: a dependent that reads ``dst`` before waiting for this kernel reads it unwritten."""
    gdc_launch_dependents()
    t0 = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    t = t0
    while t - t0 < WAIT_NS:
        t = tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


@pytest.mark.gpu
@pytest.mark.gpu_only
def test_launched_early_it_waits_for_the_kernel_that_writes_its_query(device, gen) -> None:
    """Where PDL is on, the attention kernel is a programmatic dependent of whatever kernel precedes it
    (its launch overlaps that kernel's end) and waits for it before its first global access: here that
    kernel lets dependents start at once and writes Q 5 ms later, so reading Q early reads NaN.  (At
    50 us the test passed on an H100 with the waits compiled out, 2026-12-07: the host's own path from
    the writer's launch to the attention kernel's took longer than the writer's delay.)"""
    from dsv4_tune.runtime.target import pdl_enabled

    if variant_problem("ws_sm90", torch.device(device)) or not pdl_enabled(torch.device(device)):
        pytest.skip(variant_problem("ws_sm90", torch.device(device)) or "PDL is off")
    case = _knob_case(device, gen, 1, 64, 61)
    real = case.q
    for plan in (ws(), ws(SOLO=1), ws(SOLO=1, BLOCK_N=32, SPLIT_K=3, PDL=1), ws(CROSS=1), ws(STAGED=1, PIPE=1)):
        case.q = torch.full_like(real, float("nan"))
        case.run(plan)  # compiled before the order below (the run reads Q, never writes it)
        # The outputs poisoned before the writer, so the writer is the kernel right before the call's.
        out = nan_like((*real.shape[:3], 512), torch.bfloat16, device)
        lse = nan_like((real.shape[0], real.shape[2], real.shape[1]), torch.float32, device)
        _late_copy[(triton.cdiv(real.numel(), 4096),)](real, case.q, real.numel(), WAIT_NS=5_000_000, BLOCK=4096)
        sparse_decode(case.q, case.main.kv_cache, case.main.indices, plan=plan, out=(out, lse), **case.kw)
        check_against_reference(f"{plan} after a late writer", out, lse, *case.ref)
