"""Plain-PyTorch references: the oracle every kernel is checked against.

Kept deliberately simple (dense gathers, fp32 math, no tiling).  The kernels must never call them.
Validity of a candidate k of query token t (one rule, shared with the kernels):
``0 <= idx < pages * P`` and, when ``topk_length`` is given, ``k < topk_length[t // s_q]``.
"""

from __future__ import annotations

import torch

from dsv4_tune.kernels.kv_layout import HEAD_DIM, Fp8Flavour, num_slots, read_tokens


def candidate_valid(
    k_cache: torch.Tensor, indices: torch.Tensor, topk_length: torch.Tensor | None
) -> torch.Tensor:
    """``[T, topk]`` bool: which candidates of ``indices [b, s_q, topk]`` are valid."""
    b, s_q, topk = indices.shape
    idx = indices.reshape(b * s_q, topk).to(torch.int64)
    valid = (idx >= 0) & (idx < num_slots(k_cache))
    if topk_length is not None:
        length = topk_length.to(torch.int64).repeat_interleave(s_q)  # row of token t is t // s_q
        valid &= torch.arange(topk, device=idx.device)[None, :] < length[:, None]
    return valid


def gather_dequant_scope_ref(
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None,
    fp8: Fp8Flavour,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One scope: (BF16 ``[T, topk, 512]`` with invalid rows exactly 0, invalid ``[T, topk]``)."""
    b, s_q, topk = indices.shape
    valid = candidate_valid(k_cache, indices, topk_length)
    idx = indices.reshape(-1).to(torch.int64)
    rows = torch.zeros(idx.numel(), HEAD_DIM, dtype=torch.bfloat16, device=k_cache.device)
    flat_valid = valid.reshape(-1)
    if flat_valid.any():
        rows[flat_valid] = read_tokens(k_cache, idx[flat_valid], fp8)
    return rows.reshape(b * s_q, topk, HEAD_DIM), ~valid


def gather_dequant_ref(
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    *,
    fp8: Fp8Flavour,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both scopes concatenated along topk: (BF16 ``[T, total_topk, 512]``, invalid ``[T, total_topk]``)."""
    kv, inv = gather_dequant_scope_ref(k_cache, indices, topk_length, fp8)
    if extra_k_cache is None:
        return kv, inv
    assert extra_indices is not None
    kv_x, inv_x = gather_dequant_scope_ref(extra_k_cache, extra_indices, extra_topk_length, fp8)
    return torch.cat([kv, kv_x], dim=1), torch.cat([inv, inv_x], dim=1)


def attention_ref(
    q: torch.Tensor,
    kv: torch.Tensor,
    invalid: torch.Tensor,
    attn_sink: torch.Tensor | None,
    sm_scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q [T, h, 512]`` over gathered ``kv [T, n, 512]`` (K = V), in fp32.

    Returns (O fp32 ``[T, h, 512]``, LSE fp32 ``[T, h]``).  The sink scales O by
    ``1 / (1 + exp(sink - LSE))`` and is not part of LSE; a row with no valid candidate has
    O = 0 and LSE = +inf.
    """
    kv32 = kv.float()
    logits = sm_scale * torch.einsum("thd,tnd->thn", q.float(), kv32)
    logits = logits.masked_fill(invalid[:, None, :], float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)  # -inf for a lonely row
    lonely = torch.isneginf(lse)
    probs = torch.exp(logits - lse.masked_fill(lonely, 0.0)[..., None])
    out = torch.einsum("thn,tnd->thd", probs, kv32)
    if attn_sink is not None:
        out = out * torch.sigmoid(lse - attn_sink.float()[None, :])[..., None]
    out = out.masked_fill(lonely[..., None], 0.0)
    lse = lse.masked_fill(lonely, float("inf"))
    return out, lse


def sparse_decode_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    *,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    sm_scale: float,
    fp8: Fp8Flavour,
    out_dtype: torch.dtype = torch.bfloat16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse decode attention over one or two scopes in one softmax.

    ``q [b, s_q, h, 512]`` -> (out ``[b, s_q, h, 512]`` in ``out_dtype`` (BF16 as the kernels; tests
    compare against fp32 so that the reference's own rounding is not counted), lse fp32 ``[b, h, s_q]``).
    """
    b, s_q, h, _ = q.shape
    kv, invalid = gather_dequant_ref(
        k_cache, indices, topk_length, extra_k_cache, extra_indices, extra_topk_length, fp8=fp8
    )
    out, lse = attention_ref(q.reshape(b * s_q, h, HEAD_DIM), kv, invalid, attn_sink, sm_scale)
    out = out.to(out_dtype).reshape(b, s_q, h, HEAD_DIM)
    return out, lse.reshape(b, s_q, h).transpose(1, 2).contiguous()
