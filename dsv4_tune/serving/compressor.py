"""The compressor's host API: ``compress_decode`` and ``compress_prefill`` check their inputs (metadata
only: no host sync), resolve the variant and config, and launch the kernels of
:mod:`dsv4_tune.kernels.compressor` (notation and semantics there)."""

from __future__ import annotations

import torch

from dsv4_tune.kernels.compressor.decode import launch_decode
from dsv4_tune.kernels.compressor.prefill import launch_prefill
from dsv4_tune.kernels.kv_layout import num_slots
from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
from dsv4_tune.registry.compressor_space import (
    HEAD_DIMS,
    RATIOS,
    VARIANTS,
    compressor_default,
    compressor_problems,
    default_variant,
    window,
)
from dsv4_tune.registry.layout import HEAD_DIM, ROPE_DIM, Fp8Flavour, check_flavour
from dsv4_tune.registry.workload import OpWorkload
from dsv4_tune.runtime.target import device_flavour
from dsv4_tune.runtime.workspace import DEFAULT_WORKSPACE, Workspace
from dsv4_tune.serving.arguments import check_device, check_kv_cache


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
            raise ValueError(f"{name}: expected a row stride that is a multiple of 4 elements (16 B), "
                             f"got {t.stride(0)}")
    if ring_size not in (k, 2 * k):
        raise ValueError(f"ring_size: expected {k} or {2 * k} (window {k}, or speculative), got {ring_size}")
    return coff, head_dim


def _config(
    ratio: int, head_dim: int, mode: str, config: dict[str, int] | None, variant: str | None, rows: int,
    dispatcher: Dispatcher | None,
) -> tuple[str, dict[str, int]]:
    """(variant, config): with neither, the policy's plan for ``rows`` (requests or new tokens) from
    ``dispatcher`` (default: :func:`~dsv4_tune.policies.dispatcher.get_dispatcher`); ``variant=None``
    follows the config's keys (BLOCK_D: split); ``config=None`` is the variant's default."""
    if config is None and variant is None:
        try:
            plan = (dispatcher or get_dispatcher()).lookup_op(
                OpWorkload.make("compress", rows, ratio=ratio, head_dim=head_dim, mode=mode))
            return plan.variant, plan.as_dict()
        except ValueError:  # a shape the kernels take but no op class has (e.g. C128 at head_dim 128):
            pass  # the ratio's default variant at its default config, below
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
    fp8: Fp8Flavour | None = None,
    config: dict[str, int] | None = None,
    variant: str | None = None,
    dispatcher: Dispatcher | None = None,
    workspace: Workspace | None = None,
) -> None:
    """One decode token per request at position ``seq_lens[b] - 1`` (``seq_lens <= 0``: padding).

    Writes ``kv_score[b]`` into the request's ring row (if ``ring_base[b] >= 0``); at a block
    boundary (``seq_lens[b] % ratio == 0``) with ``0 <= out_loc[b] < slots``, pools the window
    (the current position from ``kv_score``, earlier ones from the ring), normalises, applies RoPE
    at ``seq_lens[b] - ratio`` and stores the row at ``out_loc[b]`` of ``dest`` (an FP8 pool view
    ``[pages, P, 1, 584]`` for head_dim 512, or dense float32/bfloat16 rows ``[slots, head_dim]``).
    ``variant``: "fused" or "split"; None follows the config's keys, else split for C128, fused for C4.
    With neither ``config`` nor ``variant``, the policy's plan for this many requests (``dispatcher``,
    default: the process's).  ``fp8``: the pool's flavour; None: the GPU arch's.  The split variant's
    scratch lives in ``workspace`` (default: the process's, which serves one stream at a time: give
    each stream its own), so a step that ran once allocates nothing.
    """
    bs = kv_score.shape[0] if isinstance(kv_score, torch.Tensor) and kv_score.dim() == 2 else -1
    _, head_dim = _check_common(kv_score, state, ring_base, ape, norm_weight, freqs, ratio, ring_size, bs)
    device = kv_score.device
    _check_tensor("seq_lens", seq_lens, torch.int32, (bs,), device)
    _check_tensor("out_loc", out_loc, torch.int32, (bs,), device)
    fp8 = fp8 or device_flavour(kv_score)
    kind, dst = _dest_args(dest, head_dim, fp8, device)
    variant, cfg = _config(ratio, head_dim, "decode", config, variant, bs, dispatcher)
    if bs == 0:
        return
    launch_decode(variant, cfg, kv_score, state, ring_base, seq_lens, ape, norm_weight, freqs, out_loc, kind, dst,
                  ratio=ratio, ring_size=ring_size, head_dim=head_dim, fp8=fp8, eps=eps,
                  workspace=workspace or DEFAULT_WORKSPACE)


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
    fp8: Fp8Flavour | None = None,
    config: dict[str, int] | None = None,
    variant: str | None = None,
    max_new_tokens: int | None = None,
    dispatcher: Dispatcher | None = None,
    workspace: Workspace | None = None,
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
    With neither ``config`` nor ``variant``, the policy's plan for this many new tokens (``dispatcher``,
    default: the process's).  ``fp8``: the pool's flavour; None: the GPU arch's.
    """
    n_tok = kv_score.shape[0] if isinstance(kv_score, torch.Tensor) and kv_score.dim() == 2 else -1
    bs = ring_base.shape[0] if isinstance(ring_base, torch.Tensor) and ring_base.dim() == 1 else -1
    _, head_dim = _check_common(kv_score, state, ring_base, ape, norm_weight, freqs, ratio, ring_size, bs)
    device = kv_score.device
    _check_tensor("cu_seqlens", cu_seqlens, torch.int32, (bs + 1,), device)
    _check_tensor("prefix_lens", prefix_lens, torch.int32, (bs,), device)
    _check_tensor("out_loc", out_loc, torch.int32, (n_tok,), device)
    if not cu_seqlens.is_contiguous():
        raise ValueError("cu_seqlens: expected a contiguous tensor")
    fp8 = fp8 or device_flavour(kv_score)
    kind, dst = _dest_args(dest, head_dim, fp8, device)
    variant, cfg = _config(ratio, head_dim, "prefill", config, variant, n_tok, dispatcher)
    if max_new_tokens is not None and max_new_tokens < 0:
        raise ValueError(f"max_new_tokens: expected >= 0, got {max_new_tokens}")
    longest = n_tok if max_new_tokens is None else min(max_new_tokens, n_tok)
    if bs == 0 or longest == 0:
        return
    launch_prefill(variant, cfg, kv_score, cu_seqlens, prefix_lens, state, ring_base, ape, norm_weight, freqs, out_loc,
                   kind, dst, ratio=ratio, ring_size=ring_size, head_dim=head_dim, fp8=fp8, eps=eps, longest=longest,
                   workspace=workspace or DEFAULT_WORKSPACE)
