"""GPU ids: one alias table from (arch, device name, SM/CU count) to the id that names policy files.

Driver names vary ("NVIDIA H20-3e", "AMD Instinct MI300X", sometimes an empty ROCm name) and an arch
alone is too coarse (MI300X, MI308X and MI325X are all gfx942), so ids come from one alias table
matching the arch, a name pattern and, where names do not tell, the SM/CU count.  Pure Python.
"""

from __future__ import annotations

import re

# The interpreter stand-in: its arch and its id are the same word, so that a policy exported from an
# interpreter sweep (arch "interpreter") applies on the CPU box that measured it.
INTERPRETER_ARCH = INTERPRETER_ID = "interpreter"

# (arch, name pattern (case-insensitive search), SM/CU count or None, canonical id); first match wins.
ALIASES: tuple[tuple[str, str, int | None, str], ...] = (
    ("sm90", r"H20(?!\d)", None, "sm90-h20"),  # "NVIDIA H20", "NVIDIA H20-3e"; not H200
    ("sm90", r"GH200", None, "sm90-gh200"),  # before H200, whose pattern it contains
    ("sm90", r"H200", None, "sm90-h200"),
    ("sm90", r"H800", 114, "sm90-h800-pcie"),  # PCIe cards: 114 SMs and a lower power limit than SXM's 132
    ("sm90", r"H800", None, "sm90-h800"),
    ("sm90", r"H100", 114, "sm90-h100-pcie"),
    ("sm90", r"H100", None, "sm90-h100"),
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
