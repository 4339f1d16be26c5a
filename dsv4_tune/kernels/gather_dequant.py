"""FP8 paged KV -> BF16 gather + dequant kernels (one scope, or both scopes in one launch).

Output: ``gathered [T, total_topk, 512]`` BF16 and ``invalid [T, total_topk]`` bool.  One program
handles ``BLOCK_TK`` consecutive (token, candidate) pairs of one scope.  A candidate is valid when
``0 <= idx < pages * P`` (and ``k < topk_length[t // s_q]`` when given); invalid rows are written as
exact zeros by selection, so NaN bytes in unused slots never leak and no address is ever formed
from a bad id.  Byte offsets are 64-bit.  Every launch takes an explicit :class:`GatherConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.attention_core import aligned
from dsv4_tune.kernels.checks import check_device, check_index_values, check_scope
from dsv4_tune.kernels.fp8 import decode_fp8, ue8m0_to_f32
from dsv4_tune.kernels.kv_layout import (
    DATA_BYTES,
    HEAD_DIM,
    SCALE_BYTES,
    Fp8Flavour,
    check_flavour,
)
from dsv4_tune.kernels.launch import Launcher, kernel
from dsv4_tune.kernels.runtime import cdiv, fp8_mode, scope_args

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
            total, topk, X_HAS_LEN, FP8, BLOCK_TK,
        )


_launch_single = Launcher(_gather_dequant_kernel)
_launch_dual = Launcher(_gather_dequant_dual_kernel)


def _outputs(
    ref: torch.Tensor, n_tok: int, total: int, out: torch.Tensor | None, invalid: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate or check the output buffers ``[n_tok, total, 512]`` bf16 and ``[n_tok, total]`` bool."""
    if out is None:
        out = torch.empty(n_tok, total, HEAD_DIM, dtype=torch.bfloat16, device=ref.device)
    elif out.dtype != torch.bfloat16 or out.shape[0] != n_tok or out.shape[1] < total or not out.is_contiguous():
        raise ValueError(
            f"out: expected a contiguous bf16 tensor [{n_tok}, >= {total}, {HEAD_DIM}], "
            f"got {out.dtype} {tuple(out.shape)}"
        )
    if invalid is None:
        invalid = torch.empty(n_tok, out.shape[1], dtype=torch.bool, device=ref.device)
    elif invalid.dtype != torch.bool or tuple(invalid.shape) != tuple(out.shape[:2]) or not invalid.is_contiguous():
        raise ValueError(
            f"invalid: expected a contiguous bool tensor {tuple(out.shape[:2])}, "
            f"got {invalid.dtype} {tuple(invalid.shape)}"
        )
    check_device("out", out, ref.device)
    check_device("invalid", invalid, ref.device)
    return out, invalid


def _token_range(tokens: tuple[int, int] | None, n_total: int) -> tuple[int, int]:
    t0, t1 = (0, n_total) if tokens is None else tokens
    if not 0 <= t0 <= t1 <= n_total:
        raise ValueError(f"tokens: expected a range within [0, {n_total}], got {tokens}")
    return t0, t1 - t0


def gather_dequant(
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None = None,
    *,
    fp8: Fp8Flavour,
    config: GatherConfig,
    out: torch.Tensor | None = None,
    invalid: torch.Tensor | None = None,
    k_offset: int = 0,
    tokens: tuple[int, int] | None = None,
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather one scope into columns ``[k_offset, k_offset + topk)`` of ``out`` (allocated if None).

    ``tokens = (t0, t1)`` gathers only query tokens ``[t0, t1)`` (of ``T = b * s_q``) into output
    rows ``[0, t1 - t0)``; that is how callers bound the BF16 buffer.
    """
    check_flavour(fp8)
    check_scope("", k_cache, indices, topk_length)
    b, s_q, topk = indices.shape
    if validate:
        check_index_values("", k_cache, indices, topk_length)
    t0, n_tok = _token_range(tokens, b * s_q)
    out, invalid = _outputs(k_cache, n_tok, k_offset + topk, out, invalid)
    if k_offset < 0 or k_offset + topk > out.shape[1]:
        raise ValueError(f"k_offset: {k_offset} + topk {topk} does not fit {out.shape[1]} columns")
    grid = (cdiv(n_tok * topk, config.BLOCK_TK),)
    if grid[0] == 0:
        return out, invalid
    _launch_single(
        (grid[0], 1, 1),
        *scope_args(k_cache, indices, topk_length),
        out, invalid.view(torch.uint8), t0, n_tok, s_q, topk, out.shape[1], k_offset,
        topk_length is not None, fp8_mode(fp8), config.BLOCK_TK,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, invalid


def gather_dequant_dual(
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None,
    extra_k_cache: torch.Tensor,
    extra_indices: torch.Tensor,
    extra_topk_length: torch.Tensor | None,
    *,
    fp8: Fp8Flavour,
    config: GatherConfig,
    out: torch.Tensor | None = None,
    invalid: torch.Tensor | None = None,
    tokens: tuple[int, int] | None = None,
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather both scopes in one launch: main at column 0, extra at column ``topk_main``.

    Each scope has its own page size, page stride and optional ``topk_length`` (either may be
    absent independently of the other).
    """
    check_flavour(fp8)
    check_scope("", k_cache, indices, topk_length)
    b, s_q, topk = indices.shape
    check_scope("extra_", extra_k_cache, extra_indices, extra_topk_length, b, s_q)
    check_device("extra_k_cache", extra_k_cache, k_cache.device)
    if validate:
        check_index_values("", k_cache, indices, topk_length)
        check_index_values("extra_", extra_k_cache, extra_indices, extra_topk_length)
    x_topk = extra_indices.shape[2]
    t0, n_tok = _token_range(tokens, b * s_q)
    out, invalid = _outputs(k_cache, n_tok, topk + x_topk, out, invalid)
    if out.shape[1] != topk + x_topk:
        raise ValueError(f"out: expected {topk + x_topk} columns, got {out.shape[1]}")
    n_main = cdiv(n_tok * topk, config.BLOCK_TK)
    grid = (n_main + cdiv(n_tok * x_topk, config.BLOCK_TK),)
    if n_tok == 0:
        return out, invalid
    _launch_dual(
        (grid[0], 1, 1),
        *scope_args(k_cache, indices, topk_length),
        *scope_args(extra_k_cache, extra_indices, extra_topk_length),
        out, invalid.view(torch.uint8), t0, n_tok, s_q, topk, x_topk, n_main,
        topk_length is not None, extra_topk_length is not None, fp8_mode(fp8), config.BLOCK_TK,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out, invalid


# Byte counts moved per gathered candidate (for bandwidth reports): read 584 B, write 1024 B + 1.
BYTES_READ_PER_CANDIDATE = DATA_BYTES + SCALE_BYTES - 1
BYTES_WRITTEN_PER_CANDIDATE = 2 * HEAD_DIM + 1
