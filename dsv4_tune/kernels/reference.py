"""Plain-PyTorch references: the oracle every kernel is checked against.

Kept deliberately simple (dense gathers, fp32 math, no tiling).  The kernels must never call them.
Validity of a candidate k of query token t (one rule, shared with the kernels):
``0 <= idx < pages * P`` and, when ``topk_length`` is given, ``k < topk_length[t // s_q]``.
"""

from __future__ import annotations

import torch

from dsv4_tune.kernels.kv_layout import HEAD_DIM, Fp8Flavour, num_slots, read_tokens, write_tokens
from dsv4_tune.registry.layout import Fp8Pair, fp8_pair


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
    fp8: Fp8Flavour | Fp8Pair,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both scopes concatenated along topk: (BF16 ``[T, total_topk, 512]``, invalid ``[T, total_topk]``);
    ``fp8``: one flavour for both pools or the (main, extra) pair."""
    fp8, x_fp8 = fp8_pair(fp8, "e4m3fn")
    kv, inv = gather_dequant_scope_ref(k_cache, indices, topk_length, fp8)
    if extra_k_cache is None:
        return kv, inv
    assert extra_indices is not None
    kv_x, inv_x = gather_dequant_scope_ref(extra_k_cache, extra_indices, extra_topk_length, x_fp8)
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
    fp8: Fp8Flavour | Fp8Pair,
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


# ---------------------------------------------------------------------------------------------
# DSV4 compressor and fused Q/K norm.  Literal simulations of the spec (compressor.md): requests one
# by one, tokens in order, each token written into its ring slot before its window is read; fp64
# math, returned as fp32.


def compress_row_ref(
    window: list[torch.Tensor | None],
    ape: torch.Tensor,
    norm_weight: torch.Tensor,
    freqs: torch.Tensor,
    position: int,
    ratio: int,
    eps: float,
) -> torch.Tensor:
    """One compressed row (fp32 ``[D]``) from the ``K`` kv_score rows of its window (None = empty).

    Per channel softmax over the window of ``score + ape`` (-inf and empty slots weigh 0, a channel
    with no weight is 0), RMSNorm with ``norm_weight``, then interleaved RoPE on the last 64 dims at
    ``position + 1 - ratio`` (the first position of the block ending at ``position``).
    """
    k_len, dim = ape.shape
    coff = 2 if ratio == 4 else 1
    assert len(window) == k_len == ratio * coff
    kv = torch.zeros(k_len, dim, dtype=torch.float64)
    score = torch.full((k_len, dim), float("-inf"), dtype=torch.float64)
    for k, row in enumerate(window):
        if row is None:
            continue
        half = k // ratio  # C4: A half for the previous block, B half for the current one
        row = row.detach().to("cpu", torch.float64)
        kv[k] = row[half * dim:(half + 1) * dim]
        score[k] = row[(coff + half) * dim:(coff + half + 1) * dim] + ape[k].to("cpu", torch.float64)
    top = score.max(dim=0).values
    top = torch.where(top == float("-inf"), 0.0, top)
    weight = torch.where(score == float("-inf"), 0.0, torch.exp(score - top))
    den = weight.sum(dim=0)
    c = torch.where(den > 0, (weight * kv).sum(dim=0) / torch.where(den > 0, den, 1.0), 0.0)
    y = c * torch.rsqrt((c * c).mean() + eps) * norm_weight.to("cpu", torch.float64)
    f = freqs[position + 1 - ratio].to("cpu", torch.float64)
    cos, sin = f[0::2], f[1::2]
    x0, x1 = y[dim - 64::2].clone(), y[dim - 63::2].clone()
    y[dim - 64::2] = x0 * cos - x1 * sin
    y[dim - 63::2] = x0 * sin + x1 * cos
    return y.float()


def _compress_requests_ref(
    requests: list[tuple[int, int, torch.Tensor, list[int], list[int]]],
    state: torch.Tensor,
    ape: torch.Tensor,
    norm_weight: torch.Tensor,
    freqs: torch.Tensor,
    dest: torch.Tensor,
    ratio: int,
    ring_size: int,
    eps: float,
    fp8: Fp8Flavour,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Requests ``(ring_base, prefix, new rows [n, W], out_loc per row, token id per row)``."""
    k_len = ape.shape[0]
    n_slots = num_slots(dest) if dest.dtype == torch.uint8 else dest.shape[0]
    rows, locs, toks = [], [], []
    for base, prefix, x, out_loc, tok_ids in requests:
        # ring slot -> (position, row).  A real ring (base >= 0) holds the prefix's last ring_size
        # positions; a request without one (base < 0) starts with an empty ring and writes no state.
        ring: dict[int, tuple[int, torch.Tensor]] = {}
        if base >= 0:
            for pos in range(max(0, prefix - ring_size), prefix):
                ring[pos % ring_size] = (pos, state[base + pos % ring_size].clone())
        for i in range(x.shape[0]):
            p = prefix + i
            ring[p % ring_size] = (p, x[i].clone())  # write first, then read the window
            if base >= 0:
                state[base + p % ring_size] = x[i]
            if (p + 1) % ratio or not 0 <= out_loc[i] < n_slots:
                continue
            window: list[torch.Tensor | None] = []
            for k in range(k_len):
                s = p - k_len + 1 + k
                entry = ring.get(s % ring_size) if s >= 0 else None
                if entry is not None:
                    assert entry[0] == s, f"ring slot of position {s} holds position {entry[0]}"
                window.append(None if entry is None else entry[1])
            rows.append(compress_row_ref(window, ape, norm_weight, freqs, p, ratio, eps))
            locs.append(out_loc[i])
            toks.append(tok_ids[i])
    dim = ape.shape[1]
    out = torch.stack(rows) if rows else torch.zeros(0, dim)
    slots = torch.tensor(locs, dtype=torch.int64)
    if rows:
        if dest.dtype == torch.uint8:
            write_tokens(dest, slots.to(dest.device), out.to(dest.device), fp8)
        else:
            dest[slots.to(dest.device)] = out.to(device=dest.device, dtype=dest.dtype)
    return out, slots, torch.tensor(toks, dtype=torch.int64)


