"""Triton building blocks shared by the attention kernels: KV tile loaders, the online-softmax
state and step, the kernels' scope and epilogue arguments, and the epilogue that writes either a final (sink-scaled) or a partial (split-K) result.

The 512 head dims are handled as four column tiles, 256 + 128 + 64 NoPE and 64 RoPE, so that every
load is a full-width row segment of one kind (FP8 bytes or BF16) with no column mask: that keeps
the loads 16 bytes wide and wastes no MMA work on padding.

Math in log2 units: scores are ``q.k * sm_scale * LOG2E`` so that ``exp`` is ``exp2``.  Guards of
the contract: a ``-inf`` running max rescales by 0, a ``-inf`` score weighs 0, a row that saw no
valid candidate stores O = 0 and LSE = +inf.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.fp8 import decode_fp8, ue8m0_to_f32
from dsv4_tune.kernels.kv_layout import num_slots

LOG2E = 1.4426950408889634


@triton.jit
def aligned(x, MULTIPLE: tl.constexpr):
    """``x`` rounded down to a multiple of MULTIPLE: the identity for the values our input checks
    allow, written so that the compiler can see the alignment of an unspecialized scalar (it
    cannot see a ``tl.multiple_of`` hint on one) and emit 16-byte accesses."""
    return (x // MULTIPLE) * MULTIPLE


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
def _row_tile(ptr, rows, mask, C0: tl.constexpr, W: tl.constexpr, DOT: tl.constexpr):
    cols = C0 + tl.arange(0, W)
    return tl.load(ptr + rows[:, None] + cols[None, :], mask=mask[:, None], other=0.0).to(DOT)


@triton.jit
def load_q(q_ptr, t, s_q, s_qb, s_qs, s_qh, head0, h_q, BLOCK_H: tl.constexpr, DOT: tl.constexpr):
    """The four Q tiles ``[BLOCK_H, 256 | 128 | 64 | 64]`` of query token ``t`` (row ``t // s_q``)."""
    # Row strides are multiples of 8 elements (16 B): the entry makes q contiguous otherwise.
    heads = head0 + tl.arange(0, BLOCK_H)
    rows = (t // s_q) * aligned(s_qb, 8) + (t % s_q) * aligned(s_qs, 8) + heads.to(tl.int64) * aligned(s_qh, 8)
    hmask = heads < h_q
    q0 = _row_tile(q_ptr, rows, hmask, 0, 256, DOT)
    q1 = _row_tile(q_ptr, rows, hmask, 256, 128, DOT)
    q2 = _row_tile(q_ptr, rows, hmask, 384, 64, DOT)
    q3 = _row_tile(q_ptr, rows, hmask, 448, 64, DOT)
    return q0, q1, q2, q3


@triton.jit
def _nope_tile(kv_ptr, data, packed, valid, C0: tl.constexpr, W: tl.constexpr, FP8: tl.constexpr, DOT: tl.constexpr):
    """NoPE columns ``[C0, C0 + W)`` of BLOCK_N tokens, dequantized; invalid rows exactly 0.

    ``packed`` holds the 4 scale bytes of this tile's 64-column groups (bytes 0-3 for columns
    0-255, bytes 4-7 beyond), so column j uses byte ``(j // 64) % 4`` of it.
    """
    cols = C0 + tl.arange(0, W)
    raw = tl.load(kv_ptr + data[:, None] + cols[None, :], mask=valid[:, None], other=0)
    shift = ((cols // 64) % 4) * 8
    scale = ue8m0_to_f32((packed[:, None] >> shift[None, :]) & 0xFF)
    val = tl.where(valid[:, None], decode_fp8(raw, FP8) * scale, 0.0)
    return val.to(tl.bfloat16).to(DOT)


@triton.jit
def paged_kv_block(
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_row_ptr, s_ik, k0, k_hi,
    BLOCK_N: tl.constexpr, FP8: tl.constexpr, DOT: tl.constexpr,
):
    """Gather + dequantize candidates ``[k0, k0 + BLOCK_N)`` (those < ``k_hi``) of one scope.

    Returns the four KV tiles (dot dtype, invalid rows exactly 0) and ``valid [BLOCK_N]``.  A
    candidate is valid when ``0 <= idx < n_slots``; an invalid one addresses slot 0 with every load
    masked, so unused slots are never read.
    """
    ks = k0 + tl.arange(0, BLOCK_N)
    in_range = ks < k_hi
    idx = tl.load(idx_row_ptr + ks * s_ik, mask=in_range, other=-1)
    valid = in_range & (idx >= 0) & (idx < n_slots)
    slot = tl.where(valid, idx, 0).to(tl.int64)
    page = slot // page_size
    off = slot % page_size
    base = page * aligned(stride_page, 576)  # page strides are multiples of 576 B (check_kv_cache)
    data = base + off * 576
    # The 7 UE8M0 bytes (and the pad) of a token as two 4-byte words; column j uses byte j // 64.
    words = kv_ptr.to(tl.pointer_type(tl.uint32)) + (base + page_size * 576 + off * 8) // 4
    lo = tl.load(words, mask=valid, other=0)
    hi = tl.load(words + 1, mask=valid, other=0)
    k0t = _nope_tile(kv_ptr, data, lo, valid, 0, 256, FP8, DOT)
    k1t = _nope_tile(kv_ptr, data, hi, valid, 256, 128, FP8, DOT)
    k2t = _nope_tile(kv_ptr, data, hi, valid, 384, 64, FP8, DOT)
    rope_rows = page * aligned(stride_page_h, 288) + off * 288 + 224
    k3t = _row_tile(kv_ptr.to(tl.pointer_type(tl.bfloat16)), rope_rows, valid, 0, 64, tl.bfloat16)
    k3t = tl.where(valid[:, None], k3t, 0.0).to(DOT)
    return k0t, k1t, k2t, k3t, valid


@triton.jit
def gathered_kv_block(kv_row_ptr, inv_row_ptr, k0, k_hi, BLOCK_N: tl.constexpr, DOT: tl.constexpr):
    """Candidates ``[k0, k0 + BLOCK_N)`` of one token from the gathered BF16 buffer and its mask."""
    ks = k0 + tl.arange(0, BLOCK_N)
    in_range = ks < k_hi
    invalid = tl.load(inv_row_ptr + ks, mask=in_range, other=1)
    valid = in_range & (invalid == 0)
    rows = ks.to(tl.int64) * 512
    k0t = _row_tile(kv_row_ptr, rows, valid, 0, 256, DOT)
    k1t = _row_tile(kv_row_ptr, rows, valid, 256, 128, DOT)
    k2t = _row_tile(kv_row_ptr, rows, valid, 384, 64, DOT)
    k3t = _row_tile(kv_row_ptr, rows, valid, 448, 64, DOT)
    return k0t, k1t, k2t, k3t, valid


@triton.jit
def softmax_init(BLOCK_H: tl.constexpr):
    """The empty online softmax of ``BLOCK_H`` heads: running max, denominator and the four
    accumulator column blocks (256 + 128 + 64 NoPE, 64 RoPE) of :func:`softmax_step`."""
    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    a0 = tl.zeros([BLOCK_H, 256], tl.float32)
    a1 = tl.zeros([BLOCK_H, 128], tl.float32)
    a2 = tl.zeros([BLOCK_H, 64], tl.float32)
    a3 = tl.zeros([BLOCK_H, 64], tl.float32)
    return m_i, l_i, a0, a1, a2, a3


@triton.jit
def softmax_step(
    q0, q1, q2, q3, k0t, k1t, k2t, k3t, valid, m_i, l_i, a0, a1, a2, a3, qk_scale, DOT: tl.constexpr
):
    """One online-softmax update with a BLOCK_N-candidate tile (K = V), four column tiles."""
    BLOCK_H: tl.constexpr = q0.shape[0]
    BLOCK_N: tl.constexpr = k0t.shape[0]
    if BLOCK_H * BLOCK_N <= 512:
        # Small tiles (small T): three independent MMA chains (16 + 8 + 8 k-steps) instead of one of 32,
        # for the latency of a block; their accumulators cost a few registers at this size.
        s = tl.dot(q0, tl.trans(k0t)) + tl.dot(q1, tl.trans(k1t)) + tl.dot(q2, tl.trans(k2t), acc=tl.dot(q3, tl.trans(k3t)))
        s = s * qk_scale
    else:
        s = tl.dot(q0, tl.trans(k0t))
        s = tl.dot(q1, tl.trans(k1t), acc=s)
        s = tl.dot(q2, tl.trans(k2t), acc=s)
        s = tl.dot(q3, tl.trans(k3t), acc=s) * qk_scale
    s = tl.where(valid[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Subtract a finite max: exp2(-inf - m) = 0 gives the -inf guards (alpha and p) for free, and
    # a row that has seen only invalid candidates keeps m = -inf, l = 0, acc = 0.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    p = p.to(DOT)
    a0 = tl.dot(p, k0t, acc=a0 * alpha[:, None])
    a1 = tl.dot(p, k1t, acc=a1 * alpha[:, None])
    a2 = tl.dot(p, k2t, acc=a2 * alpha[:, None])
    a3 = tl.dot(p, k3t, acc=a3 * alpha[:, None])
    return m_new, l_i, a0, a1, a2, a3


@triton.jit
def _store_tiles(ptr, rows, mask, a0, a1, a2, a3, BF16: tl.constexpr):
    c0 = tl.arange(0, 256)
    c1 = 256 + tl.arange(0, 128)
    c2 = 384 + tl.arange(0, 64)
    c3 = 448 + tl.arange(0, 64)
    if BF16:
        a0, a1, a2, a3 = to_bf16_rne(a0), to_bf16_rne(a1), to_bf16_rne(a2), to_bf16_rne(a3)
    tl.store(ptr + rows[:, None] + c0[None, :], a0, mask=mask[:, None])
    tl.store(ptr + rows[:, None] + c1[None, :], a1, mask=mask[:, None])
    tl.store(ptr + rows[:, None] + c2[None, :], a2, mask=mask[:, None])
    tl.store(ptr + rows[:, None] + c3[None, :], a3, mask=mask[:, None])


def scope_args(kv: torch.Tensor, idx: torch.Tensor, length: torch.Tensor | None) -> list:
    """Kernel arguments of one KV scope, in the order every kernel takes them: pool base, page
    stride in bytes and in BF16 units, page size, slot count, ids and their three strides, and the
    topk_length pointer (the ids stand in when there is none; the kernel's flag then never reads it)."""
    return [
        kv, kv.stride(0), kv.stride(0) // 2, kv.shape[1], num_slots(kv),
        idx, idx.stride(0), idx.stride(1), idx.stride(2),
        length if length is not None else idx,
    ]


def scopes_args(q: torch.Tensor, main: tuple, extra: tuple | None) -> list:
    """q and its three strides, then each scope's :func:`scope_args` and topk, in the order both fused
    decode kernels take them (the main scope stands in for an absent extra one, whose flag then never
    reads it)."""
    x_args = scope_args(*extra) if extra is not None else scope_args(*main)
    return [q, q.stride(0), q.stride(1), q.stride(2), *scope_args(*main), main[1].shape[2], *x_args,
            extra[1].shape[2] if extra is not None else 0]


def scope_flags(main: tuple, extra: tuple | None, attn_sink: torch.Tensor | None) -> list[bool]:
    """The constexprs HAS_LEN, HAS_EXTRA, X_HAS_LEN, HAS_SINK of a call."""
    return [main[2] is not None, extra is not None, extra is not None and extra[2] is not None, attn_sink is not None]


def epilogue_args(attn_sink, out, lse, partial) -> list:
    """Kernel arguments that :func:`store_result` reads, in the order both attention kernels take
    them: sink (``lse`` stands in when there is none; HAS_SINK then never reads it), out and its
    strides, lse and its strides, and the split-K partial O / LSE (``out``/``lse`` when unsplit)."""
    part_o, part_lse = partial if partial is not None else (out, lse)
    return [attn_sink if attn_sink is not None else lse, out, out.stride(0), out.stride(1), out.stride(2),
            lse, lse.stride(0), lse.stride(1), part_o, part_lse]


@triton.jit
def store_result(
    a0, a1, a2, a3, m_i, l_i, t, t_out, split, n_tok_out, head0, h_q,
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
    lonely = l_i == 0.0
    safe_m = tl.where(lonely, 0.0, m_i)
    lse = tl.where(lonely, float("inf"), (safe_m + tl.math.log2(tl.where(lonely, 1.0, l_i))) * 0.6931471805599453)
    if SPLIT:
        scale = tl.where(lonely, 0.0, 1.0 / tl.where(lonely, 1.0, l_i))[:, None]
        row = (split * n_tok_out + t_out).to(tl.int64) * h_q + heads
        _store_tiles(part_o_ptr, row * 512, hmask, a0 * scale, a1 * scale, a2 * scale, a3 * scale, False)
        tl.store(part_lse_ptr + row, lse, mask=hmask)
    else:
        denom = l_i
        if HAS_SINK:
            sink = tl.load(sink_ptr + heads, mask=hmask, other=float("-inf"))
            denom = l_i + tl.math.exp2(tl.where(lonely, float("-inf"), sink * 1.4426950408889634 - safe_m))
        scale = tl.where(lonely, 0.0, 1.0 / tl.where(lonely, 1.0, denom))[:, None]
        tb = t // s_q
        ts = t % s_q
        # Outputs are contiguous (checked by the entry): row strides are multiples of 512 elements.
        rows = tb * aligned(s_ob, 512) + ts * aligned(s_os, 512) + heads.to(tl.int64) * aligned(s_oh, 512)
        _store_tiles(out_ptr, rows, hmask, a0 * scale, a1 * scale, a2 * scale, a3 * scale, True)
        tl.store(lse_ptr + tb * s_lb + heads.to(tl.int64) * s_lh + ts, lse, mask=hmask)
