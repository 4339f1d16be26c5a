"""Every environment variable dsv4-tune reads, in one place (pure Python: no torch, no Triton).

- ``TRITON_INTERPRET`` (read once, at import): ``1`` runs the kernels on Triton's CPU interpreter
  (Triton decides when the kernels are defined, so a later change would not move them anyway).
- ``DSV4_TUNE_POLICY`` (when the process-wide dispatcher is chosen): the policy file to serve with,
  else the shipped one of this GPU.
- ``DSV4_TUNE_REPLAY`` (once, at import): ``0`` sends every ``sparse_decode`` call down the checked
  path (no recorded replays).
- ``DSV4_TUNE_PDL`` (once per device): ``0``, no programmatic dependent launches.
- ``DSV4_TUNE_DIRECT_LAUNCH`` (per replay built): ``0`` keeps Triton's launcher for replays instead
  of ``cuLaunchKernel``.
- ``DSV4_TUNE_FAST_LAUNCH`` (when the C launcher is first loaded): ``0`` launches replays through
  ctypes, not the C extension.
- ``DSV4_TUNE_CACHE_DIR`` (when the C launcher is built): its build folder, default
  ``~/.cache/dsv4_tune``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from dsv4_tune.errors import DSV4TuneWarning

POLICY = "DSV4_TUNE_POLICY"


def _off(name: str) -> bool:
    """A switch that is on unless set to ``0``; a value other than ``0`` or ``1`` (``false``, ``off``)
    is taken as on, with a warning naming it, so a misspelt switch does not pass unnoticed."""
    value = os.environ.get(name, "1")
    if value not in ("0", "1", ""):
        warnings.warn(f"{name}={value!r}: expected 0 (off) or 1 (on); taken as 1", DSV4TuneWarning, stacklevel=3)
    return value == "0"


INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
REPLAY = not INTERPRETING and not _off("DSV4_TUNE_REPLAY")


def interpreting() -> bool:
    """True when Triton kernels run on the CPU interpreter (``TRITON_INTERPRET=1``, read at import)."""
    return INTERPRETING


def policy_path() -> str | None:
    """The policy file named by ``DSV4_TUNE_POLICY``, if any."""
    return os.environ.get(POLICY) or None


def pdl_allowed() -> bool:
    return not _off("DSV4_TUNE_PDL")


def direct_launch_allowed() -> bool:
    return not _off("DSV4_TUNE_DIRECT_LAUNCH")


def fast_launch_allowed() -> bool:
    return not _off("DSV4_TUNE_FAST_LAUNCH")


def build_cache_dir() -> Path:
    """Where the C launcher is built and kept."""
    return Path(os.environ.get("DSV4_TUNE_CACHE_DIR") or Path.home() / ".cache" / "dsv4_tune")
