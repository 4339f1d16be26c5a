"""Latency-first sparse FP8 decode for CUDA sm90 (Gluon): ``ws_sm90`` with ``SOLO`` = 1.

At small T a warp-specialized program is mostly fixed cost (partition entry and exit, warpgroups
waiting on each other, a cold 3-partition binary: ~7 us over an empty kernel for an item without
candidates, H100).  Here one warpgroup does everything, in order, and the work is cut finer: a
program computes one 256-column half of the output of one (64 heads, token, split) item, so an
item is two programs that each gather the same rows (the second from L2) and compute the same
S = Q K^T, and each keeps a [64, 256] fp32 accumulator (128 registers a thread).

A program's critical path is two round trips before its first MMA: Q (cp.async), the first
tiles' ids and the rows' lengths are in flight together, then those tiles' rows (cp.async, raw
bytes, 16 bytes a copy) are.  Each tile is then read back from shared memory, dequantized exactly
(:func:`~dsv4_tune.kernels.sm90.decode._dequant_sub`) into two [BLOCK_N, 256] bf16 halves, and
used for QK^T (both halves) and PV (this program's).  Two kernels, by tile size:

- 64-token tiles (:func:`_solo_decode_kernel`): one K tile, two raw tiles in flight; each tile in
  turn (dequant, QK^T, softmax, PV), its raw slot then taking the rows of the tile two ahead;
- 32-token tiles (:func:`_solo_pipe_decode_kernel`): two K tiles, three raw tiles in flight; the
  next tile is dequantized while this tile's QK^T runs on the tensor cores.

Results follow the same contract as the warp-specialized kernel (final bf16 O and LSE, or fp32
partials for the common combine), so every ``ws_sm90`` plan is served either way.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from dsv4_tune.kernels.sm90.cluster import cluster_sync, init_fence, send_to
from dsv4_tune.kernels.sm90.decode import (
    DV,
    HEADS,
    _cut,
    _cut_ids,
    _dequant_sub,
    _item,
    _launch_dependents,
    _load_q,
    _lse_and_scale,
    _merged_lse,
    _out_rows,
    _q_at,
    _sink_of,
    _sink_share,
    _softmax_block,
    _split_weight,
    _stage_sub,
    _staged,
    _store_half,
    _store_lse,
    _sub_ids,
    _valid,
    _wait_primary,
)
from dsv4_tune.runtime.jit import Launcher, kernel

RAW_TILES = gl.constexpr(2)  # tiles whose raw bytes are in flight at once
# MERGE: a program's 256 output columns as 32-column blocks, 8 KiB of fp32 each (the blocks of a
# [64, 256] fp32 tile in a 128-byte swizzle lie one after another: each is that swizzle's [64, 32] tile).
NBLK = gl.constexpr(8)


@gluon.jit
def _side_by_side(a, b, c, d):
    """Four [SUB, 32] u32 column groups as one [SUB, 128] tensor, ``a`` leftmost (join adds a minor
    axis, so the last join is the group's top bit)."""
    y = gl.join(gl.join(a, b), gl.join(c, d))
    return gl.reshape(gl.permute(y, (0, 3, 2, 1)), [y.shape[0], 4 * y.shape[1]])


@gluon.jit
def _clean(idx, n_slots):
    """Slot ids with every unreadable one (id < 0 or outside the pool) as -1."""
    return gl.where(_valid(idx, n_slots), idx, -1)


@gluon.jit
def _pick(K: gl.constexpr, PER_TILE: gl.constexpr, n_m, main, x0, x1, x2, x3):
    """Sub-block ``K`` (0-3) of a program whose tiles are ``PER_TILE`` sub-blocks: the main scope's
    (``main``) while the main scope has more than K // PER_TILE tiles (``n_m``), else the extra
    scope's sub-block K - PER_TILE * n_m (of ``x0``-``x3``)."""
    xs = (x0, x1, x2, x3)
    V: gl.constexpr = K // PER_TILE
    gl.static_assert(V <= 2, "at most three tiles ahead")
    if V == 0:
        r = gl.where(n_m > 0, main, xs[K])
    elif V == 1:
        r = gl.where(n_m > 1, main, gl.where(n_m == 1, xs[K - PER_TILE], xs[K]))
    else:
        r = gl.where(n_m > 2, main, gl.where(n_m == 2, xs[K - 2 * PER_TILE], gl.where(n_m == 1, xs[K - PER_TILE], xs[K])))
    return r


@gluon.jit
def _load_subs(idx_row, s_ik, lo, cap, N: gl.constexpr, SUB: gl.constexpr, GATHER: gl.constexpr):
    """A scope's first ``N`` (3 or 4) sub-blocks of ids from ``lo``, loaded up to its cap (the fourth
    a copy of the third when N = 3)."""
    m0 = _sub_ids(idx_row, s_ik, lo, cap, SUB, GATHER)
    m1 = _sub_ids(idx_row, s_ik, lo + SUB, cap, SUB, GATHER)
    m2 = _sub_ids(idx_row, s_ik, lo + 2 * SUB, cap, SUB, GATHER)
    m3 = m2
    if N > 3:
        m3 = _sub_ids(idx_row, s_ik, lo + 3 * SUB, cap, SUB, GATHER)
    return m0, m1, m2, m3


@gluon.jit
def _cut_subs(m, lo, hi, N: gl.constexpr, SUB: gl.constexpr, GATHER: gl.constexpr):
    """:func:`_load_subs`'s sub-blocks with every id at or past the scope's end ``hi`` as -1."""
    m0, m1, m2, m3 = m
    a = _cut_ids(m0, lo, hi, SUB, GATHER)
    b = _cut_ids(m1, lo + SUB, hi, SUB, GATHER)
    c = _cut_ids(m2, lo + 2 * SUB, hi, SUB, GATHER)
    d = c
    if N > 3:
        d = _cut_ids(m3, lo + 3 * SUB, hi, SUB, GATHER)
    return a, b, c, d


@gluon.jit
def _first_ids(idx_row, s_ik, lo, cap, x_idx_row, x_s_ik, x_lo, x_cap, t, s_q, len_ptr, xlen_ptr,
               HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr,
               N: gl.constexpr, PER_TILE: gl.constexpr, SUB: gl.constexpr, GATHER: gl.constexpr):
    """The program's first ``N`` (3 or 4) sub-blocks of ids, in tiles of ``PER_TILE`` sub-blocks (the
    main scope's tiles, then the extra scope's), and the scopes' ends and the main scope's tiles, all
    loaded at once: each scope's first N sub-blocks are loaded up to its cap, and picked and cut once
    the lengths are in.  Returns (sub-blocks 0 to 3 (the fourth a copy of the third when N = 3), main
    end, extra end, main tiles)."""
    m = _load_subs(idx_row, s_ik, lo, cap, N, SUB, GATHER)
    hi = _cut(lo, cap, t, s_q, len_ptr, HAS_LEN)
    x_hi = x_lo
    if HAS_EXTRA:
        x = _load_subs(x_idx_row, x_s_ik, x_lo, x_cap, N, SUB, GATHER)
        x_hi = _cut(x_lo, x_cap, t, s_q, xlen_ptr, X_HAS_LEN)
    n_m = gl.cdiv(hi - lo, PER_TILE * SUB)
    a, b, c, d = _cut_subs(m, lo, hi, N, SUB, GATHER)
    if HAS_EXTRA:
        y0, y1, y2, y3 = _cut_subs(x, x_lo, x_hi, N, SUB, GATHER)
        # In the order the two kernels had them before they shared this function: any other order
        # gives different SASS (same results) for the two-scope kernels, unmeasured on a GPU.
        c = _pick(2, PER_TILE, n_m, c, y0, y1, y2, y3)
        if N > 3:
            d = _pick(3, PER_TILE, n_m, d, y0, y1, y2, y3)
            a = _pick(0, PER_TILE, n_m, a, y0, y1, y2, y3)
            b = _pick(1, PER_TILE, n_m, b, y0, y1, y2, y3)
        else:
            b = _pick(1, PER_TILE, n_m, b, y0, y1, y2, y3)
            a = _pick(0, PER_TILE, n_m, a, y0, y1, y2, y3)
    return a, b, c, d, hi, x_hi, n_m


@gluon.jit
def _tile_src(j, n_m, idx_row, s_ik, lo, hi, x_idx_row, x_s_ik, x_lo, x_hi,
              HAS_EXTRA: gl.constexpr, BLOCK_N: gl.constexpr):
    """Where tile ``j``'s ids are: the main scope's tile j, or the extra scope's tile j - n_m, as
    (ids row, its stride, first candidate, the scope's end)."""
    row = idx_row
    stride = s_ik
    k0 = lo + j * BLOCK_N
    end = hi
    if HAS_EXTRA:
        main = j < n_m
        row = gl.where(main, idx_row, x_idx_row)
        stride = gl.where(main, s_ik, x_s_ik)
        k0 = gl.where(main, k0, x_lo + (j - n_m) * BLOCK_N)
        end = gl.where(main, hi, x_hi)
    return row, stride, k0, end


@gluon.jit
def _tile_ids(j, n_m, idx_row, s_ik, lo, hi, x_idx_row, x_s_ik, x_lo, x_hi,
              HAS_EXTRA: gl.constexpr, BLOCK_N: gl.constexpr, SUB: gl.constexpr, GATHER: gl.constexpr):
    """The two sub-blocks of ids of tile ``j`` of the program (-1 past its scope's end)."""
    row, stride, k0, end = _tile_src(j, n_m, idx_row, s_ik, lo, hi, x_idx_row, x_s_ik, x_lo, x_hi, HAS_EXTRA, BLOCK_N)
    return _sub_ids(row, stride, k0, end, SUB, GATHER), _sub_ids(row, stride, k0 + SUB, end, SUB, GATHER)


@gluon.jit
def _pool(j, n_m, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page, x_page_size, x_n_slots,
          HAS_EXTRA: gl.constexpr):
    """Tile ``j``'s pool (the main scope's for j < n_m, else the extra scope's): (bytes, page stride,
    page size, slots)."""
    kv = kv_ptr
    sp = stride_page
    ps = page_size
    ns = n_slots
    if HAS_EXTRA:
        main = j < n_m
        kv = gl.where(main, kv_ptr, xkv_ptr)
        sp = gl.where(main, stride_page, x_stride_page)
        ps = gl.where(main, page_size, x_page_size)
        ns = gl.where(main, n_slots, x_n_slots)
    return kv, sp, ps, ns


@gluon.jit
def _issue_sub(i, ids, pool, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER: gl.constexpr, ROPE: gl.constexpr):
    """Start copying the raw rows of ``ids`` (in ``pool``) into raw slot ``i``: one commit group.
    Returns the ids with the unreadable ones as -1 (the bias when the slot is read back)."""
    kv, sp, ps, ns = pool
    _stage_sub(kv, sp, ps, ns, ids, st_a.index(i), st_b.index(i), st_c.index(i), st_rope.index(i), st_lo.index(i),
               st_hi.index(i), GATHER, ROPE)
    return _clean(ids, ns)


@gluon.jit
def _issue_tile(j, n_m, ids0, ids1, slot, kv_ptr, stride_page, page_size, n_slots,
                xkv_ptr, x_stride_page, x_page_size, x_n_slots, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                HAS_EXTRA: gl.constexpr, GATHER: gl.constexpr, ROPE: gl.constexpr):
    """Start copying tile ``j``'s raw rows (ids ``ids0``, ``ids1``) into raw slot ``slot``: two
    commit groups, one a sub-block.  Returns the ids with the unreadable ones as -1."""
    pool = _pool(j, n_m, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page, x_page_size, x_n_slots,
                 HAS_EXTRA)
    a = _issue_sub(slot * 2, ids0, pool, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
    b = _issue_sub(slot * 2 + 1, ids1, pool, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
    return a, b


@gluon.jit
def _to_k_tile(slot, ids0, ids1, kb, bias_buf, st_a, st_b, st_c, st_rope, st_lo, st_hi,
               BLOCK_N: gl.constexpr, SUB: gl.constexpr, GATHER: gl.constexpr, ROPE: gl.constexpr):
    """The landed raw tile in ``slot`` dequantized into the two [BLOCK_N, 256] bf16 halves ``kb``
    (columns 0-255 and 256-511) and its bias into ``bias_buf``."""
    K32: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    left = kb.index(0)._reinterpret(gl.uint32, [BLOCK_N, 128], K32)
    right = kb.index(1)._reinterpret(gl.uint32, [BLOCK_N, 128], K32)
    _sub_to_k(slot * 2, ids0, left.slice(0, SUB, dim=0), right.slice(0, SUB, dim=0), bias_buf.slice(0, SUB),
              st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
    _sub_to_k(slot * 2 + 1, ids1, left.slice(SUB, SUB, dim=0), right.slice(SUB, SUB, dim=0), bias_buf.slice(SUB, SUB),
              st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)


@gluon.jit
def _sub_to_k(i, ids, left, right, bias_ref, st_a, st_b, st_c, st_rope, st_lo, st_hi,
              GATHER: gl.constexpr, ROPE: gl.constexpr):
    """Raw sub-block ``i`` (ids ``ids``, already cleaned) dequantized into its rows of both halves."""
    # ``_staged``'s bias reads cleaned ids: any id >= 0 is valid (n_slots: no bound).
    raw = _staged(2147483647, ids, st_a.index(i), st_b.index(i), st_c.index(i), st_rope.index(i), st_lo.index(i),
                  st_hi.index(i), GATHER, ROPE)
    d0, d1, d2, d3, d4, d5, d6, rope, bias = _dequant_sub(raw, ROPE)
    left.store(_side_by_side(d0, d1, d2, d3))
    right.store(_side_by_side(d4, d5, d6, rope))
    bias_ref.store(bias)


@gluon.jit
def _raw_buffers(N: gl.constexpr, SUB: gl.constexpr):
    """Shared memory for ``N`` raw sub-blocks (cp.async's destinations, read back by :func:`_staged`),
    each piece of a row in a buffer of its own."""
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    VEC_SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    return (gl.allocate_shared_memory(gl.uint32, [N, SUB, 64], PLAIN),
            gl.allocate_shared_memory(gl.uint32, [N, SUB, 32], PLAIN),
            gl.allocate_shared_memory(gl.uint32, [N, SUB, 16], PLAIN),
            gl.allocate_shared_memory(gl.uint32, [N, SUB, 32], PLAIN),
            gl.allocate_shared_memory(gl.uint32, [N, SUB], VEC_SL),
            gl.allocate_shared_memory(gl.uint32, [N, SUB], VEC_SL))


@gluon.jit
def _start(q_ptr, q_smem, s_qb, s_qs, s_qh, sink_ptr, idx_ptr, s_ib, s_is, xidx_ptr, x_s_ib, x_s_is,
           h_q, n_tok, s_q, chunk, topk, x_topk, HAS_EXTRA: gl.constexpr, HAS_SINK: gl.constexpr,
           SPLIT: gl.constexpr, S_L: gl.constexpr, HB: gl.constexpr, MERGE: gl.constexpr = 0):
    """A program's start: its item and output half (two programs an item), Q's copy issued (commit
    group 1; of ``HB`` heads, the tile's other rows zero and never read from memory), the heads' sinks
    loaded (:func:`~dsv4_tune.kernels.sm90.decode._sink_of`; in the epilogue the load waited a DRAM
    round trip, 4% of a lone item's warp samples).  Returns (half,
    :func:`~dsv4_tune.kernels.sm90.decode._item`'s tuple, sinks, the item's ids rows, the program's end
    of heads).  ``MERGE`` (an item's splits in a cluster of that many CTAs): program p is split
    p % MERGE of output half (p // MERGE) % 2 of (head block, token) p // (2 MERGE)."""
    pid = gl.program_id(0)
    geo = (gl.cdiv(h_q, HB), n_tok, s_q, chunk, topk, x_topk)
    if MERGE:
        rest = pid // MERGE
        at = _item((pid % MERGE) * (geo[0] * n_tok) + rest // 2, geo, HAS_EXTRA, HB)
        half = rest % 2
    else:
        at = _item(pid // 2, geo, HAS_EXTRA, HB)
        half = pid % 2
    head0, _, tb, ts, _, _, _, _, _ = at
    h_end = h_q
    if HB != HEADS:  # (at 64 heads the bound is h_q itself: the SASS of before)
        h_end = gl.minimum(h_q, head0 + HB)
    _load_q(q_ptr, q_smem, head0, tb, ts, h_end, s_qb, s_qs, s_qh)
    heads = head0 + gl.arange(0, HEADS, layout=gl.SliceLayout(1, S_L))
    sink = _sink_of(sink_ptr, heads, heads < h_end, HAS_SINK, SPLIT)
    return half, at, sink, idx_ptr + tb * s_ib + ts * s_is, xidx_ptr + tb * x_s_ib + ts * x_s_is, h_end


@gluon.jit
def _finish(o, m_i, l_i, half, head0, t, tb, ts, split, outs, sink, HAS_SINK: gl.constexpr, SPLIT: gl.constexpr,
            S_L: gl.constexpr, O_L: gl.constexpr):
    """The epilogue of the contract (attention_core.store_result) for output half ``half``: the LSE
    (half 0 stores it), then O scaled (by ``sink``, :func:`_start`'s) and stored."""
    _, hm, _, lse_rows, part_rows = _out_rows(head0, t, tb, ts, split, outs, gl.SliceLayout(1, S_L))
    lse, scale = _lse_and_scale(m_i, l_i, sink, HAS_SINK, SPLIT)
    _store_lse(lse, lse_rows, part_rows, outs, hm & (half == 0), SPLIT)  # both halves have it: one stores
    o = o * gl.convert_layout(scale, gl.SliceLayout(1, O_L))[:, None]
    _store_half(o, half * DV, head0, t, tb, ts, split, outs, SPLIT, O_L)


@gluon.jit
def _merge_buffers(MERGE: gl.constexpr):
    """MERGE: every split's LSE (slot = split) and the barrier that counts what the peers send; the
    barrier initialised and its init released to the cluster (the merge's first cluster barrier
    acquires it)."""
    VEC_SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    xlse = gl.allocate_shared_memory(gl.float32, [MERGE, HEADS], VEC_SL)
    m_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(m_ready, count=1)  # this CTA's arrival (with the bytes it expects)
    init_fence()
    return xlse, m_ready


@gluon.jit
def _merge_splits(o, m_i, l_i, kb, q3, xlse, m_ready, half, head0, t, tb, ts, split, outs, sink_ptr,
                  HAS_SINK: gl.constexpr, MERGE: gl.constexpr, O_L: gl.constexpr, S_L: gl.constexpr,
                  OWN_OFF: gl.constexpr, RECV_OFF: gl.constexpr, XLSE_OFF: gl.constexpr, MREADY_OFF: gl.constexpr):
    """MERGE: the ``MERGE`` splits of an output half, one cluster, merged over DSMEM (no partials in
    global memory, no combine).  Each CTA writes its normalised partial (fp32, into its K tiles: 64
    KiB) and LSE; after a cluster barrier (every Q buffer free) it sends each peer the 32-column
    blocks that peer finalizes (block b to rank b % MERGE) into the peer's Q buffer, and its LSE to
    every peer; it then merges its own blocks from all splits as the combine merges them (the same
    operations in the same order, split 0's term first) and stores them as bf16, rank 0 of half 0
    the LSE.  A last cluster barrier keeps every CTA until no copy reads from it."""
    BLOCK_BYTES: gl.constexpr = HEADS * 32 * 4
    PER: gl.constexpr = (NBLK + MERGE - 1) // MERGE  # the most blocks a CTA finalizes: a peer's receive slots
    F32_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    rank = split  # (the cluster's CTA p % MERGE: _start)
    lse, scale = _lse_and_scale(m_i, l_i, m_i, HAS_SINK, True)
    kb._reinterpret(gl.float32, [HEADS, DV], F32_SL).store(o * gl.convert_layout(scale, gl.SliceLayout(1, O_L))[:, None])
    xlse.index(rank).store(lse)
    fence_async_shared()  # the stores, seen by the bulk copies (the async proxy)
    gl.thread_barrier()
    nb = (NBLK - rank + MERGE - 1) // MERGE  # this CTA's blocks: rank, rank + MERGE, ...
    mbarrier.expect(m_ready, (MERGE - 1) * (PER * BLOCK_BYTES + HEADS * 4), pred=nb == PER)
    if NBLK % MERGE:
        mbarrier.expect(m_ready, (MERGE - 1) * ((PER - 1) * BLOCK_BYTES + HEADS * 4), pred=nb != PER)
    cluster_sync()  # every partial written, every Q buffer read for the last time
    for k in gl.static_range(1, MERGE):
        peer = (rank + k) % MERGE
        me = rank - (rank > peer).to(gl.int32)  # this CTA among the peer's senders
        for j in gl.static_range(PER):
            b = peer + j * MERGE
            if b < NBLK:
                send_to(OWN_OFF + b * BLOCK_BYTES, RECV_OFF + (me * PER + j) * BLOCK_BYTES, MREADY_OFF, BLOCK_BYTES,
                        peer)
        send_to(XLSE_OFF + rank * (HEADS * 4), XLSE_OFF + rank * (HEADS * 4), MREADY_OFF, HEADS * 4, peer)
    mbarrier.wait(m_ready, 0)

    ML: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
    LR: gl.constexpr = gl.SliceLayout(1, ML)
    own = kb._reinterpret(gl.float32, [NBLK, HEADS, 32], F32_SL)
    recv = q3._reinterpret(gl.float32, [NBLK, HEADS, 32], F32_SL)
    heads, hm, out_rows, lse_rows, _ = _out_rows(head0, t, tb, ts, 0, outs, LR)
    m = gl.full([HEADS], float("-inf"), gl.float32, layout=LR)
    for s in gl.static_range(MERGE):
        v = xlse.index(s).load(LR)
        m = gl.maximum(m, gl.where(gl.abs(v) < 1e30, v, float("-inf")))
    lonely = m == float("-inf")
    safe_m = gl.where(lonely, 0.0, m)
    total = gl.zeros([HEADS], gl.float32, layout=LR)
    for s in gl.static_range(MERGE):
        total = total + _split_weight(xlse.index(s).load(LR), safe_m)
    lse, scale = _merged_lse(total, lonely, safe_m)
    if HAS_SINK:
        scale = scale * _sink_share(lse, lonely, sink_ptr, heads, hm)
    gl.store(outs[4] + lse_rows, lse, mask=hm & (rank == 0) & (half == 0))
    for j in gl.static_range(PER):
        b = rank + j * MERGE
        if b < NBLK:
            acc = gl.zeros([HEADS, 32], gl.float32, layout=ML)
            for s in gl.static_range(MERGE):
                if rank == s:  # noqa: SIM108 (a run-time branch: one of the two loads, not both)
                    x = own.index(b).load(ML)
                else:  # (slot: the sender's place among this CTA's peers, then the block's)
                    x = recv.index((s - (rank < s).to(gl.int32)) * PER + j).load(ML)
                w = _split_weight(xlse.index(s).load(LR), safe_m)  # (as the sum had it: the same operations)
                acc = acc + w[:, None] * gl.where((w > 0)[:, None], x, 0.0)
            cols = half * DV + b * 32 + gl.arange(0, 32, layout=gl.SliceLayout(0, ML))
            gl.store(outs[0] + out_rows[:, None] + cols[None, :], (acc * scale[:, None]).to(gl.bfloat16),
                     mask=hm[:, None] & (cols[None, :] >= 0))
    # No CTA leaves while a peer's copy may still read its shared memory (every CTA has had what it was
    # sent): a meeting only, not a release, which would wait for the output's stores.
    cluster_sync(False)


@kernel(jit=gluon.jit)
def _solo_decode_kernel(
    q_ptr, s_qb, s_qs, s_qh,
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik, len_ptr, topk,
    xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik, xlen_ptr,
    x_topk,
    sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr,
    n_tok, s_q, h_q, qk_scale, chunk,
    HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    SPLIT: gl.constexpr, BLOCK_N: gl.constexpr, SUB: gl.constexpr, PDL: gl.constexpr = False,
    WAIT: gl.constexpr = False, HB: gl.constexpr = 64, MERGE: gl.constexpr = 0, OWN_OFF: gl.constexpr = 0,
    RECV_OFF: gl.constexpr = 0, XLSE_OFF: gl.constexpr = 0, MREADY_OFF: gl.constexpr = 0,
):
    """Program p: output columns [256 (p % 2), +256) of item p // 2 (head block fastest, then token,
    then split, as the warp-specialized kernel orders them), an item ``HB`` (64 or 32) query heads."""
    gl.static_assert(SUB == 32, "the gather layouts cover 32 rows")
    gl.static_assert(BLOCK_N == 2 * SUB, "a tile is two sub-blocks (the copy groups and ids assume it)")
    if PDL:  # the combine launches now and waits (griddepcontrol.wait) for every partial
        _launch_dependents()
    if WAIT:  # launched as the programmatic dependent of the kernel before it (after the trigger, which is safe)
        _wait_primary()
    GATHER: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])  # 16 B per thread and copy
    ROPE: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # a dequantized group's layout
    K_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    VEC_SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, DV, 16])
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    q3 = gl.allocate_shared_memory(gl.bfloat16, [1, HEADS, 2 * DV], K_SL)  # see _q_at
    q_smem = q3.index(0)
    kb = gl.allocate_shared_memory(gl.bfloat16, [2, BLOCK_N, DV], K_SL)  # the K tile's two column halves
    bias_buf = gl.allocate_shared_memory(gl.float32, [BLOCK_N], VEC_SL)
    st_a, st_b, st_c, st_rope, st_lo, st_hi = _raw_buffers(2 * RAW_TILES, SUB)  # a raw tile: two sub-blocks
    if MERGE:
        xlse, m_ready = _merge_buffers(MERGE)

    half, at, sink, idx_row, x_idx_row, h_end = _start(q_ptr, q_smem, s_qb, s_qs, s_qh, sink_ptr, idx_ptr, s_ib,
                                                      s_is, xidx_ptr, x_s_ib, x_s_is, h_q, n_tok, s_q, chunk, topk,
                                                      x_topk, HAS_EXTRA, HAS_SINK, SPLIT, S_L, HB, MERGE)
    head0, t, tb, ts, split, lo, cap, x_lo, x_cap = at
    a0, a1, b0, b1, hi, x_hi, n_m = _first_ids(idx_row, s_ik, lo, cap, x_idx_row, x_s_ik, x_lo, x_cap, t, s_q,
                                               len_ptr, xlen_ptr, HAS_LEN, HAS_EXTRA, X_HAS_LEN, 4, 2, SUB, GATHER)
    n = n_m + gl.cdiv(x_hi - x_lo, BLOCK_N)
    # Tiles 0 and 1 (groups 2-5; a tile past the last is all -1 ids: zero-filled, nothing read).
    a0, a1 = _issue_tile(0, n_m, a0, a1, 0, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page,
                         x_page_size, x_n_slots, st_a, st_b, st_c, st_rope, st_lo, st_hi, HAS_EXTRA, GATHER, ROPE)
    b0, b1 = _issue_tile(1, n_m, b0, b1, 1, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page,
                         x_page_size, x_n_slots, st_a, st_b, st_c, st_rope, st_lo, st_hi, HAS_EXTRA, GATHER, ROPE)

    m_i = gl.full([HEADS], -1.0e30, gl.float32, layout=gl.SliceLayout(1, S_L))  # finite: no inf - inf
    l_i = gl.zeros([HEADS], gl.float32, layout=gl.SliceLayout(1, S_L))
    o = gl.zeros([HEADS, DV], gl.float32, layout=O_L)
    for j in range(n):
        slot = j % 2
        # The ids of tile j + 2, loaded now and used after this tile's MMAs.
        c0, c1 = _tile_ids(j + 2, n_m, idx_row, s_ik, lo, hi, x_idx_row, x_s_ik, x_lo, x_hi,
                           HAS_EXTRA, BLOCK_N, SUB, GATHER)
        async_copy.wait_group(2)  # Q and tile j are in (tile j + 1's two groups may not be)
        gl.thread_barrier()  # and every thread's copies seen: a scale word is copied by one of the 4 lanes that read it
        _to_k_tile(slot, a0, a1, kb, bias_buf, st_a, st_b, st_c, st_rope, st_lo, st_hi, BLOCK_N, SUB, GATHER, ROPE)
        fence_async_shared()
        gl.thread_barrier()  # the K tile and bias written, the raw slot read by every thread
        s = gl.zeros([HEADS, BLOCK_N], gl.float32, layout=S_L)
        q = _q_at(q3, j)
        s = warpgroup_mma(q.slice(0, DV, dim=1), kb.index(0).permute((1, 0)), s, use_acc=False, is_async=True)
        s = warpgroup_mma(q.slice(DV, DV, dim=1), kb.index(1).permute((1, 0)), s, is_async=True)
        a0, a1 = _issue_tile(j + 2, n_m, c0, c1, slot, kv_ptr, stride_page, page_size, n_slots, xkv_ptr,
                             x_stride_page, x_page_size, x_n_slots, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                             HAS_EXTRA, GATHER, ROPE)
        bias = bias_buf.load(gl.SliceLayout(0, S_L))
        s = warpgroup_mma_wait(0, deps=(s,))
        pb, alpha, m_i, l_i = _softmax_block(s, bias, m_i, l_i, qk_scale)
        o = o * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        o = warpgroup_mma(gl.convert_layout(pb, P_L), kb.index(half), o, is_async=True)
        o = warpgroup_mma_wait(0, deps=(o,))
        gl.thread_barrier()  # every thread's MMAs done before the next tile overwrites the K tile
        a0, a1, b0, b1 = b0, b1, a0, a1  # tile j + 1's ids first, then tile j + 2's
    async_copy.wait_group(0)  # no copy outlives the program

    outs = (out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr, h_q, n_tok, h_end)
    if MERGE:
        _merge_splits(o, m_i, l_i, kb, q3, xlse, m_ready, half, head0, t, tb, ts, split, outs, sink_ptr, HAS_SINK,
                      MERGE, O_L, S_L, OWN_OFF, RECV_OFF, XLSE_OFF, MREADY_OFF)
    else:
        _finish(o, m_i, l_i, half, head0, t, tb, ts, split, outs, sink, HAS_SINK, SPLIT, S_L, O_L)


@kernel(jit=gluon.jit)
def _solo_pipe_decode_kernel(
    q_ptr, s_qb, s_qs, s_qh,
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik, len_ptr, topk,
    xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik, xlen_ptr,
    x_topk,
    sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr,
    n_tok, s_q, h_q, qk_scale, chunk,
    HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    SPLIT: gl.constexpr, BLOCK_N: gl.constexpr, SUB: gl.constexpr, PDL: gl.constexpr = False,
    WAIT: gl.constexpr = False, HB: gl.constexpr = 64, MERGE: gl.constexpr = 0, OWN_OFF: gl.constexpr = 0,
    RECV_OFF: gl.constexpr = 0, XLSE_OFF: gl.constexpr = 0, MREADY_OFF: gl.constexpr = 0,
):
    """:func:`_solo_decode_kernel` on 32-token tiles, software-pipelined: two K tiles, so tile j + 1
    is dequantized while tile j's QK^T runs on the tensor cores; three raw tiles in flight."""
    gl.static_assert(SUB == 32, "the gather layouts cover 32 rows")
    gl.static_assert(BLOCK_N == SUB, "a tile is one sub-block (the copy groups and ids assume it)")
    if PDL:  # the combine launches now and waits (griddepcontrol.wait) for every partial
        _launch_dependents()
    if WAIT:  # launched as the programmatic dependent of the kernel before it (after the trigger, which is safe)
        _wait_primary()
    GATHER: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])  # 16 B per thread and copy
    ROPE: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # a dequantized group's layout
    K_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    K32: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    VEC_SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, DV, 16])
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    RAW: gl.constexpr = 3  # raw tiles in flight
    q3 = gl.allocate_shared_memory(gl.bfloat16, [1, HEADS, 2 * DV], K_SL)  # see _q_at
    q_smem = q3.index(0)
    kb = gl.allocate_shared_memory(gl.bfloat16, [4, BLOCK_N, DV], K_SL)  # K tile b's halves: 2b (left), 2b + 1
    kw = kb._reinterpret(gl.uint32, [4, BLOCK_N, DV // 2], K32)
    bias_buf = gl.allocate_shared_memory(gl.float32, [2, BLOCK_N], VEC_SL)
    st_a, st_b, st_c, st_rope, st_lo, st_hi = _raw_buffers(RAW, SUB)
    if MERGE:
        xlse, m_ready = _merge_buffers(MERGE)

    half, at, sink, idx_row, x_idx_row, h_end = _start(q_ptr, q_smem, s_qb, s_qs, s_qh, sink_ptr, idx_ptr, s_ib,
                                                      s_is, xidx_ptr, x_s_ib, x_s_is, h_q, n_tok, s_q, chunk, topk,
                                                      x_topk, HAS_EXTRA, HAS_SINK, SPLIT, S_L, HB, MERGE)
    head0, t, tb, ts, split, lo, cap, x_lo, x_cap = at
    a, b, c, _, hi, x_hi, n_m = _first_ids(idx_row, s_ik, lo, cap, x_idx_row, x_s_ik, x_lo, x_cap, t, s_q, len_ptr,
                                           xlen_ptr, HAS_LEN, HAS_EXTRA, X_HAS_LEN, 3, 1, SUB, GATHER)
    n = n_m + gl.cdiv(x_hi - x_lo, BLOCK_N)
    # Tiles 0-2 (groups 2-4; a tile past the last is all -1 ids: zero-filled, nothing read).
    a = _issue_sub(0, a, _pool(0, n_m, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page, x_page_size,
                               x_n_slots, HAS_EXTRA), st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
    b = _issue_sub(1, b, _pool(1, n_m, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page, x_page_size,
                               x_n_slots, HAS_EXTRA), st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
    c = _issue_sub(2, c, _pool(2, n_m, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page, x_page_size,
                               x_n_slots, HAS_EXTRA), st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
    async_copy.wait_group(2)  # Q and tile 0
    gl.thread_barrier()
    _sub_to_k(0, a, kw.index(0), kw.index(1), bias_buf.index(0), st_a, st_b, st_c, st_rope, st_lo, st_hi,
              GATHER, ROPE)
    fence_async_shared()
    gl.thread_barrier()

    m_i = gl.full([HEADS], -1.0e30, gl.float32, layout=gl.SliceLayout(1, S_L))  # finite: no inf - inf
    l_i = gl.zeros([HEADS], gl.float32, layout=gl.SliceLayout(1, S_L))
    o = gl.zeros([HEADS, DV], gl.float32, layout=O_L)
    for j in range(n):
        cur = j % 2
        nxt = 1 - cur
        # The ids of tile j + 3, loaded now and used at this trip's end.
        row, stride, k0, end = _tile_src(j + 3, n_m, idx_row, s_ik, lo, hi, x_idx_row, x_s_ik, x_lo, x_hi,
                                         HAS_EXTRA, BLOCK_N)
        d = _sub_ids(row, stride, k0, end, SUB, GATHER)
        s = gl.zeros([HEADS, BLOCK_N], gl.float32, layout=S_L)
        q = _q_at(q3, j)
        s = warpgroup_mma(q.slice(0, DV, dim=1), kb.index(2 * cur).permute((1, 0)), s, use_acc=False, is_async=True)
        s = warpgroup_mma(q.slice(DV, DV, dim=1), kb.index(2 * cur + 1).permute((1, 0)), s, is_async=True)
        if j + 1 < n:  # tile j + 1 into the other K buffer while the tensor cores do this one's QK^T
            async_copy.wait_group(1)  # tile j + 1 is in (tile j + 2's group may not be)
            gl.thread_barrier()
            _sub_to_k((j + 1) % RAW, b, kw.index(2 * nxt), kw.index(2 * nxt + 1), bias_buf.index(nxt),
                      st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
        s = warpgroup_mma_wait(0, deps=(s,))
        bias = bias_buf.index(cur).load(gl.SliceLayout(0, S_L))
        pb, alpha, m_i, l_i = _softmax_block(s, bias, m_i, l_i, qk_scale)
        o = o * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
        o = warpgroup_mma(gl.convert_layout(pb, P_L), kb.index(2 * cur + half), o, is_async=True)
        o = warpgroup_mma_wait(0, deps=(o,))
        # Tile j + 3 into tile j's raw slot (read back a trip ago).
        d = _issue_sub(j % RAW, d, _pool(j + 3, n_m, kv_ptr, stride_page, page_size, n_slots, xkv_ptr, x_stride_page,
                                         x_page_size, x_n_slots, HAS_EXTRA),
                       st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
        fence_async_shared()
        gl.thread_barrier()  # tile j + 1 seen by the next QK^T; this tile's MMAs done before it is overwritten
        b, c = c, d
    async_copy.wait_group(0)  # no copy outlives the program
    outs = (out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr, h_q, n_tok, h_end)
    if MERGE:
        _merge_splits(o, m_i, l_i, kb, q3, xlse, m_ready, half, head0, t, tb, ts, split, outs, sink_ptr, HAS_SINK,
                      MERGE, O_L, S_L, OWN_OFF, RECV_OFF, XLSE_OFF, MREADY_OFF)
    else:
        _finish(o, m_i, l_i, half, head0, t, tb, ts, split, outs, sink, HAS_SINK, SPLIT, S_L, O_L)


_LAUNCHERS = {64: Launcher(_solo_decode_kernel), 32: Launcher(_solo_pipe_decode_kernel)}


def solo_launcher(block_n: int) -> Launcher:
    """The one-warpgroup kernel for tiles of ``block_n`` tokens, as
    :func:`~dsv4_tune.kernels.sm90.decode.launch_ws_decode` takes it (``solo``)."""
    return _LAUNCHERS[block_n]
