"""FP8 paged KV -> BF16 gather + dequant kernels (one scope, or both scopes in one launch).

Output: ``gathered [T, total_topk, 512]`` BF16 and ``invalid [T, total_topk]`` bool.  One program
handles ``BLOCK_TK`` consecutive (token, candidate) pairs of one scope.  A candidate is valid when
``0 <= idx < pages * P`` (and ``k < topk_length[t // s_q]`` when given); invalid rows are written as
exact zeros by selection, so NaN bytes in unused slots never leak and no address is ever formed
from a bad id.  Byte offsets are 64-bit.  Every launch takes an explicit :class:`GatherConfig`.
The checked host API is :mod:`dsv4_tune.serving.gather`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.attention_core import aligned, scope_args
from dsv4_tune.kernels.fp8 import decode_fp8, extra_mode, ue8m0_to_f32
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.registry.layout import DATA_BYTES, HEAD_DIM, SCALE_BYTES, Fp8Flavour, Fp8Pair
from dsv4_tune.runtime.jit import Launcher, kernel
from dsv4_tune.runtime.target import fp8_mode

BLOCK_TK_CHOICES = (32, 64, 128, 256)
NUM_WARPS_CHOICES = (2, 4, 8)
NUM_STAGES_CHOICES = (1, 2)


@dataclass(frozen=True)
class GatherConfig:
    """Launch config of a gather kernel: pairs per program, warps, pipelining stages."""

    BLOCK_TK: int = 128
    num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self) -> None:
        if self.BLOCK_TK not in BLOCK_TK_CHOICES:
            raise ValueError(f"BLOCK_TK: expected one of {BLOCK_TK_CHOICES}, got {self.BLOCK_TK}")
        if self.num_warps not in NUM_WARPS_CHOICES:
            raise ValueError(f"num_warps: expected one of {NUM_WARPS_CHOICES}, got {self.num_warps}")
        if self.num_stages not in NUM_STAGES_CHOICES:
            raise ValueError(f"num_stages: expected one of {NUM_STAGES_CHOICES}, got {self.num_stages}")


@triton.jit
def _gather_scope(
    pid,
    kv_ptr,
    stride_page,
    stride_page_h,
    page_size,
    n_slots,
    idx_ptr,
    s_ib,
    s_is,
    s_ik,
    len_ptr,
    out_ptr,
    inv_ptr,
    t0,
    n_tok,
    s_q,
    topk,
    total_topk,
    k_offset,
    HAS_LEN: tl.constexpr,
    FP8: tl.constexpr,
    BLOCK_TK: tl.constexpr,
):
    """Gather ``BLOCK_TK`` (token, k) pairs of one scope, tokens ``[t0, t0 + n_tok)``."""
    stride_page = aligned(stride_page, 576)  # page strides are multiples of 576 B (check_kv_cache)
    stride_page_h = aligned(stride_page_h, 288)
    pairs = pid.to(tl.int64) * BLOCK_TK + tl.arange(0, BLOCK_TK)
    in_range = pairs < n_tok * topk
    t_local = pairs // topk
    k = pairs % topk
    t = t0 + t_local
    row = t // s_q
    idx = tl.load(idx_ptr + row * s_ib + (t % s_q) * s_is + k * s_ik, mask=in_range, other=-1)
    valid = in_range & (idx >= 0) & (idx < n_slots)
    if HAS_LEN:
        length = tl.load(len_ptr + row, mask=in_range, other=0)
        valid = valid & (k < length)
    slot = tl.where(valid, idx, 0).to(tl.int64)
    page = slot // page_size
    off = slot % page_size
    data = page * stride_page + off * 576
    scales = page * stride_page + page_size * 576 + off * 8
    out_row = (t_local * total_topk + k_offset + k) * 512
    cols = tl.arange(0, 64)
    for g in tl.static_range(7):
        sc = ue8m0_to_f32(tl.load(kv_ptr + scales + g, mask=valid, other=127))
        raw = tl.load(kv_ptr + data[:, None] + (g * 64 + cols)[None, :], mask=valid[:, None], other=0)
        val = decode_fp8(raw, FP8) * sc[:, None]
        val = tl.where(valid[:, None], val, 0.0)
        tl.store(out_ptr + out_row[:, None] + (g * 64 + cols)[None, :], val.to(tl.bfloat16), mask=in_range[:, None])
    rope_ptr = kv_ptr.to(tl.pointer_type(tl.bfloat16))
    rope_off = page * stride_page_h + off * 288 + 224
    rope = tl.load(rope_ptr + rope_off[:, None] + cols[None, :], mask=valid[:, None], other=0.0)
    rope = tl.where(valid[:, None], rope, 0.0)
    tl.store(out_ptr + out_row[:, None] + (448 + cols)[None, :], rope, mask=in_range[:, None])
    tl.store(inv_ptr + t_local * total_topk + k_offset + k, (~valid).to(tl.uint8), mask=in_range)


@kernel
def _gather_dequant_kernel(
    kv_ptr, stride_page, stride_page_h, page_size, n_slots,
    idx_ptr, s_ib, s_is, s_ik, len_ptr,
    out_ptr, inv_ptr, t0, n_tok, s_q, topk, total_topk, k_offset,
    HAS_LEN: tl.constexpr, FP8: tl.constexpr, BLOCK_TK: tl.constexpr,
):
    _gather_scope(
        tl.program_id(0), kv_ptr, stride_page, stride_page_h, page_size, n_slots,
        idx_ptr, s_ib, s_is, s_ik, len_ptr, out_ptr, inv_ptr, t0, n_tok, s_q, topk,
        total_topk, k_offset, HAS_LEN, FP8, BLOCK_TK,
    )


@kernel
def _gather_dequant_dual_kernel(
    kv_ptr, stride_page, stride_page_h, page_size, n_slots,
    idx_ptr, s_ib, s_is, s_ik, len_ptr,
    xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots,
    xidx_ptr, x_s_ib, x_s_is, x_s_ik, xlen_ptr,
    out_ptr, inv_ptr, t0, n_tok, s_q, topk, x_topk, n_main_pids,
    HAS_LEN: tl.constexpr, X_HAS_LEN: tl.constexpr, FP8: tl.constexpr, BLOCK_TK: tl.constexpr,
    X_FP8: tl.constexpr = "",
):
    # Programs [0, n_main_pids) do the main scope, the rest the extra scope: none is empty.
    pid = tl.program_id(0)
    total = topk + x_topk
    if pid < n_main_pids:
        _gather_scope(
            pid, kv_ptr, stride_page, stride_page_h, page_size, n_slots,
            idx_ptr, s_ib, s_is, s_ik, len_ptr, out_ptr, inv_ptr, t0, n_tok, s_q, topk,
            total, 0, HAS_LEN, FP8, BLOCK_TK,
        )
    else:
        _gather_scope(
            pid - n_main_pids, xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots,
            xidx_ptr, x_s_ib, x_s_is, x_s_ik, xlen_ptr, out_ptr, inv_ptr, t0, n_tok, s_q, x_topk,
            total, topk, X_HAS_LEN, FP8 if X_FP8 == "" else X_FP8, BLOCK_TK,
        )


_launch_single = Launcher(_gather_dequant_kernel)
_launch_dual = Launcher(_gather_dequant_dual_kernel)


def launch_gather(
    k_cache: torch.Tensor, indices: torch.Tensor, topk_length: torch.Tensor | None, fp8: Fp8Flavour,
    config: GatherConfig, out: torch.Tensor, invalid: torch.Tensor, k_offset: int, t0: int, n_tok: int,
) -> None:
    """Gather query tokens ``[t0, t0 + n_tok)`` of one scope into columns ``[k_offset, k_offset + topk)``
    of ``out`` rows ``[0, n_tok)`` (inputs checked by the caller)."""
    _, s_q, topk = indices.shape
    grid = cdiv(n_tok * topk, config.BLOCK_TK)
    if grid == 0:
        return
    _launch_single(
        (grid, 1, 1),
        *scope_args(k_cache, indices, topk_length),
        out, invalid.view(torch.uint8), t0, n_tok, s_q, topk, out.shape[1], k_offset,
        topk_length is not None, fp8_mode(fp8), config.BLOCK_TK,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


def launch_gather_dual(
    main: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    fp8: Fp8Pair, config: GatherConfig, out: torch.Tensor, invalid: torch.Tensor, t0: int, n_tok: int,
) -> None:
    """Gather both scopes of query tokens ``[t0, t0 + n_tok)`` in one launch: main at column 0,
    extra at column ``topk_main``, each decoded in its flavour of ``fp8`` (inputs checked by the caller)."""
    if n_tok == 0:
        return
    _, s_q, topk = main[1].shape
    x_topk = extra[1].shape[2]
    n_main = cdiv(n_tok * topk, config.BLOCK_TK)
    _launch_dual(
        (n_main + cdiv(n_tok * x_topk, config.BLOCK_TK), 1, 1),
        *scope_args(*main), *scope_args(*extra),
        out, invalid.view(torch.uint8), t0, n_tok, s_q, topk, x_topk, n_main,
        main[2] is not None, extra[2] is not None, fp8_mode(fp8[0]), config.BLOCK_TK,
        extra_mode((fp8_mode(fp8[0]), fp8_mode(fp8[1])), True),
        num_warps=config.num_warps, num_stages=config.num_stages,
    )


# Byte counts moved per gathered candidate (for bandwidth reports): read 584 B, write 1024 B + 1.
BYTES_READ_PER_CANDIDATE = DATA_BYTES + SCALE_BYTES - 1
BYTES_WRITTEN_PER_CANDIDATE = 2 * HEAD_DIM + 1
