"""The entry points as ``torch.library`` custom ops (``torch.ops.dsv4_tune.*``), with fake (meta)
implementations, so that ``torch.compile(fullgraph=True)`` traces a model step that calls them (the
op is opaque to the graph; its shapes come from the fake) and piecewise CUDA graphs can split at them.

Each op runs the same code as the Python entry point, dispatched by the enclosing policy (the
process's or a ``policy_scope``'s) and in the GPU arch's FP8 flavour when ``fp8`` is ``""``:

- ``sparse_decode(q, k_cache, indices, topk_length, extra_k_cache, extra_indices, extra_topk_length,
  attn_sink, sm_scale, fp8, extra_fp8) -> (out, lse)``: ``extra_fp8`` the extra pool's flavour where
  it differs from the main pool's (gfx942's SWA e4m3fnuz + compressed e4m3fn), ``""`` the same
- ``compress_decode(kv_score, state, ring_base, seq_lens, ape, norm_weight, freqs, out_loc, dest,
  ratio, ring_size, eps, fp8)``: writes ``state`` and ``dest`` in place
- ``compress_prefill(kv_score, cu_seqlens, prefix_lens, state, ring_base, ape, norm_weight, freqs,
  out_loc, dest, ratio, ring_size, eps, fp8, max_new_tokens)``: writes ``state`` and ``dest``
- ``qk_norm(q, k, q_weight, k_weight, eps) -> (out_q, out_k)``

Importing this module registers them (``import dsv4_tune.serving.torch_ops``).
"""

# No ``from __future__ import annotations``: torch.library reads the op schemas from the annotations.
import torch

from dsv4_tune.registry.layout import HEAD_DIM
from dsv4_tune.runtime.target import device_flavour
from dsv4_tune.serving.compressor import compress_decode as _compress_decode
from dsv4_tune.serving.compressor import compress_prefill as _compress_prefill
from dsv4_tune.serving.decode import sparse_decode as _sparse_decode
from dsv4_tune.serving.qk_norm import qk_norm as _qk_norm

Tensor = torch.Tensor


@torch.library.custom_op("dsv4_tune::sparse_decode", mutates_args=())
def sparse_decode(
    q: Tensor, k_cache: Tensor, indices: Tensor, topk_length: Tensor | None, extra_k_cache: Tensor | None,
    extra_indices: Tensor | None, extra_topk_length: Tensor | None, attn_sink: Tensor | None, sm_scale: float,
    fp8: str = "", extra_fp8: str = "",
) -> tuple[Tensor, Tensor]:
    flavours = (fp8 or device_flavour(q), extra_fp8) if extra_fp8 else fp8 or None
    return _sparse_decode(q, k_cache, indices, topk_length=topk_length, extra_k_cache=extra_k_cache,
                          extra_indices=extra_indices, extra_topk_length=extra_topk_length, attn_sink=attn_sink,
                          sm_scale=sm_scale, fp8=flavours)  # type: ignore[arg-type]


@sparse_decode.register_fake
def _(q, k_cache, indices, topk_length, extra_k_cache, extra_indices, extra_topk_length, attn_sink, sm_scale,
      fp8="", extra_fp8=""):
    b, s_q, h_q, _ = q.shape
    return q.new_empty(b, s_q, h_q, HEAD_DIM), q.new_empty(b, h_q, s_q, dtype=torch.float32)


@torch.library.custom_op("dsv4_tune::compress_decode", mutates_args=("state", "dest"))
def compress_decode(
    kv_score: Tensor, state: Tensor, ring_base: Tensor, seq_lens: Tensor, ape: Tensor, norm_weight: Tensor,
    freqs: Tensor, out_loc: Tensor, dest: Tensor, ratio: int, ring_size: int, eps: float = 1e-6, fp8: str = "",
) -> None:
    _compress_decode(kv_score, state, ring_base, seq_lens, ape, norm_weight, freqs, out_loc, dest, ratio=ratio,
                     ring_size=ring_size, eps=eps, fp8=fp8 or None)  # type: ignore[arg-type]


@compress_decode.register_fake
def _(kv_score, state, ring_base, seq_lens, ape, norm_weight, freqs, out_loc, dest, ratio, ring_size, eps=1e-6,
      fp8=""):
    return None


@torch.library.custom_op("dsv4_tune::compress_prefill", mutates_args=("state", "dest"))
def compress_prefill(
    kv_score: Tensor, cu_seqlens: Tensor, prefix_lens: Tensor, state: Tensor, ring_base: Tensor, ape: Tensor,
    norm_weight: Tensor, freqs: Tensor, out_loc: Tensor, dest: Tensor, ratio: int, ring_size: int, eps: float = 1e-6,
    fp8: str = "", max_new_tokens: int | None = None,
) -> None:
    _compress_prefill(kv_score, cu_seqlens, prefix_lens, state, ring_base, ape, norm_weight, freqs, out_loc, dest,
                      ratio=ratio, ring_size=ring_size, eps=eps, fp8=fp8 or None,  # type: ignore[arg-type]
                      max_new_tokens=max_new_tokens)


@compress_prefill.register_fake
def _(kv_score, cu_seqlens, prefix_lens, state, ring_base, ape, norm_weight, freqs, out_loc, dest, ratio,
      ring_size, eps=1e-6, fp8="", max_new_tokens=None):
    return None


@torch.library.custom_op("dsv4_tune::qk_norm", mutates_args=())
def qk_norm(q: Tensor, k: Tensor, q_weight: Tensor | None, k_weight: Tensor | None,
            eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    return _qk_norm(q, k, q_weight, k_weight, eps=eps)


@qk_norm.register_fake
def _(q, k, q_weight, k_weight, eps=1e-6):
    return q.new_empty(q.shape), k.new_empty(k.shape)  # contiguous, as the real op allocates them
