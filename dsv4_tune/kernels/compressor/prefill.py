"""Compressor prefill kernels: ragged new tokens per request, each boundary token's window pooled
from the new rows and the ring; the fused variant (one program per ``ROWS`` windows, writing the
ring itself for C4 with ROWS >= 2), the split variant (pooling programs, then a finish kernel that
also writes the ring), and the ring write that follows the fused kernel otherwise."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.attention_core import aligned
from dsv4_tune.kernels.compressor.shared import _finish, _finish_inputs, _fold
from dsv4_tune.registry.compressor_space import FINISH_WARPS
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.registry.launches import ring_in_kernel
from dsv4_tune.registry.scratch import pooled_buffer
from dsv4_tune.runtime.jit import Launcher, kernel
from dsv4_tune.runtime.workspace import DEFAULT_WORKSPACE, Workspace


@triton.jit
def _pool(
    kvs_ptr, s_kvs, state_ptr, s_state, ape_ptr, ring_base, ring_size,
    p, in_first, in_row0, d0,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Pooled columns ``[d0, d0 + BLOCK_D)`` of the window ending at position p (fp32, ``[BLOCK_D]``).

    Positions ``>= in_first`` come from input row ``in_row0 + (s - in_first)``; earlier positions
    from the ring (empty when ``ring_base < 0``); negative positions are empty.  Online softmax over
    ``BLOCK_S``-position tiles with the -inf guards.
    """
    K: tl.constexpr = R * COFF
    s_kvs = aligned(s_kvs, 4)  # rows start 16-byte aligned (the input checks): 16-byte loads
    s_state = aligned(s_state, 4)
    d = d0 + tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_D], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_D], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    # (Not unrolled like _pool_decode: on an H200, unrolling made C4 prefill of 32K tokens 12%
    # slower at head_dim 512, the many programs per SM hide the latency an unroll would save.)
    if p - K + 1 >= in_first:  # the whole window is in the input rows (all but a request's first windows)
        for s0 in range(0, K, BLOCK_S):
            m, den, acc = _input_tile(m, den, acc, kvs_ptr, s_kvs, ape_ptr, p, in_first, in_row0, d, s0,
                                      R, COFF, D, BLOCK_S)
    else:
        for s0 in range(0, K, BLOCK_S):
            m, den, acc = _window_tile(m, den, acc, kvs_ptr, s_kvs, state_ptr, s_state, ape_ptr, ring_base,
                                       ring_size, p, in_first, in_row0, d, s0, R, COFF, D, BLOCK_S)
    return tl.where(den > 0.0, acc / tl.where(den > 0.0, den, 1.0), 0.0)


