"""The variant registry's spaces and validity rules (pure Python)."""

from __future__ import annotations

from dsv4_tune import Plan, Workload
from dsv4_tune.registry.variants import VARIANTS, default_plan, plan_problems

DSV4 = [
    Workload(t, h, 128, x)
    for t in (1, 64, 1024)
    for h in (64, 128)
    for x in (0, 64, 512, 1024)
]


def test_every_space_is_valid_non_empty_and_unique() -> None:
    for w in DSV4:
        for name, v in VARIANTS.items():
            space = v.space(w)
            assert space, f"{name} has no config for {w}"
            assert len(set(space)) == len(space)
            for plan in space:
                assert plan_problems(w, plan) == [], plan
            assert plan_problems(w, v.default(w)) == [], (name, w)


def test_rules_prune_what_cannot_run_well() -> None:
    w = Workload(8, 16, 64, 0)
    base = default_plan(w).as_dict()
    assert any("exceeds h_q" in p for p in plan_problems(w, Plan.make("fused", base, BLOCK_H=32)))
    wide = Plan.make("fused", base, BLOCK_H=64, num_warps=4)
    assert any("registers" in p for p in plan_problems(Workload(8, 64, 64), wide))
    assert any("BLOCK_N steps" in p for p in plan_problems(
        w, Plan.make("fused_splitk", base, BLOCK_N=32, SPLIT_K=3, COMBINE_BLOCK_H=8, combine_warps=4)))
    gta = VARIANTS["gather_attend"].default(w).as_dict()
    assert any("needs an extra scope" in p for p in plan_problems(w, Plan.make("gather_attend", gta, ONE_LAUNCH=1)))
    assert any("takes no combine" in p for p in plan_problems(
        w, Plan.make("gather_attend", gta, COMBINE_BLOCK_H=8, combine_warps=4)))
    assert any("unknown config keys ['BLOCK_TK']" in p for p in plan_problems(w, Plan.make("fused", base, BLOCK_TK=64)))
    assert any("missing ['num_stages']" in p for p in plan_problems(
        w, Plan.make("fused", {k: v for k, v in base.items() if k != "num_stages"})))


def test_plans_are_hashable_and_ordered() -> None:
    a = Plan.make("fused", BLOCK_N=64, BLOCK_H=16)
    b = Plan.make("fused", {"BLOCK_H": 16}, BLOCK_N=64)
    assert a == b and hash(a) == hash(b) and a["BLOCK_N"] == 64
    assert str(a) == "fused(BLOCK_H=16, BLOCK_N=64)"


def test_inline_merge_is_cuda_only() -> None:
    """The in-kernel merge's ordering is established for CUDA only: AMD archs refuse it."""
    w = Workload(1, 128, 128, 1024, True, True, True)
    plan = Plan.make("fused_splitk_inline", BLOCK_H=16, BLOCK_N=32, num_warps=8, num_stages=1, SPLIT_K=4)
    assert not plan_problems(w, plan, "sm90")
    for arch in ("gfx942", "gfx950"):
        assert any("CUDA only" in p for p in plan_problems(w, plan, arch))
        assert plan not in VARIANTS["fused_splitk_inline"].space(w, arch)


def test_pdl_is_an_optional_split_k_knob_for_cuda_only() -> None:
    """fused_splitk's PDL: absent reads as 0 (plans and policies from before it stay valid and
    unchanged), 1 launches the combine as a programmatic dependent, only on CUDA sm90+."""
    from dsv4_tune.registry.arch import launch_problems
    from dsv4_tune.registry.launches import kernel_key, plan_kernels

    w = Workload(1, 128, 128, 1024, True, True, True)
    plain = VARIANTS["fused_splitk"].default(w)
    pdl = Plan.make("fused_splitk", plain.as_dict(), PDL=1)
    assert "PDL" not in plain.as_dict() and not plan_problems(w, plain, "sm90")
    assert not plan_problems(w, pdl, "sm90")
    assert any("PDL=2" in p for p in plan_problems(w, Plan.make("fused_splitk", plain.as_dict(), PDL=2)))
    assert any("unknown config keys ['PDL']" in p for p in plan_problems(
        w, Plan.make("fused", default_plan(w).as_dict(), PDL=1)))
    for arch in ("gfx942", "gfx950"):
        assert any("programmatic dependent launch" in p for p in plan_problems(w, pdl, arch))
        assert pdl not in VARIANTS["fused_splitk"].space(w, arch)
    space = VARIANTS["fused_splitk"].space(w, "sm90")
    assert pdl in space and plain in space
    # The constexpr reaches both kernels only on sm90 and only when on; the kernels without it keep
    # their keys (the compile check's rules are keyed by them).
    on = plan_kernels(pdl, w, "sm90")
    assert [dict(c).get("PDL") for _, c, _, _ in on] == [True, True]
    assert all("PDL" not in dict(c) for _, c, _, _ in plan_kernels(plain, w, "sm90"))
    assert all("PDL" not in dict(c) for _, c, _, _ in plan_kernels(pdl, w, "gfx950"))
    # A rule recorded for a plain kernel holds for its PDL twin (griddepcontrol changes no resource).
    plain_split = plan_kernels(plain, w, "sm90")[0]
    unfit = {kernel_key("sm90", plain_split): ["spills 999 B"]}
    assert launch_problems("sm90", on, unfit) == ["_sparse_decode_kernel spills 999 B"]
    assert launch_problems("sm90", on) == []
