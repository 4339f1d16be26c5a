"""Inline PTX for a kernel whose CTAs of a cluster share shared memory (Gluon 3.6 has no cluster
API; :mod:`dsv4_tune.runtime.cluster` launches such a kernel and finds the offsets it takes).

Shared memory is named by its offset from Triton's ``global_smem``; the peer is the other CTA of a
cluster of two (:func:`send_to` names any CTA of a larger cluster by its rank).  Each function is
called by every thread of a warpgroup (or of a 128-thread program) and acts once, through the
group's first thread, except :func:`cluster_sync`, which every thread of every CTA of the cluster
must reach.  ``ws_sm90``'s CROSS and MERGE modes and ``benchmarks/cluster_probe.py`` use them.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

# A warpgroup's first thread (p), the peer's rank (r) and the shared-memory base (b).
_FIRST_OF_WG = ("{ .reg .pred p; .reg .u32 t, d, b, r; mov.u32 t, %tid.x; and.b32 t, t, 127; setp.eq.u32 p, t, 0; "
                "mov.u32 r, %cluster_ctarank; xor.b32 r, r, 1; mov.u32 b, global_smem; ")
# $1 the offset of the bytes to send (they land at the same offset in the peer), $2 the offset of the
# mbarrier whose twin in the peer counts them, $3 the bytes.
_SEND = gl.constexpr(_FIRST_OF_WG + "add.u32 d, b, $1; add.u32 b, b, $2; mapa.shared::cluster.u32 t, d, r; "
                     "mapa.shared::cluster.u32 b, b, r; "
                     "@p cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [t], [d], $3, [b]; "
                     "mov.u32 $0, 0; }")
# $1 the offset of the bytes to send, $2 where they land in the CTA of rank $5, $3 the offset of the
# mbarrier there that counts them, $4 the bytes.
_SEND_TO = gl.constexpr("{ .reg .pred p; .reg .u32 t, s, d, b; mov.u32 t, %tid.x; and.b32 t, t, 127; "
                        "setp.eq.u32 p, t, 0; mov.u32 b, global_smem; add.u32 s, b, $1; add.u32 d, b, $2; "
                        "add.u32 b, b, $3; mapa.shared::cluster.u32 d, d, $5; mapa.shared::cluster.u32 b, b, $5; "
                        "@p cp.async.bulk.shared::cluster.shared::cta.mbarrier::complete_tx::bytes [d], [s], $4, [b]; "
                        "mov.u32 $0, 0; }")
# $1 the offset of an mbarrier: arrive on the peer's twin.  Release at CTA scope (the default, as
# CUTLASS's cluster barrier arrives): what it guards is this CTA's reads of a tile, complete (wgmma
# waited) before the arrive is issued.  In PTX's memory model a CTA-scope release and the peer's
# CTA-scope acquire do not synchronize (neither scope holds the other thread): the guarantee is the
# hardware's.  A cluster-scope release is a MEMBAR.ALL.GPU in front of the arrive (ptxas 12.8, Triton
# 3.6's), once a tile in each consumer of CROSS.
_ARRIVE = gl.constexpr(_FIRST_OF_WG + "add.u32 b, b, $1; mapa.shared::cluster.u32 b, b, r; "
                       "@p mbarrier.arrive.shared::cluster.b64 _, [b]; mov.u32 $0, 0; }")
# The same, released at cluster scope: what it guards is ordered before the peer's acquire by PTX's
# memory model itself (MERGE's once-an-item ``r_free``, where the peer's bulk copy overwrites a stage
# this CTA's wgmma read).
_ARRIVE_CLUSTER = gl.constexpr(_FIRST_OF_WG + "add.u32 b, b, $1; mapa.shared::cluster.u32 b, b, r; "
                               "@p mbarrier.arrive.release.cluster.shared::cluster.b64 _, [b]; mov.u32 $0, 0; }")
_INIT_FENCE = gl.constexpr("fence.mbarrier_init.release.cluster; mov.u32 $0, $1;")
_SYNC = gl.constexpr("barrier.cluster.arrive.release.aligned; barrier.cluster.wait.acquire.aligned; "
                     "mov.u32 $0, $1;")
# The same meeting without the release (whose MEMBAR.ALL.GPU waits for this thread's global stores).
_SYNC_RELAXED = gl.constexpr("barrier.cluster.arrive.relaxed.aligned; barrier.cluster.wait.acquire.aligned; "
                             "mov.u32 $0, $1;")


@gluon.jit
def _ptx(text: gl.constexpr, args):
    """Inline PTX with side effects, once per thread (``args``: scalars, or one element a thread)."""
    cons: gl.constexpr = "=r" + ",r" * len(args)
    return gl.inline_asm_elementwise(text, cons, args, dtype=gl.uint32, is_pure=False, pack=1)


@gluon.jit
def _lanes():
    """One element a thread of a 4-warp group: what a snippet every thread must run is mapped over."""
    return gl.arange(0, 128, layout=gl.BlockedLayout([1], [32], [4], [0]))


@gluon.jit
def cluster_sync(RELEASE: gl.constexpr = True):
    """Every thread of every CTA of the cluster meets here (release, then acquire: what each did
    before is seen); without ``RELEASE`` a meeting only (nothing written before is waited for)."""
    if RELEASE:
        _ptx(_SYNC, [_lanes()])
    else:
        _ptx(_SYNC_RELAXED, [_lanes()])


@gluon.jit
def init_fence():
    """This CTA's mbarrier inits, released to the cluster (the next :func:`cluster_sync` acquires them)."""
    _ptx(_INIT_FENCE, [_lanes()])


@gluon.jit
def send_to_peer(offset, barrier_offset, nbytes):
    """Copy ``nbytes`` at ``offset`` into the peer's shared memory at the same offset (one bulk copy),
    counted by the peer's mbarrier at ``barrier_offset`` (which expects them)."""
    _ptx(_SEND, [gl.to_tensor(offset).to(gl.uint32), gl.to_tensor(barrier_offset).to(gl.uint32),
                 gl.to_tensor(nbytes).to(gl.uint32)])


@gluon.jit
def send_to(offset, dst_offset, barrier_offset, nbytes, rank):
    """Copy ``nbytes`` at ``offset`` into the shared memory of the cluster's CTA ``rank`` at
    ``dst_offset`` (one bulk copy), counted by that CTA's mbarrier at ``barrier_offset``."""
    _ptx(_SEND_TO, [gl.to_tensor(offset).to(gl.uint32), gl.to_tensor(dst_offset).to(gl.uint32),
                    gl.to_tensor(barrier_offset).to(gl.uint32), gl.to_tensor(nbytes).to(gl.uint32),
                    gl.to_tensor(rank).to(gl.uint32)])


@gluon.jit
def arrive_on_peer(barrier_offset, CLUSTER_SCOPE: gl.constexpr = False):
    """Arrive on the peer's mbarrier at ``barrier_offset`` (release at CTA scope: for reads that are
    done; ``CLUSTER_SCOPE``: at cluster scope, a fence ptxas puts in front)."""
    if CLUSTER_SCOPE:
        _ptx(_ARRIVE_CLUSTER, [gl.to_tensor(barrier_offset).to(gl.uint32)])
    else:
        _ptx(_ARRIVE, [gl.to_tensor(barrier_offset).to(gl.uint32)])
