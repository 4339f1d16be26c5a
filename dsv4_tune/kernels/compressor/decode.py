"""Compressor decode kernels: one token per request, pooled with the ring's earlier positions; the
fused variant in one program per request, the split variant over ``head_dim / BLOCK_D`` pooling
programs (``ROWS`` requests each) and a finish kernel (optionally its programmatic dependent)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from dsv4_tune.kernels.attention_core import aligned
from dsv4_tune.kernels.compressor.shared import _finish, _finish_inputs, _fold
from dsv4_tune.registry.compressor_space import FINISH_WARPS
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.registry.scratch import pooled_buffer
from dsv4_tune.runtime.jit import Launcher, kernel
from dsv4_tune.runtime.target import pdl_enabled
from dsv4_tune.runtime.workspace import DEFAULT_WORKSPACE, Workspace


@triton.jit
def _ring_tile(m, den, acc, state_ptr, s_state, ape_ptr, ring_base, ring_size, p, d, s0,
               R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr):
    """Fold ring positions ``p - K + 1 + s0 + [0, BLOCK_S)`` (those before p) into the softmax."""
    K: tl.constexpr = R * COFF
    k = s0 + tl.arange(0, BLOCK_S)
    s = p - K + 1 + k
    ok = (k < K - 1) & (s >= tl.where(ring_base >= 0, 0, p + 1))  # no ring: every s < p + 1 is empty
    kv_col = ((k // R) * D)[:, None] + d[None, :]
    row = state_ptr + (ring_base + tl.maximum(s, 0) % ring_size).to(tl.int64)[:, None] * s_state
    kv = tl.load(row + kv_col, mask=ok[:, None], other=0.0)
    sc = tl.load(row + kv_col + COFF * D, mask=ok[:, None], other=0.0)
    sc = sc + tl.load(ape_ptr + (k * D)[:, None] + d[None, :], mask=(k < K)[:, None], other=0.0)
    return _fold(m, den, acc, tl.where(ok[:, None], sc, float("-inf")), kv)


@triton.jit
def _pool_decode(
    kv_last, sc_last, state_ptr, s_state, ape_ptr, ring_base, ring_size, p, d0,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """:func:`_pool` for decode: position p's kv and score (``[BLOCK_D]`` columns from d0 of the
    last half) come in registers, loaded by the caller before the request's scalars arrive; the
    other K - 1 positions from the ring.  A window of at most four tiles is unrolled, so that all
    its loads are in flight at once instead of one tile's per memory round trip."""
    K: tl.constexpr = R * COFF
    s_state = aligned(s_state, 4)
    d = d0 + tl.arange(0, BLOCK_D)
    m = tl.full([BLOCK_D], float("-inf"), tl.float32)
    den = tl.zeros([BLOCK_D], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    m, den, acc = _fold(m, den, acc, (sc_last + tl.load(ape_ptr + (K - 1) * D + d))[None, :], kv_last[None, :])
    if K - 1 <= 4 * BLOCK_S:
        for s0 in tl.static_range(0, K - 1, BLOCK_S):
            m, den, acc = _ring_tile(m, den, acc, state_ptr, s_state, ape_ptr, ring_base, ring_size, p, d, s0,
                                     R, COFF, D, BLOCK_S)
    else:
        for s0 in range(0, K - 1, BLOCK_S):
            m, den, acc = _ring_tile(m, den, acc, state_ptr, s_state, ape_ptr, ring_base, ring_size, p, d, s0,
                                     R, COFF, D, BLOCK_S)
    return tl.where(den > 0.0, acc / tl.where(den > 0.0, den, 1.0), 0.0)


@triton.jit
def _block_scalars(seqlens_ptr, loc_ptr, ring_ptr, blk, bs, n_slots, R: tl.constexpr, ROWS: tl.constexpr):
    """Requests ``blk * ROWS + [0, ROWS)``'s seq_lens and ring_base in one memory round trip, and
    which of them compress (at a block boundary with a valid out_loc)."""
    rb = blk * ROWS + tl.arange(0, ROWS)
    inb = rb < bs
    seqs = tl.load(seqlens_ptr + rb, mask=inb, other=0)
    locs = tl.load(loc_ptr + rb, mask=inb, other=-1)
    bases = tl.load(ring_ptr + rb, mask=inb, other=-1)
    return seqs, bases, (seqs > 0) & (seqs % R == 0) & (locs >= 0) & (locs < n_slots)


@triton.jit
def _pick(x, sel):
    """The element of the 1-D tensor ``x`` where ``sel`` holds (from registers, no memory access)."""
    return tl.sum(tl.where(sel, x, 0), axis=0)


@kernel
def _compress_decode_kernel(
    kvs_ptr, s_kvs, state_ptr, s_state, ring_ptr, seqlens_ptr, ape_ptr, normw_ptr, freqs_ptr, s_freqs,
    max_pos, loc_ptr, dst_ptr, dst_stride, page_size, n_slots, ring_size,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr,
    DEST: tl.constexpr, FP8: tl.constexpr, EPS: tl.constexpr,
):
    """Fused decode, one request per program: ring write, then (at a boundary) pool + finish."""
    b = tl.program_id(0)
    # Every load is issued before the first store (the ring row's), and what does not depend on
    # the request's scalars (its input row, position p's kv and score) before they arrive: the call
    # costs two memory round trips (the scalars, then the window and the RoPE row together).  The
    # window never reads ring row p % ring_size (ring_size >= K), and takes position p from the
    # input row, so writing the ring last changes nothing it reads.
    src = kvs_ptr + b.to(tl.int64) * aligned(s_kvs, 4)
    cols = tl.arange(0, 2 * COFF * D)
    row = tl.load(src + cols)
    d = tl.arange(0, D)
    kv_last = tl.load(src + (COFF - 1) * D + d)
    sc_last = tl.load(src + (2 * COFF - 1) * D + d)
    seq = tl.load(seqlens_ptr + b)
    base = tl.load(ring_ptr + b)
    loc = tl.load(loc_ptr + b)
    p = seq - 1
    if seq > 0:
        if (seq % R == 0) & (loc >= 0) & (loc < n_slots):
            normw, cos, sin = _finish_inputs(normw_ptr, freqs_ptr, s_freqs, max_pos, p + 1 - R, D)
            c = _pool_decode(kv_last, sc_last, state_ptr, s_state, ape_ptr, base, ring_size, p, 0,
                             R, COFF, D, D, BLOCK_S)
            _finish(c, normw, cos, sin, dst_ptr, dst_stride, page_size, loc, loc >= 0, D, DEST, FP8, EPS)
        if base >= 0:
            tl.store(state_ptr + (base + p % ring_size).to(tl.int64) * s_state + cols, row)


@kernel
def _compress_decode_split_kernel(
    kvs_ptr, s_kvs, state_ptr, s_state, ring_ptr, seqlens_ptr, ape_ptr, loc_ptr, ws_ptr, n_slots, ring_size, bs,
    R: tl.constexpr, COFF: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
    ROWS: tl.constexpr, PDL: tl.constexpr,
):
    """Split decode, program (block of ROWS requests, chunk): the pooled chunk of each of its
    requests at a block boundary -> ws[b].  The ring write is the finish kernel's.  ``PDL``: the
    finish kernel is a programmatic dependent launch, let go at once (it waits for this kernel
    only where it reads ws).

    ROWS > 1 is for the usual decode step, where about one request in R compresses: a program per
    request and chunk would be thousands of programs that only read their request's scalars, in
    several waves (the pooling's registers cap how many are resident); ROWS requests per program
    read theirs in one vector load and pool only the ones at a boundary, one after another (so
    ROWS > 1 is slow where many requests of a block compress: the tuner's usual step decides).
    The scalars used to be read one request at a time, each load a memory round trip, with the
    request's last input row loaded before them: H100, ROWS 8, C128 in the usual step at batch
    1024 19.9 -> 16.9 us, at 64 8.5 -> 7.3 us, at 256 13.3 -> 13.2 us (side by side).
    Measured and dropped (H100, 2026-11-26): one launch instead of two, the last chunk program of a
    row (after a counter per request) doing the norm and each program writing its requests' ring
    rows as one tile: C128 in the usual step at batch 256 13.0 -> 16.8 us, at 1024 19.8 -> 24.1 us
    (faster only at batch 64: 7.7 -> 6.0 us); with the ring written by programs of their own,
    14.8 us at 256.  Also measured and dropped: the window split into NS chunks pooled by programs
    of their own and merged by the finish kernel (at most 2% faster anywhere: C128 at batch 1 with
    one compressing request 11.3 -> 11.1 us); and the ring write moved into this kernel with a
    finish kernel over blocks of requests (13.1-22 us against 12.5 at batch 256: the finish loop
    runs its requests one after another).  What the usual step at batch 256 costs (H100, CUDA graph
    after the L2 flush): an empty kernel 4.2 us, a second one +1.5; this kernel's scalars +1.2,
    the window's round trip and fold +2.9-3.5; the finish kernel +3.3 (scalars, workspace, store)."""
    if PDL:
        gdc_launch_dependents()
    blk = tl.program_id(0)
    d0 = tl.program_id(1) * BLOCK_D
    cols = d0 + tl.arange(0, BLOCK_D)
    seqs, bases, hit = _block_scalars(seqlens_ptr, loc_ptr, ring_ptr, blk, bs, n_slots, R, ROWS)
    if tl.max(hit.to(tl.int32), axis=0) > 0:  # most blocks of the usual step: none compresses
        rr = tl.arange(0, ROWS)
        for r in range(ROWS):
            sel = rr == r
            if tl.max((sel & hit).to(tl.int32), axis=0) > 0:
                b = blk * ROWS + r
                src = kvs_ptr + b.to(tl.int64) * aligned(s_kvs, 4)
                # Issued with the window's loads (all independent): one memory round trip.
                kv_last = tl.load(src + (COFF - 1) * D + cols)
                sc_last = tl.load(src + (2 * COFF - 1) * D + cols)
                c = _pool_decode(kv_last, sc_last, state_ptr, s_state, ape_ptr, _pick(bases, sel), ring_size,
                                 _pick(seqs, sel) - 1, d0, R, COFF, D, BLOCK_D, BLOCK_S)
                tl.store(ws_ptr + b.to(tl.int64) * D + cols, c)


@kernel
def _compress_decode_finish_kernel(
    ws_ptr, seqlens_ptr, loc_ptr, normw_ptr, freqs_ptr, s_freqs, max_pos, dst_ptr, dst_stride, page_size, n_slots,
    kvs_ptr, s_kvs, state_ptr, s_state, ring_ptr, ring_size,
    R: tl.constexpr, D: tl.constexpr, DEST: tl.constexpr, FP8: tl.constexpr, EPS: tl.constexpr, W: tl.constexpr,
    PDL: tl.constexpr,
):
    """Split decode, second launch, program b: the ring write of the request's input row, and
    norm + RoPE + store of its pooled row in ws.

    Nothing before ``gdc_wait`` reads what the pooling kernel writes (ws) or writes what it reads
    (the window never reads ring row p % ring_size, ring_size >= K): with ``PDL`` (a programmatic
    dependent launch, let go by the pooling kernel as it starts) the launch, the loads and the ring
    write overlap the pooling.  Every program waits, so that this kernel never completes before the
    pooling kernel.  A tuned knob: H100, side by side, C128 in the usual step at batch 256 13.0 ->
    11.4 us (ROWS 4), one compressing request 11.4 -> 9.9 us, C4 split at batch 1-256 1.15-1.3x;
    but slower where the pooling grid runs in several waves (its later waves share the SMs with
    this kernel's waiting programs: C128 at batch 1024 with ROWS 1 23.8 -> 29.8 us).  Measured and
    dropped (2026-11-26 05:10 UTC, the shipped policy's configs, two runs each): the ring write after
    ``gdc_wait`` instead of before, so that its stores do not compete with the window's reads: C128
    in the usual step at batch 256 11.5-11.8 -> 11.6-11.7 us, at 1024 16.8-17.0 -> 17.4-17.6 us."""
    b = tl.program_id(0)
    cols = tl.arange(0, W)
    row = tl.load(kvs_ptr + b.to(tl.int64) * aligned(s_kvs, 4) + cols)  # before the scalars
    seq = tl.load(seqlens_ptr + b)
    loc = tl.load(loc_ptr + b)
    base = tl.load(ring_ptr + b)
    hit = (seq > 0) & (seq % R == 0) & (loc >= 0) & (loc < n_slots)
    normw = tl.zeros([D], tl.float32)
    cos = tl.zeros([D // 2], tl.float32)
    sin = tl.zeros([D // 2], tl.float32)
    if hit:
        normw, cos, sin = _finish_inputs(normw_ptr, freqs_ptr, s_freqs, max_pos, seq - R, D)
    if (seq > 0) & (base >= 0):
        tl.store(state_ptr + (base + (seq - 1) % ring_size).to(tl.int64) * aligned(s_state, 4) + cols, row)
    if PDL:
        gdc_wait()
    if hit:
        c = tl.load(ws_ptr + b.to(tl.int64) * D + tl.arange(0, D))
        _finish(c, normw, cos, sin, dst_ptr, dst_stride, page_size, loc, loc >= 0, D, DEST, FP8, EPS)


_decode = Launcher(_compress_decode_kernel)
_decode_split = Launcher(_compress_decode_split_kernel)
_decode_finish = Launcher(_compress_decode_finish_kernel)


def launch_decode(
    variant: str, cfg: dict[str, int], kv_score: torch.Tensor, state: torch.Tensor, ring_base: torch.Tensor,
    seq_lens: torch.Tensor, ape: torch.Tensor, norm_weight: torch.Tensor, freqs: torch.Tensor,
    out_loc: torch.Tensor, dest_kind: str, dst: list, *, ratio: int, ring_size: int, head_dim: int, fp8: str,
    eps: float, workspace: Workspace = DEFAULT_WORKSPACE,
) -> None:
    """Launch a decode step (inputs checked by :func:`dsv4_tune.serving.compressor.compress_decode`;
    ``dest_kind`` / ``dst``: the destination's DEST constexpr and arguments; the split variant's
    pooled rows live in ``workspace``, so a step that ran once allocates nothing)."""
    bs, coff = kv_score.shape[0], 2 if ratio == 4 else 1
    head = [kv_score, kv_score.stride(0), state, state.stride(0), ring_base, seq_lens, ape]
    tail = [dest_kind, fp8, float(eps)]
    if variant == "fused":
        _decode((bs, 1, 1), *head, norm_weight, freqs, freqs.stride(0), freqs.shape[0], out_loc, *dst, ring_size,
                ratio, coff, head_dim, cfg["BLOCK_S"], *tail,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return
    device = kv_score.device
    ws = workspace.take(pooled_buffer(bs, head_dim), "compress_pooled", device)
    pdl = bool(cfg["PDL"]) and pdl_enabled(device)
    _decode_split((cdiv(bs, cfg["ROWS"]), head_dim // cfg["BLOCK_D"], 1), *head, out_loc, ws, dst[3],
                  ring_size, bs, ratio, coff, head_dim, cfg["BLOCK_D"], cfg["BLOCK_S"], cfg["ROWS"], pdl,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    _decode_finish((bs, 1, 1), ws, seq_lens, out_loc, norm_weight, freqs, freqs.stride(0), freqs.shape[0], *dst,
                   kv_score, kv_score.stride(0), state, state.stride(0), ring_base, ring_size,
                   ratio, head_dim, *tail, 2 * coff * head_dim, pdl, num_warps=FINISH_WARPS[head_dim], num_stages=1,
                   launch_pdl=pdl)
