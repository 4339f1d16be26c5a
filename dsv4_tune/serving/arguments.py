"""Argument checks of the entry points (sparse decode, gather, compressor, Q/K norm).

Every check reads tensor metadata only (shape, dtype, stride, device): nothing here synchronises
with the GPU.  The optional value checks (:func:`check_index_values`) do, and run only when a
caller asks for ``validate=True`` (tests, the tuner).  Each failure is a ``ValueError`` that names
the argument and says what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4_tune.env import interpreting
from dsv4_tune.kernels.kv_layout import num_slots
from dsv4_tune.registry.layout import DATA_BYTES, HEAD_DIM, TOKEN_BYTES, Fp8Pair, check_flavour
from dsv4_tune.runtime.target import kernel_device_ok

ScopeTensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # k_cache, indices, topk_length


@dataclass
class DecodeInputs:
    """Checked inputs of one sparse-decode call."""

    q: torch.Tensor  # [b, s_q, h, 512] bf16, last dim contiguous
    main: ScopeTensors
    extra: ScopeTensors | None
    attn_sink: torch.Tensor | None
    sm_scale: float
    fp8: Fp8Pair  # the flavours of the (main, extra) pools; (main, main) with one scope

    @property
    def n_tok(self) -> int:
        return self.q.shape[0] * self.q.shape[1]

    @property
    def total_topk(self) -> int:
        return self.main[1].shape[2] + (self.extra[1].shape[2] if self.extra is not None else 0)


def _where() -> str:
    return "the CPU (Triton interpreter)" if interpreting() else "a GPU"


def check_device(name: str, t: torch.Tensor, device: torch.device | None = None) -> None:
    """``t`` must live where the kernels run now, and on ``device`` when one is given."""
    if not kernel_device_ok(t):
        raise ValueError(f"{name}: expected a tensor on {_where()}, got device {t.device}")
    if device is not None and t.get_device() != (-1 if device.index is None else device.index):
        raise ValueError(f"{name}: expected device {device} like the other inputs, got {t.device}")


def check_kv_cache(name: str, kv: torch.Tensor) -> None:
    """A pool view ``[pages, P, 1, 584]`` uint8 whose pages hold P data rows then P scale rows."""
    if kv.dtype != torch.uint8:
        raise ValueError(f"{name}: expected dtype torch.uint8 (the FP8 pool bytes), got {kv.dtype}")
    shape = kv.shape
    if len(shape) != 4 or shape[2] != 1 or shape[3] != TOKEN_BYTES:
        raise ValueError(f"{name}: expected shape [pages, page_size, 1, {TOKEN_BYTES}], got {tuple(shape)}")
    pages, page_size = shape[0], shape[1]
    if pages < 1 or page_size < 1:
        raise ValueError(f"{name}: expected at least one page of at least one token, got {tuple(shape)}")
    stride = kv.stride()
    if stride[3] != 1 or stride[1] != TOKEN_BYTES:
        raise ValueError(f"{name}: expected the pool view's strides (page_stride, {TOKEN_BYTES}, *, 1), got {stride}")
    if pages * page_size >= 2**31:
        raise ValueError(f"{name}: {pages} pages of {page_size} tokens exceed 2^31 slots (int32 slot ids)")
    if stride[0] < page_size * TOKEN_BYTES or stride[0] % DATA_BYTES:
        raise ValueError(
            f"{name}: page stride {stride[0]} B must be a multiple of {DATA_BYTES} B and hold "
            f"{page_size} tokens of {TOKEN_BYTES} B: DSV4 pools pad each page to a multiple of {DATA_BYTES} B "
            f"(as FlashMLA's quantize_k_cache and the engines' pools do; kv_layout.pool_view makes the view)"
        )


def check_indices(name: str, idx: torch.Tensor, batch: int | None = None, s_q: int | None = None) -> None:
    """Sparse slot ids ``[b, s_q, topk]`` int32 (any strides)."""
    if idx.dtype != torch.int32:
        raise ValueError(f"{name}: expected dtype torch.int32, got {idx.dtype}")
    shape = idx.shape
    if len(shape) != 3:
        raise ValueError(f"{name}: expected shape [b, s_q, topk], got {tuple(shape)}")
    if batch is not None and (shape[0] != batch or shape[1] != s_q):
        raise ValueError(f"{name}: expected leading dims [b={batch}, s_q={s_q}], got {tuple(shape)}")
    if shape[2] < 1:
        raise ValueError(f"{name}: expected topk >= 1, got {tuple(shape)}")


def check_topk_length(name: str, length: torch.Tensor, batch: int) -> None:
    """Per batch row candidate counts ``[b]`` int32."""
    if length.dtype != torch.int32:
        raise ValueError(f"{name}: expected dtype torch.int32, got {length.dtype}")
    if length.dim() != 1 or length.shape[0] != batch:
        raise ValueError(f"{name}: expected shape [{batch}] (one per batch row), got {tuple(length.shape)}")
    if batch > 1 and length.stride(0) != 1:  # the kernels read length[row] unstrided
        raise ValueError(f"{name}: expected a contiguous tensor, got stride {length.stride(0)}")


def check_scope(
    prefix: str,
    kv: torch.Tensor,
    idx: torch.Tensor,
    length: torch.Tensor | None,
    batch: int | None = None,
    s_q: int | None = None,
) -> None:
    """All metadata checks of one scope (pool, indices, optional topk_length), one device."""
    check_kv_cache(f"{prefix}k_cache", kv)
    check_device(f"{prefix}k_cache", kv)
    check_indices(f"{prefix}indices", idx, batch, s_q)
    check_device(f"{prefix}indices", idx, kv.device)
    if length is not None:
        check_topk_length(f"{prefix}topk_length", length, idx.shape[0])
        check_device(f"{prefix}topk_length", length, kv.device)


def check_index_values(
    prefix: str, kv: torch.Tensor, idx: torch.Tensor, length: torch.Tensor | None
) -> None:
    """Value checks (synchronises): ids are -1 or in ``[0, pages * P)``, lengths in ``[0, topk]``."""
    n = num_slots(kv)
    bad = (idx != -1) & ((idx < 0) | (idx >= n))
    if bool(bad.any()):
        first = idx[bad].flatten()[0].item()
        raise ValueError(
            f"{prefix}indices: {int(bad.sum())} ids are neither -1 nor a slot in [0, {n}) "
            f"(first: {first})"
        )
    if length is not None:
        topk = idx.shape[2]
        if bool(((length < 0) | (length > topk)).any()):
            raise ValueError(f"{prefix}topk_length: values must lie in [0, {topk}]")


def check_decode(
    q: torch.Tensor, k_cache: torch.Tensor, indices: torch.Tensor, topk_length: torch.Tensor | None,
    extra_k_cache: torch.Tensor | None, extra_indices: torch.Tensor | None, extra_topk_length: torch.Tensor | None,
    attn_sink: torch.Tensor | None, sm_scale: float, fp8: Fp8Pair,
) -> DecodeInputs:
    """Every metadata check of a ``sparse_decode`` call's inputs (no host sync; the value checks
    are :func:`check_decode_values`); q is made contiguous where the kernels need it.  ``fp8``: the
    (main, extra) pools' flavours (one scope: the extra one is dropped)."""
    fp8 = (check_flavour(fp8[0]), check_flavour(fp8[1]))
    if q.dtype != torch.bfloat16:
        raise ValueError(f"q: expected dtype torch.bfloat16, got {q.dtype}")
    if q.dim() != 4 or q.shape[3] != HEAD_DIM:
        raise ValueError(f"q: expected shape [b, s_q, h_q, {HEAD_DIM}], got {tuple(q.shape)}")
    check_device("q", q)
    b, s_q, h_q, _ = q.shape
    check_scope("", k_cache, indices, topk_length, b, s_q)
    check_device("k_cache", k_cache, q.device)
    extra = None
    if (extra_k_cache is None) != (extra_indices is None):
        raise ValueError("extra_k_cache, extra_indices: give both or neither")
    if extra_k_cache is not None:
        check_scope("extra_", extra_k_cache, extra_indices, extra_topk_length, b, s_q)
        check_device("extra_k_cache", extra_k_cache, q.device)
        extra = (extra_k_cache, extra_indices, extra_topk_length)
    elif extra_topk_length is not None:
        raise ValueError("extra_topk_length: given without an extra scope")
    else:
        fp8 = (fp8[0], fp8[0])
    if attn_sink is not None:
        if attn_sink.dtype != torch.float32 or attn_sink.dim() != 1 or attn_sink.shape[0] != h_q:
            raise ValueError(f"attn_sink: expected a float32 tensor [{h_q}], got {attn_sink.dtype} "
                             f"{tuple(attn_sink.shape)}")
        if h_q > 1 and attn_sink.stride(0) != 1:  # the kernels read sink[head] unstrided
            raise ValueError(f"attn_sink: expected a contiguous tensor, got stride {attn_sink.stride(0)}")
        check_device("attn_sink", attn_sink, q.device)
    if q.stride(3) != 1 or q.stride(0) % 8 or q.stride(1) % 8 or q.stride(2) % 8:
        q = q.contiguous()  # the kernels read 16-byte rows of q
    return DecodeInputs(q, (k_cache, indices, topk_length), extra, attn_sink, sm_scale, fp8)


def check_decode_values(x: DecodeInputs) -> None:
    """The value checks of ``sparse_decode(validate=True)`` (synchronises): ids and lengths of both scopes."""
    check_index_values("", *x.main)
    if x.extra is not None:
        check_index_values("extra_", *x.extra)


def decode_outputs(
    out: tuple[torch.Tensor, torch.Tensor] | None, b: int, s_q: int, h_q: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate ``(out, lse)`` or check the caller's: contiguous, right shape, dtype and device."""
    if out is None:
        return (
            torch.empty(b, s_q, h_q, HEAD_DIM, dtype=torch.bfloat16, device=device),
            torch.empty(b, h_q, s_q, dtype=torch.float32, device=device),
        )
    o, lse = out
    for name, t, shape, dtype in (("out[0]", o, (b, s_q, h_q, HEAD_DIM), torch.bfloat16),
                                  ("out[1]", lse, (b, h_q, s_q), torch.float32)):
        if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(
                f"{name}: expected a contiguous {dtype} tensor {list(shape)}, got {t.dtype} {list(t.shape)}"
            )
        check_device(name, t, device)
    return o, lse
