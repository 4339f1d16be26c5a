"""A wave of row gathers the compiler cannot split: every row of a program goes to shared memory by
cp.async, all issued before any is waited for (Gluon; CUDA sm90 with Triton 3.6's API).

``bench_latency_floor``'s plain gather loads its rows into registers, and ptxas issues those loads a
few at a time, each after the data of the one before is used: its SASS under Triton 3.6 waits 13
dependent times for a program's 64 rows and 3 times for 16.  What that row times is the schedule;
this one times the memory: one round trip for the ids, one for the rows.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy

ROW_WORDS = 144  # int32 words of a 576-byte row, copied as 128 + 16


@gluon.jit
def gather_async_kernel(pool_ptr, ids_ptr, out_ptr, n, ROWS: gl.constexpr):
    """Program p: the int32 sum (wrapping) of the words of the ``n <= ROWS`` rows ``ids[p * n:(p + 1) * n]``
    of ``pool_ptr`` (int32 words, 144 a row); four warps, 16 bytes a thread and copy."""
    layout: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
    plain: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    pid = gl.program_id(0)
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, layout))
    live = r < n
    base = gl.load(ids_ptr + pid * n + r, mask=live, other=0).to(gl.int64) * 144
    head = gl.allocate_shared_memory(gl.int32, [ROWS, 128], plain)
    tail = gl.allocate_shared_memory(gl.int32, [ROWS, 16], plain)
    ch = gl.arange(0, 128, layout=gl.SliceLayout(0, layout))
    ct = gl.arange(0, 16, layout=gl.SliceLayout(0, layout))
    async_copy.async_copy_global_to_shared(head, pool_ptr + base[:, None] + ch[None, :],
                                           mask=live[:, None] & (ch[None, :] >= 0))
    async_copy.async_copy_global_to_shared(tail, pool_ptr + base[:, None] + 128 + ct[None, :],
                                           mask=live[:, None] & (ct[None, :] >= 0))
    async_copy.commit_group()
    async_copy.wait_group(0)
    gl.thread_barrier()  # every thread's copies landed
    total = gl.sum(gl.sum(head.load(layout), axis=1), axis=0) + gl.sum(gl.sum(tail.load(layout), axis=1), axis=0)
    gl.store(out_ptr + pid, total)
