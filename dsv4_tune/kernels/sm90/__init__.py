"""Kernels for CUDA sm90 (Hopper) only, written in Gluon against the API of Triton 3.6.

Gluon's API moves between Triton releases, so whether this Triton offers what the kernels use is
checked once, here, from the API itself (:data:`GLUON_PROBLEM`: None when it does, else why not);
the kernel modules are imported only then.  Where it does not, the ``ws_sm90`` variant has no
launcher and the compile check skips its kernels with that message.
"""

from __future__ import annotations

import inspect

# What the kernels call, by module: names of the Gluon API as Triton 3.6 has them.
_REQUIRED = {
    "gluon": ("jit",),
    "gluon.language": (
        "allocate_shared_memory", "arange", "BlockedLayout", "convert_layout", "DotOperandLayout", "inline_asm_elementwise",
        "join", "NVMMADistributedLayout", "NVMMASharedLayout", "permute", "reshape", "SliceLayout",
        "SwizzledSharedLayout", "thread_barrier", "to_tensor", "warp_specialize",
    ),
    "gluon.language.nvidia.hopper": (
        "fence_async_shared", "mbarrier", "warpgroup_mma", "warpgroup_mma_wait",
    ),
}


def _gluon_problem() -> str | None:
    try:
        import triton
    except ImportError as e:  # pragma: no cover (the package needs Triton)
        return f"Triton is not importable: {e}"
    where = f"Triton {triton.__version__}'s Gluon"
    try:
        from triton.experimental import gluon
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.language.nvidia import hopper
    except Exception as e:  # an older Triton, or one without Gluon
        return f"{where}: cannot be imported ({type(e).__name__}: {e})"
    for module, names in zip(_REQUIRED, (gluon, gl, hopper), strict=True):
        missing = [n for n in _REQUIRED[module] if not hasattr(names, n)]
        if missing:
            return f"{where} lacks {module}.{', '.join(missing)} (the sm90 kernels are written for Triton 3.6's)"

    params = list(inspect.signature(gl.warp_specialize).parameters)
    if params[:3] != ["functions_and_args", "worker_num_warps", "worker_num_regs"]:
        return f"{where}: warp_specialize{tuple(params)} is not the (functions_and_args, worker_num_warps, " \
               "worker_num_regs) form the sm90 kernels call"
    return None


GLUON_PROBLEM: str | None = _gluon_problem()
