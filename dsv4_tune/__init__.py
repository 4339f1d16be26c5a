"""dsv4-tune: tuned, policy-dispatched Triton kernels for DeepSeek-V4 sparse-attention decode.

The public names are imported on first use, so that ``import dsv4_tune.registry`` (or loading a
policy) does not import torch or Triton.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dsv4_tune.policies.dispatcher import Dispatcher
    from dsv4_tune.registry.workload import Plan, Workload
    from dsv4_tune.serving.decode import sparse_decode

_PUBLIC = {
    "Dispatcher": "dsv4_tune.policies.dispatcher",
    "Plan": "dsv4_tune.registry.workload",
    "Workload": "dsv4_tune.registry.workload",
    "sparse_decode": "dsv4_tune.serving.decode",
}
__all__ = ["Dispatcher", "Plan", "Workload", "sparse_decode"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dsv4_tune' has no attribute {name!r}")
