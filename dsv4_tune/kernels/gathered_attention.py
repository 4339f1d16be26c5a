"""Attention over gathered BF16 keys (the second half of gather-then-attend), optionally split-K.

Reads ``gathered [n_tok, total, 512]`` BF16 and ``invalid [n_tok, total]`` written by
:mod:`dsv4_tune.kernels.gather_dequant` for query tokens ``[t0, t0 + n_tok)``.  Grid
``(cdiv(h_q, BLOCK_H), n_tok, split_k)``; same softmax and epilogue as the fused kernel.
"""

from __future__ import annotations

import torch
import triton.language as tl

from dsv4_tune.kernels.attention_core import (
    LOG2E,
    epilogue_args,
    gathered_kv_block,
    load_q,
    softmax_init,
    softmax_step,
    store_result,
)
from dsv4_tune.kernels.fused_attention import split_chunk
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.runtime.jit import Launcher, kernel


@kernel
def _gathered_attention_kernel(
    q_ptr, s_qb, s_qs, s_qh, kv_ptr, inv_ptr, total,
    sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr,
    t0, n_tok, s_q, h_q, qk_scale, chunk,
    HAS_SINK: tl.constexpr, SPLIT: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT: tl.constexpr,
):
    head0 = tl.program_id(0) * BLOCK_H
    t_local = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    t = t0 + t_local
    q0, q1, q2, q3 = load_q(q_ptr, t, s_q, s_qb, s_qs, s_qh, head0, h_q, BLOCK_H, DOT)
    m_i, l_i, a0, a1, a2, a3 = softmax_init(BLOCK_H)
    k_start = split * chunk
    k_end = tl.minimum(k_start + chunk, total)
    kv_row = kv_ptr + t_local * total * 512
    inv_row = inv_ptr + t_local * total
    for k0 in range(k_start, k_end, BLOCK_N):
        k0t, k1t, k2t, k3t, valid = gathered_kv_block(kv_row, inv_row, k0, k_end, BLOCK_N, DOT)
        m_i, l_i, a0, a1, a2, a3 = softmax_step(
            q0, q1, q2, q3, k0t, k1t, k2t, k3t, valid, m_i, l_i, a0, a1, a2, a3, qk_scale, DOT
        )
    store_result(
        a0, a1, a2, a3, m_i, l_i, t, t_local, split, n_tok, head0, h_q,
        out_ptr, s_ob, s_os, s_oh, s_q, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr, sink_ptr,
        HAS_SINK, SPLIT, BLOCK_H,
    )


_launch = Launcher(_gathered_attention_kernel)


def launch_gathered_attention(
    q: torch.Tensor,
    gathered: torch.Tensor,
    invalid: torch.Tensor,
    t0: int,
    attn_sink: torch.Tensor | None,
    sm_scale: float,
    out: torch.Tensor,
    lse: torch.Tensor,
    partial: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    split_k: int,
    BLOCK_H: int,
    BLOCK_N: int,
    num_warps: int,
    num_stages: int,
    dot_type: tl.dtype,
) -> None:
    """Attend query tokens ``[t0, t0 + n_tok)`` over their gathered keys (inputs already checked)."""
    n_tok, total, _ = gathered.shape
    _, s_q, h_q, _ = q.shape
    _launch(
        (cdiv(h_q, BLOCK_H), n_tok, split_k),
        q, q.stride(0), q.stride(1), q.stride(2), gathered, invalid.view(torch.uint8), total,
        *epilogue_args(attn_sink, out, lse, partial),
        t0, n_tok, s_q, h_q, sm_scale * LOG2E, split_chunk(total, split_k, BLOCK_N),
        attn_sink is not None, split_k > 1, BLOCK_H, BLOCK_N, dot_type,
        num_warps=num_warps, num_stages=num_stages,
    )
