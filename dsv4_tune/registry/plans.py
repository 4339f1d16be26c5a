"""One interface over both families of workloads: sparse decode (:class:`Workload`, the variant
registry) and the other ops (:class:`OpWorkload`, the op registry).  The tuner, the policy tools
and the compile check ask these functions and never branch on the workload's type themselves.
"""

from __future__ import annotations

from dsv4_tune.registry import variants
from dsv4_tune.registry.arch import op_arch_problems
from dsv4_tune.registry.launches import KernelLaunch, arch_plan_kernels, op_plan_kernels
from dsv4_tune.registry.ops import op_default_plan, op_plan_problems
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload

AnyWorkload = Workload | OpWorkload


def problems(w: AnyWorkload, plan: Plan, arch: str | None = None, unfit: dict[str, list[str]] | None = None
             ) -> list[str]:
    """Why ``plan`` cannot run ``w`` (on ``arch``, with its compile-check rules and ``unfit``, when named)."""
    if isinstance(w, OpWorkload):
        found = op_plan_problems(w, plan)
        return found or (op_arch_problems(w, plan, arch, unfit) if arch else [])
    return variants.plan_problems(w, plan, arch, unfit)


def default(w: AnyWorkload) -> Plan:
    """The fixed, safe plan used where no policy applies."""
    return op_default_plan(w) if isinstance(w, OpWorkload) else variants.default_plan(w)


def kernels(plan: Plan, w: AnyWorkload, arch: str) -> list[KernelLaunch]:
    """The kernel launches of ``plan`` for ``w`` on ``arch`` (a decode plan's in every pair of pool
    flavours built there: :func:`~dsv4_tune.registry.launches.arch_plan_kernels`)."""
    return op_plan_kernels(plan, w, arch) if isinstance(w, OpWorkload) else arch_plan_kernels(plan, w, arch)


