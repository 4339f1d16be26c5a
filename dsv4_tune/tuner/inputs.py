"""Realistic random inputs for the decode kernels (tests, tuner, benchmarks share this one source).

Follows FlashMLA's practice: KV ~ N(0, 1) / 10 clamped to [-1, 1], quantized into the pool (so the
reference sees the same FP8-rounded values), q ~ N(0, 1) clamped, sinks N(0, 1) with some +inf and
-inf, random ``-1`` ids, and every slot that no valid candidate references filled with NaN bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dsv4_tune.kernels import kv_layout as L
from dsv4_tune.kernels.reference import candidate_valid

WRITE_CHUNK = 1 << 16
# The lengths a timed case gives a scope that has a ``topk_length`` (main, extra): SWA windows are
# full and compressed-token counts vary between requests.  Not "random": at T = 1 one uniform draw
# in [0, topk] decides the measurement, and a sweep picked for 1152 candidates a plan timed on 307
# (55 us on full rows against 30 for the plan it displaced).  The sweep and the benchmarks agree.
TIMING_LENGTHS = ("full", "serving")
# The version of what timed cases hold, recorded by and keying each sweep (``cache.store.sweep_key``):
# 1 (or none recorded) timed lengths drawn uniformly in [0, topk]; 2 times ``TIMING_LENGTHS``.
INPUTS_VERSION = 2


@dataclass
class Scope:
    """One KV scope: pool view, slot ids ``[b, s_q, topk]`` int32, optional ``topk_length [b]``."""

    kv_cache: torch.Tensor
    indices: torch.Tensor
    topk_length: torch.Tensor | None


def make_scope(
    batch: int,
    s_q: int,
    topk: int,
    page_size: int,
    *,
    fp8: L.Fp8Flavour,
    device: torch.device | str = "cpu",
    num_pages: int | None = None,
    invalid_frac: float = 0.1,
    bad_ids: bool = False,
    topk_length: list[int] | str | None = "random",
    poison: bool = True,
    window: bool = False,
    gen: torch.Generator | None = None,
) -> Scope:
    """A pool with random tokens at the referenced slots and random ids into it.

    ``topk_length``: ``"random"`` (uniform in ``[0, topk]`` per batch row: tests, every edge),
    ``"serving"`` (uniform in ``[topk // 2, topk]``: what timing sees, see :data:`TIMING_LENGTHS`),
    ``"full"``, an explicit list, or None (no length tensor).  ``bad_ids`` adds other negative ids and
    ids past the pool.  ``window``: each query's ids are ``topk`` consecutive positions of a request
    whose pages lie at random in the pool (a sliding window's tokens), not ``topk`` random slots.
    """
    if num_pages is None:
        num_pages = max(2, math.ceil(2 * batch * s_q * topk / page_size))
    kv = L.make_kv_cache(num_pages, page_size, device)
    n = L.num_slots(kv)
    if window:
        table = torch.randint(0, num_pages, (batch * s_q, topk // page_size + 2), generator=gen)
        pos = torch.randint(0, page_size, (batch * s_q, 1), generator=gen) + torch.arange(topk)
        idx = (table.gather(1, pos // page_size) * page_size + pos % page_size).to(torch.int32)
        idx = idx.view(batch, s_q, topk)
    else:
        idx = torch.randint(0, n, (batch, s_q, topk), generator=gen, dtype=torch.int32)
    idx[torch.rand(idx.shape, generator=gen) < invalid_frac] = -1
    if bad_ids:
        pick = torch.rand(idx.shape, generator=gen)
        idx[pick < 0.04] = -7
        idx[(pick >= 0.04) & (pick < 0.08)] = n + 3
        idx[(pick >= 0.08) & (pick < 0.1)] = torch.iinfo(torch.int32).max
    if topk_length == "random":
        length = torch.randint(0, topk + 1, (batch,), generator=gen, dtype=torch.int32)
    elif topk_length == "serving":
        length = torch.randint(topk // 2, topk + 1, (batch,), generator=gen, dtype=torch.int32)
    elif topk_length == "full":
        length = torch.full((batch,), topk, dtype=torch.int32)
    elif topk_length is None:
        length = None
    else:
        length = torch.tensor(topk_length, dtype=torch.int32)
    idx = idx.to(device)
    length = None if length is None else length.to(device)
    valid = candidate_valid(kv, idx, length)
    slots = torch.unique(idx.reshape(valid.shape)[valid].to(torch.int64))
    for start in range(0, slots.numel(), WRITE_CHUNK):  # chunks bound the writer's index tensors
        part = slots[start : start + WRITE_CHUNK]
        if slots.numel() <= WRITE_CHUNK:
            tokens = torch.randn(part.numel(), L.HEAD_DIM, generator=gen).to(device)
        else:  # large pools (benchmarks, the tuner): draw on the device, from its own generator
            tokens = torch.randn(part.numel(), L.HEAD_DIM, device=device)
        L.write_tokens(kv, part, (tokens / 10).clamp(-1, 1), fp8)
    if poison:
        L.poison_pool(kv, slots)
    return Scope(kv, idx, length)


def make_query(
    batch: int, s_q: int, heads: int, *, device: torch.device | str = "cpu", gen: torch.Generator | None = None
) -> torch.Tensor:
    """``q [b, s_q, h, 512]`` BF16, N(0, 1) clamped to [-1, 1]."""
    q = torch.randn(batch, s_q, heads, L.HEAD_DIM, generator=gen).clamp(-1, 1)
    return q.to(torch.bfloat16).to(device)


def make_sink(
    heads: int, *, kind: str = "mixed", device: torch.device | str = "cpu", gen: torch.Generator | None = None
) -> torch.Tensor | None:
    """``attn_sink [h]`` fp32: ``"mixed"`` (N(0, 1), ~31% +inf, ~31% -inf), ``"finite"``,
    ``"+inf"``, ``"-inf"``, or ``"none"`` (returns None)."""
    if kind == "none":
        return None
    sink = torch.randn(heads, generator=gen)
    if kind == "mixed":
        u = torch.rand(heads, generator=gen)
        sink[u < 0.31] = float("inf")
        sink[u > 0.69] = float("-inf")
    elif kind in ("+inf", "-inf"):
        sink.fill_(float(kind.replace("+", "")))
    elif kind != "finite":
        raise ValueError(f"kind: expected mixed, finite, +inf, -inf or none, got {kind!r}")
    return sink.to(device)
