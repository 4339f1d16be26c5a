"""Split-K combine: merge normalised partial outputs by their LSEs, apply the sink, split_k 2-16.

Inputs ``part_o [split_k, T, h, 512]`` fp32 and ``part_lse [split_k, T, h]`` fp32 (+inf or -inf
for a split that saw no valid candidate).  With ``M = max`` of the finite LSEs and
``w_i = exp(lse_i - M)`` (0 for an empty split), ``S = sum w_i``: ``LSE = M + ln S``,
``O = sum (w_i / S) O_i / (1 + exp(sink - LSE))``; a row with ``S = 0`` gets O = 0, LSE = +inf.
Grid ``(T, cdiv(h, BLOCK_H), 512 / COMBINE_COLS)``; split_k is a run-time argument, at most
SPLIT_K_MAX (every split's LSE is read as one [SPLIT_K_MAX, BLOCK_H] tile; :func:`launch_combine`
and the registry's split choices keep to it), the partials in a run-time loop.  With ``PDL``
(CUDA sm90+) it is launched as a programmatic dependent of the split kernel, which lets it go as
it starts: its programs become resident while the splits run and wait (``gdc_wait``) for their
partials before reading them, so the second launch's latency overlaps the first kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_wait

from dsv4_tune.kernels.attention_core import aligned, to_bf16_rne
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.runtime.jit import Launcher, kernel

SPLIT_K_MIN, SPLIT_K_MAX = 2, 16
# Output columns a combine program merges: 512 / COMBINE_COLS programs a (token, head block), so
# that a small batch's partials are read by many SMs at once rather than each by one.
COMBINE_COLS: tl.constexpr = tl.constexpr(128)
SPLITS: tl.constexpr = tl.constexpr(SPLIT_K_MAX)  # the LSE tile's rows: every split's, loaded at once


@triton.jit
def _split_part(part_o_ptr, part_lse_ptr, s, split_k, n_tok, t_local, h_q, heads, hmask, cols):
    """Split ``s``'s LSE and partial rows of ``heads`` (+inf and zeros past the last split)."""
    row = (s * n_tok + t_local) * h_q + heads
    ok = hmask & (heads * 0 + s < split_k)  # a tensor (a scalar condition is no mask on the interpreter)
    v = tl.load(part_lse_ptr + row, mask=ok, other=float("inf"))
    o = tl.load(part_o_ptr + row[:, None] * 512 + cols[None, :], mask=ok[:, None], other=0.0)
    return v, o


@triton.jit
def _weigh(v, o, safe_m, total, acc):
    """One split merged in: weight exp(lse - M) (0 for an empty split, whose rows are dropped)."""
    w = tl.where(tl.abs(v) < 1e30, tl.math.exp2((v - safe_m) * 1.4426950408889634), 0.0)
    return total + w, acc + w[:, None] * tl.where((w > 0)[:, None], o, 0.0)