@triton.jit
def _input_tile(
    m, den, acc, kvs_ptr, s_kvs, ape_ptr, p, in_first, in_row0, d, s0,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """:func:`_window_tile` for a window entirely in the input rows: no ring, no masks."""
    K: tl.constexpr = R * COFF
    k = s0 + tl.arange(0, BLOCK_S)
    kv_col = ((k // R) * D)[:, None] + d[None, :]
    row = kvs_ptr + (in_row0 + (p - K + 1 - in_first) + k).to(tl.int64)[:, None] * s_kvs
    kv = tl.load(row + kv_col)
    sc = tl.load(row + kv_col + COFF * D) + tl.load(ape_ptr + (k * D)[:, None] + d[None, :])
    return _fold(m, den, acc, sc, kv)


@triton.jit
def _window_tile(
    m, den, acc, kvs_ptr, s_kvs, state_ptr, s_state, ape_ptr, ring_base, ring_size, p, in_first, in_row0, d, s0,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """Fold window positions ``s0 + [0, BLOCK_S)`` (input rows or ring, see :func:`_pool`)."""
    K: tl.constexpr = R * COFF
    k = s0 + tl.arange(0, BLOCK_S)
    s = p - K + 1 + k
    from_in = s >= in_first
    from_st = (s >= 0) & (s < tl.where(ring_base >= 0, in_first, 0))  # no ring: empty
    half = k // R  # C4: 0 (A) for the previous block, 1 (B) for the current one; C128: 0
    kv_col = (half * D)[:, None] + d[None, :]
    sc_col = kv_col + COFF * D
    # One load per element from whichever source holds the position (the row pointer is picked per
    # position): half the loads and live addresses of loading both sources.  The compiler cannot
    # prove such rows aligned, so these loads are 4-byte ones; only a request's first windows
    # (those that reach before its new tokens) take this path, the rest take _input_tile's.
    in_row = kvs_ptr + (in_row0 + (s - in_first)).to(tl.int64) * s_kvs
    st_row = state_ptr + (ring_base + tl.maximum(s, 0) % ring_size).to(tl.int64) * s_state
    row = tl.where(from_in, in_row, st_row)[:, None]
    ok = (from_in | from_st)[:, None]
    kv = tl.load(row + kv_col, mask=ok, other=0.0)
    sc = tl.load(row + sc_col, mask=ok, other=0.0) + tl.load(ape_ptr + (k * D)[:, None] + d[None, :])
    return _fold(m, den, acc, tl.where(ok, sc, float("-inf")), kv)


@triton.jit
def _prefill_window(cu_ptr, prefix_ptr, b, j, R: tl.constexpr):
    """Boundary j of request b: (its position p, the request's first ragged row, prefix, ok)."""
    t0 = tl.load(cu_ptr + b)
    n = tl.load(cu_ptr + b + 1) - t0
    q = tl.load(prefix_ptr + b)
    p = (q // R + j + 1) * R - 1  # the (j+1)-th position >= q with (p + 1) mod R == 0
    return p, t0, q, p < q + n


@triton.jit
def _prefill_ring(
    kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, base, b, first, step, ring_size, W: tl.constexpr,
):
    """Copy request b's rows ``first, first + step, ...`` of its last ``min(ring_size, n)``
    positions into its ring (after every window of the prefill that reads the ring was read).
    Requests' ring regions are disjoint (as the spec's state layout has them)."""
    s_kvs = aligned(s_kvs, 4)
    s_state = aligned(s_state, 4)
    t0 = tl.load(cu_ptr + b)
    n = tl.load(cu_ptr + b + 1) - t0
    keep = tl.minimum(n, ring_size)
    end = tl.load(prefix_ptr + b) + n
    if base >= 0:
        cols = tl.arange(0, W)
        for i in range(first, keep, step):
            row = tl.load(kvs_ptr + (t0 + n - keep + i).to(tl.int64) * s_kvs + cols)
            tl.store(state_ptr + (base + (end - keep + i) % ring_size).to(tl.int64) * s_state + cols, row)


@kernel
def _compress_prefill_kernel(
    kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, ring_ptr, ape_ptr, normw_ptr, freqs_ptr, s_freqs,
    max_pos, loc_ptr, dst_ptr, dst_stride, page_size, n_slots, ring_size,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr, ROWS: tl.constexpr,
    DEST: tl.constexpr, FP8: tl.constexpr, EPS: tl.constexpr, RING: tl.constexpr,
):
    """Fused prefill, program (window block, request): ROWS boundaries, pool + finish each.

    A window is pooled whether or not its slot id is valid (the stores check it), so the pool's
    loads are issued without waiting for the slot id (H100, indexer prefill of 32K: 4% faster).

    The ring update: with ``RING`` (C4 and ROWS >= 2, :func:`ring_in_kernel`) block 0 of a request,
    which holds both windows that read the ring (0 and 1), copies the request's last rows into it
    after pooling them; otherwise a second launch does (:func:`_ring_write_kernel`).  H100, side by
    side: the indexer (head_dim 128) at 32K tokens 40.8 -> 38.9 us, C4 head_dim 512 at 8K 45.6 ->
    41.9 us; at 1K tokens block 0's serial copy is the longest program (13.3 -> 14.2 us), where
    the tuner picks ROWS = 1.  (Two earlier folds, before the input-only tiles cut the registers,
    were 15-20% slower: their copy raised the kernel's register count and so cut occupancy.)"""
    b = tl.program_id(1)
    base = tl.load(ring_ptr + b)
    for r in range(ROWS):
        p, t0, q, ok = _prefill_window(cu_ptr, prefix_ptr, b, tl.program_id(0) * ROWS + r, R)
        if ok:
            tok = t0 + (p - q)
            loc = tl.load(loc_ptr + tok)
            normw, cos, sin = _finish_inputs(normw_ptr, freqs_ptr, s_freqs, max_pos, p + 1 - R, D)
            c = _pool(kvs_ptr, s_kvs, state_ptr, s_state, ape_ptr, base, ring_size, p, q, t0, 0,
                      R, COFF, D, D, BLOCK_S)
            _finish(c, normw, cos, sin, dst_ptr, dst_stride, page_size, loc, (loc >= 0) & (loc < n_slots),
                    D, DEST, FP8, EPS)
    if RING:  # noqa: SIM102 (a constexpr if: no code at all without RING)
        if tl.program_id(0) == 0:
            W: tl.constexpr = 2 * COFF * D
            tl.debug_barrier()  # every thread's ring reads of windows 0 and 1 before any ring write
            _prefill_ring(kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, base, b, 0, 1, ring_size, W)


@kernel
def _compress_prefill_split_kernel(
    kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, ring_ptr, ape_ptr, loc_ptr, ws_ptr, n_slots, ring_size,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    ROWS: tl.constexpr,
):
    """Split prefill, program (window block, request, chunk): pooled chunks -> ws[boundary token]."""
    b = tl.program_id(1)
    d0 = tl.program_id(2) * BLOCK_D
    base = tl.load(ring_ptr + b)
    for r in range(ROWS):
        p, t0, q, ok = _prefill_window(cu_ptr, prefix_ptr, b, tl.program_id(0) * ROWS + r, R)
        if ok:
            tok = t0 + (p - q)
            loc = tl.load(loc_ptr + tok)
            if (loc >= 0) & (loc < n_slots):
                c = _pool(kvs_ptr, s_kvs, state_ptr, s_state, ape_ptr, base, ring_size, p, q, t0, d0,
                          R, COFF, D, BLOCK_D, BLOCK_S)
                tl.store(ws_ptr + tok.to(tl.int64) * D + d0 + tl.arange(0, BLOCK_D), c)


@kernel
def _compress_prefill_finish_kernel(
    ws_ptr, cu_ptr, prefix_ptr, loc_ptr, normw_ptr, freqs_ptr, s_freqs, max_pos, dst_ptr, dst_stride, page_size,
    n_slots, kvs_ptr, s_kvs, state_ptr, s_state, ring_ptr, ring_size,
    R: tl.constexpr, D: tl.constexpr, ROWS: tl.constexpr, DEST: tl.constexpr, FP8: tl.constexpr,
    EPS: tl.constexpr, W: tl.constexpr,
):
    """Split prefill, second launch: norm + RoPE + store of the pooled rows in ws, and the ring
    update (every window was read by the first launch), its rows spread over the window blocks."""
    b = tl.program_id(1)
    blk = tl.program_id(0)
    base = tl.load(ring_ptr + b)
    _prefill_ring(kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, base, b, blk, tl.num_programs(0),
                  ring_size, W)
    for r in range(ROWS):
        p, t0, q, ok = _prefill_window(cu_ptr, prefix_ptr, b, blk * ROWS + r, R)
        if ok:
            tok = t0 + (p - q)
            loc = tl.load(loc_ptr + tok)
            if (loc >= 0) & (loc < n_slots):
                normw, cos, sin = _finish_inputs(normw_ptr, freqs_ptr, s_freqs, max_pos, p + 1 - R, D)
                c = tl.load(ws_ptr + tok.to(tl.int64) * D + tl.arange(0, D))
                _finish(c, normw, cos, sin, dst_ptr, dst_stride, page_size, loc, loc >= 0, D, DEST, FP8, EPS)


@kernel
def _ring_write_kernel(
    kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, ring_ptr, ring_size,
    W: tl.constexpr,
):
    """Fused prefill's ring update, program (slot i, request): rows i, i + slots, ... of the
    request's last min(ring_size, n) positions (a second launch: after every window was read)."""
    b = tl.program_id(1)
    _prefill_ring(kvs_ptr, s_kvs, cu_ptr, prefix_ptr, state_ptr, s_state, tl.load(ring_ptr + b), b,
                  tl.program_id(0), tl.num_programs(0), ring_size, W)


_prefill = Launcher(_compress_prefill_kernel)
_prefill_split = Launcher(_compress_prefill_split_kernel)
_prefill_finish = Launcher(_compress_prefill_finish_kernel)
_ring_write = Launcher(_ring_write_kernel)


def launch_prefill(
    variant: str, cfg: dict[str, int], kv_score: torch.Tensor, cu_seqlens: torch.Tensor, prefix_lens: torch.Tensor,
    state: torch.Tensor, ring_base: torch.Tensor, ape: torch.Tensor, norm_weight: torch.Tensor, freqs: torch.Tensor,
    out_loc: torch.Tensor, dest_kind: str, dst: list, *, ratio: int, ring_size: int, head_dim: int, fp8: str,
    eps: float, longest: int, workspace: Workspace = DEFAULT_WORKSPACE,
) -> None:
    """Launch a ragged prefill (inputs checked by :func:`dsv4_tune.serving.compressor.compress_prefill`;
    ``longest`` >= every request's new-token count bounds the grid)."""
    n_tok, bs, coff = kv_score.shape[0], ring_base.shape[0], 2 if ratio == 4 else 1
    n_win = cdiv(cdiv(longest, ratio), cfg["ROWS"])  # n new tokens hold <= ceil(n / R) boundaries
    head = [kv_score, kv_score.stride(0), cu_seqlens, prefix_lens, state, state.stride(0), ring_base, ape]
    tail = [dest_kind, fp8, float(eps)]
    width = 2 * coff * head_dim
    if variant == "fused":
        ring = ring_in_kernel(ratio, cfg["ROWS"])
        _prefill((n_win, bs, 1), *head, norm_weight, freqs, freqs.stride(0), freqs.shape[0], out_loc, *dst,
                 ring_size, ratio, coff, head_dim, cfg["BLOCK_S"], cfg["ROWS"], *tail, ring,
                 num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        if ring:
            return
    else:
        ws = workspace.take(pooled_buffer(n_tok, head_dim), "compress_pooled", kv_score.device)
        _prefill_split((n_win, bs, head_dim // cfg["BLOCK_D"]), *head, out_loc, ws, dst[3], ring_size,
                       ratio, coff, head_dim, cfg["BLOCK_D"], cfg["BLOCK_S"], cfg["ROWS"],
                       num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        # At least one program per ring row: a short prefill has few window blocks, and one row
        # per program copies them all in one memory round trip (H100, C128 prefill of 1K tokens).
        _prefill_finish((max(n_win, min(ring_size, longest)), bs, 1), ws, cu_seqlens, prefix_lens, out_loc,
                        norm_weight, freqs, freqs.stride(0), freqs.shape[0], *dst, kv_score, kv_score.stride(0),
                        state, state.stride(0), ring_base, ring_size, ratio, head_dim, cfg["ROWS"], *tail, width,
                        num_warps=FINISH_WARPS[head_dim], num_stages=1)
        return
    _ring_write((min(ring_size, longest), bs, 1), kv_score, kv_score.stride(0), cu_seqlens, prefix_lens, state,
                state.stride(0), ring_base, ring_size, width, num_warps=4, num_stages=1)
