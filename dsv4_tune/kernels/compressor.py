"""DSV4 compressor kernels (C4 "CSA" and C128 "HCA"): state ring + per-channel softmax pooling +
RMSNorm + interleaved RoPE + store into the FP8 pool or a dense tensor.

Notation: ratio R in {4, 128}; coff = 2 for C4, else 1; window K = R * coff; head_dim D in {512, 128};
row width W = 2 * coff * D.  ``kv_score`` rows are fp32 ``[kv_A | kv_B | score_A | score_B]`` (C4) or
``[kv | score]`` (C128).  Request b owns state ring rows ``ring_base[b] + (pos mod ring_size)``.

The compressed row of boundary position p (``(p + 1) mod R == 0``) pools positions
``s = p - K + 1 + k`` for k < K: per channel d, ``c[d] = sum_k softmax_k(score_k[d] + ape[k, d]) kv_k[d]``
with the A half for k < R and the B half for k >= R (C4).  Empty slots (s < 0, or ring positions of a
request with ``ring_base < 0``) and scores of -inf get weight exactly 0; a channel with no weight is 0.
Then ``y = c * rsqrt(mean(c^2) + eps) * norm_weight`` and RoPE on the last 64 dims at position
``p + 1 - R``.  The row never leaves registers between the pooling and the store (no store-reload).

Upstream bugs this code avoids by construction (see spec compressor.md §5): the softmax subtracts a
finite running max (0 while a channel has seen only -inf), so a -inf score weighs exp(-inf) = 0 and
``-inf - -inf`` is never formed (no NaN to mask afterwards); no write goes through a negative
or out-of-range ring base or out_loc (slot 0 is never a fallback); the spec's "write the ring, then
read the window" holds in effect: decode takes position p from the input row and never reads the
ring row it writes (ring_size >= K), so it stores that row last, after every load; prefill writes
the ring only after every window that reads it has been read (block 0 of a request after its
windows, which are the ring's only readers, in the fused C4 kernel with ROWS >= 2; else a later
launch: the ring kernel after the fused one, the split variant's finish kernel).

Config spaces live in :mod:`dsv4_tune.kernels.compressor_space` (pure, no torch/triton).
Nothing in the launch path synchronises with the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from dsv4_tune.kernels.attention_core import aligned, to_bf16_rne
from dsv4_tune.kernels.checks import check_device, check_kv_cache
from dsv4_tune.kernels.compressor_space import (
    FINISH_WARPS,
    HEAD_DIMS,
    RATIOS,
    VARIANTS,
    compressor_default,
    compressor_problems,
    default_variant,
    window,
)
from dsv4_tune.kernels.fp8 import encode_fp8
from dsv4_tune.kernels.kv_layout import HEAD_DIM, ROPE_DIM, Fp8Flavour, check_flavour, num_slots
from dsv4_tune.kernels.launch import Launcher, kernel
from dsv4_tune.kernels.runtime import pdl_enabled

# ---------------------------------------------------------------------------------------------
# Device helpers


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
def _fold(m, den, acc, sc, kv):
    """One online-softmax step over the positions (axis 0) of a ``[n, cols]`` tile.

    The -inf guard: subtract a finite max (0 while every score so far is -inf), so a -inf score
    or running max gives exp(-inf) = 0 and no -inf - -inf (NaN) is ever formed."""
    m_new = tl.maximum(m, tl.max(sc, axis=0))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp(m - m_safe)
    w = tl.exp(sc - m_safe[None, :])
    return m_new, den * alpha + tl.sum(w, axis=0), acc * alpha + tl.sum(w * kv, axis=0)


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


@triton.jit
def _ue8m0_exponent(amax, FP8: tl.constexpr):
    """``ceil(log2(max(amax, 1e-8) / FP8_MAX))`` exactly, from the fp32 bit fields (int32).

    FP8_MAX = 1.75 * 2^8 (448) or 1.875 * 2^7 (240): the exponent is amax's own, shifted, plus one
    when amax's significand exceeds the maximum's.
    """
    bits = tl.maximum(amax, 1e-8).to(tl.int32, bitcast=True)
    e = (bits >> 23) - 127
    mant = bits & 0x7FFFFF
    if FP8 == "e4m3fn":  # noqa: SIM108 (constexpr branches)
        out = e - 8 + (mant > 0x600000).to(tl.int32)
    else:
        out = e - 7 + (mant > 0x700000).to(tl.int32)
    return out


@triton.jit
def _finish_inputs(normw_ptr, freqs_ptr, s_freqs, max_pos, rpos, D: tl.constexpr):
    """The norm weight and the RoPE cos / sin at ``rpos`` that :func:`_finish` applies.

    Loaded by the callers before the pooling, so that these loads (a freqs row from DRAM for a
    new position) overlap the window's instead of adding a memory round trip after it.  RoPE
    positions at or beyond ``max_pos`` (the rows of ``freqs``) are not rotated (cos 1, sin 0).
    """
    j = tl.arange(0, D // 2) - (D - 64) // 2
    fmask = j >= tl.where(rpos < max_pos, 0, D)  # (not `j >= 0 & scalar`: the interpreter makes that int32)
    frow = freqs_ptr + rpos.to(tl.int64) * s_freqs + 2 * j
    return tl.load(normw_ptr + tl.arange(0, D)), tl.load(frow, mask=fmask, other=1.0), tl.load(
        frow + 1, mask=fmask, other=0.0)


@triton.jit
def _finish(
    c, normw, cos, sin, dst_ptr, dst_stride, page_size, loc, store,
    D: tl.constexpr, DEST: tl.constexpr, FP8: tl.constexpr, EPS: tl.constexpr,
):
    """RMSNorm + interleaved RoPE (``normw``, ``cos``, ``sin`` from :func:`_finish_inputs`) of the
    fp32 row ``c [D]``, stored at slot ``loc`` if ``store`` (else nothing is written: the caller
    need not wait for the slot id to start pooling).

    ``DEST``: "pool" (FP8 pool bytes; D = 512), "f32" or "bf16" (dense rows of ``dst_stride``
    elements).
    """
    d = tl.arange(0, D)
    y = c * tl.rsqrt(tl.sum(c * c, axis=0) / D + EPS) * normw
    x0, x1 = tl.split(tl.reshape(y, (D // 2, 2)))
    rope = (tl.arange(0, D // 2) - (D - 64) // 2) >= 0
    y0 = tl.where(rope, x0 * cos - x1 * sin, x0)
    y1 = tl.where(rope, x0 * sin + x1 * cos, x1)
    y = tl.reshape(tl.join(y0, y1), (D,))
    loc = loc.to(tl.int64)
    if DEST == "pool":
        # kv_layout.quantize_tokens: 7 NoPE tiles of 64 with a UE8M0 scale each, RoPE as BF16 RNE.
        page = loc // page_size
        off = loc % page_size
        data = page * dst_stride + off * 576
        scales = page * dst_stride + page_size * 576 + off * 8
        t = tl.reshape(y, (8, 64))
        g = tl.arange(0, 8)
        col = tl.arange(0, 64)
        e = _ue8m0_exponent(tl.max(tl.abs(t), axis=1), FP8)
        inv = ((127 - e) << 23).to(tl.float32, bitcast=True)  # 2^-e, exact
        fmax: tl.constexpr = 448.0 if FP8 == "e4m3fn" else 240.0
        qv = tl.minimum(tl.maximum(t * inv[:, None], -fmax), fmax)
        nope = (g < 7)[:, None]
        keep = (g * 0 + store.to(tl.int32)) > 0  # (a tensor: the interpreter's `bool tensor & bool` is int32)
        tl.store(dst_ptr + data + (g * 64)[:, None] + col[None, :], encode_fp8(qv, FP8),
                 mask=nope & keep[:, None])
        rope_ptr = dst_ptr.to(tl.pointer_type(tl.bfloat16)) + data // 2 + 224
        tl.store(rope_ptr + col[None, :] + 0 * g[:, None], to_bf16_rne(t), mask=((g == 7) & keep)[:, None])
        tl.store(dst_ptr + scales + g, (e + 127).to(tl.uint8), mask=(g < 7) & keep)
    else:
        keep = (d * 0 + store.to(tl.int32)) > 0
        if DEST == "f32":
            tl.store(dst_ptr.to(tl.pointer_type(tl.float32)) + loc * dst_stride + d, y, mask=keep)
        else:
            tl.store(dst_ptr.to(tl.pointer_type(tl.bfloat16)) + loc * dst_stride + d, to_bf16_rne(y), mask=keep)


# ---------------------------------------------------------------------------------------------
# Kernels (pointer names are typed in POINTER_TYPES for the cross-compile check)


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


@triton.jit
def _prefill_window(cu_ptr, prefix_ptr, b, j, R: tl.constexpr):
    """Boundary j of request b: (its position p, the request's first ragged row, prefix, ok)."""
    t0 = tl.load(cu_ptr + b)
    n = tl.load(cu_ptr + b + 1) - t0
    q = tl.load(prefix_ptr + b)
    p = (q // R + j + 1) * R - 1  # the (j+1)-th position >= q with (p + 1) mod R == 0
    return p, t0, q, p < q + n


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


_decode = Launcher(_compress_decode_kernel)
_decode_split = Launcher(_compress_decode_split_kernel)
_decode_finish = Launcher(_compress_decode_finish_kernel)
_prefill = Launcher(_compress_prefill_kernel)
_prefill_split = Launcher(_compress_prefill_split_kernel)
_prefill_finish = Launcher(_compress_prefill_finish_kernel)
_ring_write = Launcher(_ring_write_kernel)

# For dsv4_tune.kernels.crosscompile: the kernels by name and the type of every pointer parameter.
# The destination is always passed as bytes (``dst_ptr``) and re-typed in the kernel by ``DEST``.
KERNELS = {fn.fn.__name__: fn for fn in (
    _compress_decode_kernel, _compress_decode_split_kernel, _compress_decode_finish_kernel,
    _compress_prefill_kernel, _compress_prefill_split_kernel, _compress_prefill_finish_kernel, _ring_write_kernel,
)}
POINTER_TYPES = {
    "kvs_ptr": "*fp32", "state_ptr": "*fp32", "ring_ptr": "*i32", "seqlens_ptr": "*i32", "ape_ptr": "*fp32",
    "normw_ptr": "*fp32", "freqs_ptr": "*fp32", "loc_ptr": "*i32", "dst_ptr": "*u8", "ws_ptr": "*fp32",
    "cu_ptr": "*i32", "prefix_ptr": "*i32",
}

# ---------------------------------------------------------------------------------------------
# Host side

Launch = tuple[str, tuple[tuple[str, object], ...], int, int]  # = variants.KernelLaunch


def ring_in_kernel(ratio: int, rows: int) -> bool:
    """Whether the fused prefill kernel writes the ring itself: C4 with ROWS >= 2, where block 0 of
    a request holds both windows that read the ring (0 and 1) and can write it after them."""
    return ratio == 4 and rows >= 2


def compressor_launches(
    ratio: int, head_dim: int, mode: str, config: dict[str, int], *, variant: str = "fused",
    dest: str = "pool", fp8: str = "e4m3fn", eps: float = 1e-6, pdl: bool = False,
) -> list[Launch]:
    """The kernels one call launches, as (name, sorted constexprs, num_warps, num_stages).

    ``dest`` is "pool", "f32" or "bf16"; ``pdl``: whether the target can launch programmatic
    dependents (:func:`~dsv4_tune.kernels.runtime.pdl_enabled`: CUDA sm90 and up), which a split
    decode config with ``PDL`` 1 then does; the format of ``variants.plan_kernels`` so that
    ``crosscompile.compile_kernel(KernelSpec(arch, launch))`` can build them for any arch (after
    ``crosscompile._KERNELS.update(KERNELS)`` and ``crosscompile._POINTERS.update(POINTER_TYPES)``).
    """
    problems = compressor_problems(ratio, head_dim, mode, config, variant)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    coff, c = 2 if ratio == 4 else 1, config
    pdl = pdl and bool(c.get("PDL", 0))
    w, st = c["num_warps"], c["num_stages"]
    width = 2 * coff * head_dim
    fin_w = FINISH_WARPS[head_dim]
    tail = {"DEST": dest, "FP8": fp8, "EPS": eps}

    def launch(name: str, warps: int, stages: int, **kw: object) -> Launch:
        return name, tuple(sorted(kw.items())), warps, stages

    if mode == "decode":
        if variant == "fused":
            return [launch("_compress_decode_kernel", w, st, R=ratio, COFF=coff, D=head_dim, BLOCK_S=c["BLOCK_S"],
                           **tail)]
        return [launch("_compress_decode_split_kernel", w, st, R=ratio, COFF=coff, D=head_dim,
                       BLOCK_D=c["BLOCK_D"], BLOCK_S=c["BLOCK_S"], ROWS=c["ROWS"], PDL=pdl),
                launch("_compress_decode_finish_kernel", fin_w, 1, R=ratio, D=head_dim, **tail, W=width, PDL=pdl)]
    if variant == "fused":
        ring = ring_in_kernel(ratio, c["ROWS"])
        fused = launch("_compress_prefill_kernel", w, st, R=ratio, COFF=coff, D=head_dim, BLOCK_S=c["BLOCK_S"],
                       ROWS=c["ROWS"], **tail, RING=ring)
        return [fused] if ring else [fused, launch("_ring_write_kernel", 4, 1, W=width)]
    return [launch("_compress_prefill_split_kernel", w, st, R=ratio, COFF=coff, D=head_dim, BLOCK_D=c["BLOCK_D"],
                   BLOCK_S=c["BLOCK_S"], ROWS=c["ROWS"]),
            launch("_compress_prefill_finish_kernel", fin_w, 1, R=ratio, D=head_dim, ROWS=c["ROWS"], W=width, **tail)]


def _check_tensor(name: str, t: torch.Tensor, dtype: torch.dtype, shape: tuple, device: torch.device) -> None:
    """dtype, shape (None = any size) and device of one input; the last dim must be contiguous."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != n for s, n in zip(shape, t.shape, strict=True)):
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name}: expected a contiguous last dim, got strides {t.stride()}")
    check_device(name, t, device)


def _dest_args(dest: torch.Tensor, head_dim: int, fp8: str, device: torch.device) -> tuple[str, list]:
    """(DEST constexpr, [bytes view, stride, page size, slot count]) of a pool view or dense rows."""
    if dest.dtype == torch.uint8:
        check_kv_cache("dest", dest)
        check_device("dest", dest, device)
        check_flavour(fp8)
        if head_dim != HEAD_DIM:
            raise ValueError(f"dest: an FP8 pool holds rows of {HEAD_DIM}, but head_dim is {head_dim}")
        return "pool", [dest, dest.stride(0), dest.shape[1], num_slots(dest)]
    if dest.dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"dest: expected an FP8 pool view (uint8) or dense float32/bfloat16 rows, got {dest.dtype}")
    _check_tensor("dest", dest, dest.dtype, (None, head_dim), device)
    kind = "f32" if dest.dtype == torch.float32 else "bf16"
    return kind, [dest.view(torch.uint8), dest.stride(0), 1, dest.shape[0]]


def _check_common(
    kv_score: torch.Tensor, state: torch.Tensor, ring_base: torch.Tensor, ape: torch.Tensor,
    norm_weight: torch.Tensor, freqs: torch.Tensor, ratio: int, ring_size: int, bs: int,
) -> tuple[int, int]:
    """Shared checks; returns (coff, head_dim)."""
    if ratio not in RATIOS:
        raise ValueError(f"ratio: expected one of {RATIOS}, got {ratio}")
    coff = 2 if ratio == 4 else 1
    if not isinstance(kv_score, torch.Tensor) or kv_score.dim() != 2:
        raise ValueError(f"kv_score: expected a 2-D tensor [tokens, 2 * coff * head_dim], got "
                         f"{getattr(kv_score, 'shape', kv_score)}")
    width = kv_score.shape[1]
    head_dim = width // (2 * coff)
    if width % (2 * coff) or head_dim not in HEAD_DIMS:
        raise ValueError(f"kv_score: width {width} is not 2 * {coff} * head_dim for a head_dim in {HEAD_DIMS}")
    device = kv_score.device
    _check_tensor("kv_score", kv_score, torch.float32, (None, width), device)
    _check_tensor("state", state, torch.float32, (None, width), device)
    _check_tensor("ring_base", ring_base, torch.int32, (bs,), device)
    k = window(ratio)
    _check_tensor("ape", ape, torch.float32, (k, head_dim), device)
    if not ape.is_contiguous():
        raise ValueError("ape: expected a contiguous tensor")
    _check_tensor("norm_weight", norm_weight, torch.float32, (head_dim,), device)
    _check_tensor("freqs", freqs, torch.float32, (None, ROPE_DIM), device)
    for name, t in (("kv_score", kv_score), ("state", state)):
        if t.shape[0] > 1 and t.stride(0) % 4:
            raise ValueError(f"{name}: expected a row stride that is a multiple of 4 elements (16 B), got {t.stride(0)}")
    if ring_size not in (k, 2 * k):
        raise ValueError(f"ring_size: expected {k} or {2 * k} (window {k}, or speculative), got {ring_size}")
    return coff, head_dim


def _config(
    ratio: int, head_dim: int, mode: str, config: dict[str, int] | None, variant: str | None
) -> tuple[str, dict[str, int]]:
    """(variant, config): ``variant=None`` follows the config's keys (BLOCK_D: split), else the
    ratio's default variant; ``config=None`` is that variant's default."""
    if variant is None:
        variant = ("split" if "BLOCK_D" in config else "fused") if config is not None else default_variant(ratio)
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")
    if config is None:
        return variant, compressor_default(ratio, head_dim, mode, variant)
    problems = compressor_problems(ratio, head_dim, mode, dict(config), variant)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    return variant, dict(config)


def compress_decode(
    kv_score: torch.Tensor,
    state: torch.Tensor,
    ring_base: torch.Tensor,
    seq_lens: torch.Tensor,
    ape: torch.Tensor,
    norm_weight: torch.Tensor,
    freqs: torch.Tensor,
    out_loc: torch.Tensor,
    dest: torch.Tensor,
    *,
    ratio: int,
    ring_size: int,
    eps: float = 1e-6,
    fp8: Fp8Flavour = "e4m3fn",
    config: dict[str, int] | None = None,
    variant: str | None = None,
) -> None:
    """One decode token per request at position ``seq_lens[b] - 1`` (``seq_lens <= 0``: padding).

    Writes ``kv_score[b]`` into the request's ring row (if ``ring_base[b] >= 0``); at a block
    boundary (``seq_lens[b] % ratio == 0``) with ``0 <= out_loc[b] < slots``, pools the window
    (the current position from ``kv_score``, earlier ones from the ring), normalises, applies RoPE
    at ``seq_lens[b] - ratio`` and stores the row at ``out_loc[b]`` of ``dest`` (an FP8 pool view
    ``[pages, P, 1, 584]`` for head_dim 512, or dense float32/bfloat16 rows ``[slots, head_dim]``).
    ``variant``: "fused" or "split"; None follows the config's keys, else split for C128, fused for C4.
    """
    bs = kv_score.shape[0] if isinstance(kv_score, torch.Tensor) and kv_score.dim() == 2 else -1
    coff, head_dim = _check_common(kv_score, state, ring_base, ape, norm_weight, freqs, ratio, ring_size, bs)
    device = kv_score.device
    _check_tensor("seq_lens", seq_lens, torch.int32, (bs,), device)
    _check_tensor("out_loc", out_loc, torch.int32, (bs,), device)
    kind, dst = _dest_args(dest, head_dim, fp8, device)
    variant, cfg = _config(ratio, head_dim, "decode", config, variant)
    if bs == 0:
        return
    head = [kv_score, kv_score.stride(0), state, state.stride(0), ring_base, seq_lens, ape]
    tail = [kind, fp8, float(eps)]
    if variant == "fused":
        _decode((bs, 1, 1), *head, norm_weight, freqs, freqs.stride(0), freqs.shape[0], out_loc, *dst, ring_size,
                ratio, coff, head_dim, cfg["BLOCK_S"], *tail,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return
    ws = torch.empty(bs, head_dim, dtype=torch.float32, device=device)
    pdl = bool(cfg["PDL"]) and pdl_enabled(device)
    _decode_split((triton.cdiv(bs, cfg["ROWS"]), head_dim // cfg["BLOCK_D"], 1), *head, out_loc, ws, dst[3],
                  ring_size, bs, ratio, coff, head_dim, cfg["BLOCK_D"], cfg["BLOCK_S"], cfg["ROWS"], pdl,
                  num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    _decode_finish((bs, 1, 1), ws, seq_lens, out_loc, norm_weight, freqs, freqs.stride(0), freqs.shape[0], *dst,
                   kv_score, kv_score.stride(0), state, state.stride(0), ring_base, ring_size,
                   ratio, head_dim, *tail, 2 * coff * head_dim, pdl, num_warps=FINISH_WARPS[head_dim], num_stages=1,
                   launch_pdl=pdl)


def compress_prefill(
    kv_score: torch.Tensor,
    cu_seqlens: torch.Tensor,
    prefix_lens: torch.Tensor,
    state: torch.Tensor,
    ring_base: torch.Tensor,
    ape: torch.Tensor,
    norm_weight: torch.Tensor,
    freqs: torch.Tensor,
    out_loc: torch.Tensor,
    dest: torch.Tensor,
    *,
    ratio: int,
    ring_size: int,
    eps: float = 1e-6,
    fp8: Fp8Flavour = "e4m3fn",
    config: dict[str, int] | None = None,
    variant: str | None = None,
    max_new_tokens: int | None = None,
) -> None:
    """Ragged prefill: request b's new tokens are rows ``cu_seqlens[b] : cu_seqlens[b + 1]`` of
    ``kv_score`` at positions ``prefix_lens[b] + i``; its earlier positions' last ``ring_size`` rows
    are in the ring.

    Every new boundary token whose ``out_loc`` (per ragged token) is a valid slot gets its row
    (window positions >= prefix from ``kv_score``, earlier ones from the ring); after the windows
    that read the ring, the request's last ``min(ring_size, new tokens)`` positions are written into
    it (fused C4 with ROWS >= 2: by the same kernel; else a later launch).
    ``max_new_tokens`` (optional, a host int >= every request's new-token count) bounds the grid;
    without it the grid assumes any request may hold all ``kv_score`` rows (correct, more idle programs).
    """
    n_tok = kv_score.shape[0] if isinstance(kv_score, torch.Tensor) and kv_score.dim() == 2 else -1
    bs = ring_base.shape[0] if isinstance(ring_base, torch.Tensor) and ring_base.dim() == 1 else -1
    coff, head_dim = _check_common(kv_score, state, ring_base, ape, norm_weight, freqs, ratio, ring_size, bs)
    device = kv_score.device
    _check_tensor("cu_seqlens", cu_seqlens, torch.int32, (bs + 1,), device)
    _check_tensor("prefix_lens", prefix_lens, torch.int32, (bs,), device)
    _check_tensor("out_loc", out_loc, torch.int32, (n_tok,), device)
    if not cu_seqlens.is_contiguous():
        raise ValueError("cu_seqlens: expected a contiguous tensor")
    kind, dst = _dest_args(dest, head_dim, fp8, device)
    variant, cfg = _config(ratio, head_dim, "prefill", config, variant)
    if max_new_tokens is not None and max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
    longest = n_tok if max_new_tokens is None else min(max_new_tokens, n_tok)
    if bs == 0 or longest == 0:
        return
    n_win = triton.cdiv(triton.cdiv(longest, ratio), cfg["ROWS"])  # n new tokens hold <= ceil(n / R) boundaries
    head = [kv_score, kv_score.stride(0), cu_seqlens, prefix_lens, state, state.stride(0), ring_base, ape]
    tail = [kind, fp8, float(eps)]
    width = 2 * coff * head_dim
    if variant == "fused":
        ring = ring_in_kernel(ratio, cfg["ROWS"])
        _prefill((n_win, bs, 1), *head, norm_weight, freqs, freqs.stride(0), freqs.shape[0], out_loc, *dst,
                 ring_size, ratio, coff, head_dim, cfg["BLOCK_S"], cfg["ROWS"], *tail, ring,
                 num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        if ring:
            return
    else:
        ws = torch.empty(n_tok, head_dim, dtype=torch.float32, device=device)
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

