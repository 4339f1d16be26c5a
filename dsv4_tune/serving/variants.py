"""How each decode variant of the registry launches its kernels, for checked inputs and an explicit
config: :data:`LAUNCHERS`, by variant name (a test holds its keys to the registry's).

Nothing here checks inputs, reads a policy, synchronises or allocates beyond the workspace and the
caller's outputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from dsv4_tune.kernels.combine import launch_combine
from dsv4_tune.kernels.fused_attention import launch_sparse_decode
from dsv4_tune.kernels.gather_dequant import GatherConfig, launch_gather, launch_gather_dual
from dsv4_tune.kernels.gathered_attention import launch_gathered_attention
from dsv4_tune.kernels.sm90 import GLUON_PROBLEM
from dsv4_tune.registry.arch import INLINE_MERGE_AMD, WS_SM90_ONLY
from dsv4_tune.registry.buckets import GATHER_BUFFER_BYTES
from dsv4_tune.registry.launches import (
    PDL_KEY,
    WS_CROSS_KEY,
    WS_HEADS32_KEY,
    WS_MAXNREG,
    WS_MERGE_KEY,
    WS_PERSIST_KEY,
    WS_SOLO_KEY,
    WS_SUB,
)
from dsv4_tune.registry.layout import HEAD_DIM, Fp8Pair
from dsv4_tune.registry.scratch import counter_buffer, gather_buffers, gather_tokens, partial_buffers
from dsv4_tune.runtime.target import dot_dtype, fp8_mode, on_amd, pdl_enabled
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.arguments import DecodeInputs


def _modes(x: DecodeInputs) -> tuple[str, str]:
    """The FP8 decode modes of the call's (main, extra) pools."""
    return fp8_mode(x.fp8[0]), fp8_mode(x.fp8[1])


def _attention_kw(cfg: dict[str, int]) -> dict[str, int]:
    return {k: cfg[k] for k in ("BLOCK_H", "BLOCK_N", "num_warps", "num_stages")}


