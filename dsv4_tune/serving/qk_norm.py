"""The fused Q/K RMSNorm's host API: checks (metadata only), config, launch
(:mod:`dsv4_tune.kernels.qk_norm`)."""

from __future__ import annotations

import torch

from dsv4_tune.kernels.qk_norm import DTYPES, launch_qk_norm
from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
from dsv4_tune.registry.compressor_space import qk_norm_problems
from dsv4_tune.registry.workload import OpWorkload
from dsv4_tune.serving.arguments import check_device


def _check_heads(name: str, x: torch.Tensor, tokens: int | None = None) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"{name}: expected a tensor [T, heads, head_dim], got {getattr(x, 'shape', x)}")
    if x.dtype not in DTYPES:
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
    dispatcher: Dispatcher | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm every head row of ``q [T, h_q, Dq]`` and ``k [T, h_k, Dk]`` in one launch.

    Optional fp32 weights ``[Dq]`` / ``[Dk]``; outputs allocated like the inputs when not given
    (pass ``out_q=q`` to normalise in place).  Returns ``(out_q, out_k)``.  ``config=None``: the
    policy's plan for T tokens (``dispatcher``, default: the process's).
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
        config = (dispatcher or get_dispatcher()).lookup_op(OpWorkload.make(
            "qk_norm", q.shape[0], h_q=q.shape[1], h_k=k.shape[1], head_dim_q=dq, head_dim_k=dk)).as_dict()
    problems = qk_norm_problems(dq, dk, config)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    launch_qk_norm(q, k, q_weight, k_weight, out_q, out_k, config, eps)
    return out_q, out_k
