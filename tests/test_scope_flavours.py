"""The FP8 flavour of each KV scope (issue 30): an engine's sliding-window pool and its compressed
pool may hold different flavours (gfx942: e4m3fnuz and OCP e4m3fn).  Every pair against the
reference on each kernel path; the launches, rules, tuner check and cross-compile that cover
gfx942's mixed pair."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch

import dsv4_tune.serving.torch_ops  # noqa: F401  (registers torch.ops.dsv4_tune.*)
from dsv4_tune import Plan, Workload, sparse_decode
from dsv4_tune.compat import flash_mla
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.registry import plans as registry_plans
from dsv4_tune.registry.layout import FP8_FLAVOURS, fp8_pair, fp8_pairs_for_arch
from dsv4_tune.registry.variants import VARIANTS, plan_problems
from dsv4_tune.tuner.grid import GridClass
from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink
from dsv4_tune.tuner.sweep import mixed_failures
from dsv4_tune.tuner.tolerance import decode_mismatch
from tests.test_sparse_decode import check_against_reference

PAIRS = list(itertools.product(FP8_FLAVOURS, repeat=2))
W = Workload(1, 16, 32, 40, True, True, True)
PLANS = [
    VARIANTS["fused"].default(W),
    Plan.make("fused_splitk", VARIANTS["fused"].default(W).as_dict(), SPLIT_K=2, COMBINE_BLOCK_H=8, combine_warps=4),
    *(Plan.make("gather_attend", VARIANTS["gather_attend"].default(W).as_dict(), ONE_LAUNCH=one) for one in (1, 0)),
]


@pytest.mark.gpu
@pytest.mark.parametrize("pair", PAIRS, ids="+".join)
def test_each_scope_decodes_in_its_own_flavour(pair, device, gen) -> None:
    b, s_q, h = 2, 1, 16
    main = make_scope(b, s_q, 32, 61, fp8=pair[0], device=device, gen=gen)
    extra = make_scope(b, s_q, 40, 2, fp8=pair[1], device=device, gen=gen)
    q, sink = make_query(b, s_q, h, device=device, gen=gen), make_sink(h, device=device, gen=gen)
    kw = dict(topk_length=main.topk_length, extra_k_cache=extra.kv_cache, extra_indices=extra.indices,
              extra_topk_length=extra.topk_length, attn_sink=sink, sm_scale=512**-0.5)
    ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8=pair, out_dtype=torch.float32, **kw)
    for plan in PLANS:
        assert not plan_problems(W, plan), plan
        out = (torch.full((b, s_q, h, 512), float("nan"), dtype=torch.bfloat16, device=device),
               torch.full((b, h, s_q), float("nan"), device=device))
        sparse_decode(q, main.kv_cache, main.indices, plan=plan, fp8=pair, out=out, **kw)
        check_against_reference(f"{pair} {plan}", *out, *ref)
    meta = flash_mla.get_mla_metadata()[0]
    got = flash_mla.flash_mla_with_kvcache(
        q, main.kv_cache, None, None, 512, meta, is_fp8_kvcache=True, indices=main.indices, attn_sink=sink,
        extra_k_cache=extra.kv_cache, extra_indices_in_kvcache=extra.indices, topk_length=main.topk_length,
        extra_topk_length=extra.topk_length, fp8=pair)
    check_against_reference(f"{pair} compat", *got, *ref)
    got = torch.ops.dsv4_tune.sparse_decode(q, main.kv_cache, main.indices, main.topk_length, extra.kv_cache,
                                            extra.indices, extra.topk_length, sink, kw["sm_scale"], pair[0], pair[1])
    check_against_reference(f"{pair} custom op", *got, *ref)
    if pair[0] != pair[1]:  # one flavour for both scopes reads one pool about 1.87x off: the test can tell
        wrong = sparse_decode(q, main.kv_cache, main.indices, plan=PLANS[0], fp8=pair[0], **kw)
        assert decode_mismatch(*wrong, *ref) is not None


def test_a_call_names_one_flavour_or_a_pair() -> None:
    assert fp8_pair(None, "e4m3fnuz") == ("e4m3fnuz", "e4m3fnuz")
    assert fp8_pair("e4m3fn", "e4m3fnuz") == ("e4m3fn", "e4m3fn")
    assert fp8_pair(("e4m3fnuz", "e4m3fn"), "e4m3fn") == ("e4m3fnuz", "e4m3fn")
    for bad in (("e4m3fn",), ("e4m3fn", "e5m2"), "fp8"):
        with pytest.raises(ValueError, match="fp8: expected"):
            fp8_pair(bad, "e4m3fn")


def test_gfx942_builds_and_rules_the_mixed_pair_too() -> None:
    """Only gfx942 pairs flavours (SWA e4m3fnuz + compressed e4m3fn); its two-scope launches are
    listed in both pairs, so the compile check builds them and a rule on the mixed one prunes."""
    assert fp8_pairs_for_arch("gfx942") == (("e4m3fnuz", "e4m3fnuz"), ("e4m3fnuz", "e4m3fn"))
    assert fp8_pairs_for_arch("sm90") == fp8_pairs_for_arch("gfx950") == (("e4m3fn", "e4m3fn"),)
    for plan in PLANS:
        x_fp8 = {dict(k[1]).get("X_FP8") for k in registry_plans.kernels(plan, W, "gfx942")}
        assert x_fp8 == {None, "e4m3fn"} or plan.as_dict().get("ONE_LAUNCH") == 0, plan
        assert all("X_FP8" not in dict(k[1]) for k in registry_plans.kernels(plan, W, "sm90"))
        one_scope = Workload(1, 16, 32, 0, True, False, True)
        assert all("X_FP8" not in dict(k[1]) for k in registry_plans.kernels(plan, one_scope, "gfx942"))
    per_scope = {dict(k[1])["FP8"] for k in registry_plans.kernels(PLANS[3], W, "gfx942") if "FP8" in dict(k[1])}
    assert per_scope == {"e4m3fnuz", "e4m3fn"}  # one gather launch per scope, each in its flavour
    from dsv4_tune.registry.launches import kernel_key

    mixed = next(k for k in registry_plans.kernels(PLANS[0], W, "gfx942") if dict(k[1]).get("X_FP8"))
    unfit = {kernel_key("gfx942", mixed): ["spills 9 VGPRs"]}
    assert any("spills" in p for p in plan_problems(W, PLANS[0], "gfx942", unfit))


def test_the_tuner_rejects_a_plan_wrong_for_mixed_pools(monkeypatch) -> None:
    """A sweep in e4m3fnuz pools (gfx942) checks two-scope plans with the mixed pair as well."""
    import dsv4_tune.kernels.fused_attention as fused

    cls = GridClass(16, 32, 40, page_main=61, page_extra=2)
    assert mixed_failures(cls, 1, "cpu", 0, "e4m3fnuz", PLANS[:1]) == {}
    assert mixed_failures(cls, 1, "cpu", 0, "e4m3fn", PLANS[:1]) == {}  # no mixed pair elsewhere
    monkeypatch.setattr(fused, "extra_mode", lambda modes, has_extra: "")  # both scopes in main's flavour
    (status, error, _), = mixed_failures(cls, 1, "cpu", 0, "e4m3fnuz", PLANS[:1]).values()
    assert status == "mismatch" and "pools e4m3fnuz + e4m3fn" in error


def test_gfx942_cross_compiles_the_mixed_pair() -> None:
    """The fused kernel and the one-launch gather, built for gfx942 in the mixed pair, convert from
    both FP8 types (and only from fnuz in gfx942's own pair).  In a fresh process: compiled kernels."""
    script = """
import json
from dsv4_tune import Plan, Workload
from dsv4_tune.registry.launches import plan_kernels
from dsv4_tune.tuner.crosscompile import KernelSpec, build
w = Workload(1, 16, 32, 40, True, True, True)
out = {}
from dsv4_tune.registry.variants import VARIANTS
for plan in (VARIANTS["fused"].default(w), Plan.make("gather_attend", VARIANTS["gather_attend"].default(w).as_dict(),
                                                     ONE_LAUNCH=1)):
    for pair in (("e4m3fnuz", "e4m3fnuz"), ("e4m3fnuz", "e4m3fn")):
        ttir = build(KernelSpec("gfx942", plan_kernels(plan, w, "gfx942", pair)[0])).asm["ttir"]
        out[f"{plan.variant}:{pair[1]}"] = sorted({t for t in ("f8E4M3FNUZ", "f8E4M3FN>") if t in ttir})
print(json.dumps(out))
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    fnuz, both = ["f8E4M3FNUZ"], ["f8E4M3FN>", "f8E4M3FNUZ"]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "fused:e4m3fnuz": fnuz, "fused:e4m3fn": both, "gather_attend:e4m3fnuz": fnuz, "gather_attend:e4m3fn": both}
