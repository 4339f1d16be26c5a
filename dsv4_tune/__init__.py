"""dsv4-tune: tuned, policy-dispatched Triton kernels for DeepSeek-V4 sparse-attention decode."""

from dsv4_tune.decode import sparse_decode
from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.workload import Plan, Workload

__all__ = ["Dispatcher", "Plan", "Workload", "sparse_decode"]
