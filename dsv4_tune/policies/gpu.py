"""What GPU this process runs on, and its stable id.

The architecture (sm90, gfx942, gfx950, ...) decides the FP8 flavour and which policies may apply;
the id (``sm90-h100``, ``gfx942-mi300x``, ``gfx950-mi355x``) names policy files.  Driver names vary
("NVIDIA H20-3e", "AMD Instinct MI300X", sometimes an empty ROCm name) and an arch alone is too
coarse (MI300X, MI308X and MI325X are all gfx942), so ids come from one alias table matching the
arch, a name pattern and, where names do not tell, the SM/CU count.  With no GPU (or under
``TRITON_INTERPRET=1``) the kernels run on the Triton interpreter and nothing measured is real.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from dsv4_tune.kernels.kv_layout import Fp8Flavour, fp8_flavour_for_arch
from dsv4_tune.kernels.runtime import interpreting

INTERPRETER_ARCH = "none: Triton interpreter"
INTERPRETER_ID = "interpreter"

# (arch, name pattern (case-insensitive search), SM/CU count or None, canonical id); first match wins.
ALIASES: tuple[tuple[str, str, int | None, str], ...] = (
    ("sm90", r"H20(?!\d)", None, "sm90-h20"),  # "NVIDIA H20", "NVIDIA H20-3e"; not H200
    ("sm90", r"H200", None, "sm90-h200"),
    ("sm90", r"H800", None, "sm90-h800"),
    ("sm90", r"H100", None, "sm90-h100"),
    ("sm90", r"GH200", None, "sm90-gh200"),
    ("sm100", r"B200", None, "sm100-b200"),
    ("gfx942", r"MI300X", None, "gfx942-mi300x"),
    ("gfx942", r"MI308X", None, "gfx942-mi308x"),
    ("gfx942", r"MI325X", None, "gfx942-mi325x"),
    ("gfx942", r"MI300A", None, "gfx942-mi300a"),
    ("gfx942", r"", 80, "gfx942-mi308x"),  # ROCm often reports no useful name: the CU count tells
    ("gfx942", r"", 228, "gfx942-mi300a"),
    ("gfx942", r"", 304, "gfx942-mi300x"),  # MI325X has 304 CUs too: only its name tells them apart
    ("gfx950", r"MI355X", None, "gfx950-mi355x"),
    ("gfx950", r"MI350X", None, "gfx950-mi350x"),
    ("gfx950", r"", 256, "gfx950-mi355x"),
)


def gpu_id(arch: str, name: str, multiprocessors: int) -> str:
    """The canonical id of a device: alias table first, else ``<arch>-<name slug>``."""
    for a, pattern, count, canonical in ALIASES:
        named = not pattern or re.search(pattern, name, re.IGNORECASE)
        if a == arch and named and (count is None or count == multiprocessors):
            return canonical
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    for prefix in ("nvidia-", "amd-instinct-", "amd-"):
        slug = slug.removeprefix(prefix)
    return f"{arch}-{slug}" if slug else arch


def arch_of_id(gid: str) -> str:
    """The arch part of an id (``gfx942-mi300x`` -> ``gfx942``)."""
    return gid.split("-", 1)[0]


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

    @property
    def id(self) -> str:
        return gpu_id(self.arch, self.name, self.multiprocessors) if self.is_real else INTERPRETER_ID


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
