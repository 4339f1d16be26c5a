"""Fused Q/K RMSNorm against the fp64 reference (fresh random inputs every run)."""

from __future__ import annotations

import pytest
import torch

from dsv4_tune.kernels.reference import qk_norm_ref
from dsv4_tune.registry.compressor_space import qk_norm_default, qk_norm_problems, qk_norm_space
from dsv4_tune.registry.launches import qk_norm_launch
from dsv4_tune.serving.qk_norm import qk_norm
from tests.helpers import assert_match, nan_like

pytestmark = pytest.mark.gpu


def _tol(dtype: torch.dtype) -> dict[str, float]:
    """fp32: a few ulps; bf16: one bf16 ulp of the result (RNE, so at most half of it plus fp32 noise)."""
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-6, "rtol": 2**-8 + 1e-5}


def _heads(t: int, h: int, d: int, dtype: torch.dtype, device: str, gen: torch.Generator, spread: bool) -> torch.Tensor:
    """``[t, h, d]``; with ``spread`` a strided view (a slice of wider rows, heads not adjacent)."""
    if not spread:
        return (torch.randn(t, h, d, generator=gen) * 3).to(device, dtype)
    base = (torch.randn(t, 2 * h + 1, d + 16, generator=gen) * 3).to(device, dtype)
    return base[:, 1::2, 8:8 + d]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("weights", "spread"), [((True, True), False), ((False, False), True), ((True, False), True)])
@pytest.mark.parametrize(("h_q", "dq", "h_k", "dk"), [(8, 512, 1, 512), (3, 192, 2, 64), (5, 128, 1, 100)])
def test_matches_reference(h_q, dq, h_k, dk, weights, spread, dtype, device, gen) -> None:
    t = 7
    q = _heads(t, h_q, dq, dtype, device, gen, spread)
    k = _heads(t, h_k, dk, dtype, device, gen, spread)
    wq = (torch.rand(dq, generator=gen) + 0.5).to(device) if weights[0] else None
    wk = (torch.rand(dk, generator=gen) + 0.5).to(device) if weights[1] else None
    out_q, out_k = nan_like(q.shape, dtype, device), nan_like(k.shape, dtype, device)
    got_q, got_k = qk_norm(q, k, wq, wk, out_q=out_q, out_k=out_k)
    assert got_q is out_q and got_k is out_k
    ref_q, ref_k = qk_norm_ref(q, k, wq, wk)
    assert_match("q", got_q.float(), ref_q.to(device), **_tol(dtype))
    assert_match("k", got_k.float(), ref_k.to(device), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_in_place_and_mixed_output_dtype(dtype, device, gen) -> None:
    q = _heads(9, 16, 512, dtype, device, gen, spread=True)
    k = _heads(9, 1, 512, dtype, device, gen, spread=False)
    wq = (torch.rand(512, generator=gen) + 0.5).to(device)
    ref_q, ref_k = qk_norm_ref(q, k, wq, None, eps=1e-5)
    k_f32 = nan_like(k.shape, torch.float32, device)
    got_q, got_k = qk_norm(q, k, wq, None, eps=1e-5, out_q=q, out_k=k_f32, config={"ROWS": 2, "num_warps": 4})
    assert got_q is q
    assert_match("q in place", q.float(), ref_q.to(device), **_tol(dtype))
    assert_match("k as fp32", got_k, ref_k.to(device), **_tol(torch.float32))


def test_bf16_output_is_round_to_nearest_even(device, gen) -> None:
    """The bf16 result equals the fp32 result rounded by torch (RNE), not truncated (interpreter trap)."""
    q = _heads(16, 4, 256, torch.float32, device, gen, spread=False)
    k = _heads(16, 1, 256, torch.float32, device, gen, spread=False)
    f32_q, _ = qk_norm(q, k)
    bf_q, _ = qk_norm(q, k, out_q=torch.empty(q.shape, dtype=torch.bfloat16, device=device))
    assert torch.equal(bf_q, f32_q.bfloat16())


def test_every_config_of_the_space(device, gen) -> None:
    q = _heads(5, 7, 512, torch.bfloat16, device, gen, spread=True)  # 35 rows: not a multiple of ROWS
    k = _heads(5, 1, 512, torch.bfloat16, device, gen, spread=False)
    ref_q, ref_k = qk_norm_ref(q, k)
    for cfg in qk_norm_space(512, 512):
        got_q, got_k = qk_norm(q, k, config=cfg)
        assert_match(f"q {cfg}", got_q.float(), ref_q.to(device), **_tol(torch.bfloat16))
        assert_match(f"k {cfg}", got_k.float(), ref_k.to(device), **_tol(torch.bfloat16))


def test_space_functions_and_empty_input(device) -> None:
    for dq, dk in [(512, 512), (128, 64), (192, 192)]:
        space = qk_norm_space(dq, dk)
        assert qk_norm_default(dq, dk) in space and all(not qk_norm_problems(dq, dk, c) for c in space)
        assert qk_norm_launch((1, 4, dq), (1, 1, dk), qk_norm_default(dq, dk))[0] == "_qk_norm_kernel"
    assert qk_norm_problems(512, 512, {"ROWS": 16, "num_warps": 1})
    assert qk_norm_problems(512, 512, {"ROWS": 3, "num_warps": 1})
    q = torch.empty(0, 4, 512, dtype=torch.bfloat16, device=device)
    k = torch.empty(0, 1, 512, dtype=torch.bfloat16, device=device)
    got_q, got_k = qk_norm(q, k)
    assert got_q.shape == q.shape and got_k.shape == k.shape


def test_bad_inputs_name_the_argument(device) -> None:
    q = torch.zeros(2, 4, 64, dtype=torch.bfloat16, device=device)
    k = torch.zeros(2, 1, 32, dtype=torch.bfloat16, device=device)
    cases = [
        (dict(q=q[0]), r"q: expected a tensor \[T, heads, head_dim\]"),
        (dict(q=q.half()), "q: expected dtype torch.bfloat16 or torch.float32"),
        (dict(k=k[:1]), "k: expected 2 tokens like q"),
        (dict(q=q.transpose(1, 2)), "q: expected a contiguous last dim"),
        (dict(q_weight=torch.ones(32, device=device)), r"q_weight: expected a contiguous float32 tensor \[64\]"),
        (dict(k_weight=torch.ones(32, dtype=torch.bfloat16, device=device)), "k_weight: expected a contiguous float32"),
        (dict(out_q=torch.zeros(2, 4, 32, dtype=torch.bfloat16, device=device)), r"out_q: expected shape \(2, 4, 64\)"),
        (dict(config={"ROWS": 5, "num_warps": 4}), "config: ROWS"),
    ]
    for override, message in cases:
        kw = dict(q=q, k=k) | override
        with pytest.raises(ValueError, match=message):
            qk_norm(**kw)
