"""Clusters of CTAs for kernels compiled for one CTA (CUDA sm90), and the shared-memory offsets
their inline PTX needs.

Gluon 3.6 has no cluster API.  A kernel that shares shared memory with the other CTA of its
cluster (``mapa``, bulk copies into the peer, remote mbarrier arrivals: inline PTX) is compiled as
usual, for one CTA, and launched in clusters: Triton's launcher launches ``grid x num_ctas`` CTAs in
clusters of ``num_ctas`` when its packed metadata says so (:func:`clustered_metadata`), and a
compiled kernel's program ids are then plain CTA indices.  Inline PTX addresses shared memory as
Triton's dynamic shared-memory symbol ``global_smem`` plus an allocation's offset, which
:func:`shared_offsets` reads by running Triton's own allocation pass (the one the LLVM lowering
runs) on the kernel's TTGIR: a kernel takes the offsets as constexprs, compiled once with zeros to
learn them and again with them (they do not move: nothing that allocates depends on them).
``benchmarks/cluster_probe.py`` checked each piece on an H100 (2026-12-06).
"""

from __future__ import annotations

import ctypes
import re
import tempfile
from pathlib import Path


def clustered_metadata(packed: tuple, cluster: int) -> tuple:
    """Triton 3.6's packed launch metadata ``(num_warps, num_ctas, shared)`` of a one-CTA kernel,
    made to launch ``cluster`` CTAs a cluster (its launcher multiplies the grid by ``num_ctas``);
    ``packed`` itself for a cluster of one."""
    if cluster == 1:
        return packed
    if len(packed) != 3 or packed[1] != 1:
        raise ValueError(f"not the packed metadata of a one-CTA kernel (num_warps, 1, shared): {packed}")
    return (packed[0], cluster, packed[2])


def shared_offsets(ttgir: str, capability: int = 90) -> dict[str, int]:
    """Each named ``local_alloc``'s byte offset in the dynamic shared memory (``global_smem``), from
    Triton's allocation pass run on ``ttgir`` (a compiled kernel's ``asm["ttgir"]``).  Gluon names an
    allocation after the Python variable it was assigned to."""
    from triton._C.libtriton import ir, nvidia, passes

    ctx = ir.context()
    ir.load_dialects(ctx)
    nvidia.load_dialects(ctx)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.ttgir"
        path.write_text(ttgir)
        mod = ir.parse_mlir_module(str(path), ctx)
    mod.context = ctx
    pm = ir.pass_manager(ctx)
    passes.ttgpuir.add_allocate_warp_groups(pm)
    passes.convert.add_scf_to_cf(pm)
    passes.gluon.add_inliner(pm)
    nvidia.passes.ttgpuir.add_allocate_shared_memory_nv(pm, capability, 86)
    pm.run(mod, "shared_offsets")
    found = re.findall(r"%(\w+) = ttg\.local_alloc \{allocation\.offset = (\d+) : i32\}", str(mod))
    return {name: int(off) for name, off in found}


_CLUSTER_DIMENSION = 4  # CUlaunchAttributeID


def max_active_clusters(compiled: object, cluster: int) -> int | None:
    """How many clusters of ``cluster`` CTAs of ``compiled`` (a loaded Triton ``CompiledKernel``) the
    GPU holds at once (``cuOccupancyMaxActiveClusters``): what a persistent grid of clusters should
    not exceed, or its last clusters wait for a second wave.  None where the driver cannot say."""
    from dsv4_tune.runtime.cuda_driver import _driver, _LaunchAttribute, _LaunchConfig

    lib = _driver()
    query = getattr(lib, "cuOccupancyMaxActiveClusters", None) if lib is not None else None
    meta = getattr(compiled, "metadata", None)
    if query is None or meta is None or not getattr(compiled, "function", None):
        return None
    attr = _LaunchAttribute(id=_CLUSTER_DIMENSION)
    attr.value[0] = cluster | (1 << 32)  # x = cluster, y = 1
    attr.value[1] = 1  # z = 1
    config = _LaunchConfig(cluster, 1, 1, 32 * meta.num_warps, 1, 1, meta.shared, None, ctypes.pointer(attr), 1)
    count = ctypes.c_int(0)
    query.restype = ctypes.c_int
    err = query(ctypes.byref(count), ctypes.c_void_p(compiled.function), ctypes.byref(config))
    return count.value if err == 0 and count.value > 0 else None
