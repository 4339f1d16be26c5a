"""What scratch memory serving needs: the workspace buffers a policy's plans take up to a batch size,
so that an engine can reserve them before it sizes its KV cache, and a workspace sized for them that
no later step grows.

    buffers = scratch_buffers(max_tokens=256, max_requests=256)   # the process's policy
    print(scratch_bytes(buffers))                                    # bytes to set aside
    ws = stream_workspace("cuda", stream); ws.reserve(buffers, "cuda")  # one per stream: workspace=ws
"""

from __future__ import annotations

from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
from dsv4_tune.registry.scratch import Buffer, buffer_bytes, plan_buffers
from dsv4_tune.registry.workload import OpWorkload, Workload
from dsv4_tune.runtime.workspace import Workspace, stream_workspace

__all__ = ["Workspace", "scratch_buffers", "scratch_bytes", "stream_workspace"]


def scratch_buffers(
    max_tokens: int, *, max_requests: int | None = None, max_prefill_tokens: int | None = None,
    dispatcher: Dispatcher | None = None, workloads: list[Workload | OpWorkload] | None = None,
) -> dict[str, Buffer]:
    """The largest buffer of each name that any plan of ``dispatcher`` (default: the process's) takes
    for decode calls of T <= ``max_tokens``, compressor decode and Q/K-norm calls of up to
    ``max_requests`` rows (default: ``max_tokens``) and compressor prefills of up to
    ``max_prefill_tokens`` new tokens (default: none; prefill, usually on its own stream, then needs
    its own workspace), in CUDA graphs or eagerly, over ``workloads`` (their classes: T and rows are
    ignored; default: every class of the policy).  A workspace reserved with it never grows on those
    calls."""
    d = dispatcher or get_dispatcher()
    if workloads is None:
        if d.policy is None:
            raise ValueError("scratch_buffers: no policy applies, so name the workloads (a Workload per class)")
        workloads = [c.workload() for c in d.policy.classes] + [o.workload() for o in d.policy.ops]
    rows = max_requests or max_tokens
    # A plan's buffers grow with the size, and the plan changes only at segment bounds: the largest
    # buffer of each run of one plan is at the run's top, a bound or the limit itself.
    bounds = {s.max_tokens for c in (*d.policy.classes, *d.policy.ops) for s in c.segments
              if s.max_tokens} if d.policy else set()
    largest: dict[str, Buffer] = {}
    for w in workloads:
        prefill = isinstance(w, OpWorkload) and w.params_dict.get("mode") == "prefill"
        if prefill and not max_prefill_tokens:
            continue
        limit = (max_prefill_tokens if prefill else rows) if isinstance(w, OpWorkload) else max_tokens
        for n in sorted({b for b in bounds if b <= limit} | {limit}):
            if isinstance(w, OpWorkload):
                at = OpWorkload(w.op, n, w.params)
                plans = [d.lookup_op(at)]
            else:
                at = Workload(n, *w.key)
                plans = [d.lookup(at), d.lookup(at, eager=True)]
            for plan in plans:
                for name, buf in plan_buffers(plan, at).items():
                    if name not in largest or buffer_bytes(buf) > buffer_bytes(largest[name]):
                        largest[name] = buf
    return largest


def scratch_bytes(buffers: dict[str, Buffer]) -> int:
    """The bytes of :func:`scratch_buffers`' answer."""
    return sum(map(buffer_bytes, buffers.values()))
