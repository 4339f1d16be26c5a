"""The workspace buffers each plan takes, by name: the one place their shapes are written, read by the
launchers (which ask the workspace for them) and by the scratch query (what an engine reserves
before it sizes its KV cache).  Pure Python: shapes and dtype names only.
"""

from __future__ import annotations

from dsv4_tune.registry.buckets import GATHER_BUFFER_BYTES, token_ranges
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.registry.launches import WS_MERGE_KEY
from dsv4_tune.registry.layout import HEAD_DIM
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload

Buffer = tuple[tuple[int, ...], str]  # (shape, dtype name)
DTYPE_BYTES = {"float32": 4, "int32": 4, "bfloat16": 2, "bool": 1}


def partial_buffers(split_k: int, n_tok: int, h_q: int) -> dict[str, Buffer]:
    """Split-K partial outputs and LSEs."""
    return {"part_o": ((split_k, n_tok, h_q, HEAD_DIM), "float32"), "part_lse": ((split_k, n_tok, h_q), "float32")}


def counter_buffer(n_tok: int, h_q: int, block_h: int) -> dict[str, Buffer]:
    """The in-kernel merge's split counters (zeroed; every launch leaves them zero)."""
    return {"split_counters": ((n_tok * cdiv(h_q, block_h),), "int32")}


def gather_tokens(n_tok: int, total_topk: int, max_bytes: int = GATHER_BUFFER_BYTES) -> tuple[list, int]:
    """(token ranges, tokens per range) of gather-then-attend: its BF16 buffer stays within ``max_bytes``."""
    ranges = token_ranges(n_tok, total_topk, max_bytes)
    return ranges, (ranges[0][1] - ranges[0][0] if ranges else 0)


def gather_buffers(per: int, total_topk: int) -> dict[str, Buffer]:
    """The gathered BF16 keys of ``per`` tokens and their invalid flags."""
    return {"gathered": ((per, total_topk, HEAD_DIM), "bfloat16"), "invalid": ((per, total_topk), "bool")}


def pooled_buffer(rows: int, head_dim: int) -> dict[str, Buffer]:
    """The split compressor's pooled rows, before norm and RoPE."""
    return {"compress_pooled": ((rows, head_dim), "float32")}


def plan_buffers(plan: Plan, w: Workload | OpWorkload) -> dict[str, Buffer]:
    """The workspace buffers ``plan`` takes for ``w`` (empty for a plan that needs none)."""
    c = plan.as_dict()
    if isinstance(w, OpWorkload):
        if w.op == "compress" and plan.variant == "split":
            return pooled_buffer(w.rows, w.params_dict["head_dim"])
        return {}
    t, h, sk = w.total_tokens, w.h_q, c.get("SPLIT_K", 1)
    if plan.variant == "fused_splitk" or (plan.variant == "ws_sm90" and sk > 1 and not c.get(WS_MERGE_KEY)):
        return partial_buffers(sk, t, h)
    if plan.variant == "fused_splitk_inline":
        return {**partial_buffers(sk, t, h), **counter_buffer(t, h, c["BLOCK_H"])}
    if plan.variant == "gather_attend":
        _, per = gather_tokens(t, w.total_topk)
        return {**gather_buffers(per, w.total_topk), **(partial_buffers(sk, per, h) if sk > 1 else {})}
    return {}


def buffer_bytes(buffer: Buffer) -> int:
    shape, dtype = buffer
    n = 1
    for d in shape:
        n *= d
    return n * DTYPE_BYTES[dtype]
