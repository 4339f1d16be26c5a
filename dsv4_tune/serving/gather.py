"""Gather + dequant of FP8 paged KV to BF16 as a checked host API (kernels:
:mod:`dsv4_tune.kernels.gather_dequant`; metadata checks only, unless ``validate=True``)."""

from __future__ import annotations

import torch

from dsv4_tune.kernels.gather_dequant import GatherConfig, launch_gather, launch_gather_dual
from dsv4_tune.registry.layout import HEAD_DIM, Fp8Flavour, Fp8Pair, check_flavour, fp8_pair
from dsv4_tune.serving.arguments import check_device, check_index_values, check_scope


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
    launch_gather(k_cache, indices, topk_length, fp8, config, out, invalid, k_offset, t0, n_tok)
    return out, invalid


def gather_dequant_dual(
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None,
    extra_k_cache: torch.Tensor,
    extra_indices: torch.Tensor,
    extra_topk_length: torch.Tensor | None,
    *,
    fp8: Fp8Flavour | Fp8Pair,
    config: GatherConfig,
    out: torch.Tensor | None = None,
    invalid: torch.Tensor | None = None,
    tokens: tuple[int, int] | None = None,
    validate: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather both scopes in one launch: main at column 0, extra at column ``topk_main``.

    Each scope has its own page size, page stride and optional ``topk_length`` (either may be
    absent independently of the other), and its FP8 flavour: ``fp8`` is one for both or a
    (main, extra) pair.
    """
    pair = fp8_pair(fp8, "e4m3fn")
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
    launch_gather_dual((k_cache, indices, topk_length), (extra_k_cache, extra_indices, extra_topk_length), pair, config,
                       out, invalid, t0, n_tok)
    return out, invalid
