"""Triton building blocks shared by the attention kernels: KV tile loaders, the online-softmax
step, and the epilogue that writes either a final (sink-scaled) or a partial (split-K) result.

Math in log2 units: scores are ``q.k * sm_scale * LOG2E`` so that ``exp`` is ``exp2``.  Guards of
the contract: a ``-inf`` running max rescales by 0, a ``-inf`` score weighs 0, a row that saw no
valid candidate stores O = 0 and LSE = +inf.
"""

from __future__ import annotations

import triton
import triton.language as tl

from dsv4_tune.kernels.fp8 import decode_fp8, ue8m0_to_f32

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


@triton.jit
def to_bf16_rne(x):
    """fp32 -> bf16 rounded to nearest even, spelled out in integer ops.

    The Triton interpreter truncates on ``.to(tl.bfloat16)`` (even with ``rtne`` asked for), which
    doubles the output error; after this rounding the cast is exact everywhere.  NaN and inf keep
    their class.  Costs a few integer ops per output element.
    """
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & -65536
    return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)


@triton.jit
def load_q(q_ptr, t, s_q, s_qb, s_qs, s_qh, head0, h_q, BLOCK_H: tl.constexpr, DOT: tl.constexpr):
    """Q rows ``[BLOCK_H, 512]`` of query token ``t`` (batch row ``t // s_q``), as the dot dtype."""
    heads = head0 + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, 512)
    ptr = q_ptr + (t // s_q) * s_qb + (t % s_q) * s_qs + heads[:, None].to(tl.int64) * s_qh + cols[None, :]
    return tl.load(ptr, mask=(heads < h_q)[:, None], other=0.0).to(DOT)


@triton.jit
def paged_kv_block(
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_row_ptr, s_ik, k0, k_hi,
    BLOCK_N: tl.constexpr, FP8: tl.constexpr, DOT: tl.constexpr,
):
    """Gather + dequantize candidates ``[k0, k0 + BLOCK_N)`` (those < ``k_hi``) of one scope.

    Returns (kv ``[BLOCK_N, 512]`` in the dot dtype, invalid rows exactly 0; valid ``[BLOCK_N]``).
    A candidate is valid when ``0 <= idx < n_slots``; the address of an invalid one is slot 0 and
    every load of it is masked, so unused slots are never read.
    """
    ks = k0 + tl.arange(0, BLOCK_N)
    in_range = ks < k_hi
    idx = tl.load(idx_row_ptr + ks * s_ik, mask=in_range, other=-1)
    valid = in_range & (idx >= 0) & (idx < n_slots)
    slot = tl.where(valid, idx, 0).to(tl.int64)
    page = slot // page_size
    off = slot % page_size
    data = page * stride_page + off * 576
    cols = tl.arange(0, 512)
    is_nope = cols < 448
    vmask = valid[:, None]
    raw = tl.load(kv_ptr + data[:, None] + cols[None, :], mask=vmask & is_nope[None, :], other=0)
    rope_ptr = kv_ptr.to(tl.pointer_type(tl.bfloat16))
    rope_cols = tl.maximum(cols - 448, 0)
    rope_off = page * stride_page_h + off * 288 + 224
    rope = tl.load(rope_ptr + rope_off[:, None] + rope_cols[None, :], mask=vmask & (~is_nope)[None, :], other=0.0)
    # The 7 UE8M0 bytes (and the pad) of a token in one 8-byte load; column j uses byte j // 64.
    scale_ptr = kv_ptr.to(tl.pointer_type(tl.uint64))
    scale_off = (page * stride_page + page_size * 576 + off * 8) // 8
    packed = tl.load(scale_ptr + scale_off, mask=valid, other=0)
    shift = (tl.minimum(cols // 64, 6) * 8).to(tl.uint64)
    scale = ue8m0_to_f32((packed[:, None] >> shift[None, :]) & 0xFF)
    nope = decode_fp8(raw, FP8) * scale
    kv = tl.where(is_nope[None, :], nope, rope.to(tl.float32))
    kv = tl.where(vmask, kv, 0.0)
    return kv.to(tl.bfloat16).to(DOT), valid


@triton.jit
def gathered_kv_block(kv_row_ptr, inv_row_ptr, k0, k_hi, BLOCK_N: tl.constexpr, DOT: tl.constexpr):
    """Candidates ``[k0, k0 + BLOCK_N)`` of one token from the gathered BF16 buffer and its mask."""
    ks = k0 + tl.arange(0, BLOCK_N)
    in_range = ks < k_hi
    invalid = tl.load(inv_row_ptr + ks, mask=in_range, other=1)
    valid = in_range & (invalid == 0)
    cols = tl.arange(0, 512)
    kv = tl.load(kv_row_ptr + ks[:, None].to(tl.int64) * 512 + cols[None, :], mask=valid[:, None], other=0.0)
    return kv.to(DOT), valid


@triton.jit
def softmax_step(q, kv, valid, m_i, l_i, acc, qk_scale, DOT: tl.constexpr):
    """One online-softmax update with a ``[BLOCK_N, 512]`` tile (K = V)."""
    s = tl.dot(q, tl.trans(kv)) * qk_scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Subtract a finite max: exp2(-inf - m) = 0 gives the -inf guards (alpha and p) for free, and
    # a row that has seen only invalid candidates keeps m = -inf, l = 0, acc = 0.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT), kv)
    return m_new, l_i, acc


@triton.jit
def store_result(
    acc, m_i, l_i, t, t_out, split, n_tok_out, head0, h_q,
    out_ptr, s_ob, s_os, s_oh, s_q, lse_ptr, s_lb, s_lh,
    part_o_ptr, part_lse_ptr, sink_ptr,
    HAS_SINK: tl.constexpr, SPLIT: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Write O / LSE of query token ``t`` (final), or the split's normalised partial O and LSE.

    Final: ``O = acc / (l + exp(sink - m))`` (sink optional), ``LSE = m + ln l`` without the sink.
    Partial: ``O = acc / l`` fp32 at ``[split, t_out, head]``, LSE likewise.  A row with no valid
    candidate stores O = 0 and LSE = +inf.
    """
    heads = head0 + tl.arange(0, BLOCK_H)
    hmask = heads < h_q
    cols = tl.arange(0, 512)
    lonely = l_i == 0.0
    safe_m = tl.where(lonely, 0.0, m_i)
    lse = tl.where(lonely, float("inf"), (safe_m + tl.math.log2(tl.where(lonely, 1.0, l_i))) * 0.6931471805599453)
    if SPLIT:
        o = acc * tl.where(lonely, 0.0, 1.0 / tl.where(lonely, 1.0, l_i))[:, None]
        row = (split * n_tok_out + t_out).to(tl.int64) * h_q + heads
        tl.store(part_o_ptr + row[:, None] * 512 + cols[None, :], o, mask=hmask[:, None])
        tl.store(part_lse_ptr + row, lse, mask=hmask)
    else:
        denom = l_i
        if HAS_SINK:
            sink = tl.load(sink_ptr + heads, mask=hmask, other=float("-inf"))
            denom = l_i + tl.math.exp2(tl.where(lonely, float("-inf"), sink * 1.4426950408889634 - safe_m))
        scale = tl.where(lonely, 0.0, 1.0 / tl.where(lonely, 1.0, denom))
        o = acc * scale[:, None]
        tb = t // s_q
        ts = t % s_q
        optr = out_ptr + tb * s_ob + ts * s_os + heads[:, None].to(tl.int64) * s_oh + cols[None, :]
        tl.store(optr, to_bf16_rne(o), mask=hmask[:, None])
        tl.store(lse_ptr + tb * s_lb + heads.to(tl.int64) * s_lh + ts, lse, mask=hmask)
