"""Per-head RMSNorm of Q and K in one launch (DSV4's q/k norm before RoPE).

``y = x * rsqrt(mean(x^2) + eps) [* weight]`` over the last dim of every head row, fp32 math, bf16 or
fp32 in and out (BF16 results rounded to nearest even on every backend, interpreter included).
Programs ``[0, cdiv(T * h_q, ROWS))`` take Q head rows, the rest K head rows: one launch where eager
PyTorch needs about ten.  Head and token strides are free (the last dim must be contiguous), so
slices of a fused QKV projection work without a copy, and ``out`` may be the input (in place: each
element is read and written by the same program).

Config knobs (:mod:`dsv4_tune.registry.compressor_space`): ``ROWS`` head rows per program,
``num_warps``.  The checked host API is :func:`dsv4_tune.serving.qk_norm.qk_norm`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.attention_core import to_bf16_rne
from dsv4_tune.registry.intmath import cdiv, next_pow2
from dsv4_tune.runtime.jit import Launcher, kernel

DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}


@triton.jit
def _typed(ptr, T: tl.constexpr):
    return ptr.to(tl.pointer_type(tl.bfloat16 if T == "bf16" else tl.float32))


@triton.jit
def _norm_rows(
    pid, x_ptr, s_t, s_h, o_ptr, so_t, so_h, w_ptr, heads, n_rows,
    DIM: tl.constexpr, BLOCK: tl.constexpr, ROWS: tl.constexpr, XT: tl.constexpr, OT: tl.constexpr,
    HAS_W: tl.constexpr, EPS: tl.constexpr,
):
    """RMSNorm of head rows ``[pid * ROWS, pid * ROWS + ROWS)`` of one tensor (row = t * heads + h)."""
    r = pid * ROWS + tl.arange(0, ROWS)
    t = (r // heads).to(tl.int64)
    h = (r % heads).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = (r < n_rows)[:, None] & (cols < DIM)[None, :]
    x = tl.load(_typed(x_ptr, XT) + (t * s_t + h * s_h)[:, None] + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x, axis=1) / DIM + EPS)[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=cols < DIM, other=0.0)[None, :]
    out = _typed(o_ptr, OT) + (t * so_t + h * so_h)[:, None] + cols[None, :]
    if OT == "bf16":
        tl.store(out, to_bf16_rne(y), mask=mask)
    else:
        tl.store(out, y, mask=mask)


@kernel
def _qk_norm_kernel(
    xq_ptr, sq_t, sq_h, oq_ptr, soq_t, soq_h, wq_ptr, h_q, n_q_rows,
    xk_ptr, sk_t, sk_h, ok_ptr, sok_t, sok_h, wk_ptr, h_k, n_k_rows, n_q_progs,
    DQ: tl.constexpr, DK: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, ROWS: tl.constexpr,
    QT: tl.constexpr, OQT: tl.constexpr, KT: tl.constexpr, OKT: tl.constexpr,
    HAS_WQ: tl.constexpr, HAS_WK: tl.constexpr, EPS: tl.constexpr,
):
    pid = tl.program_id(0)
    if pid < n_q_progs:
        _norm_rows(pid, xq_ptr, sq_t, sq_h, oq_ptr, soq_t, soq_h, wq_ptr, h_q, n_q_rows,
                   DQ, BLOCK_Q, ROWS, QT, OQT, HAS_WQ, EPS)
    else:
        _norm_rows(pid - n_q_progs, xk_ptr, sk_t, sk_h, ok_ptr, sok_t, sok_h, wk_ptr, h_k, n_k_rows,
                   DK, BLOCK_K, ROWS, KT, OKT, HAS_WK, EPS)


_launch = Launcher(_qk_norm_kernel)

# For the kernel catalog (dsv4_tune.kernels.catalog; see compressor.KERNELS): Q/K/out pass as bytes, re-typed by QT/KT/...
KERNELS = {"_qk_norm_kernel": _qk_norm_kernel}
POINTER_TYPES = {"xq_ptr": "*u8", "oq_ptr": "*u8", "wq_ptr": "*fp32", "xk_ptr": "*u8", "ok_ptr": "*u8",
                 "wk_ptr": "*fp32"}


def launch_qk_norm(
    q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor | None, k_weight: torch.Tensor | None,
    out_q: torch.Tensor, out_k: torch.Tensor, config: dict[str, int], eps: float,
) -> None:
    """Launch the kernel (inputs and config checked by :func:`dsv4_tune.serving.qk_norm.qk_norm`)."""
    dq, dk = q.shape[2], k.shape[2]
    rows = config["ROWS"]
    n_q, n_k = q.shape[0] * q.shape[1], k.shape[0] * k.shape[1]
    n_q_progs = cdiv(n_q, rows)
    grid = n_q_progs + cdiv(n_k, rows)
    if grid == 0:
        return
    dummy = q_weight if q_weight is not None else k_weight
    if dummy is None:
        dummy = torch.empty(1, dtype=torch.float32, device=q.device)

    def args(x: torch.Tensor, o: torch.Tensor, w: torch.Tensor | None, n: int) -> list:
        return [x.view(torch.uint8), x.stride(0), x.stride(1), o.view(torch.uint8), o.stride(0), o.stride(1),
                dummy if w is None else w, x.shape[1], n]

    _launch(
        (grid, 1, 1), *args(q, out_q, q_weight, n_q), *args(k, out_k, k_weight, n_k), n_q_progs,
        dq, dk, next_pow2(dq), next_pow2(dk), rows,
        DTYPES[q.dtype], DTYPES[out_q.dtype], DTYPES[k.dtype], DTYPES[out_k.dtype],
        q_weight is not None, k_weight is not None, float(eps),
        num_warps=config["num_warps"], num_stages=1,
    )
