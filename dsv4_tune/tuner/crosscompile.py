"""Compile every kernel of a plan for another GPU without having it: sm90, gfx942, gfx950.

Triton compiles for any target it knows (``triton.compile(ASTSource(...), target=GPUTarget(...))``)
with no GPU present.  From the result we read what limits a config on that arch: registers
(VGPR/SGPR on AMD from the code object's metadata; per-thread registers on sm90 from ``ptxas -v``
of Triton's own ptxas), spills, shared memory / LDS, and the occupancy that follows from each
arch's limits.  :func:`plan_kernels` lists the kernels a plan launches with their constexprs, so a
plan can be checked exactly as it will run (each arch's FP8 flavour included).  The verdicts become
the registry's per-arch rules (``registry/data/arch_rules.json``, :mod:`dsv4_tune.registry.arch`).
"""

from __future__ import annotations

import inspect
import math
import re
import subprocess
import tempfile
from dataclasses import dataclass

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dsv4_tune.kernels.catalog import KERNELS, OPTIONS, POINTER_TYPES, UNBUILDABLE
from dsv4_tune.registry.launches import KernelLaunch, kernel_key, plan_kernels
from dsv4_tune.registry.workload import Plan, Workload


@dataclass(frozen=True)
class ArchLimits:
    """What one compute unit offers: registers, shared memory / LDS, resident warps (waves)."""

    target: GPUTarget
    shared_bytes: int  # per SM / CU
    max_warps: int  # resident warps (waves) per SM / CU
    spill_budget: int  # bytes (sm90) or VGPRs (AMD) of spill a config may have and still be swept


ARCHS: dict[str, ArchLimits] = {
    # 227 KiB usable per block, 228 KiB per SM; 64K 32-bit registers; 64 warps.  The H100 sweep's
    # winners spill up to ~140 B per thread and are still the fastest, so a small budget is allowed.
    "sm90": ArchLimits(GPUTarget("cuda", 90, 32), 228 * 1024, 64, 256),
    # CDNA3 / CDNA4: 4 SIMDs x 512 VGPRs per lane, up to 8 waves per SIMD; LDS 64 / 160 KiB per CU.
    "gfx942": ArchLimits(GPUTarget("hip", "gfx942", 64), 64 * 1024, 32, 0),
    "gfx950": ArchLimits(GPUTarget("hip", "gfx950", 64), 160 * 1024, 32, 0),
}

@dataclass(frozen=True)
class KernelSpec:
    """One kernel launch of a plan on one arch (see :func:`dsv4_tune.registry.launches.plan_kernels`)."""

    arch: str
    launch: KernelLaunch

    @property
    def key(self) -> str:
        return kernel_key(self.arch, self.launch)


def plan_specs(plan: Plan, w: Workload, arch: str) -> list[KernelSpec]:
    return [KernelSpec(arch, launch) for launch in plan_kernels(plan, w, arch)]


def _signature(fn, consts: dict) -> tuple[dict[str, str], dict]:
    """Triton's signature of ``fn`` for these constexprs; a defaulted constexpr that a launch does
    not name (``PDL`` off) joins ``consts`` at its default."""
    params = inspect.signature(fn.fn).parameters
    names = list(params)
    for n, p in params.items():
        if n not in consts and "constexpr" in str(p.annotation) and p.default is not inspect.Parameter.empty:
            consts[n] = p.default
    sig = {}
    for n in names:
        if n in consts:
            sig[n] = "constexpr"
        elif n.endswith("_ptr"):
            sig[n] = POINTER_TYPES[n]
        else:
            sig[n] = "fp32" if n == "qk_scale" else "i32"
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names) if n.endswith("_ptr")}
    return sig, attrs


# ptxas's note that it serialized every wgmma of a function, whatever its reason and number (C7513: a
# register an async wgmma reads is written by another instruction before the wgmma is waited for;
# C7514: an accumulator read while its wgmma may be in flight, as a wait_group N > 0 across a loop's
# back edge makes it; others for calls and ill-formed pipelines).  Correct, and much slower: the MMAs
# no longer overlap anything.
WGMMA_SERIALIZED = re.compile(r"\((C75\d\d)\) Potential Performance Loss: wgmma\.mma_async instructions are serialized")


def ptxas_report(stderr: str) -> tuple[int | None, int | None, bool]:
    """(registers, spill-store bytes, whether ptxas serialized the wgmma) from ``ptxas -v`` output."""
    regs = re.search(r"Used (\d+) registers", stderr)
    spill = re.search(r"(\d+) bytes spill stores", stderr)
    return (int(regs.group(1)) if regs else None, int(spill.group(1)) if spill else None,
            WGMMA_SERIALIZED.search(stderr) is not None)


