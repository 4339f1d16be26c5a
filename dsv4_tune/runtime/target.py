"""Launch-time facts about the target the kernels depend on: dot dtype, FP8 decode mode, PDL, device.

Under ``TRITON_INTERPRET=1`` a ``tl.dot`` of bfloat16 operands multiplies raw bit patterns
(triton-lang/triton#11584), so the launchers pass the dot operand dtype as a constexpr: bfloat16 on
a GPU, float32 under the interpreter.  Every launcher asks :func:`dot_dtype` and nothing else.
"""

from __future__ import annotations

import torch
import triton.language as tl

from dsv4_tune.env import interpreting, pdl_allowed
from dsv4_tune.registry.layout import Fp8Flavour, check_flavour, fp8_flavour_for_arch

_PDL: dict[int, bool] = {}
_FLAVOUR: dict[int, Fp8Flavour] = {}


def pdl_enabled(device: torch.device) -> bool:
    """Whether a launch on ``device`` may use programmatic dependent launch: a kernel that follows
    another starts while that one runs and waits for it (``gdc_wait``) only where it reads its
    results, so its launch and its independent loads overlap the first kernel.

    Hopper or newer under CUDA (the ``griddepcontrol`` instructions), compiled (not the
    interpreter), and not turned off with ``DSV4_TUNE_PDL=0``.  Asked once per device.
    """
    index = device.index if device.index is not None else 0
    known = _PDL.get(index)
    if known is None:
        known = _PDL[index] = (
            device.type == "cuda" and not interpreting() and torch.version.hip is None
            and pdl_allowed() and torch.cuda.get_device_capability(index)[0] >= 9
        )
    return known


def dot_dtype() -> tl.dtype:
    """Operand dtype of every ``tl.dot`` in our kernels (see the module docstring)."""
    return tl.float32 if interpreting() else tl.bfloat16


def fp8_mode(fp8: Fp8Flavour) -> str:
    """The ``FP8`` constexpr of :func:`dsv4_tune.kernels.fp8.decode_fp8` for this process.

    e4m3fnuz decodes natively where Triton has float8e4b8 (ROCm, the interpreter) and in software
    on CUDA, whose Triton backend rejects that type.
    """
    if check_flavour(fp8) == "e4m3fnuz" and torch.version.hip is None and not interpreting():
        return "e4m3fnuz_sw"
    return fp8


def device_flavour(t: object) -> Fp8Flavour:
    """The FP8 flavour of the KV pools on the device of ``t`` (an entry point's ``fp8=None``): the GPU
    arch's (``e4m3fnuz`` on gfx942, else OCP ``e4m3fn``); ``e4m3fn`` on the CPU.  Asked once per device."""
    device = getattr(t, "device", None)
    if device is None or device.type != "cuda":
        return "e4m3fn"
    index = device.index if device.index is not None else torch.cuda.current_device()
    known = _FLAVOUR.get(index)
    if known is None:
        props = torch.cuda.get_device_properties(index)
        arch = str(getattr(props, "gcnArchName", "")).split(":")[0] if torch.version.hip else "sm"
        known = _FLAVOUR[index] = fp8_flavour_for_arch(arch)
    return known


def kernel_device_ok(t: torch.Tensor) -> bool:
    """Whether a tensor lives where our kernels can run now: a GPU, or the CPU under the interpreter."""
    return t.is_cpu if interpreting() else t.is_cuda


def on_amd() -> bool:
    """Whether this torch runs on ROCm (some variants are CUDA-only)."""
    return torch.version.hip is not None
