"""The DSV4 FP8 paged KV-cache layout in torch: pool allocation, the kernels' ``[pages, P, 1, 584]``
view, the quantizing writer (tokens into slots) and its exact inverse, used by tests, the tuner's
input generator and the references.  The layout's numbers are in :mod:`dsv4_tune.registry.layout`.
"""

from __future__ import annotations

import torch

from dsv4_tune.registry.layout import (  # noqa: F401 (the layout's names, as the writer's users read them)
    AMAX_EPS,
    DATA_BYTES,
    FP8_FLAVOURS,
    FP8_MAX,
    HEAD_DIM,
    NOPE_DIM,
    NUM_TILES,
    ROPE_DIM,
    SCALE_BYTES,
    TILE,
    TOKEN_BYTES,
    UE8M0_BIAS,
    Fp8Flavour,
    check_flavour,
    fp8_flavour_for_arch,
    padded_page_bytes,
)

FP8_TORCH_DTYPE: dict[str, torch.dtype] = {
    "e4m3fn": torch.float8_e4m3fn,
    "e4m3fnuz": torch.float8_e4m3fnuz,
}


def alloc_pool(
    num_pages: int, page_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A zero-initialised pool ``[num_pages, padded_page_bytes]`` uint8, as the memory pool makes it."""
    return torch.zeros(num_pages, padded_page_bytes(page_size), dtype=torch.uint8, device=device)


def pool_view(pool: torch.Tensor, page_size: int) -> torch.Tensor:
    """The ``[pages, P, 1, 584]`` uint8 view the attention backend hands to the kernels."""
    if pool.dtype != torch.uint8 or pool.dim() != 2:
        raise ValueError(f"pool: expected a 2-D uint8 tensor, got {pool.dtype} {tuple(pool.shape)}")
    if pool.shape[1] < page_size * TOKEN_BYTES or pool.stride(1) != 1:
        raise ValueError(
            f"pool: rows of {pool.shape[1]} B (stride {pool.stride(1)}) cannot hold "
            f"{page_size} tokens of {TOKEN_BYTES} B"
        )
    return pool.as_strided(
        (pool.shape[0], page_size, 1, TOKEN_BYTES),
        (pool.stride(0), TOKEN_BYTES, TOKEN_BYTES, 1),
    )


def make_kv_cache(
    num_pages: int, page_size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """A fresh zeroed pool, returned as the kernels' ``[pages, P, 1, 584]`` view."""
    return pool_view(alloc_pool(num_pages, page_size, device), page_size)


def num_slots(kv_cache: torch.Tensor) -> int:
    """Token slots in a pool view (``pages * P``); slot ids at or beyond this are invalid."""
    return kv_cache.shape[0] * kv_cache.shape[1]


def _slot_byte_offsets(kv_cache: torch.Tensor, slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Byte offsets (int64, from the view's base) of each slot's data row and scale row."""
    page_size = kv_cache.shape[1]
    slots = slots.to(torch.int64)
    page, off = slots // page_size, slots % page_size
    base = page * kv_cache.stride(0)
    return base + off * DATA_BYTES, base + page_size * DATA_BYTES + off * SCALE_BYTES


def written_bytes(kv_cache: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Flat byte positions (int64, into :func:`_flat_bytes`) that a write of ``slots`` sets: each
    slot's 576 data bytes and 7 scale bytes (its padding byte is not written)."""
    data, scale = _slot_byte_offsets(kv_cache, slots.to(kv_cache.device))
    cols = torch.arange(DATA_BYTES, device=kv_cache.device)
    return torch.cat([(data[:, None] + cols).flatten(), (scale[:, None] + cols[:NUM_TILES]).flatten()])


def _flat_bytes(kv_cache: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view over every byte the pool view spans (padding included)."""
    span = (kv_cache.shape[0] - 1) * kv_cache.stride(0) + kv_cache.shape[1] * TOKEN_BYTES
    return kv_cache.as_strided((span,), (1,))


def quantize_tokens(x: torch.Tensor, fp8: Fp8Flavour) -> tuple[torch.Tensor, ...]:
    """Quantize ``[N, 512]`` latents: (NoPE fp8 bytes [N, 448], RoPE bytes [N, 128], scales [N, 7]).

    Per 64-element NoPE tile: ``e = ceil(log2(max(amax, 1e-8) / FP8_MAX))``, scale ``2^e`` stored as
    the byte ``e + 127``, values ``clamp(x / 2^e, -FP8_MAX, FP8_MAX)`` in the flavour's FP8 type.
    The RoPE part is stored as BF16.
    """
    check_flavour(fp8)
    if x.dim() != 2 or x.shape[1] != HEAD_DIM:
        raise ValueError(f"x: expected [N, {HEAD_DIM}], got {tuple(x.shape)}")
    fp8_max = FP8_MAX[fp8]
    nope = x[:, :NOPE_DIM].float().reshape(-1, NUM_TILES, TILE)
    amax = nope.abs().amax(dim=-1).clamp_min(AMAX_EPS)
    e = torch.ceil(torch.log2(amax / fp8_max))
    q = (nope / torch.exp2(e)[..., None]).clamp(-fp8_max, fp8_max)
    nope_bytes = q.to(FP8_TORCH_DTYPE[fp8]).view(torch.uint8).reshape(-1, NOPE_DIM)
    scales = (e + UE8M0_BIAS).to(torch.uint8)
    rope_bytes = x[:, NOPE_DIM:].to(torch.bfloat16).contiguous().view(torch.uint8)
    return nope_bytes, rope_bytes, scales


def dequantize_tokens(
    nope_bytes: torch.Tensor, rope_bytes: torch.Tensor, scales: torch.Tensor, fp8: Fp8Flavour
) -> torch.Tensor:
    """The exact inverse of :func:`quantize_tokens`: BF16 ``[N, 512]``.

    NoPE value ``bf16(fp8) * bf16(2^(byte - 127))`` in BF16 (exact for a power-of-two scale), RoPE
    passed through.
    """
    check_flavour(fp8)
    vals = nope_bytes.view(FP8_TORCH_DTYPE[fp8]).to(torch.bfloat16).reshape(-1, NUM_TILES, TILE)
    scale = torch.exp2(scales.float() - UE8M0_BIAS).to(torch.bfloat16)
    nope = (vals * scale[..., None]).reshape(-1, NOPE_DIM)
    rope = rope_bytes.contiguous().view(torch.bfloat16).reshape(-1, ROPE_DIM)
    return torch.cat([nope, rope], dim=1)


def write_tokens(kv_cache: torch.Tensor, slots: torch.Tensor, x: torch.Tensor, fp8: Fp8Flavour) -> None:
    """Quantize ``x [N, 512]`` and write it into the pool view at slot ids ``slots [N]``.

    Only the 7 scale bytes are written; each slot's padding byte is left as it was.
    """
    if slots.dim() != 1 or slots.shape[0] != x.shape[0]:
        raise ValueError(f"slots: expected [{x.shape[0]}], got {tuple(slots.shape)}")
    if slots.numel() and (int(slots.min()) < 0 or int(slots.max()) >= num_slots(kv_cache)):
        raise ValueError(f"slots: ids must lie in [0, {num_slots(kv_cache)})")
    nope_bytes, rope_bytes, scales = quantize_tokens(x, fp8)
    flat = _flat_bytes(kv_cache)
    data_off, scale_off = _slot_byte_offsets(kv_cache, slots.to(flat.device))
    cols = torch.arange(DATA_BYTES, device=flat.device)
    flat[data_off[:, None] + cols] = torch.cat([nope_bytes, rope_bytes], dim=1).to(flat.device)
    flat[scale_off[:, None] + cols[:NUM_TILES]] = scales.to(flat.device)


def read_tokens(kv_cache: torch.Tensor, slots: torch.Tensor, fp8: Fp8Flavour) -> torch.Tensor:
    """Dequantize the tokens at ``slots [N]`` (all in range) to BF16 ``[N, 512]``."""
    flat = _flat_bytes(kv_cache)
    data_off, scale_off = _slot_byte_offsets(kv_cache, slots.to(flat.device))
    cols = torch.arange(DATA_BYTES, device=flat.device)
    data = flat[data_off[:, None] + cols]
    scales = flat[scale_off[:, None] + cols[:NUM_TILES]]
    return dequantize_tokens(data[:, :NOPE_DIM], data[:, NOPE_DIM:], scales, fp8)


def poison_pool(kv_cache: torch.Tensor, keep_slots: torch.Tensor) -> None:
    """Fill every slot not in ``keep_slots`` with 0xFF bytes, so that any read of it shows up.

    0xFFFF is a BF16 NaN (RoPE part), 0xFF is NaN in e4m3fn, and a scale byte of 0xFF means
    2^128, which overflows BF16 to inf, so a dequantized NoPE value is inf or NaN in either flavour.
    """
    keep = torch.zeros(num_slots(kv_cache), dtype=torch.bool, device=kv_cache.device)
    valid = keep_slots[(keep_slots >= 0) & (keep_slots < keep.numel())].to(torch.int64)
    keep[valid.to(keep.device)] = True
    dead = (~keep).nonzero().flatten()
    if dead.numel() == 0:
        return
    flat = _flat_bytes(kv_cache)
    data_off, scale_off = _slot_byte_offsets(kv_cache, dead)
    cols = torch.arange(DATA_BYTES, device=flat.device)
    flat[data_off[:, None] + cols] = 0xFF
    flat[scale_off[:, None] + cols[:NUM_TILES]] = 0xFF