def _ptxas_usage(ptx: str) -> tuple[int | None, int | None, bool | None]:
    """:func:`ptxas_report` from Triton's own ptxas, or (None, None, None) if it cannot say."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
            f.write(ptx)
            f.flush()
            r = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", f.name, "-o", "/dev/null"],
                               capture_output=True, text=True, timeout=300)
        return ptxas_report(r.stderr)
    except Exception:
        return None, None, None


def _amd_usage(amdgcn: str, key: str) -> int | None:
    m = re.search(rf"\.{key}:\s+(\d+)", amdgcn)
    return int(m.group(1)) if m else None


def occupancy(arch: str, num_warps: int, shared: int, regs: int | None) -> int | None:
    """Resident warps (sm90) or waves (AMD) per SM / CU for one kernel, from the arch's limits."""
    lim = ARCHS[arch]
    if regs is None:
        return None
    if arch == "sm90":
        per_warp = math.ceil(regs * 32 / 256) * 256
        blocks_regs = (65536 // per_warp) // num_warps if per_warp else 32
    else:
        per_simd = min(8, 512 // max(8, math.ceil(regs / 8) * 8))  # waves per SIMD by VGPRs
        blocks_regs = (4 * per_simd) // num_warps
    blocks_shared = lim.shared_bytes // shared if shared else 64
    return min(blocks_regs, blocks_shared, lim.max_warps // num_warps) * num_warps


def build(spec: KernelSpec):  # -> triton.compiler.CompiledKernel (its asm: ptx, cubin / amdgcn, hsaco)
    """Compile ``spec`` for its arch (raises what Triton raises)."""
    name, constexprs, num_warps, num_stages = spec.launch
    consts = {k: (tl.bfloat16 if v == "bf16" else v) for k, v in constexprs}
    fn = KERNELS[name]
    sig, attrs = _signature(fn, consts)
    source = ASTSource
    if getattr(fn, "is_gluon", lambda: False)():
        from triton.experimental.gluon._runtime import GluonASTSource as source
    options = {"num_warps": num_warps, "num_stages": num_stages, **OPTIONS.get(name, {})}
    return triton.compile(source(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                          target=ARCHS[spec.arch].target, options=options)


def compile_kernel(spec: KernelSpec) -> dict:
    """Compile ``spec`` for its arch; a row: status, error, registers, spills, shared, occupancy, and
    (sm90) whether ptxas serialized its wgmma."""
    arch = spec.arch
    name, _, num_warps, num_stages = spec.launch
    row = {"arch": arch, "kernel": name, "key": spec.key, "num_warps": num_warps, "num_stages": num_stages,
           "toolchain": f"triton {triton.__version__}", "regs": None, "sgprs": None, "spills": None,
           "shared": None, "occupancy": None, "wgmma_serialized": None}
    if name in UNBUILDABLE:  # a Gluon kernel this Triton cannot build: no verdict, no rule
        return {**row, "status": "skipped", "error": UNBUILDABLE[name]}
    try:
        k = build(spec)
    except Exception as e:  # a compile failure is a row with the compiler's message
        msg = [line for line in str(e).strip().splitlines() if line.strip()]
        return {**row, "status": "compile_error", "error": " | ".join(msg[-6:])[:2000]}
    shared = int(k.metadata.shared)
    serialized = None
    if arch == "sm90":
        regs, spill, serialized = _ptxas_usage(k.asm["ptx"])
        sgprs = None
    else:
        regs = _amd_usage(k.asm["amdgcn"], "vgpr_count")
        sgprs = _amd_usage(k.asm["amdgcn"], "sgpr_count")
        spill = _amd_usage(k.asm["amdgcn"], "vgpr_spill_count")
    row.update(status="ok", error=None, regs=regs, sgprs=sgprs, spills=spill, shared=shared,
               occupancy=occupancy(arch, num_warps, shared, regs), wgmma_serialized=serialized)
    return row


def problems_of(row: dict) -> list[str]:
    """Why a compiled kernel must not be swept or shipped on its arch (empty: fine)."""
    lim = ARCHS[row["arch"]]
    if row["status"] == "skipped":
        return []
    if row["status"] != "ok":
        return [f"does not compile for {row['arch']}: {row.get('error') or row['status']}"]
    out = []
    if row["shared"] > lim.shared_bytes:
        out.append(f"needs {row['shared']} B of shared memory; {row['arch']} has {lim.shared_bytes}")
    if row["spills"] is not None and row["spills"] > lim.spill_budget:
        unit = "B" if row["arch"] == "sm90" else "VGPRs"
        out.append(f"spills {row['spills']} {unit} on {row['arch']} (budget {lim.spill_budget})")
    if row.get("occupancy") == 0:
        out.append(f"cannot be resident on {row['arch']} (occupancy 0)")
    return out
