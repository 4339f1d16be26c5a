"""What GPU this process runs on: architecture (sm90, gfx942, gfx950, ...), name, SM/CU count.

The architecture decides the FP8 flavour and which policy files apply; with no GPU (or under
``TRITON_INTERPRET=1``) the kernels run on the Triton interpreter and nothing measured is real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dsv4_tune.kernels.kv_layout import Fp8Flavour, fp8_flavour_for_arch
from dsv4_tune.kernels.runtime import interpreting

INTERPRETER_ARCH = "none: Triton interpreter"


@dataclass(frozen=True)
class GpuInfo:
    """The detected device: ``arch`` such as sm90 / gfx942 / gfx950, or the interpreter."""

    arch: str
    name: str
    multiprocessors: int
    backend: str  # "cuda", "hip" or "interpreter"

    @property
    def is_real(self) -> bool:
        return self.backend != "interpreter"

    @property
    def fp8(self) -> Fp8Flavour:
        return fp8_flavour_for_arch(self.arch)


def arch_of(props: object, hip: bool) -> str:
    """``sm<major><minor>`` on CUDA; the gfx name without feature suffixes on ROCm.

    CUDA builds of torch also fill ``gcnArchName`` (with the marketing name), so the backend, not
    the attribute, decides which field is the arch.
    """
    if hip:
        return str(getattr(props, "gcnArchName", "")).split(":")[0]
    return f"sm{props.major}{props.minor}"  # type: ignore[attr-defined]


def detect() -> GpuInfo:
    """The GPU kernels will run on now (device 0), or the interpreter stand-in."""
    if interpreting() or not torch.cuda.is_available():
        return GpuInfo(INTERPRETER_ARCH, "cpu", 0, "interpreter")
    props = torch.cuda.get_device_properties(0)
    hip = torch.version.hip is not None
    return GpuInfo(arch_of(props, hip), props.name, props.multi_processor_count, "hip" if hip else "cuda")
