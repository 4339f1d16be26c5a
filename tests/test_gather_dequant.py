"""Gather + dequant kernels against the reference (exact: dequantization is exact in BF16)."""

from __future__ import annotations

import itertools

import pytest
import torch

from dsv4_tune.kernels import kv_layout as L
from dsv4_tune.kernels.gather_dequant import BLOCK_TK_CHOICES, NUM_WARPS_CHOICES, GatherConfig
from dsv4_tune.kernels.reference import gather_dequant_ref
from dsv4_tune.serving.gather import gather_dequant, gather_dequant_dual
from dsv4_tune.tuner.inputs import make_scope
from tests.helpers import assert_match, nan_like

pytestmark = pytest.mark.gpu


def _poisoned_outputs(n_tok: int, total: int, device: str, gen: torch.Generator):
    out = nan_like((n_tok, total, 512), torch.bfloat16, device)
    invalid = (torch.rand(n_tok, total, generator=gen) < 0.5).to(device)
    return out, invalid


@pytest.mark.parametrize("page_size", [2, 53, 64, 128])
@pytest.mark.parametrize("s_q", [1, 2])
@pytest.mark.parametrize("fp8", L.FP8_FLAVOURS)
def test_single_scope_matches_reference(page_size, s_q, fp8, device, gen) -> None:
    b, topk = 3, 70  # topk not a multiple of any BLOCK_TK
    sc = make_scope(b, s_q, topk, page_size, fp8=fp8, device=device, bad_ids=True,
                    topk_length=[0, 33, topk], gen=gen)
    out, inv = _poisoned_outputs(b * s_q, topk, device, gen)
    gather_dequant(sc.kv_cache, sc.indices, sc.topk_length, fp8=fp8,
                   config=GatherConfig(64), out=out, invalid=inv)
    ref, ref_inv = gather_dequant_ref(sc.kv_cache, sc.indices, sc.topk_length, fp8=fp8)
    assert_match("gathered", out, ref)
    assert torch.equal(inv, ref_inv)
    assert bool(ref_inv[0:s_q].all()), "topk_length 0 must make the whole batch row invalid"
    assert bool((out[ref_inv] == 0).all())


@pytest.mark.parametrize(("block_tk", "num_warps"), list(itertools.product(BLOCK_TK_CHOICES, NUM_WARPS_CHOICES)))
def test_every_config_in_the_space(block_tk, num_warps, device, gen) -> None:
    sc = make_scope(2, 2, 128, 64, fp8="e4m3fn", device=device, topk_length="random", gen=gen)
    for stages in (1, 2):
        cfg = GatherConfig(block_tk, num_warps, stages)
        out, inv = _poisoned_outputs(4, 128, device, gen)
        gather_dequant(sc.kv_cache, sc.indices, sc.topk_length, fp8="e4m3fn", config=cfg, out=out, invalid=inv)
        ref, ref_inv = gather_dequant_ref(sc.kv_cache, sc.indices, sc.topk_length, fp8="e4m3fn")
        assert_match(f"gathered {cfg}", out, ref)
        assert torch.equal(inv, ref_inv)


