"""The DSV4 FP8 paged KV-cache layout (FlashMLA "MODEL1_FP8Sparse") as numbers, and the FP8 flavours.

One page holds ``P`` tokens as a structure of arrays: ``P`` data rows of 576 B (448 FP8 NoPE bytes,
then 64 little-endian BF16 RoPE values), then ``P`` scale rows of 8 B (7 UE8M0 exponent bytes and
one padding byte), then zero padding up to a multiple of 576 B.  Kernels see the pool through a
``[pages, P, 1, 584]`` uint8 view whose ``stride(0)`` is the *padded* page size; they must take the
stride from the tensor, never compute ``P * 584``.  The torch writer and reader of this layout are
in :mod:`dsv4_tune.kernels.kv_layout`.
"""

from __future__ import annotations

import math
from typing import Literal

NOPE_DIM = 448
ROPE_DIM = 64
HEAD_DIM = NOPE_DIM + ROPE_DIM  # d_qk = d_v = 512
TILE = 64
NUM_TILES = NOPE_DIM // TILE  # 7 UE8M0 scales per token
DATA_BYTES = NOPE_DIM + 2 * ROPE_DIM  # 576
SCALE_BYTES = 8  # 7 scales + 1 padding byte
TOKEN_BYTES = DATA_BYTES + SCALE_BYTES  # 584
UE8M0_BIAS = 127

Fp8Flavour = Literal["e4m3fn", "e4m3fnuz"]
FP8_FLAVOURS: tuple[Fp8Flavour, ...] = ("e4m3fn", "e4m3fnuz")
FP8_MAX: dict[str, float] = {"e4m3fn": 448.0, "e4m3fnuz": 240.0}
AMAX_EPS = 1e-8  # the SGLang writer's floor on a tile's absolute maximum


def check_flavour(fp8: str) -> Fp8Flavour:
    """Return ``fp8`` if it names a supported FP8 flavour, else raise a ValueError naming it."""
    if fp8 not in FP8_FLAVOURS:
        raise ValueError(f"fp8: expected one of {FP8_FLAVOURS}, got {fp8!r}")
    return fp8  # type: ignore[return-value]


def fp8_flavour_for_arch(arch: str) -> Fp8Flavour:
    """The FP8 flavour a GPU architecture's KV writers use: e4m3fnuz on gfx942, else OCP e4m3fn."""
    return "e4m3fnuz" if arch.startswith("gfx942") else "e4m3fn"


Fp8Pair = tuple[Fp8Flavour, Fp8Flavour]  # the flavours of the (main, extra) scopes' pools


def fp8_pair(fp8: str | tuple[str, str] | None, default: Fp8Flavour) -> Fp8Pair:
    """The (main, extra) flavours of a call's ``fp8``: one flavour for both scopes, a pair, or None
    (``default`` for both).  An engine's sliding-window and compressed pools may differ (gfx942)."""
    if fp8 is None:
        return default, default
    if isinstance(fp8, str):
        return check_flavour(fp8), check_flavour(fp8)
    if isinstance(fp8, tuple | list) and len(fp8) == 2:
        return check_flavour(fp8[0]), check_flavour(fp8[1])
    raise ValueError(f"fp8: expected one of {FP8_FLAVOURS}, a (main, extra) pair of them, or None; got {fp8!r}")


def fp8_pairs(own: Fp8Flavour) -> tuple[Fp8Pair, ...]:
    """The (main, extra) flavour pairs kernels are built and checked for where pools are ``own``:
    ``own`` for both scopes first, and with e4m3fnuz pools (gfx942) also the mixed pair engines
    ship there (the SWA pool in e4m3fnuz, the compressed pool in OCP e4m3fn)."""
    return ((own, own), (own, "e4m3fn")) if own == "e4m3fnuz" else ((own, own),)


def fp8_pairs_for_arch(arch: str) -> tuple[Fp8Pair, ...]:
    """:func:`fp8_pairs` of ``arch``'s own flavour."""
    return fp8_pairs(fp8_flavour_for_arch(arch))


def padded_page_bytes(page_size: int) -> int:
    """Bytes per page: ``ceil(P * 584 / 576) * 576`` (74,880 / 37,440 / 1,728 for P = 128 / 64 / 2)."""
    if page_size < 1:
        raise ValueError(f"page_size: expected >= 1, got {page_size}")
    return math.ceil(page_size * TOKEN_BYTES / DATA_BYTES) * DATA_BYTES
