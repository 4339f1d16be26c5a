"""The one place for launch-time facts the kernels depend on: interpreter mode, dot dtype, FP8 type.

Under ``TRITON_INTERPRET=1`` a ``tl.dot`` of bfloat16 operands multiplies raw bit patterns
(triton-lang/triton#11584), so the launchers pass the dot operand dtype as a constexpr: bfloat16 on
a GPU, float32 under the interpreter.  Every launcher asks :func:`dot_dtype` and nothing else.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from dsv4_tune.kernels.kv_layout import Fp8Flavour, check_flavour, num_slots


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``).

    Read once: Triton decides interpreter or compiler when our kernels are defined (at import), so
    a later change of the variable would not change where they run anyway.
    """
    return _INTERPRETING


_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


_PDL: dict[int, bool] = {}


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
            and os.environ.get("DSV4_TUNE_PDL", "1") != "0" and torch.cuda.get_device_capability(index)[0] >= 9
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


def cdiv(a: int, b: int) -> int:
    """Ceiling division on the host.  (``triton.cdiv`` is a JIT function in recent Triton: calling
    it from Python goes through the JIT dispatcher, ~5 us a call.)"""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 if n <= 1 else triton.next_power_of_2(n)


def kernel_device_ok(t: torch.Tensor) -> bool:
    """Whether a tensor lives where our kernels can run now: a GPU, or the CPU under the interpreter."""
    return t.is_cpu if _INTERPRETING else t.is_cuda


def scope_args(kv: torch.Tensor, idx: torch.Tensor, length: torch.Tensor | None) -> list:
    """Kernel arguments of one KV scope, in the order every kernel takes them: pool base, page
    stride in bytes and in BF16 units, page size, slot count, ids and their three strides, and the
    topk_length pointer (the ids stand in when there is none; the kernel's flag then never reads it)."""
    return [
        kv, kv.stride(0), kv.stride(0) // 2, kv.shape[1], num_slots(kv),
        idx, idx.stride(0), idx.stride(1), idx.stride(2),
        length if length is not None else idx,
    ]