@pytest.mark.parametrize(("main_len", "extra_len"), [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("s_q", [1, 2])
def test_dual_scope_one_launch(main_len, extra_len, s_q, device, gen) -> None:
    """Either scope may lack topk_length (the seed's one-launch kernel broke on that)."""
    b = 3
    main = make_scope(b, s_q, 64, 128, fp8="e4m3fn", device=device, bad_ids=True,
                      topk_length=[64, 0, 17] if main_len else None, gen=gen)
    extra = make_scope(b, s_q, 192, 2, fp8="e4m3fn", device=device, bad_ids=True,
                       topk_length=[5, 192, 0] if extra_len else None, gen=gen)
    out, inv = _poisoned_outputs(b * s_q, 256, device, gen)
    gather_dequant_dual(main.kv_cache, main.indices, main.topk_length,
                        extra.kv_cache, extra.indices, extra.topk_length,
                        fp8="e4m3fn", config=GatherConfig(128), out=out, invalid=inv)
    ref, ref_inv = gather_dequant_ref(main.kv_cache, main.indices, main.topk_length,
                                      extra.kv_cache, extra.indices, extra.topk_length, fp8="e4m3fn")
    assert_match("gathered", out, ref)
    assert torch.equal(inv, ref_inv)


def test_two_launches_with_offsets_and_token_ranges_equal_one(device, gen) -> None:
    b, s_q = 5, 1
    main = make_scope(b, s_q, 128, 128, fp8="e4m3fnuz", device=device, gen=gen)
    extra = make_scope(b, s_q, 64, 53, fp8="e4m3fnuz", device=device, gen=gen)
    ref, ref_inv = gather_dequant_ref(main.kv_cache, main.indices, main.topk_length,
                                      extra.kv_cache, extra.indices, extra.topk_length, fp8="e4m3fnuz")
    for t0, t1 in [(0, 2), (2, 5)]:
        out, inv = _poisoned_outputs(t1 - t0, 192, device, gen)
        cfg = GatherConfig(32, 2)
        gather_dequant(main.kv_cache, main.indices, main.topk_length, fp8="e4m3fnuz", config=cfg,
                       out=out, invalid=inv, tokens=(t0, t1))
        gather_dequant(extra.kv_cache, extra.indices, extra.topk_length, fp8="e4m3fnuz", config=cfg,
                       out=out, invalid=inv, k_offset=128, tokens=(t0, t1))
        assert_match(f"tokens {t0}:{t1}", out, ref[t0:t1])
        assert torch.equal(inv, ref_inv[t0:t1])


def test_flavour_changes_the_decoded_values(device, gen) -> None:
    """Reading e4m3fn bytes as e4m3fnuz halves them: the flavour parameter must reach the kernel."""
    sc = make_scope(1, 1, 64, 64, fp8="e4m3fn", device=device, invalid_frac=0.0, topk_length=None, gen=gen)
    fn, _ = gather_dequant(sc.kv_cache, sc.indices, fp8="e4m3fn", config=GatherConfig())
    fnuz, _ = gather_dequant(sc.kv_cache, sc.indices, fp8="e4m3fnuz", config=GatherConfig())
    nope_fn, nope_fnuz = fn[..., :448].float(), fnuz[..., :448].float()
    finite = torch.isfinite(nope_fnuz) & (nope_fn != 0)
    assert bool(finite.any())
    assert torch.allclose(nope_fnuz[finite], nope_fn[finite] / 2)


def test_validate_rejects_ids_out_of_range(device, gen) -> None:
    sc = make_scope(2, 1, 64, 64, fp8="e4m3fn", device=device, gen=gen)
    gather_dequant(sc.kv_cache, sc.indices, sc.topk_length, fp8="e4m3fn", config=GatherConfig(), validate=True)
    bad = sc.indices.clone()
    bad[1, 0, 5] = L.num_slots(sc.kv_cache)
    with pytest.raises(ValueError, match=r"indices: 1 ids are neither -1 nor a slot"):
        gather_dequant(sc.kv_cache, bad, sc.topk_length, fp8="e4m3fn", config=GatherConfig(), validate=True)
    too_long = torch.full_like(sc.topk_length, 65)
    with pytest.raises(ValueError, match="topk_length: values must lie in"):
        gather_dequant(sc.kv_cache, sc.indices, too_long, fp8="e4m3fn", config=GatherConfig(), validate=True)


def test_bad_inputs_name_the_argument(device) -> None:
    kv = L.make_kv_cache(2, 64, device)
    idx = torch.zeros(2, 1, 64, dtype=torch.int32, device=device)
    cfg = GatherConfig()
    cases = [
        (dict(k_cache=kv.view(torch.int8)), "k_cache: expected dtype torch.uint8"),
        (dict(k_cache=kv.reshape(2, 64, 584)), r"k_cache: expected shape \[pages, page_size, 1, 584\]"),
        (dict(k_cache=L.alloc_pool(4, 32, device).view(2, 64, 1, -1)[..., :584]),
         "k_cache: expected the pool view's strides"),
        (dict(indices=idx.long()), "indices: expected dtype torch.int32"),
        (dict(indices=idx[0]), r"indices: expected shape \[b, s_q, topk\]"),
        (dict(topk_length=torch.zeros(3, dtype=torch.int32, device=device)), r"topk_length: expected shape \[2\]"),
        (dict(topk_length=torch.zeros(2, dtype=torch.int64, device=device)), "topk_length: expected dtype torch.int32"),
        (dict(fp8="e5m2"), "fp8: expected one of"),
        (dict(out=torch.empty(2, 64, 512, dtype=torch.float32, device=device)), "out: expected a contiguous bf16"),
    ]
    for override, message in cases:
        args = dict(k_cache=kv, indices=idx, topk_length=None, fp8="e4m3fn", config=cfg) | override
        with pytest.raises(ValueError, match=message):
            gather_dequant(**args)
    with pytest.raises(ValueError, match="BLOCK_TK: expected one of"):
        GatherConfig(BLOCK_TK=100)
    other = "meta" if device == "cpu" else "cpu"
    with pytest.raises(ValueError, match="indices: expected a tensor on"):
        gather_dequant(kv, idx.to(other), fp8="e4m3fn", config=cfg)
