"""Per-head RMSNorm of Q and K in one launch (DSV4's q/k norm before RoPE).

``y = x * rsqrt(mean(x^2) + eps) [* weight]`` over the last dim of every head row, fp32 math, bf16 or
fp32 in and out (BF16 results rounded to nearest even on every backend, interpreter included).
Programs ``[0, cdiv(T * h_q, ROWS))`` take Q head rows, the rest K head rows: one launch where eager
PyTorch needs about ten.  Head and token strides are free (the last dim must be contiguous), so
slices of a fused QKV projection work without a copy, and ``out`` may be the input (in place: each
element is read and written by the same program).

Config knobs (:mod:`dsv4_tune.kernels.compressor_space`): ``ROWS`` head rows per program,
``num_warps``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.attention_core import to_bf16_rne
from dsv4_tune.kernels.checks import check_device
from dsv4_tune.kernels.compressor_space import qk_norm_default, qk_norm_problems
from dsv4_tune.kernels.launch import Launcher, kernel
from dsv4_tune.kernels.runtime import next_pow2

_DTYPES = {torch.bfloat16: "bf16", torch.float32: "f32"}


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

# For dsv4_tune.kernels.crosscompile (see compressor.KERNELS): Q/K/out pass as bytes, re-typed by QT/KT/...
KERNELS = {"_qk_norm_kernel": _qk_norm_kernel}
POINTER_TYPES = {"xq_ptr": "*u8", "oq_ptr": "*u8", "wq_ptr": "*fp32", "xk_ptr": "*u8", "ok_ptr": "*u8",
                 "wk_ptr": "*fp32"}


def qk_norm_launch(
    q_shape: tuple[int, int, int], k_shape: tuple[int, int, int], config: dict[str, int], *,
    dtypes: tuple[str, str, str, str] = ("bf16", "bf16", "bf16", "bf16"), weights: tuple[bool, bool] = (True, False),
    eps: float = 1e-6,
) -> tuple[str, tuple[tuple[str, object], ...], int, int]:
    """The one launch of :func:`qk_norm` as (name, sorted constexprs, num_warps, num_stages).

    ``dtypes`` = (q, out_q, k, out_k) as "bf16" / "f32"; ``weights`` = (has q weight, has k weight).
    """
    dq, dk = q_shape[2], k_shape[2]
    problems = qk_norm_problems(dq, dk, config)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    consts = {"DQ": dq, "DK": dk, "BLOCK_Q": next_pow2(dq), "BLOCK_K": next_pow2(dk), "ROWS": config["ROWS"],
              "QT": dtypes[0], "OQT": dtypes[1], "KT": dtypes[2], "OKT": dtypes[3],
              "HAS_WQ": weights[0], "HAS_WK": weights[1], "EPS": float(eps)}
    return "_qk_norm_kernel", tuple(sorted(consts.items())), config["num_warps"], 1


def _check_heads(name: str, x: torch.Tensor, tokens: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name}: expected a tensor [T, heads, head_dim], got {getattr(x, 'shape', x)}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{name}: expected dtype torch.bfloat16 or torch.float32, got {x.dtype}")
    if tokens is not None and x.shape[0] != tokens:
        raise ValueError(f"{name}: expected {tokens} tokens like q, got {tuple(x.shape)}")
    if x.shape[2] > 1 and x.stride(2) != 1:
        raise ValueError(f"{name}: expected a contiguous last dim, got strides {x.stride()}")


def _check_out(name: str, out: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(like.shape, dtype=like.dtype, device=like.device)
    _check_heads(name, out)
    if out.shape != like.shape:
        raise ValueError(f"{name}: expected shape {tuple(like.shape)}, got {tuple(out.shape)}")
    check_device(name, out, like.device)
    return out


def _check_weight(name: str, w: torch.Tensor | None, dim: int, device: torch.device) -> None:
    if w is None:
        return
    if w.dtype != torch.float32 or w.dim() != 1 or w.shape[0] != dim or (dim > 1 and w.stride(0) != 1):
        raise ValueError(f"{name}: expected a contiguous float32 tensor [{dim}], got {w.dtype} {tuple(w.shape)}")
    check_device(name, w, device)


def qk_norm(
    q: torch.Tensor,
    k: torch.Tensor,
    q_weight: torch.Tensor | None = None,
    k_weight: torch.Tensor | None = None,
    *,
    eps: float = 1e-6,
    out_q: torch.Tensor | None = None,
    out_k: torch.Tensor | None = None,
    config: dict[str, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm every head row of ``q [T, h_q, Dq]`` and ``k [T, h_k, Dk]`` in one launch.

    Optional fp32 weights ``[Dq]`` / ``[Dk]``; outputs allocated like the inputs when not given
    (pass ``out_q=q`` to normalise in place).  Returns ``(out_q, out_k)``.
    """
    _check_heads("q", q)
    _check_heads("k", k, q.shape[0])
    check_device("q", q)
    check_device("k", k, q.device)
    _check_weight("q_weight", q_weight, q.shape[2], q.device)
    _check_weight("k_weight", k_weight, k.shape[2], q.device)
    out_q, out_k = _check_out("out_q", out_q, q), _check_out("out_k", out_k, k)
    dq, dk = q.shape[2], k.shape[2]
    if config is None:
        config = qk_norm_default(dq, dk)
    problems = qk_norm_problems(dq, dk, config)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    rows = config["ROWS"]
    n_q, n_k = q.shape[0] * q.shape[1], k.shape[0] * k.shape[1]
    n_q_progs = triton.cdiv(n_q, rows)
    grid = n_q_progs + triton.cdiv(n_k, rows)
    if grid == 0:
        return out_q, out_k
    dummy = q_weight if q_weight is not None else k_weight
    if dummy is None:
        dummy = torch.empty(1, dtype=torch.float32, device=q.device)

    def args(x: torch.Tensor, o: torch.Tensor, w: torch.Tensor | None, n: int) -> list:
        return [x.view(torch.uint8), x.stride(0), x.stride(1), o.view(torch.uint8), o.stride(0), o.stride(1),
                dummy if w is None else w, x.shape[1], n]

    _launch(
        (grid, 1, 1), *args(q, out_q, q_weight, n_q), *args(k, out_k, k_weight, n_k), n_q_progs,
        dq, dk, next_pow2(dq), next_pow2(dk), rows,
        _DTYPES[q.dtype], _DTYPES[out_q.dtype], _DTYPES[k.dtype], _DTYPES[out_k.dtype],
        q_weight is not None, k_weight is not None, float(eps),
        num_warps=config["num_warps"], num_stages=1,
    )
    return out_q, out_k
