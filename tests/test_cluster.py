"""Clusters for one-CTA kernels (dsv4_tune.runtime.cluster): the packed launch metadata, and the
shared-memory offsets read from Triton's allocation pass (checked by cross-compiling a small Gluon
kernel for sm90: no GPU needed)."""

from __future__ import annotations

import pytest

from dsv4_tune.runtime.cluster import clustered_metadata, max_active_clusters, shared_offsets

gluon = pytest.importorskip("triton.experimental.gluon")  # (any Triton with Gluon: the test kernel is plain)


def test_clustered_metadata_only_rewrites_a_one_cta_kernels_count() -> None:
    assert clustered_metadata((4, 1, 65560), 2) == (4, 2, 65560)
    assert clustered_metadata((4, 1, 65560), 1) == (4, 1, 65560)
    for bad in [(4, 2, 1024), (4, 1), (4, 1, 1024, 0)]:
        with pytest.raises(ValueError, match="one-CTA"):
            clustered_metadata(bad, 2)


def test_cluster_occupancy_is_unknown_where_the_driver_cannot_say() -> None:
    class NotLoaded:  # a compiled kernel with no function handle (never loaded on a GPU)
        metadata = None
        function = None

    assert max_active_clusters(NotLoaded(), 2) is None


def test_shared_offsets_name_every_allocation_where_the_lowering_puts_it() -> None:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource
    from triton.experimental.gluon.language.nvidia.hopper import mbarrier

    @gluon.jit
    def two_buffers(out_ptr):
        layout: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
        rows = gl.allocate_shared_memory(gl.int32, [256], gl.SwizzledSharedLayout(1, 1, 1, [0]))
        ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        mbarrier.init(ready, count=1)
        i = gl.arange(0, 256, layout=layout)
        rows.store(i)
        gl.store(out_ptr + i, rows.load(layout))

    src = GluonASTSource(fn=two_buffers, signature={"out_ptr": "*i32"}, constexprs={}, attrs={})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    offsets = shared_offsets(compiled.asm["ttgir"])
    assert set(offsets) == {"rows", "ready"}
    # Disjoint, inside the kernel's shared memory, and the barrier where the lowering initialises it.
    spans = sorted([(offsets["rows"], offsets["rows"] + 1024), (offsets["ready"], offsets["ready"] + 8)])
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= compiled.metadata.shared
    init = next(line for line in compiled.asm["llir"].splitlines() if "mbarrier.init" in line)
    assert (f"@global_smem, i32 {offsets['ready']})" in init) if offsets["ready"] else ("@global_smem" in init)


@pytest.mark.gpu
def test_a_one_cta_kernel_runs_in_clusters_of_two_through_the_launcher_and_a_replay(tmp_path) -> None:
    """The cluster probe's kernel (two CTAs exchange tile halves through each other's shared memory;
    it would hang without clusters): launched by the Launcher (its compile-first call, then the
    cached one) and replayed from a recording, every exchange exact."""
    import torch

    from dsv4_tune.kernels.sm90 import GLUON_PROBLEM

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9 or GLUON_PROBLEM:
        pytest.skip("needs a CUDA sm90 GPU with Gluon")
    from benchmarks.cluster_probe import exchange_exactly

    exchange_exactly(grid=8, iters=3)


def test_a_launch_that_leaves_trailing_constexprs_out_takes_their_defaults() -> None:
    """A constexpr added with a default (SOLO's MERGE and its offsets, 2026-12-07) leaves every call
    that does not name it valid: the Launcher's cache key and compiled launch read every parameter,
    so it completes the call with the defaults (a call that leaves out one without a default is an
    error naming the kernel)."""
    import triton.language as tl

    from dsv4_tune.runtime.jit import Launcher, kernel

    @kernel
    def _k(x_ptr, n, A: tl.constexpr, B: tl.constexpr = 0, C: tl.constexpr = 7):
        tl.store(x_ptr + tl.arange(0, 16), tl.zeros([16], tl.float32) + A + B + C + n, mask=tl.arange(0, 16) < n)

    launcher = Launcher(_k)
    assert launcher.complete(("x", 3, 1)) == ("x", 3, 1, 0, 7)
    assert launcher.complete(("x", 3, 1, 2)) == ("x", 3, 1, 2, 7)
    with pytest.raises(TypeError, match="2 arguments, but 5 parameters"):
        launcher.complete(("x", 3))