def _partials(ws: Workspace, split_k: int, n_tok: int, h_q: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    buffers = partial_buffers(split_k, n_tok, h_q)
    return ws.take(buffers, "part_o", device), ws.take(buffers, "part_lse", device)


def run_fused(x: DecodeInputs, cfg: dict[str, int], out: torch.Tensor, lse: torch.Tensor, ws: Workspace) -> None:
    launch_sparse_decode(
        x.q, x.main, x.extra, x.attn_sink, x.sm_scale, out, lse, None, split_k=1,
        fp8_modes=_modes(x), dot_type=dot_dtype(), **_attention_kw(cfg),
    )


def run_fused_splitk(
    x: DecodeInputs, cfg: dict[str, int], out: torch.Tensor, lse: torch.Tensor, ws: Workspace
) -> None:
    sk = cfg["SPLIT_K"]
    partial = _partials(ws, sk, x.n_tok, x.q.shape[2], x.q.device)
    pdl = bool(cfg.get("PDL", 0)) and pdl_enabled(x.q.device)  # elsewhere PDL 1 is two plain launches
    launch_sparse_decode(
        x.q, x.main, x.extra, x.attn_sink, x.sm_scale, out, lse, partial, split_k=sk,
        fp8_modes=_modes(x), dot_type=dot_dtype(), pdl=pdl, **_attention_kw(cfg),
    )
    launch_combine(*partial, x.attn_sink, out, lse, s_q=x.q.shape[1],
                   BLOCK_H=cfg["COMBINE_BLOCK_H"], num_warps=cfg["combine_warps"], pdl=pdl)


def run_fused_splitk_inline(
    x: DecodeInputs, cfg: dict[str, int], out: torch.Tensor, lse: torch.Tensor, ws: Workspace
) -> None:
    if on_amd():
        raise ValueError(f"plan: {INLINE_MERGE_AMD}")
    sk, h_q = cfg["SPLIT_K"], x.q.shape[2]
    partial = _partials(ws, sk, x.n_tok, h_q, x.q.device)
    counters = ws.take(counter_buffer(x.n_tok, h_q, cfg["BLOCK_H"]), "split_counters", x.q.device, zeroed=True)
    launch_sparse_decode(
        x.q, x.main, x.extra, x.attn_sink, x.sm_scale, out, lse, partial, split_k=sk, counters=counters,
        fp8_modes=_modes(x), dot_type=dot_dtype(), **_attention_kw(cfg),
    )


def run_gather_attend(
    x: DecodeInputs,
    cfg: dict[str, int],
    out: torch.Tensor,
    lse: torch.Tensor,
    ws: Workspace,
    max_buffer_bytes: int = GATHER_BUFFER_BYTES,
) -> None:
    total, h_q, dev = x.total_topk, x.q.shape[2], x.q.device
    gcfg = GatherConfig(cfg["BLOCK_TK"], cfg["gather_warps"], 1)
    sk = cfg["SPLIT_K"]
    ranges, per = gather_tokens(x.n_tok, total, max_buffer_bytes)
    buffers = gather_buffers(per, total)
    gathered, invalid = ws.take(buffers, "gathered", dev), ws.take(buffers, "invalid", dev)
    partial = _partials(ws, sk, per, h_q, dev) if sk > 1 else None
    for t0, t1 in ranges:
        n = t1 - t0
        g, inv = gathered[:n], invalid[:n]
        if x.extra is not None and cfg["ONE_LAUNCH"]:
            launch_gather_dual(x.main, x.extra, x.fp8, gcfg, g, inv, t0, n)
        else:
            launch_gather(*x.main, x.fp8[0], gcfg, g, inv, 0, t0, n)
            if x.extra is not None:
                launch_gather(*x.extra, x.fp8[1], gcfg, g, inv, x.main[1].shape[2], t0, n)
        part = None if partial is None else (
            partial[0].view(-1)[: sk * n * h_q * HEAD_DIM].view(sk, n, h_q, HEAD_DIM),
            partial[1].view(-1)[: sk * n * h_q].view(sk, n, h_q),
        )
        launch_gathered_attention(
            x.q, g, inv, t0, x.attn_sink, x.sm_scale, out, lse, part, split_k=sk,
            dot_type=dot_dtype(), **_attention_kw(cfg),
        )
        if part is not None:
            launch_combine(*part, x.attn_sink, out, lse, s_q=x.q.shape[1], t0=t0,
                           BLOCK_H=cfg["COMBINE_BLOCK_H"], num_warps=cfg["combine_warps"])


_CAPABILITY: dict[int, tuple[int, int]] = {}


def variant_problem(
    variant: str, device: torch.device | None = None, fp8: str | Fp8Pair = "e4m3fn"
) -> str | None:
    """Why plans of ``variant`` cannot launch in this process (for ``fp8`` pools, one flavour or the
    (main, extra) pair, on ``device``, when
    one is named), or None: the registry's arch rules say where a variant may run, this says whether
    this Triton, pool flavour and device can run it now.  ws_sm90 needs Gluon's 3.6 API
    (:data:`~dsv4_tune.kernels.sm90.GLUON_PROBLEM`), e4m3fn pools and a compute capability 9.x GPU
    under CUDA; the in-kernel merge needs CUDA.  A device's capability is asked once."""
    if variant == "fused_splitk_inline" and on_amd():
        return INLINE_MERGE_AMD
    if variant != "ws_sm90":
        return None
    if GLUON_PROBLEM is not None:
        return f"{WS_SM90_ONLY}: {GLUON_PROBLEM}"
    if other := [f for f in ((fp8,) if isinstance(fp8, str) else fp8) if f != "e4m3fn"]:
        return f"{WS_SM90_ONLY}: it decodes e4m3fn pools, not {other[0]}"
    if device is None:
        return None
    if device.type != "cuda" or on_amd():
        return f"{WS_SM90_ONLY}; here tensors are on {device.type}" + (" (ROCm)" if on_amd() else "")
    index = device.index if device.index is not None else torch.cuda.current_device()
    cap = _CAPABILITY.get(index)
    if cap is None:
        cap = _CAPABILITY[index] = torch.cuda.get_device_capability(index)
    return None if cap[0] == 9 else f"{WS_SM90_ONLY}; device {index} is sm{cap[0]}{cap[1]}"


def run_ws_sm90(x: DecodeInputs, cfg: dict[str, int], out: torch.Tensor, lse: torch.Tensor, ws: Workspace) -> None:
    if (problem := variant_problem("ws_sm90", x.q.device, x.fp8)) is not None:
        raise ValueError(f"plan: {problem}")
    from dsv4_tune.kernels.sm90.decode import launch_ws_decode
    from dsv4_tune.kernels.sm90.solo import solo_launcher

    sk = cfg["SPLIT_K"]
    merge = cfg.get(WS_MERGE_KEY, 0)  # (the splits merge in the kernel: no partials, no combine)
    partial = _partials(ws, sk, x.n_tok, x.q.shape[2], x.q.device) if sk > 1 and not merge else None
    chained = pdl_enabled(x.q.device)  # launched as the previous kernel's programmatic dependent
    pdl = bool(cfg.get(PDL_KEY, 0)) and chained
    launch_ws_decode(x.q, x.main, x.extra, x.attn_sink, x.sm_scale, out, lse, partial, split_k=sk,
                     BLOCK_N=cfg["BLOCK_N"], SUB=WS_SUB, KSTAGES=cfg["KSTAGES"], STAGED=cfg["STAGED"],
                     PIPE=cfg["PIPE"], PERSIST=cfg.get(WS_PERSIST_KEY, 0), maxnreg=WS_MAXNREG, pdl=pdl,
                     solo=solo_launcher(cfg["BLOCK_N"]) if cfg.get(WS_SOLO_KEY) else None,
                     CROSS=cfg.get(WS_CROSS_KEY, 0), wait=chained, solo_heads=32 if cfg.get(WS_HEADS32_KEY) else 64,
                     MERGE=merge)
    if partial is not None:
        launch_combine(*partial, x.attn_sink, out, lse, s_q=x.q.shape[1],
                       BLOCK_H=cfg["COMBINE_BLOCK_H"], num_warps=cfg["combine_warps"], pdl=pdl)


Launch = Callable[[DecodeInputs, dict[str, int], torch.Tensor, torch.Tensor, Workspace], None]
LAUNCHERS: dict[str, Launch] = {
    "fused": run_fused,
    "fused_splitk": run_fused_splitk,
    "fused_splitk_inline": run_fused_splitk_inline,
    "gather_attend": run_gather_attend,
    "ws_sm90": run_ws_sm90,
}
