"""An empty program as big as ``ws_sm90``'s (Gluon; CUDA sm90 with Triton 3.6's API): what launching
CTAs that hold ~200 KiB of shared memory and 4-12 warps costs beside an empty 4-warp one.

A small-T ``ws_sm90`` plan pays an item's fixed part (~7-8 us with the launch on an H100, ~4.2 of it
the graph replay of an empty kernel); ``bench_latency_floor`` sets these rows beside its ``empty``
rows to say how much of the rest is the size of the CTA itself (its shared-memory carve-out, its
warps), before any load.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl


@gluon.jit
def big_cta_kernel(out_ptr, A_KIB: gl.constexpr, B_KIB: gl.constexpr, C_KIB: gl.constexpr,
                   NUM_WARPS: gl.constexpr):
    """Hold A + B + C KiB of shared memory at once (three allocations: Gluon's shapes are powers of
    two), write zeros into the last KiB of each, read them all back after one barrier and store their
    sum at ``out_ptr`` (256 int32 a program): the allocations are used and live together, so the
    compiler keeps them all."""
    row: gl.constexpr = gl.BlockedLayout([1], [32], [NUM_WARPS], [0])
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    a = gl.allocate_shared_memory(gl.int32, [A_KIB * 256], plain).slice((A_KIB - 1) * 256, 256)
    b = gl.allocate_shared_memory(gl.int32, [B_KIB * 256], plain).slice((B_KIB - 1) * 256, 256)
    c = gl.allocate_shared_memory(gl.int32, [C_KIB * 256], plain).slice((C_KIB - 1) * 256, 256)
    zero = gl.zeros([256], gl.int32, layout=row)
    a.store(zero)
    b.store(zero)
    c.store(zero)
    gl.thread_barrier()
    out = a.load(row) + b.load(row) + c.load(row)
    gl.store(out_ptr + gl.program_id(0) * 256 + gl.arange(0, 256, layout=row), out)
