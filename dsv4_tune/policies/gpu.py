"""What GPU and toolchain this process runs on.

The architecture (sm90, gfx942, gfx950, ...) decides the FP8 flavour and which policies may apply;
the id (``sm90-h100``, ``gfx942-mi300x``, ``gfx950-mi355x``; :mod:`dsv4_tune.registry.gpus`) names
policy files.  With no GPU (or under ``TRITON_INTERPRET=1``) the kernels run on the Triton
interpreter and nothing measured is real.  torch and Triton are imported only when a device is
detected or versions are asked for, so that loading a policy imports neither.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

from dsv4_tune.env import interpreting
from dsv4_tune.registry.gpus import INTERPRETER_ARCH, INTERPRETER_ID, gpu_id
from dsv4_tune.registry.layout import Fp8Flavour, fp8_flavour_for_arch


@dataclass(frozen=True)
class GpuInfo:
    """The detected device: ``arch`` such as sm90 / gfx942 / gfx950, or the interpreter."""

    arch: str
    name: str
    multiprocessors: int
    backend: str  # "cuda", "hip" or "interpreter"
    pci_device_id: int = 0  # the PCI device (product) id, 0x2335 for an H200 SXM; 0 where unknown

    @property
    def is_real(self) -> bool:
        return self.backend != "interpreter"

    @property
    def fp8(self) -> Fp8Flavour:
        return fp8_flavour_for_arch(self.arch)

    @property
    def id(self) -> str:
        return gpu_id(self.arch, self.name, self.multiprocessors) if self.is_real else INTERPRETER_ID

    def matches(self, wanted: str) -> bool:
        """Whether ``wanted`` (``auto``, an arch, a GPU id or part of the device name) names this GPU."""
        wanted = wanted.lower()
        return wanted in ("auto", self.arch.lower(), self.id.lower()) or wanted in self.name.lower()


def arch_of(props: object, hip: bool) -> str:
    """``sm<major><minor>`` on CUDA; the gfx name without feature suffixes on ROCm.

    CUDA builds of torch also fill ``gcnArchName`` (with the marketing name), so the backend, not
    the attribute, decides which field is the arch.
    """
    if hip:
        return str(getattr(props, "gcnArchName", "")).split(":")[0]
    return f"sm{props.major}{props.minor}"  # type: ignore[attr-defined]


def detect(index: int = 0) -> GpuInfo:
    """The GPU kernels will run on (device ``index``), or the interpreter stand-in."""
    import torch

    if interpreting() or not torch.cuda.is_available():
        return GpuInfo(INTERPRETER_ARCH, "cpu", 0, "interpreter")
    props = torch.cuda.get_device_properties(index)
    hip = torch.version.hip is not None
    return GpuInfo(arch_of(props, hip), props.name, props.multi_processor_count, "hip" if hip else "cuda",
                   pci_product_id(props))


PCI_DEVICES = Path("/sys/bus/pci/devices")


def pci_product_id(props: object) -> int:
    """The PCI device (product) id of the GPU whose bus address ``props`` give, from sysfs (0x2335
    for an H200 SXM); 0 where it cannot be read.  torch's ``pci_device_id`` is not it: that is the
    device's slot on its bus (6 on an H200 in a VM, 2026-12-02)."""
    domain, bus, slot = (int(getattr(props, f"pci_{k}_id", 0) or 0) for k in ("domain", "bus", "device"))
    try:
        return int((PCI_DEVICES / f"{domain:04x}:{bus:02x}:{slot:02x}.0" / "device").read_text().strip(), 16)
    except (OSError, ValueError):
        return 0


def driver_version() -> str:
    """The GPU driver's version, for a sweep's provenance (it keys sweeps: a driver upgrade starts a
    new one): NVML's on NVIDIA (``550.54.15``), the amdgpu module's on ROCm; else the CUDA / HIP
    runtime torch was built with (``cuda 12.8``), or ``none`` without a GPU."""
    import torch

    if torch.version.hip is not None:
        try:
            return "amdgpu " + Path("/sys/module/amdgpu/version").read_text().strip()
        except OSError:
            return f"hip {torch.version.hip}"
    if torch.version.cuda is None or not torch.cuda.is_available():
        return str(torch.version.cuda or "none")
    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        buf = ctypes.create_string_buffer(96)
        if nvml.nvmlInit_v2() == 0 and nvml.nvmlSystemGetDriverVersion(buf, len(buf)) == 0:
            return buf.value.decode()
    except (OSError, AttributeError):
        pass
    return f"cuda {torch.version.cuda}"


def toolchain() -> dict[str, str]:
    """The torch and Triton versions of this process (what a policy records and is checked against)."""
    import torch
    import triton

    return {"torch": torch.__version__, "triton": triton.__version__}