def compress_prefill_ref(
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
    fp8: Fp8Flavour = "e4m3fn",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ragged prefill (see ``compressor.compress_prefill``), writing ``state`` and ``dest`` in place.

    Returns (fp32 rows ``[M, D]`` before quantization, their slots ``[M]``, their ragged token ids).
    """
    cu, prefix, base = cu_seqlens.tolist(), prefix_lens.tolist(), ring_base.tolist()
    locs = out_loc.tolist()
    requests = [(base[b], prefix[b], kv_score[cu[b]:cu[b + 1]], locs[cu[b]:cu[b + 1]], list(range(cu[b], cu[b + 1])))
                for b in range(len(base))]
    return _compress_requests_ref(requests, state, ape, norm_weight, freqs, dest, ratio, ring_size, eps, fp8)


def compress_decode_ref(
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
    fp8: Fp8Flavour = "e4m3fn",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode: one token per request at position ``seq_lens[b] - 1`` (``<= 0``: padding, no effect).

    Returns (fp32 rows, slots, request ids), like :func:`compress_prefill_ref`.
    """
    seq, base, locs = seq_lens.tolist(), ring_base.tolist(), out_loc.tolist()
    requests = [(base[b], seq[b] - 1, kv_score[b:b + 1], [locs[b]], [b]) for b in range(len(seq)) if seq[b] > 0]
    return _compress_requests_ref(requests, state, ape, norm_weight, freqs, dest, ratio, ring_size, eps, fp8)


def qk_norm_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head RMSNorm of ``q [T, h_q, Dq]`` and ``k [T, h_k, Dk]`` in fp64; fp32 results."""

    def norm(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
        x = x.double()
        y = x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps)
        return (y if w is None else y * w.double()).float()

    return norm(q, q_weight), norm(k, k_weight)
