"""FlashMLA's decode interface (``get_mla_metadata`` + ``flash_mla_with_kvcache``) for the sparse FP8
decode of DeepSeek-V4, served by :func:`dsv4_tune.sparse_decode` with the policy's plan, so that an
engine written against FlashMLA runs where FlashMLA does not (AMD, other Tritons, a build without
its extension) by changing one import.

FlashMLA's conventions, and how they map (the two differ only where noted):

- ``q [b, s_q, h_q, 512]`` bf16 and ``indices [b, s_q, topk]`` int32 with any strides (q is copied
  only when a stride is not a multiple of 8 elements); slot id = block * block_size + offset, -1
  invalid.  dsv4-tune also treats other ids outside the pool as invalid (FlashMLA reads block 0).
- ``k_cache`` / ``extra_k_cache``: the ``MODEL1_FP8Sparse`` pool as ``[num_blocks, block_size, 1, 584]``
  bytes (uint8, int8 or float8_e4m3fn, as FlashMLA takes them), each page padded to a multiple of
  576 B as FlashMLA's ``quantize_k_cache`` and the engines' pools lay it out.
- ``topk_length`` / ``extra_topk_length [b]`` int32, ``attn_sink [h_q]`` fp32 (contiguous), the
  scale by default ``d_qk ** -0.5``; ``block_table`` and ``cache_seqlens`` are ignored (sparse mode).
- Returns ``out [b, s_q, h_q, 512]`` bf16 and ``lse [b, h_q, s_q]`` fp32 without the sink, ``+inf``
  (and out 0) for a row with no valid candidate.  FlashMLA's lse is a transposed view of a
  ``[b, s_q, h_q]`` buffer; this one is contiguous: same shape and values.

The metadata object holds the workspace of the stream it is first used on (split-K partials, the
replays of recorded calls), so after one warm-up call a step allocates only its outputs and can be
captured in a CUDA graph, as with FlashMLA.  ``fp8`` (not in FlashMLA's signature) names the pools'
FP8 flavours as :func:`~dsv4_tune.sparse_decode` takes them: one for both, or a (main, extra) pair
where the sliding-window and the compressed pools differ (gfx942); None: the GPU arch's for both.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4_tune.errors import InputError
from dsv4_tune.registry.layout import HEAD_DIM, TOKEN_BYTES, Fp8Flavour, Fp8Pair
from dsv4_tune.serving.decode import sparse_decode
from dsv4_tune.serving.memory import Workspace, stream_workspace

SUPPORTED = (
    "dsv4_tune.compat.flash_mla serves FlashMLA's sparse FP8 decode of DeepSeek-V4 only: indices given, "
    f"is_fp8_kvcache=True, causal=False, head_dim_v={HEAD_DIM}, q [b, s_q, h_q, {HEAD_DIM}] bf16, k_cache "
    f"[num_blocks, block_size, 1, {TOKEN_BYTES}] bytes (the MODEL1_FP8Sparse layout)"
)
_V32_TOKEN_BYTES = 656  # DeepSeek-V3.2's FP8 layout: 512 FP8 + 4 fp32 scales + 64 BF16 RoPE
_BYTE_DTYPES = (torch.uint8, torch.int8, torch.float8_e4m3fn)  # the k_cache dtypes FlashMLA takes


class UnsupportedCall(InputError):
    """A FlashMLA call this face does not serve (dense decode, another layout, a bf16 cache, ...)."""


@dataclass(eq=False)
class FlashMLASchedMeta:
    """What :func:`get_mla_metadata` returns.  FlashMLA keeps its tile schedule here; dsv4-tune
    needs no schedule (the policy's plan fixes the launch), only the scratch memory of its plans."""

    workspace: Workspace | None = None  # set on first use: that stream's workspace

    @property
    def have_initialized(self) -> bool:
        return self.workspace is not None


def get_mla_metadata(*args: object, **kwargs: object) -> tuple[FlashMLASchedMeta, None]:
    """A fresh metadata object, as FlashMLA returns it (its arguments are ignored, as FlashMLA's are)."""
    return FlashMLASchedMeta(), None


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor | None,
    cache_seqlens: torch.Tensor | None,
    head_dim_v: int,
    tile_scheduler_metadata: FlashMLASchedMeta,
    num_splits: None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    *,
    fp8: Fp8Flavour | Fp8Pair | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlashMLA's ``flash_mla_with_kvcache`` for the sparse FP8 decode (see the module docstring):
    returns ``(out [b, s_q, h_q, 512] bf16, lse [b, h_q, s_q] fp32)``.  A call outside that contract
    raises :class:`UnsupportedCall` saying what is supported."""
    meta = tile_scheduler_metadata
    if not isinstance(meta, FlashMLASchedMeta):
        raise InputError(f"tile_scheduler_metadata: expected what get_mla_metadata() returns, "
                         f"got {type(meta).__name__}")
    if indices is None or not is_fp8_kvcache or causal or head_dim_v != HEAD_DIM or num_splits is not None:
        got = _call_summary(indices, is_fp8_kvcache, causal, head_dim_v, num_splits)
        raise UnsupportedCall(f"{SUPPORTED}; got {got}")
    k_cache = _pool_bytes("k_cache", k_cache)
    if extra_k_cache is not None:
        extra_k_cache = _pool_bytes("extra_k_cache", extra_k_cache)
    if q.shape[-1] != HEAD_DIM:
        raise UnsupportedCall(f"{SUPPORTED}; got q with head dim {q.shape[-1]}")
    ws = meta.workspace
    if ws is None:
        ws = meta.workspace = stream_workspace(q.device)
    return sparse_decode(
        q, k_cache, indices, topk_length=topk_length, extra_k_cache=extra_k_cache,
        extra_indices=extra_indices_in_kvcache, extra_topk_length=extra_topk_length, attn_sink=attn_sink,
        sm_scale=HEAD_DIM**-0.5 if softmax_scale is None else softmax_scale, fp8=fp8, workspace=ws,
    )


def _pool_bytes(name: str, kv: torch.Tensor) -> torch.Tensor:
    """``kv`` as the uint8 pool view sparse_decode takes (a view, no copy), or UnsupportedCall."""
    if kv.shape[-1] == _V32_TOKEN_BYTES:
        raise UnsupportedCall(f"{SUPPORTED}; got {name} with {_V32_TOKEN_BYTES} B per token (DeepSeek-V3.2's layout)")
    if kv.dtype not in _BYTE_DTYPES:
        raise UnsupportedCall(f"{SUPPORTED}; got a {kv.dtype} {name}")
    return kv if kv.dtype == torch.uint8 else kv.view(torch.uint8)


def _call_summary(indices: object, is_fp8_kvcache: bool, causal: bool, head_dim_v: int, num_splits: object) -> str:
    """What a refused call asked for, in FlashMLA's words."""
    got = []
    if indices is None:
        got.append("indices=None (dense decode)")
    if not is_fp8_kvcache:
        got.append("is_fp8_kvcache=False (a bf16 cache)")
    if causal:
        got.append("causal=True")
    if head_dim_v != HEAD_DIM:
        got.append(f"head_dim_v={head_dim_v}")
    if num_splits is not None:
        got.append("num_splits (must be None, as in FlashMLA's current interface)")
    return ", ".join(got)
