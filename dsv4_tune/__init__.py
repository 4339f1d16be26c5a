"""dsv4-tune: tuned, policy-dispatched Triton kernels for DeepSeek-V4 sparse-attention decode.

The public names are imported on first use, so that ``import dsv4_tune.registry`` (or loading a
policy) does not import torch or Triton.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsv4_tune.policies.dispatcher import Dispatcher, policy_scope, use_policy
    from dsv4_tune.registry.workload import Plan, Workload
    from dsv4_tune.serving.compressor import compress_decode, compress_prefill
    from dsv4_tune.serving.decode import sparse_decode
    from dsv4_tune.serving.memory import Workspace, scratch_buffers, scratch_bytes, stream_workspace
    from dsv4_tune.serving.qk_norm import qk_norm

_PUBLIC = {
    "Dispatcher": "dsv4_tune.policies.dispatcher",
    "use_policy": "dsv4_tune.policies.dispatcher",
    "policy_scope": "dsv4_tune.policies.dispatcher",
    "Plan": "dsv4_tune.registry.workload",
    "Workload": "dsv4_tune.registry.workload",
    "sparse_decode": "dsv4_tune.serving.decode",
    "compress_decode": "dsv4_tune.serving.compressor",
    "compress_prefill": "dsv4_tune.serving.compressor",
    "qk_norm": "dsv4_tune.serving.qk_norm",
    "scratch_buffers": "dsv4_tune.serving.memory",
    "scratch_bytes": "dsv4_tune.serving.memory",
    "Workspace": "dsv4_tune.serving.memory",
    "stream_workspace": "dsv4_tune.serving.memory",
}
__all__ = ["Dispatcher", "Plan", "Workload", "Workspace", "compress_decode", "compress_prefill", "policy_scope",
           "qk_norm", "scratch_buffers", "scratch_bytes", "sparse_decode", "stream_workspace", "use_policy"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsv4_tune' has no attribute {name!r}")
