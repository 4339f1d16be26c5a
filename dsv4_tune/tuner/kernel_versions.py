"""The version of each variant's kernels, so that a resumed sweep never mixes timings of a kernel
before and after a change: a hash of the source of every kernel module a variant's launches are
built from, with the ``dsv4_tune.kernels`` modules those import (a change to the shared attention
core or the combine re-times every variant that uses it).

Keys: a decode variant's name (``fused``, ``ws_sm90``, ...) or ``op:variant`` for another op's
(``compress:split``); a sweep records them (``sweeps.kernels``) and a resume forgets the rows of
every variant whose version moved (:meth:`~dsv4_tune.cache.store.Store.open_sweep`).  Read from the
source files (no Triton import), so a kernel this Triton cannot build still has its version.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from dsv4_tune.registry.launches import plan_kernels
from dsv4_tune.registry.ops import OPS
from dsv4_tune.registry.variants import VARIANTS
from dsv4_tune.registry.workload import Workload

KERNELS_DIR = Path(__file__).resolve().parents[1] / "kernels"
PACKAGE = "dsv4_tune.kernels"
# Every launch a decode variant can make shows in its space on this workload: two scopes with
# lengths and a sink at small T, where split-K (and the combine) is in every split variant's space.
PROBE = Workload(4, 64, 128, 1024)
# The kernel family of each other op: its module (a package: all of it).
OP_FAMILIES = {"compress": "compressor", "qk_norm": "qk_norm"}


def _module_path(module: str) -> Path | None:
    """The file of a ``dsv4_tune.kernels`` module (a package: its ``__init__``), None outside it."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = KERNELS_DIR.joinpath(*module[len(PACKAGE) + 1 :].split(".")) if module != PACKAGE else KERNELS_DIR
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.cache
def _imports(path: Path) -> frozenset[Path]:
    """The ``dsv4_tune.kernels`` modules ``path`` imports (``from pkg import mod`` names modules too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        out |= {p for p in map(_module_path, names) if p is not None}
    return frozenset(out)


@functools.cache
def _definitions() -> dict[str, Path]:
    """The file that defines each top-level function of the kernel modules (kernels among them)."""
    out = {}
    for path in sorted(KERNELS_DIR.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef):
                out.setdefault(node.name, path)
    return out


def _closure(paths: set[Path]) -> list[Path]:
    seen: set[Path] = set()
    todo = list(paths)
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo += _imports(path)
    return sorted(seen)


def _digest(paths: set[Path]) -> str:
    h = hashlib.sha256()
    for path in _closure(paths):
        h.update(path.relative_to(KERNELS_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def variant_kernels(variant: str) -> set[str]:
    """The kernels a decode variant's plans launch (on sm90, which has every launch kind)."""
    return {launch[0] for plan in VARIANTS[variant].space(PROBE) for launch in plan_kernels(plan, PROBE, "sm90")}


@functools.cache
def kernel_versions() -> dict[str, str]:
    """{variant key: version} of every decode variant and every other op's variants."""
    defs = _definitions()
    out = {v: _digest({defs[name] for name in variant_kernels(v)}) for v in VARIANTS}
    for op, spec in OPS.items():
        family = _module_path(f"{PACKAGE}.{OP_FAMILIES[op]}")
        members = {family} | (set(family.parent.glob("*.py")) if family.name == "__init__.py" else set())
        version = _digest(members)
        out |= {f"{op}:{variant}": version for variant in spec.variants}
    return out
