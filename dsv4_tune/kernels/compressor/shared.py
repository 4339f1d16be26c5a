"""Device helpers of both compressor paths: the online-softmax fold, and the finish (RMSNorm, RoPE,
UE8M0 scale, FP8 / dense store) of one compressed row."""

from __future__ import annotations

import triton
import triton.language as tl

from dsv4_tune.kernels.attention_core import to_bf16_rne
from dsv4_tune.kernels.fp8 import encode_fp8


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
