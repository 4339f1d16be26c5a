"""Fused gather + dequant + attention over one or two FP8 scopes, optionally split-K.

Grid ``(cdiv(h_q, BLOCK_H), T, split_k)``.  A program loads its ``[BLOCK_H, 512]`` query rows
once, then walks its slice ``[k_start, k_end)`` of the concatenated candidate range
``[main ; extra]``: the main-scope part, then the extra-scope part, into one online softmax.  The
walk stops at ``topk_length`` (early exit).  Unsplit (``SPLIT`` false), it writes the final O and LSE;
split, it writes the normalised partial O and LSE that :mod:`dsv4_tune.kernels.combine` merges:
in a second launch (``SPLIT`` true), or in this one (``SPLIT=2``): each program counts itself in on an
atomic counter of its (token, head block) after storing its partial, and the last of the split_k
to arrive merges them all and puts the counter back to 0 for the next launch.  One launch instead
of two is what an eager decode step at small T pays for in host time (a driver launch each).
With ``PDL`` (``SPLIT`` true, CUDA sm90+) the program lets the combine kernel launch as it starts:
the combine is then a programmatic dependent launch that waits for this kernel's partials
(:func:`~dsv4_tune.kernels.combine.launch_combine`), so its launch overlaps this kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents

from dsv4_tune.kernels.attention_core import (
    LOG2E,
    epilogue_args,
    load_q,
    paged_kv_block,
    scope_flags,
    scopes_args,
    softmax_init,
    softmax_step,
    store_result,
)
from dsv4_tune.kernels.combine import merge_partials
from dsv4_tune.kernels.fp8 import extra_mode
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.runtime.jit import Launcher, kernel


@triton.jit
def _scope_walk(
    q0, q1, q2, q3, m_i, l_i, a0, a1, a2, a3, qk_scale, t, s_q, lo, hi,
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik, len_ptr,
    HAS_LEN: tl.constexpr, BLOCK_N: tl.constexpr, FP8: tl.constexpr, DOT: tl.constexpr,
):
    """Fold candidates ``[lo, hi)`` of one scope (cut at the row's topk_length) into the softmax."""
    if HAS_LEN:
        hi = tl.minimum(hi, tl.load(len_ptr + t // s_q))
    idx_row = idx_ptr + (t // s_q) * s_ib + (t % s_q) * s_is
    for k0 in range(lo, hi, BLOCK_N):
        k0t, k1t, k2t, k3t, valid = paged_kv_block(
            kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_row, s_ik, k0, hi, BLOCK_N, FP8, DOT
        )
        m_i, l_i, a0, a1, a2, a3 = softmax_step(
            q0, q1, q2, q3, k0t, k1t, k2t, k3t, valid, m_i, l_i, a0, a1, a2, a3, qk_scale, DOT
        )
    return m_i, l_i, a0, a1, a2, a3


@kernel
def _sparse_decode_kernel(
    q_ptr, s_qb, s_qs, s_qh,
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik, len_ptr, topk,
    xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik, xlen_ptr,
    x_topk,
    sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr, count_ptr,
    n_tok, s_q, h_q, qk_scale, chunk,
    HAS_LEN: tl.constexpr, HAS_EXTRA: tl.constexpr, X_HAS_LEN: tl.constexpr, HAS_SINK: tl.constexpr,
    SPLIT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, FP8: tl.constexpr, DOT: tl.constexpr,
    PDL: tl.constexpr = False, X_FP8: tl.constexpr = "",
):
    if PDL:
        gdc_launch_dependents()
    head0 = tl.program_id(0) * BLOCK_H
    t = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    q0, q1, q2, q3 = load_q(q_ptr, t, s_q, s_qb, s_qs, s_qh, head0, h_q, BLOCK_H, DOT)
    m_i, l_i, a0, a1, a2, a3 = softmax_init(BLOCK_H)
    k_start = split * chunk
    k_end = k_start + chunk
    m_i, l_i, a0, a1, a2, a3 = _scope_walk(
        q0, q1, q2, q3, m_i, l_i, a0, a1, a2, a3, qk_scale, t, s_q, k_start, tl.minimum(k_end, topk),
        kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik, len_ptr,
        HAS_LEN, BLOCK_N, FP8, DOT,
    )
    if HAS_EXTRA:
        m_i, l_i, a0, a1, a2, a3 = _scope_walk(
            q0, q1, q2, q3, m_i, l_i, a0, a1, a2, a3, qk_scale, t, s_q, tl.maximum(k_start - topk, 0), tl.minimum(k_end - topk, x_topk),
            xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik,
            xlen_ptr, X_HAS_LEN, BLOCK_N, FP8 if X_FP8 == "" else X_FP8, DOT,
        )
    store_result(
        a0, a1, a2, a3, m_i, l_i, t, t, split, n_tok, head0, h_q,
        out_ptr, s_ob, s_os, s_oh, s_q, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr, sink_ptr,
        HAS_SINK, SPLIT, BLOCK_H,
    )
    if SPLIT == 2:
        # Release this program's partial (every thread's stores, then one acq_rel atomic), and
        # let the last of the split_k programs of this (token, head block) merge them.
        tl.debug_barrier()
        counter = count_ptr + t * tl.num_programs(0) + tl.program_id(0)
        arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if arrived == tl.num_programs(2) - 1:
            tl.store(counter, 0)
            merge_partials(
                part_o_ptr, part_lse_ptr, sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh,
                t, t, n_tok, s_q, h_q, tl.num_programs(2), head0 + tl.arange(0, BLOCK_H), 0, HAS_SINK, BLOCK_H,
            )


_launch = Launcher(_sparse_decode_kernel)


def split_chunk(total_topk: int, split_k: int, block_n: int) -> int:
    """Candidates per split: ``cdiv(total, split_k)`` rounded up to whole BLOCK_N steps."""
    return cdiv(cdiv(total_topk, split_k), block_n) * block_n


def launch_sparse_decode(
    q: torch.Tensor,
    main: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
    attn_sink: torch.Tensor | None,
    sm_scale: float,
    out: torch.Tensor,
    lse: torch.Tensor,
    partial: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    split_k: int,
    counters: torch.Tensor | None = None,
    BLOCK_H: int,
    BLOCK_N: int,
    num_warps: int,
    num_stages: int,
    fp8_modes: tuple[str, str],
    dot_type: tl.dtype,
    pdl: bool = False,
) -> None:
    """Launch the fused kernel (inputs already checked).  ``partial`` = (O ``[split_k, T, h, 512]``
    fp32, LSE ``[split_k, T, h]`` fp32) when ``split_k > 1``; then ``out``/``lse`` are left to the
    combine kernel, unless ``counters`` (int32, ``T * cdiv(h, BLOCK_H)`` zeros, left zero) is given:
    then the kernel merges the splits itself.  ``pdl``: the combine that follows is launched as a
    programmatic dependent (only where :func:`~dsv4_tune.runtime.target.pdl_enabled`).  ``fp8_modes``:
    the FP8 decode modes of the (main, extra) scopes."""
    b, s_q, h_q, _ = q.shape
    n_tok = b * s_q
    total = main[1].shape[2] + (extra[1].shape[2] if extra is not None else 0)
    _launch(
        (cdiv(h_q, BLOCK_H), n_tok, split_k),
        *scopes_args(q, main, extra),
        *epilogue_args(attn_sink, out, lse, partial), counters if counters is not None else main[1],
        n_tok, s_q, h_q, sm_scale * LOG2E, split_chunk(total, split_k, BLOCK_N),
        *scope_flags(main, extra, attn_sink),
        split_k > 1 if counters is None else 2, BLOCK_H, BLOCK_N, fp8_modes[0], dot_type, pdl,
        extra_mode(fp8_modes, extra is not None),
        num_warps=num_warps, num_stages=num_stages,
    )
