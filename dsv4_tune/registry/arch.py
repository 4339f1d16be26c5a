"""Per-arch rules: what the compile check found unfit on each arch, and the variants' own arch limits.

The shipped rules file (``data/arch_rules.json``, written by ``dsv4-tune compile-check
--write-rules``) lists, per arch, every kernel launch that failed to compile, spilled beyond the
budget or exceeded shared memory / LDS; a plan that launches one of them is refused on that arch
by the tuner and the policy validator alike.  Pure Python.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from dsv4_tune.registry.launches import (
    PDL_KEY,
    KernelLaunch,
    arch_plan_kernels,
    kernel_key,
    op_plan_kernels,
    pdl_arch,
)
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload

ARCH_RULES_FILE = Path(__file__).resolve().parent / "data" / "arch_rules.json"


@lru_cache(maxsize=1)
def arch_rules() -> dict[str, dict[str, list[str]]]:
    """{arch: {kernel key: problems}} for the kernels a compile check found unfit (shipped file)."""
    try:
        return json.loads(ARCH_RULES_FILE.read_text())["bad_kernels"]
    except (OSError, ValueError, KeyError):
        return {}


# The in-kernel merge publishes each split's partial with a CTA barrier and one acq_rel atomic.
# That orders every warp's stores on CUDA (PTX release is cumulative through bar.sync); on AMD the
# workgroup barrier does not wait for other waves' outstanding global stores, so a merging program
# on another CU / XCD may read stale partials.  Until each wave releases its own stores, the variant
# is CUDA-only: never swept, shipped or launched on ROCm.
INLINE_MERGE_AMD = ("fused_splitk_inline: the in-kernel merge's store ordering is established on CUDA only "
                    "(on AMD a workgroup barrier does not wait for other waves' global stores)")


WS_SM90_ONLY = "ws_sm90: a warp-specialized Gluon kernel for CUDA sm90 (wgmma, setmaxnreg, mbarriers)"


def variant_arch_problems(plan: Plan, arch: str) -> list[str]:
    """Why ``plan`` can never run on ``arch``, whatever its kernels compile to: the variants' own
    arch limits (an arch the compile check need not even try)."""
    own = [INLINE_MERGE_AMD] if plan.variant == "fused_splitk_inline" and arch.startswith("gfx") else []
    if plan.variant == "ws_sm90" and arch != "sm90":
        own.append(f"{WS_SM90_ONLY}, not {arch}")
    if plan.as_dict().get(PDL_KEY) and not pdl_arch(arch):
        own.append(f"PDL=1: programmatic dependent launch needs CUDA sm90 or newer, not {arch}")
    return own


def arch_problems(w: Workload, plan: Plan, arch: str, unfit: dict[str, list[str]] | None = None) -> list[str]:
    """Problems the compile check recorded for any kernel of ``plan`` on ``arch``, in every pair of
    pool flavours built there (the shipped rules, and ``unfit`` when given), and the variant's own
    arch limits."""
    return variant_arch_problems(plan, arch) + launch_problems(arch, arch_plan_kernels(plan, w, arch), unfit)


def launch_problems(arch: str, launches: list[KernelLaunch], unfit: dict[str, list[str]] | None = None) -> list[str]:
    """Problems recorded for these kernel launches on ``arch`` (shipped rules, then ``unfit``)."""
    bad = arch_rules().get(arch, {})
    out = []
    for launch in launches:
        keys = [kernel_key(arch, launch)]
        name, constexprs, warps, stages = launch
        if (PDL_KEY, True) in constexprs:  # griddepcontrol changes no resource: the plain kernel's rules hold
            keys.append(kernel_key(arch, (name, tuple(kv for kv in constexprs if kv[0] != PDL_KEY), warps, stages)))
        found = [p for key in keys for p in (*bad.get(key, []), *(unfit or {}).get(key, []))]
        out += [f"{name} {problem}" for problem in dict.fromkeys(found)]
    return out


def op_arch_problems(w: OpWorkload, plan: Plan, arch: str, unfit: dict[str, list[str]] | None = None) -> list[str]:
    """Problems the compile check recorded for any kernel of ``plan`` on ``arch`` (shipped rules and
    ``unfit``), as :func:`arch_problems` for decode plans."""
    return launch_problems(arch, op_plan_kernels(plan, w, arch), unfit)
