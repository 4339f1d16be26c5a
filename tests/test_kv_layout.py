"""The DSV4 FP8 paged layout: page strides, byte positions, quantize/dequantize."""

from __future__ import annotations

import pytest
import torch

from dsv4_tune.kernels import kv_layout as L


@pytest.mark.parametrize(("page_size", "stride"), [(128, 74_880), (64, 37_440), (2, 1_728)])
def test_padded_page_stride_of_the_three_pools(page_size: int, stride: int) -> None:
    assert L.padded_page_bytes(page_size) == stride
    kv = L.make_kv_cache(3, page_size)
    assert kv.shape == (3, page_size, 1, 584)
    assert kv.stride(0) == stride
    assert kv.stride(0) != page_size * 584


@pytest.mark.parametrize("page_size", [2, 53, 64, 128])
def test_padded_stride_is_the_next_multiple_of_576(page_size: int) -> None:
    s = L.padded_page_bytes(page_size)
    assert s % 576 == 0 and s >= page_size * 584 and s - 576 < page_size * 584


@pytest.mark.parametrize("fp8", L.FP8_FLAVOURS)
def test_token_bytes_land_where_the_spec_says(fp8: str, gen: torch.Generator) -> None:
    page_size = 53
    kv = L.make_kv_cache(4, page_size)
    slot = 2 * page_size + 17
    x = torch.randn(1, 512, generator=gen)
    L.write_tokens(kv, torch.tensor([slot]), x, fp8)
    nope, rope, scales = L.quantize_tokens(x, fp8)
    page = kv.as_strided((kv.stride(0),), (1,), kv.storage_offset() + 2 * kv.stride(0))
    data = page[17 * 576 : 18 * 576]
    assert torch.equal(data[:448], nope[0])
    assert torch.equal(data[448:], rope[0])
    scale_row = page[page_size * 576 + 17 * 8 : page_size * 576 + 18 * 8]
    assert torch.equal(scale_row[:7], scales[0])
    assert scale_row[7] == 0  # the padding byte is never written
    assert int(kv.as_strided((kv.stride(0) * 4,), (1,)).count_nonzero()) == int(
        data.count_nonzero() + scale_row.count_nonzero()
    )


@pytest.mark.parametrize("fp8", L.FP8_FLAVOURS)
def test_quantize_round_trip(fp8: str, gen: torch.Generator) -> None:
    x = torch.randn(200, 512, generator=gen) * torch.logspace(-6, 2, 200)[:, None]
    x[3, :64] = 0.0  # an all-zero tile takes the amax floor
    kv = L.make_kv_cache(5, 64)
    slots = torch.randperm(320, generator=gen)[:200]
    L.write_tokens(kv, slots, x, fp8)
    back = L.read_tokens(kv, slots, fp8)
    nope, rope, scales = L.quantize_tokens(x, fp8)
    assert torch.equal(back, L.dequantize_tokens(nope, rope, scales, fp8))
    # UE8M0: each tile's scale is the power of two that just fits its amax into FP8_MAX.
    amax = x[:, :448].reshape(200, 7, 64).abs().amax(-1).clamp_min(L.AMAX_EPS)
    scale = torch.exp2(scales.float() - 127)
    assert bool((amax / scale <= L.FP8_MAX[fp8]).all())
    assert bool((amax / scale > L.FP8_MAX[fp8] / 2).all())
    # e4m3 keeps 3 mantissa bits: error <= half an ulp of the tile's largest binade.
    err = (back[:, :448].float() - x[:, :448]).abs().reshape(200, 7, 64)
    assert bool((err <= scale[..., None] * 2 ** (8 - 4) * 1.0001).all())  # half an ulp at 2^8 (e4m3fn) is 2^4
    assert torch.equal(back[:, 448:], x[:, 448:].to(torch.bfloat16))


def test_flavour_follows_the_arch() -> None:
    assert L.fp8_flavour_for_arch("gfx942") == "e4m3fnuz"
    assert L.fp8_flavour_for_arch("gfx950") == "e4m3fn"
    assert L.fp8_flavour_for_arch("sm90") == "e4m3fn"
    with pytest.raises(ValueError, match="fp8"):
        L.check_flavour("e5m2")


def test_pool_view_rejects_rows_too_short() -> None:
    with pytest.raises(ValueError, match="pool"):
        L.pool_view(torch.zeros(2, 100, dtype=torch.uint8), 1)