@triton.jit
def merge_partials(
    part_o_ptr, part_lse_ptr, sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh,
    t, t_local, n_tok, s_q, h_q, split_k, heads, col0,
    HAS_SINK: tl.constexpr, BLOCK_H: tl.constexpr, COLS: tl.constexpr = 512, GROUP: tl.constexpr = 1,
):
    """Merge the ``split_k`` partials of heads ``heads`` of token ``t`` (row ``t_local`` of the
    partial buffers) into the final O and LSE; shared by the combine kernel (``GROUP`` 4: four
    splits' loads in flight at once) and the fused kernel's in-kernel combine (1: its registers
    hold a whole [BLOCK_H, 512] row block a split)."""
    s_ob = aligned(s_ob, 512)  # outputs are contiguous (checked by the entry)
    s_os = aligned(s_os, 512)
    s_oh = aligned(s_oh, 512)
    hmask = heads < h_q
    cols = col0 + tl.arange(0, COLS)
    # Every split's LSE in one load (one round trip, where a loop waited one a split) for the max; the
    # sinks with them (loaded after the merge, they cost one more).
    if HAS_SINK:
        sink = tl.load(sink_ptr + heads, mask=hmask, other=float("-inf"))
    ss = tl.arange(0, SPLITS)
    v_all = tl.load(part_lse_ptr + (ss[:, None] * n_tok + t_local) * h_q + heads[None, :],
                    mask=(ss[:, None] < split_k) & hmask[None, :], other=float("inf"))
    m = tl.max(tl.where(tl.abs(v_all) < 1e30, v_all, float("-inf")), axis=0)
    lonely = m == float("-inf")
    safe_m = tl.where(lonely, 0.0, m)
    total = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, COLS], tl.float32)
    # GROUP splits a trip, their LSEs (cache hits now) and partials all loaded before any is used: one
    # round trip a trip (the loads do not wait for the weights; an empty split's rows, never written,
    # are read and dropped by _weigh's where).
    for s in range(0, split_k, GROUP):
        v0, o0 = _split_part(part_o_ptr, part_lse_ptr, s, split_k, n_tok, t_local, h_q, heads, hmask, cols)
        if GROUP == 4:
            v1, o1 = _split_part(part_o_ptr, part_lse_ptr, s + 1, split_k, n_tok, t_local, h_q, heads, hmask, cols)
            v2, o2 = _split_part(part_o_ptr, part_lse_ptr, s + 2, split_k, n_tok, t_local, h_q, heads, hmask, cols)
            v3, o3 = _split_part(part_o_ptr, part_lse_ptr, s + 3, split_k, n_tok, t_local, h_q, heads, hmask, cols)
        total, acc = _weigh(v0, o0, safe_m, total, acc)
        if GROUP == 4:
            total, acc = _weigh(v1, o1, safe_m, total, acc)
            total, acc = _weigh(v2, o2, safe_m, total, acc)
            total, acc = _weigh(v3, o3, safe_m, total, acc)
    lse = tl.where(lonely, float("inf"), safe_m + tl.log(tl.where(lonely, 1.0, total)))
    scale = tl.where(lonely, 0.0, 1.0 / tl.where(lonely, 1.0, total))
    if HAS_SINK:
        sig = 1.0 / (1.0 + tl.math.exp2((sink - tl.where(lonely, 0.0, lse)) * 1.4426950408889634))
        scale = scale * sig
    tb = t // s_q
    ts = t % s_q
    optr = out_ptr + tb * s_ob + ts * s_os + heads[:, None].to(tl.int64) * s_oh + cols[None, :]
    tl.store(optr, to_bf16_rne(acc * scale[:, None]), mask=hmask[:, None])
    if col0 == 0:  # one program of the (token, head block) writes its LSE
        tl.store(lse_ptr + tb * s_lb + heads.to(tl.int64) * s_lh + ts, lse, mask=hmask)


@kernel
def _combine_kernel(
    part_o_ptr, part_lse_ptr, sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh,
    t0, n_tok, s_q, h_q, split_k,
    HAS_SINK: tl.constexpr, BLOCK_H: tl.constexpr, PDL: tl.constexpr = False,
):
    if PDL:
        gdc_wait()  # every program: the combine never completes before the split kernel
    t_local = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    merge_partials(
        part_o_ptr, part_lse_ptr, sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh,
        t0 + t_local, t_local, n_tok, s_q, h_q, split_k, heads, tl.program_id(2) * COMBINE_COLS, HAS_SINK, BLOCK_H,
        COMBINE_COLS, 4,
    )


_launch_combine = Launcher(_combine_kernel)


def launch_combine(
    part_o: torch.Tensor,
    part_lse: torch.Tensor,
    attn_sink: torch.Tensor | None,
    out: torch.Tensor,
    lse: torch.Tensor,
    *,
    s_q: int,
    t0: int = 0,
    BLOCK_H: int,
    num_warps: int,
    pdl: bool = False,
) -> None:
    """Merge ``part_o``/``part_lse`` (tokens ``[t0, t0 + n_tok)``) into ``out [b, s_q, h, 512]`` and
    ``lse [b, h, s_q]``; ``pdl``: as a programmatic dependent of the split kernel before it, which
    must have been launched with ``pdl`` too."""
    split_k, n_tok, h_q = part_lse.shape
    if not SPLIT_K_MIN <= split_k <= SPLIT_K_MAX:
        raise ValueError(f"split_k: expected {SPLIT_K_MIN}..{SPLIT_K_MAX}, got {split_k}")
    _launch_combine(
        (n_tok, cdiv(h_q, BLOCK_H), 512 // COMBINE_COLS),
        part_o, part_lse, attn_sink if attn_sink is not None else part_lse,
        out, out.stride(0), out.stride(1), out.stride(2), lse, lse.stride(0), lse.stride(1),
        t0, n_tok, s_q, h_q, split_k, attn_sink is not None, BLOCK_H, pdl,
        num_warps=num_warps, num_stages=1, launch_pdl=pdl,
    )
