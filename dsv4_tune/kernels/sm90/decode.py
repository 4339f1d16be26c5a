"""Warp-specialized sparse FP8 decode for CUDA sm90 (Gluon): the ``ws_sm90`` variant.

The work is one item per (64 query heads, query token, split); a program does items p, p + P, ...
of a grid of P programs: one item each on the full grid, or (PERSIST) one program per SM looping
over them, the producer gathering the next item's tiles while the consumers finish this one and WG0
loading the next item's Q during its epilogue.  Three warpgroups share the work through shared
memory and mbarriers, whose phases run on across items:

- the **producer** (worker 1) walks the program's candidates, main scope then extra scope, in
  blocks of BLOCK_N tokens: it loads each sub-block's ids, gathers every token's 576 data bytes
  and 8 scale bytes with 16-byte loads (one sub-block in flight while it converts the one before),
  dequantizes the NoPE bytes exactly into bf16 (bit placement, then two bf16 multiplies: 2^120 and
  the UE8M0 scale) and stores the 512-column bf16 K tile into a 128-byte-swizzled shared buffer
  (KSTAGES buffers), with a 0 / -inf bias per token for the invalid ones;
- **WG0** (the default partition) loads Q into shared memory (cp.async: one round trip, under the
  producer's first gathers), computes S = Q K^T from shared memory (wgmma), the online
  softmax, hands P and the rescale factor to WG1 through shared memory, and accumulates
  O[:, :256] += P V with P from registers;
- **WG1** (worker 0) rescales and accumulates O[:, 256:] from the shared P.

With CROSS (h_q a multiple of 128, 64-token tiles) the two items of a token's two head blocks run
as one cluster of two CTAs: each producer gathers and converts one 32-token sub-block of every tile
(the first CTA rows 0-31, the second rows 32-63), stores it in its own tile and sends it into the
peer's (a bulk copy per 128-byte column block, and one for the bias) that the peer's ``k_ready``
counts; ``k_empty`` counts both CTAs' consumers (each also arrives on the peer's), and every
partition meets the peer's at its start and end (a cluster barrier).  Each producer then waits for
one round trip of rows a tile where it waited for two (at h128 the producer set the pace); by
columns instead, each gathering half of every row, it waited for as many and was 7% slower.  Swept
at h_q % 128 == 0 since 2026-12-06 (4-9% faster than the plain persistent plan at 1152 candidates
on an H200).

A lone unsplit item's output leaves through Q's buffer (free once the item's QK^T are done), 16
bytes a thread: WG0 stores its half itself; WG1 writes its half there and the producer, idle by
then, stores it (WG1's 160 registers hold its accumulator and little else).

K = V: the same tile serves QK^T and PV.  Invalid candidates (id -1, out of the pool, beyond the
row's topk_length) get bias -inf and a zero K row, so unused slots are never read.  The epilogue
follows the contract of :mod:`dsv4_tune.kernels.attention_core`: O = acc / (l + exp(sink - m)),
LSE = m + ln l without the sink, a lonely row O = 0 and LSE = +inf; split, the normalised partial
O / LSE that :mod:`dsv4_tune.kernels.combine` merges.

NaN bytes in *valid* slots are not propagated (the bit placement reads 0x7F as 480 x scale); every
finite byte and every scale byte decodes exactly as the reference does.

Written against the Gluon API of Triton 3.6 (:data:`dsv4_tune.kernels.sm90.GLUON_PROBLEM` says
whether this Triton offers it); Gluon does not run on the interpreter.
"""

from __future__ import annotations

import functools

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    warpgroup_mma,
    warpgroup_mma_wait,
)

from dsv4_tune.kernels.attention_core import LOG2E, epilogue_args, scope_flags, scopes_args
from dsv4_tune.kernels.fused_attention import split_chunk
from dsv4_tune.kernels.sm90.cluster import arrive_on_peer, cluster_sync, init_fence, send_to_peer
from dsv4_tune.registry.intmath import cdiv
from dsv4_tune.registry.launches import WS_SOLO_MERGE_SPLITS
from dsv4_tune.runtime.cluster import max_active_clusters, shared_offsets
from dsv4_tune.runtime.jit import Launcher, kernel

HEADS = gl.constexpr(64)  # query heads per program: the M of every wgmma
DV = gl.constexpr(256)  # output columns per consumer warpgroup
# setmaxnreg of the two worker warpgroups: WG0 gets the rest of the 168 x 384 registers at entry
# (208).  WG1 needs 160 for its [64, 256] fp32 accumulator; at 136 the producer still has no spills,
# and WG0 needs the 208 for PIPE's second score block (28 B of spills at 200).
WG1_REGS = gl.constexpr(160)
PRODUCER_REGS = gl.constexpr(136)


@gluon.jit
def _dequant_pair(x, c, s):
    """4 e4m3fn bytes (u32) -> 2 bf16x2 words, exactly: each byte's sign, exponent and mantissa
    placed into a bf16 (value x 2^-120), times ``c`` (2^120) and ``s`` (the UE8M0 scale)."""
    return gl.inline_asm_elementwise(
        asm="""{
        .reg .b32 lo, hi, t0, t1;
        prmt.b32 lo, $2, 0, 0x1404;
        prmt.b32 hi, $2, 0, 0x3424;
        shr.b32 t0, lo, 4;
        shr.b32 t1, hi, 4;
        and.b32 lo, lo, 0x80008000;
        and.b32 hi, hi, 0x80008000;
        and.b32 t0, t0, 0x07F007F0;
        and.b32 t1, t1, 0x07F007F0;
        or.b32 lo, lo, t0;
        or.b32 hi, hi, t1;
        mul.rn.bf16x2 lo, lo, $3;
        mul.rn.bf16x2 hi, hi, $3;
        mul.rn.bf16x2 $0, lo, $4;
        mul.rn.bf16x2 $1, hi, $4;
        }""",
        constraints="=r,=r,r,r,r", args=[x, c, s], dtype=(gl.uint32, gl.uint32), is_pure=True, pack=1,
    )


@gluon.jit
def _launch_dependents():
    """Let the programmatic dependent launch after this kernel (the split's combine) start now."""
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _wait_primary():
    """Wait here until the kernel this one was launched after (as its programmatic dependent) has
    completed and its writes are visible; at once where it was not launched so.  Every global access
    of a kernel launched with ``launch_pdl`` comes after it: its launch and its shared-memory set-up
    overlap the previous kernel's end."""
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def _cluster_sync(CROSS: gl.constexpr, MERGE: gl.constexpr = False):
    """Under CROSS or MERGE, every thread of both CTAs meets here: at each partition's start (the
    barriers' inits are then seen by the peer) and end (no CTA leaves while the other may still write
    to it or read from it)."""
    if CROSS or MERGE:
        cluster_sync()


@gluon.jit
def _release(k_empty, ks, CROSS: gl.constexpr, EMPTY_OFF: gl.constexpr):
    """This warpgroup is done with K tile ``ks``: its producer may refill it, and under CROSS the
    peer's producer (which writes its rows into this CTA's tile) too.  The local arrive stays first:
    its lowering's partition barrier is what puts every warp's finished wgmma before the remote one."""
    mbarrier.arrive(k_empty.index(ks))
    if CROSS:
        arrive_on_peer(EMPTY_OFF + ks * 8)


@gluon.jit
def _wait_free(k_empty, s, n, KSTAGES: gl.constexpr):
    """Wait until both consumers have released the last fill of K stage ``s`` of an item of ``n``
    tiles (what the producer's next refill of it would wait for); at once if it was never filled."""
    fills = (n + (KSTAGES - 1) - s) // KSTAGES
    mbarrier.wait(k_empty.index(s), (fills & 1) ^ 1)


@gluon.jit
def _pair_rank():
    """This CTA's rank in its cluster of two (a 1-D grid in clusters of two along x: CTAs 2j and
    2j + 1): under CROSS its half of every tile's rows, under MERGE its split (:func:`_my_items`)."""
    return gl.program_id(0) % 2


@gluon.jit
def _f32_half(buf):
    """MERGE: a 64-KiB shared buffer (Q's, or a K stage of 64 tokens) as one [64, 256] fp32 half of
    an item's output (the same view on both CTAs: a bulk copy moves it verbatim)."""
    F32_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    return buf._reinterpret(gl.float32, [HEADS, DV], F32_SL)


@gluon.jit
def _merge_half(o, C: gl.constexpr, q_smem, out_ready, kbuf, k_empty, n_blocks, r_free, KSTAGES: gl.constexpr,
                KBUF_OFF: gl.constexpr, XLSE_OFF: gl.constexpr, MREADY_OFF: gl.constexpr):
    """MERGE, a consumer's normalised partial ``o`` of column half ``C`` (fp32): the CTA of rank C
    finalizes that half, so there it goes into Q's buffer (free: every QK^T is done) for this CTA's
    producer; the other rank sends it into the peer's K stage ``rank`` (from its own, once both of its
    consumers are done with that stage and the peer's producer has freed its twin), with this CTA's
    LSE, one bulk copy each, counted by the peer's ``m_ready``."""
    HALF_BYTES: gl.constexpr = HEADS * DV * 4
    rank = _pair_rank()
    if rank == C:
        _f32_half(q_smem).store(o)
        mbarrier.arrive(out_ready)  # (after a partition barrier, as Triton 3.6 lowers it)
    else:
        _wait_free(k_empty, rank, n_blocks, KSTAGES)
        _f32_half(kbuf.index(rank)).store(o)
        fence_async_shared()  # the stores, seen by the bulk copy (the async proxy)
        gl.thread_barrier()
        mbarrier.wait(r_free, 0)
        send_to_peer(KBUF_OFF + rank * HALF_BYTES, MREADY_OFF, HALF_BYTES)
        send_to_peer(XLSE_OFF + rank * (HEADS * 4), MREADY_OFF, HEADS * 4)


@gluon.jit
def _split_weight(v, safe_m):
    """A split's weight in a merge of splits of LSE ``v`` (max of the finite ones ``safe_m``, 0 where
    none is): exp(v - M), 0 for a split without candidates (LSE +-inf), as the combine's ``_weigh``."""
    return gl.where(gl.abs(v) < 1e30, gl.exp2((v - safe_m) * 1.4426950408889634), 0.0)


@gluon.jit
def _merged_lse(total, lonely, safe_m):
    """A merge's LSE and the factor its weighted sum is scaled by (1 / the weights' ``total``), as the
    combine's; a row no split saw (``lonely``): LSE +inf and 0."""
    lse = gl.where(lonely, float("inf"), safe_m + gl.log(gl.where(lonely, 1.0, total)))
    return lse, gl.where(lonely, 0.0, 1.0 / gl.where(lonely, 1.0, total))


@gluon.jit
def _sink_share(lse, lonely, sink_ptr, heads, hm):
    """What a merged row keeps beside its sink (the combine's factor): 1 / (1 + exp(sink - LSE))."""
    sink = gl.load(sink_ptr + heads, mask=hm, other=float("-inf"))
    return 1.0 / (1.0 + gl.exp2((sink - gl.where(lonely, 0.0, lse)) * 1.4426950408889634))


@gluon.jit
def _merge_out(own, peer, xlse, rank, head0, t, tb, ts, outs, sink_ptr, HAS_SINK: gl.constexpr):
    """MERGE, this CTA's producer: its column half of the final output (rank 0 the first 256, rank 1
    the rest) from both splits' normalised partials of it (``own``: this split's, in Q's buffer;
    ``peer``: the other's, received) and their LSEs, merged as the combine merges them (the same
    operations in the same order, split 0's term first), 16 rows at a time; rank 0 stores the LSE."""
    ML: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    LR: gl.constexpr = gl.SliceLayout(1, ML)
    CH: gl.constexpr = 16
    cols = rank * DV + gl.arange(0, DV, layout=gl.SliceLayout(0, ML))
    for c in gl.static_range(HEADS // CH):
        v0 = xlse.index(0).slice(c * CH, CH).load(LR)
        v1 = xlse.index(1).slice(c * CH, CH).load(LR)
        mine = own.slice(c * CH, CH, dim=0).load(ML)
        theirs = peer.slice(c * CH, CH, dim=0).load(ML)
        o0 = gl.where(rank == 0, mine, theirs)
        o1 = gl.where(rank == 0, theirs, mine)
        ok0 = gl.abs(v0) < 1e30
        ok1 = gl.abs(v1) < 1e30
        m = gl.maximum(gl.where(ok0, v0, float("-inf")), gl.where(ok1, v1, float("-inf")))
        lonely = m == float("-inf")
        safe_m = gl.where(lonely, 0.0, m)
        w0 = _split_weight(v0, safe_m)
        w1 = _split_weight(v1, safe_m)
        total = w0 + w1
        # From zero, a term at a time, as the combine sums (fma(w1, o1, fma(w0, o0, 0))): started from the
        # first product, ptxas fuses the other one and rounds differently (one fp32 ulp, a helper's read)
        acc = gl.zeros([CH, DV], gl.float32, layout=ML)
        acc = acc + w0[:, None] * gl.where((w0 > 0)[:, None], o0, 0.0)
        acc = acc + w1[:, None] * gl.where((w1 > 0)[:, None], o1, 0.0)
        lse, scale = _merged_lse(total, lonely, safe_m)
        heads, hm, out_rows, lse_rows, _ = _out_rows(head0 + c * CH, t, tb, ts, 0, outs, LR, CH)
        if HAS_SINK:
            scale = scale * _sink_share(lse, lonely, sink_ptr, heads, hm)
        gl.store(outs[0] + out_rows[:, None] + cols[None, :], (acc * scale[:, None]).to(gl.bfloat16),
                 mask=hm[:, None] & (cols[None, :] >= 0))
        if rank == 0:
            gl.store(outs[4] + lse_rows, lse, mask=hm)


@gluon.jit
def _dequant_group(x, scale_byte):
    """[SUB, 16] u32 (64 FP8 bytes per token) and the tokens' scale bytes -> [SUB, 32] u32 bf16x2."""
    s = (scale_byte << 7) | (scale_byte << 23)  # bf16(2^(byte-127)) twice; 255 is inf, as in the reference
    c = gl.full_like(x, 0x7B807B80)  # bf16(2^120) twice
    sb, x = gl.broadcast(s.to(gl.uint32, bitcast=True)[:, None], x)
    lo, hi = _dequant_pair(x, c, sb)
    y = gl.join(lo, hi)  # [SUB, 16, 2]: each word's two halves side by side, in column order
    return gl.reshape(y, [x.shape[0], 2 * x.shape[1]])


@gluon.jit
def _sub_ids(idx_row, s_ik, k0, hi, SUB: gl.constexpr, GATHER: gl.constexpr):
    """Slot ids of candidates [k0, k0 + SUB); -1 for those at or past ``hi``."""
    ks = k0 + gl.arange(0, SUB, layout=gl.SliceLayout(1, GATHER))
    return gl.load(idx_row + ks * s_ik, mask=ks < hi, other=-1)


@gluon.jit
def _cut_ids(idx, k0, hi, SUB: gl.constexpr, GATHER: gl.constexpr):
    """:func:`_sub_ids`' ids of candidates [k0, k0 + SUB) with those at or past ``hi`` set to -1."""
    return gl.where(k0 + gl.arange(0, SUB, layout=gl.SliceLayout(1, GATHER)) < hi, idx, -1)


@gluon.jit
def _valid(idx, n_slots):
    """Which candidates are read: id -1 (or any other negative) and ids outside the pool are not."""
    return (idx >= 0) & (idx < n_slots)


@gluon.jit
def _bias(valid):
    """The score bias WG0 adds: 0 for a valid candidate, -inf for an invalid one."""
    return gl.where(valid, 0.0, float("-inf"))


@gluon.jit
def _sub_addr(kv_ptr, stride_page, page_size, n_slots, idx, ROPE: gl.constexpr):
    """Where the candidates with slot ids ``idx`` live: (valid, 32-bit pointers to their data rows,
    the same rows in the RoPE layout, their validity there, pointers to their scale words).  An
    invalid candidate (id -1 or outside the pool) addresses slot 0, and every access to it is masked."""
    valid = _valid(idx, n_slots)
    slot = gl.where(valid, idx, 0)
    page = (slot // page_size).to(gl.int64)
    off = slot % page_size
    page_base = page * ((stride_page // 576) * 576)  # page strides are multiples of 576 B
    base = page_base + off * 576
    rows = (kv_ptr + base).to(gl.pointer_type(gl.uint32), bitcast=True)
    r_rows = gl.convert_layout(rows, gl.SliceLayout(1, ROPE))
    r_ok = gl.convert_layout(valid, gl.SliceLayout(1, ROPE))
    words = (kv_ptr + (page_base + page_size * 576 + off * 8)).to(gl.pointer_type(gl.uint32), bitcast=True)
    return valid, rows, r_rows, r_ok, words


@gluon.jit
def _gather_sub(kv_ptr, stride_page, page_size, n_slots, idx,
                SUB: gl.constexpr, GATHER: gl.constexpr, ROPE: gl.constexpr):
    """The raw bytes of the candidates with slot ids ``idx`` as 32-bit words in registers: 7 NoPE
    groups [SUB, 16] (64 bytes each), the RoPE words [SUB, 32], the two scale words, and the bias
    (0 valid, -inf invalid).  Invalid candidates load nothing (masked, zero)."""
    valid, rows, r_rows, r_ok, words = _sub_addr(kv_ptr, stride_page, page_size, n_slots, idx, ROPE)
    cols = gl.arange(0, 16, layout=gl.SliceLayout(0, GATHER))
    p = rows[:, None] + cols[None, :]
    m = valid[:, None] & (cols[None, :] >= 0)
    g0 = gl.load(p + 0 * 16, mask=m, other=0)
    g1 = gl.load(p + 1 * 16, mask=m, other=0)
    g2 = gl.load(p + 2 * 16, mask=m, other=0)
    g3 = gl.load(p + 3 * 16, mask=m, other=0)
    g4 = gl.load(p + 4 * 16, mask=m, other=0)
    g5 = gl.load(p + 5 * 16, mask=m, other=0)
    g6 = gl.load(p + 6 * 16, mask=m, other=0)
    rcols = gl.arange(0, 32, layout=gl.SliceLayout(0, ROPE))  # the RoPE words, in a dequantized group's layout
    rope = gl.load(r_rows[:, None] + 112 + rcols[None, :], mask=r_ok[:, None] & (rcols[None, :] >= 0), other=0)
    sc_lo = gl.load(words, mask=valid, other=0)
    sc_hi = gl.load(words + 1, mask=valid, other=0)
    return (g0, g1, g2, g3, g4, g5, g6, rope, sc_lo.to(gl.int32, bitcast=True), sc_hi.to(gl.int32, bitcast=True),
            _bias(valid))


@gluon.jit
def _stage_sub(kv_ptr, stride_page, page_size, n_slots, idx, st_a, st_b, st_c, st_rope, st_lo, st_hi,
               GATHER: gl.constexpr, ROPE: gl.constexpr):
    """Start copying the raw bytes of the candidates ``idx`` into the staging buffers (cp.async,
    16-byte pieces; invalid rows are zero-filled without a memory access), as one commit group.
    One buffer per piece of the row (bytes 0-255, 256-383, 384-447, RoPE, two scale words): copies
    into one buffer would each cost the partition a barrier."""
    valid, rows, r_rows, r_ok, words = _sub_addr(kv_ptr, stride_page, page_size, n_slots, idx, ROPE)
    ca = gl.arange(0, 64, layout=gl.SliceLayout(0, GATHER))
    async_copy.async_copy_global_to_shared(st_a, rows[:, None] + ca[None, :], mask=valid[:, None] & (ca[None, :] >= 0))
    cb = gl.arange(0, 32, layout=gl.SliceLayout(0, GATHER))
    async_copy.async_copy_global_to_shared(st_b, rows[:, None] + 64 + cb[None, :],
                                           mask=valid[:, None] & (cb[None, :] >= 0))
    cc = gl.arange(0, 16, layout=gl.SliceLayout(0, GATHER))
    async_copy.async_copy_global_to_shared(st_c, rows[:, None] + 96 + cc[None, :],
                                           mask=valid[:, None] & (cc[None, :] >= 0))
    rcols = gl.arange(0, 32, layout=gl.SliceLayout(0, ROPE))
    async_copy.async_copy_global_to_shared(st_rope, r_rows[:, None] + 112 + rcols[None, :],
                                           mask=r_ok[:, None] & (rcols[None, :] >= 0))
    async_copy.async_copy_global_to_shared(st_lo, words, mask=valid)
    async_copy.async_copy_global_to_shared(st_hi, words + 1, mask=valid)
    async_copy.commit_group()


@gluon.jit
def _staged(n_slots, idx, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER: gl.constexpr, ROPE: gl.constexpr):
    """A landed staged sub-block of ids ``idx`` in registers, as :func:`_gather_sub` returns it (each
    thread reads back what it copied)."""
    sc_lo = st_lo.load(gl.SliceLayout(1, GATHER))
    sc_hi = st_hi.load(gl.SliceLayout(1, GATHER))
    return (st_a.slice(0, 16, dim=1).load(GATHER), st_a.slice(16, 16, dim=1).load(GATHER),
            st_a.slice(32, 16, dim=1).load(GATHER), st_a.slice(48, 16, dim=1).load(GATHER),
            st_b.slice(0, 16, dim=1).load(GATHER), st_b.slice(16, 16, dim=1).load(GATHER), st_c.load(GATHER),
            st_rope.load(ROPE), sc_lo.to(gl.int32, bitcast=True), sc_hi.to(gl.int32, bitcast=True),
            _bias(_valid(idx, n_slots)))


@gluon.jit
def _read_stage(n_slots, idx, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER: gl.constexpr, ROPE: gl.constexpr):
    """The staged sub-block of ids ``idx`` in registers, as :func:`_gather_sub` returns it (waits for its copies)."""
    async_copy.wait_group(0)
    return _staged(n_slots, idx, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)


@gluon.jit
def _dequant_sub(raw, ROPE: gl.constexpr):
    """One gathered sub-block dequantized: its 8 column groups (7 NoPE, then RoPE) as [SUB, 32] u32
    bf16x2 words in layout ``ROPE``, and its bias."""
    g0, g1, g2, g3, g4, g5, g6, rope, sc_lo, sc_hi, bias = raw
    d0 = gl.convert_layout(_dequant_group(g0, sc_lo & 0xFF), ROPE)
    d1 = gl.convert_layout(_dequant_group(g1, (sc_lo >> 8) & 0xFF), ROPE)
    d2 = gl.convert_layout(_dequant_group(g2, (sc_lo >> 16) & 0xFF), ROPE)
    d3 = gl.convert_layout(_dequant_group(g3, (sc_lo >> 24) & 0xFF), ROPE)
    d4 = gl.convert_layout(_dequant_group(g4, sc_hi & 0xFF), ROPE)
    d5 = gl.convert_layout(_dequant_group(g5, (sc_hi >> 8) & 0xFF), ROPE)
    d6 = gl.convert_layout(_dequant_group(g6, (sc_hi >> 16) & 0xFF), ROPE)
    return d0, d1, d2, d3, d4, d5, d6, rope, bias


@gluon.jit
def _store_sub(kt, bias_ref, raw, ROPE: gl.constexpr):
    """Dequantize one gathered sub-block and store it, as one [SUB, 256] u32 tensor, into the u32
    view ``kt`` of its K tile rows (one store: each shared-memory store costs the partition a barrier)."""
    d0, d1, d2, d3, d4, d5, d6, rope, bias = _dequant_sub(raw, ROPE)
    # Groups 0..7 side by side: join adds a minor axis, so the last join is the group's top bit.
    y = gl.join(gl.join(gl.join(d0, d1), gl.join(d2, d3)), gl.join(gl.join(d4, d5), gl.join(d6, rope)))
    y = gl.reshape(gl.permute(y, (0, 4, 3, 2, 1)), [y.shape[0], 256])
    kt.store(y)
    bias_ref.store(bias)


@gluon.jit
def _scope_head(idx_row, s_ik, lo, cap, t, s_q, len_ptr, HAS_LEN: gl.constexpr, SUB: gl.constexpr,
                CROSS: gl.constexpr = False, BLOCK_N: gl.constexpr = 64):
    """A scope's first two sub-blocks of ids and its end (``cap`` cut at the row's length): the ids
    are loaded up to ``cap`` and cut at the length after, so all three loads are in flight at once.
    Loaded before the scope's turn, they wait in registers (one each a thread).  Under CROSS, this
    CTA's sub-blocks of the first two tiles (:func:`_produce_scope`)."""
    GATHER: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])
    NEXT: gl.constexpr = BLOCK_N if CROSS else SUB
    own = lo
    if CROSS:
        own = lo + _pair_rank() * SUB
    first = _sub_ids(idx_row, s_ik, own, cap, SUB, GATHER)
    second = _sub_ids(idx_row, s_ik, own + NEXT, cap, SUB, GATHER)
    hi = _cut(lo, cap, t, s_q, len_ptr, HAS_LEN)
    return first, second, hi


@gluon.jit
def _produce_scope(kv_ptr, stride_page, page_size, n_slots, idx_row, s_ik, lo, head, blk,
                   kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                   BLOCK_N: gl.constexpr, SUB: gl.constexpr, KSTAGES: gl.constexpr, STAGED: gl.constexpr,
                   CROSS: gl.constexpr = False, HALF: gl.constexpr = 0, KBUF_OFF: gl.constexpr = 0,
                   READY_OFF: gl.constexpr = 0, BIAS_OFF: gl.constexpr = 0):
    """Fill K tiles with candidates [lo, hi) of one scope (``head``: :func:`_scope_head`'s), from
    block number ``blk`` on; returns the next block number.  Unstaged, each sub-block's bytes are loaded into registers one sub-block ahead
    of its conversion; staged (BLOCK_N = 2 SUB), the first sub-block of each block comes through
    registers and the second through the staging buffers (cp.async), each loaded a whole block
    ahead: twice the bytes in flight for the same registers.

    Under CROSS (unstaged, BLOCK_N = 2 SUB) only this CTA's sub-block of every tile (rows HALF * SUB
    on, every column), stored in its own tile and sent into the peer's, bias too (9 bulk copies: the
    rows' piece of each 128-byte column block of the swizzled tile, and their bias), counted by the
    peer's ``k_ready``, which expects them.  One gather a tile where there were two: the producer's
    round trips, not its bytes, set its pace."""
    NSUB: gl.constexpr = BLOCK_N // SUB
    GATHER: gl.constexpr = gl.BlockedLayout([1, 4], [8, 4], [4, 1], [1, 0])  # 16 B per thread and load
    ROPE: gl.constexpr = gl.BlockedLayout([1, 8], [8, 4], [4, 1], [1, 0])  # a dequantized group's layout
    K32: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    MINE: gl.constexpr = 1 if CROSS else NSUB  # this CTA's sub-blocks of a tile
    STEP: gl.constexpr = BLOCK_N if CROSS else SUB  # from one of them to the next
    own = lo + HALF * SUB  # this CTA's first candidate
    first, second, hi = head  # (this CTA's first two sub-blocks)
    first = _cut_ids(first, own, hi, SUB, GATHER)
    second = _cut_ids(second, own + STEP, hi, SUB, GATHER)
    n = gl.cdiv(hi - lo, BLOCK_N)  # (under CROSS the peer's count too: both run every tile)
    if STAGED:
        regs = _gather_sub(kv_ptr, stride_page, page_size, n_slots, first, SUB, GATHER, ROPE)
        staged = second
        _stage_sub(kv_ptr, stride_page, page_size, n_slots, staged, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
        ids0 = _sub_ids(idx_row, s_ik, lo + BLOCK_N, hi, SUB, GATHER)
        ids1 = _sub_ids(idx_row, s_ik, lo + BLOCK_N + SUB, hi, SUB, GATHER)
        for i in range(n):
            ks = blk % KSTAGES
            kt = kbuf.index(ks)._reinterpret(gl.uint32, [BLOCK_N, 256], K32)
            cur = regs
            staged_next = ids1
            # Every global load of the block issued at its start (the rows of the next block's first
            # sub-block, the ids of both sub-blocks two blocks ahead): they share one scoreboard, so the
            # first use of any waits for all.  Loaded after the staged copy (until 2026-12-07), the
            # second ids added a round trip before each k_ready.
            regs = _gather_sub(kv_ptr, stride_page, page_size, n_slots, ids0, SUB, GATHER, ROPE)
            ids0 = _sub_ids(idx_row, s_ik, lo + (i + 2) * BLOCK_N, hi, SUB, GATHER)
            ids1 = _sub_ids(idx_row, s_ik, lo + (i + 2) * BLOCK_N + SUB, hi, SUB, GATHER)
            mbarrier.wait(k_empty.index(ks), ((blk // KSTAGES) & 1) ^ 1)
            _store_sub(kt.slice(0, SUB, dim=0), bias_buf.index(ks).slice(0, SUB), cur, ROPE)
            cur = _read_stage(n_slots, staged, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
            staged = staged_next
            _stage_sub(kv_ptr, stride_page, page_size, n_slots, staged, st_a, st_b, st_c, st_rope, st_lo, st_hi, GATHER, ROPE)
            _store_sub(kt.slice(SUB, SUB, dim=0), bias_buf.index(ks).slice(SUB, SUB), cur, ROPE)
            fence_async_shared()
            mbarrier.arrive(k_ready.index(ks))
            blk += 1
        async_copy.wait_group(0)  # the last (empty) copies land before the buffers are reused
    else:
        # The ids two of this CTA's sub-blocks ahead, the bytes one ahead of the conversion.
        nxt = _gather_sub(kv_ptr, stride_page, page_size, n_slots, first, SUB, GATHER, ROPE)
        ids = second
        for i in range(n):
            ks = blk % KSTAGES
            for sub in gl.static_range(MINE):  # static: shared-memory slices need constant offsets
                cur = nxt
                nxt = _gather_sub(kv_ptr, stride_page, page_size, n_slots, ids, SUB, GATHER, ROPE)
                ids = _sub_ids(idx_row, s_ik, own + i * BLOCK_N + (sub + 2) * STEP, hi, SUB, GATHER)
                if sub == 0:  # under CROSS both CTAs' consumers are done with it
                    mbarrier.wait(k_empty.index(ks), ((blk // KSTAGES) & 1) ^ 1)
                kt = kbuf.index(ks)._reinterpret(gl.uint32, [BLOCK_N, 256], K32).slice((HALF + sub) * SUB, SUB, dim=0)
                _store_sub(kt, bias_buf.index(ks).slice((HALF + sub) * SUB, SUB), cur, ROPE)
            fence_async_shared()  # (under CROSS also before the bulk copies read the stores)
            if CROSS:
                _send_rows(ks, BLOCK_N, SUB, HALF, KBUF_OFF, READY_OFF, BIAS_OFF, k_ready)
            else:
                mbarrier.arrive(k_ready.index(ks))
            blk += 1
    return blk


@gluon.jit
def _send_rows(ks, BLOCK_N: gl.constexpr, SUB: gl.constexpr, HALF: gl.constexpr, KBUF_OFF: gl.constexpr,
               READY_OFF: gl.constexpr, BIAS_OFF: gl.constexpr, k_ready):
    """CROSS: this producer's arrival on tile ``ks`` (expecting the peer's rows), and its own rows
    and bias sent into the peer's tile, once every producer thread's stores are in."""
    BLOCK_BYTES: gl.constexpr = BLOCK_N * 128  # one 128-byte column block of a tile (8 a tile)
    PIECE: gl.constexpr = SUB * 128  # this CTA's rows of one column block (whole 8-row swizzle atoms)
    gl.thread_barrier()
    mbarrier.expect(k_ready.index(ks), 8 * PIECE + 4 * SUB)  # this producer's arrival; the peer's rows to come
    for c in gl.static_range(8):
        send_to_peer(KBUF_OFF + ks * (8 * BLOCK_BYTES) + c * BLOCK_BYTES + HALF * PIECE, READY_OFF + ks * 8, PIECE)
    send_to_peer(BIAS_OFF + ks * (4 * BLOCK_N) + HALF * (4 * SUB), READY_OFF + ks * 8, 4 * SUB)


@gluon.jit
def _my_items(n_items, PERSIST: gl.constexpr, MERGE: gl.constexpr = False):
    """This program's items as range(first, last, step): p, p + P, ... on a persistent grid of P
    programs; else item p alone, or under MERGE (split 2 in clusters of two) the split p % 2 of
    pair p // 2 (items are split-slowest).  A loop of that one trip is not free (its bounds are runtime
    values): the producer runs a lone item without one (see :func:`_producer`)."""
    first = gl.program_id(0)
    if MERGE:
        first = first // 2 + (first % 2) * (n_items // 2)
    if PERSIST:
        last = n_items
        step = gl.num_programs(0)
    else:
        last = first + 1
        step = 1
    return first, last, step


@gluon.jit
def _item(item, geo, HAS_EXTRA: gl.constexpr, HB: gl.constexpr = HEADS):
    """Work item ``item`` (head block fastest, then token, then split: the head blocks of a token run
    side by side and share its K rows in L2): (first head, token, its batch row and position, split,
    the split's candidates per scope as [lo, cap) before the length cut).  ``HB`` heads a block
    (``geo``'s count of blocks is cdiv(h_q, HB))."""
    n_hb, n_tok, s_q, chunk, topk, x_topk = geo
    head0 = (item % n_hb) * HB
    rest = item // n_hb
    t = (rest % n_tok).to(gl.int64)
    split = rest // n_tok
    # The split covers [main ; extra] concatenated.
    k_start = split * chunk
    k_end = k_start + chunk
    cap = gl.maximum(gl.minimum(k_end, topk), k_start)
    x_lo = gl.maximum(k_start - topk, 0)
    x_cap = x_lo
    if HAS_EXTRA:
        x_cap = gl.maximum(gl.minimum(k_end - topk, x_topk), x_lo)
    return head0, t, t // s_q, t % s_q, split, k_start, cap, x_lo, x_cap


@gluon.jit
def _produce_item(item, blk, kv_ptr, stride_page, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik,
                  xkv_ptr, x_stride_page, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik,
                  geo, len_ptr, xlen_ptr, kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                  HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr,
                  BLOCK_N: gl.constexpr, SUB: gl.constexpr, KSTAGES: gl.constexpr, STAGED: gl.constexpr,
                  CROSS: gl.constexpr, KBUF_OFF: gl.constexpr, READY_OFF: gl.constexpr,
                  BIAS_OFF: gl.constexpr):
    """One item's K tiles, main scope then extra, from ring block ``blk`` on; returns the next.  The
    extra scope's first ids and its length are loaded with the main scope's, not after its last tile:
    its first gather then waits one round trip (the rows), not two."""
    s_q = geo[2]
    _, t, tb, ts, _, lo, cap, x_lo, x_cap = _item(item, geo, HAS_EXTRA)
    idx_row = idx_ptr + tb * s_ib + ts * s_is
    head = _scope_head(idx_row, s_ik, lo, cap, t, s_q, len_ptr, HAS_LEN, SUB, CROSS, BLOCK_N)
    if HAS_EXTRA:
        x_idx_row = xidx_ptr + tb * x_s_ib + ts * x_s_is
        x_head = _scope_head(x_idx_row, x_s_ik, x_lo, x_cap, t, s_q, xlen_ptr, X_HAS_LEN, SUB, CROSS, BLOCK_N)
    blk = _fill_scope(kv_ptr, stride_page, page_size, n_slots, idx_row, s_ik, lo, head, blk,
                      kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                      BLOCK_N, SUB, KSTAGES, STAGED, CROSS, KBUF_OFF, READY_OFF, BIAS_OFF)
    if HAS_EXTRA:
        blk = _fill_scope(xkv_ptr, x_stride_page, x_page_size, x_n_slots, x_idx_row, x_s_ik, x_lo, x_head, blk,
                          kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                          BLOCK_N, SUB, KSTAGES, STAGED, CROSS, KBUF_OFF, READY_OFF, BIAS_OFF)
    return blk


@gluon.jit
def _fill_scope(kv_ptr, stride_page, page_size, n_slots, idx_row, s_ik, lo, head, blk,
                kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                BLOCK_N: gl.constexpr, SUB: gl.constexpr, KSTAGES: gl.constexpr, STAGED: gl.constexpr,
                CROSS: gl.constexpr, KBUF_OFF: gl.constexpr, READY_OFF: gl.constexpr,
                BIAS_OFF: gl.constexpr):
    """One scope's tiles: whole, or under CROSS this CTA's rows of each (the cluster's first CTA rows
    0-31, its second rows 32-63): :func:`_produce_scope`."""
    if CROSS:
        if _pair_rank() == 0:
            blk = _produce_scope(kv_ptr, stride_page, page_size, n_slots, idx_row, s_ik, lo, head, blk,
                                 kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                                 BLOCK_N, SUB, KSTAGES, STAGED, True, 0, KBUF_OFF, READY_OFF, BIAS_OFF)
        else:
            blk = _produce_scope(kv_ptr, stride_page, page_size, n_slots, idx_row, s_ik, lo, head, blk,
                                 kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                                 BLOCK_N, SUB, KSTAGES, STAGED, True, 1, KBUF_OFF, READY_OFF, BIAS_OFF)
    else:
        blk = _produce_scope(kv_ptr, stride_page, page_size, n_slots, idx_row, s_ik, lo, head, blk,
                             kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                             BLOCK_N, SUB, KSTAGES, STAGED)
    return blk


@gluon.jit
def _producer(kv_ptr, stride_page, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik,
              xkv_ptr, x_stride_page, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik,
              geo, n_items, len_ptr, xlen_ptr, outs, q_smem, out_ready, item_slot,
              kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
              HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr,
              BLOCK_N: gl.constexpr, SUB: gl.constexpr, KSTAGES: gl.constexpr, STAGED: gl.constexpr,
              FLUSH: gl.constexpr, PERSIST: gl.constexpr, CROSS: gl.constexpr, KBUF_OFF: gl.constexpr,
              READY_OFF: gl.constexpr, BIAS_OFF: gl.constexpr, xlse, m_ready, sink_ptr, HAS_SINK: gl.constexpr,
              MERGE: gl.constexpr, RFREE_OFF: gl.constexpr):
    """Every item's K tiles through one ring: the gathers of the next item start while the consumers
    finish this one.  One item is no loop at all: a loop of one trip (its bounds are runtime values)
    still made ptxas keep loop state and spill the shared-memory base in ``STAGED``'s block loop.
    Under MERGE it then frees the K stage the peer's half lands in and merges this CTA's half."""
    _cluster_sync(CROSS, MERGE)
    first, item_end, step = _my_items(n_items, PERSIST, MERGE)
    if PERSIST:
        blk = gl.to_tensor(0)
        for item in range(first, item_end, step):
            blk = _produce_item(item, blk, kv_ptr, stride_page, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik,
                                xkv_ptr, x_stride_page, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik,
                                geo, len_ptr, xlen_ptr, kbuf, bias_buf, k_ready, k_empty,
                                st_a, st_b, st_c, st_rope, st_lo, st_hi,
                                HAS_LEN, HAS_EXTRA, X_HAS_LEN, BLOCK_N, SUB, KSTAGES, STAGED, CROSS, KBUF_OFF, READY_OFF, BIAS_OFF)
    else:
        n = _produce_item(first, gl.to_tensor(0), kv_ptr, stride_page, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik,
                          xkv_ptr, x_stride_page, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik,
                          geo, len_ptr, xlen_ptr, kbuf, bias_buf, k_ready, k_empty,
                          st_a, st_b, st_c, st_rope, st_lo, st_hi,
                          HAS_LEN, HAS_EXTRA, X_HAS_LEN, BLOCK_N, SUB, KSTAGES, STAGED, CROSS, KBUF_OFF, READY_OFF,
                          BIAS_OFF)
        if MERGE:
            rank = _pair_rank()
            _wait_free(k_empty, 1 - rank, n, KSTAGES)  # the stage the peer's half lands in
            mbarrier.expect(m_ready, HEADS * DV * 4 + HEADS * 4)  # this arrival; the peer's half and LSE to come
            arrive_on_peer(RFREE_OFF, True)  # released at cluster scope: the peer's copy overwrites what
            # this CTA's wgmma read (once an item, so the fence costs nothing that matters)
            mbarrier.wait(out_ready, 0)  # this CTA's own half (and LSE, stored before WG0's ``done``)
            mbarrier.wait(m_ready, 0)
            me, _, _ = _my_items(n_items, PERSIST, MERGE)  # (recomputed: not held over the block loop)
            head0, t, tb, ts, _, _, _, _, _ = _item(me, geo, HAS_EXTRA)
            _merge_out(_f32_half(q_smem), _f32_half(kbuf.index(1 - rank)), xlse, rank, head0, t, tb, ts, outs,
                       sink_ptr, HAS_SINK)
        if FLUSH:  # WG1's half of the output, once it is in Q's buffer
            mbarrier.wait(out_ready, 0)
            # The item as WG1 left it in shared memory: computed from ``first`` here, its values were
            # held over the block loop (an 8-B spill under STAGED, 4-10% slower at 640+ candidates).
            one: gl.constexpr = gl.BlockedLayout([1], [32], [4], [0])
            head0, t, tb, ts, split, _, _, _, _ = _item(gl.max(item_slot.load(one), axis=0), geo, HAS_EXTRA)
            _flush_half(DV, q_smem.slice(DV, DV, dim=1), head0, t, tb, ts, split, outs)
    _cluster_sync(CROSS, MERGE)


@gluon.jit
def _out_rows(head0, t, tb, ts, split, outs, ROWS: gl.constexpr, N: gl.constexpr = HEADS):
    """``N`` heads from ``head0`` in layout ``ROWS``: (heads, mask (heads below ``outs``' last entry,
    the program's end of heads), out row offsets, LSE offsets, partial rows)."""
    _, s_ob, s_os, s_oh, _, s_lb, s_lh, _, _, h_q, n_tok, h_end = outs
    heads = head0 + gl.arange(0, N, layout=ROWS)
    out_rows = tb * ((s_ob // 512) * 512) + ts * ((s_os // 512) * 512) + heads.to(gl.int64) * ((s_oh // 512) * 512)
    lse_rows = tb * s_lb + heads.to(gl.int64) * s_lh + ts
    part_rows = (split * n_tok + t) * h_q + heads
    return heads, heads < h_end, out_rows, lse_rows, part_rows


@gluon.jit
def _pv_right(geo, n_items, len_ptr, xlen_ptr, outs, q_smem, kbuf, p_smem, alpha_smem, scale_smem,
              k_ready, k_empty, p_ready, p_empty, done, scale_empty, out_ready, item_slot,
              SPLIT: gl.constexpr, FLUSH: gl.constexpr, KSTAGES: gl.constexpr, BLOCK_N: gl.constexpr,
              HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr, PERSIST: gl.constexpr,
              CROSS: gl.constexpr, EMPTY_OFF: gl.constexpr, r_free, MERGE: gl.constexpr, KBUF_OFF: gl.constexpr,
              XLSE_OFF: gl.constexpr, MREADY_OFF: gl.constexpr):
    """WG1: per item, O[:, 256:] += P V[:, 256:] per block, then its half of the output."""
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, DV, 16])
    _cluster_sync(CROSS, MERGE)
    s_q = geo[2]
    g = gl.to_tensor(0)  # K tiles consumed before this item (the ring's and P's phases run on)
    it = gl.to_tensor(0)  # items done by this program
    first, item_end, step = _my_items(n_items, PERSIST, MERGE)
    for item in range(first, item_end, step):
        head0, t, tb, ts, split, lo, cap, x_lo, x_cap = _item(item, geo, HAS_EXTRA)
        n_blocks = _n_blocks(lo, cap, x_lo, x_cap, t, s_q, len_ptr, xlen_ptr, HAS_LEN, HAS_EXTRA, X_HAS_LEN, BLOCK_N)
        o = gl.zeros([HEADS, DV], gl.float32, layout=O_L)
        for b in range(n_blocks):
            blk = g + b
            ks = blk % KSTAGES
            mbarrier.wait(k_ready.index(ks), (blk // KSTAGES) & 1)
            mbarrier.wait(p_ready, blk & 1)
            alpha = alpha_smem.load(gl.SliceLayout(1, O_L))
            o = o * alpha[:, None]
            o = warpgroup_mma(p_smem, kbuf.index(ks).slice(DV, DV, dim=1), o, is_async=True)
            o = warpgroup_mma_wait(0, deps=(o,))
            mbarrier.arrive(p_empty)
            _release(k_empty, ks, CROSS, EMPTY_OFF)
        g += n_blocks
        mbarrier.wait(done, it & 1)
        scale = scale_smem.load(gl.SliceLayout(1, O_L))
        mbarrier.arrive(scale_empty)
        if MERGE:
            _merge_half(o * scale[:, None], 1, q_smem, out_ready, kbuf, k_empty, n_blocks, r_free, KSTAGES,
                        KBUF_OFF, XLSE_OFF, MREADY_OFF)
        elif not FLUSH:  # fp32 partials, or Q's buffer busy with the next item's Q
            _store_half(o * scale[:, None], DV, head0, t, tb, ts, split, outs, SPLIT, O_L)
        else:  # into Q's right half (WG0 waited on every QK^T before ``done``); the producer stores it:
            # here the row offsets' registers beside the accumulator's 128 spilled at WG1's 160
            q_smem.slice(DV, DV, dim=1).store((o * scale[:, None]).to(gl.bfloat16))
            item_slot.store(gl.full([1], item, gl.int32, layout=gl.BlockedLayout([1], [32], [4], [0])))
            mbarrier.arrive(out_ready)  # one thread's release after a partition barrier (Triton 3.6's
            # lowering): every thread's stores above are in when the producer's wait returns
        it += 1
    _cluster_sync(CROSS, MERGE)


@gluon.jit
def _sink_of(sink_ptr, heads, hm, HAS_SINK: gl.constexpr, SPLIT: gl.constexpr):
    """The sinks of ``heads`` where the final output takes them (HAS_SINK, unsplit), else -inf."""
    if HAS_SINK and not SPLIT:
        return gl.load(sink_ptr + heads, mask=hm, other=float("-inf"))
    return gl.full(heads.shape, float("-inf"), gl.float32, layout=heads.type.layout)


@gluon.jit
def _lse_and_scale(m_i, l_i, sink, HAS_SINK: gl.constexpr, SPLIT: gl.constexpr):
    """The epilogue of the contract (attention_core.store_result) for rows of running max ``m_i``
    and sum ``l_i``: (LSE without the sink, the factor O's accumulator is scaled by).  Split: the
    partial's 1 / l; final: 1 / (l + exp(sink - m)); a lonely row: LSE +inf and factor 0."""
    lonely = l_i == 0.0
    safe_m = gl.where(lonely, 0.0, m_i)
    l_safe = gl.where(lonely, 1.0, l_i)
    lse = gl.where(lonely, float("inf"), (safe_m + gl.log2(l_safe)) * 0.6931471805599453)
    if SPLIT:
        scale = gl.where(lonely, 0.0, 1.0 / l_safe)
    else:
        denom = l_i
        if HAS_SINK:
            denom = l_i + gl.exp2(gl.where(lonely, float("-inf"), sink * 1.4426950408889634 - safe_m))
        scale = gl.where(lonely, 0.0, 1.0 / gl.where(lonely, 1.0, denom))
    return lse, scale


@gluon.jit
def _store_lse(lse, lse_rows, part_rows, outs, mask, SPLIT: gl.constexpr):
    """The item's LSE: into the split's partial LSE, or the final one (offsets from :func:`_out_rows`)."""
    if SPLIT:
        gl.store(outs[8] + part_rows, lse, mask=mask)
    else:
        gl.store(outs[4] + lse_rows, lse, mask=mask)


@gluon.jit
def _store_half(o, C0, head0, t, tb, ts, split, outs, SPLIT: gl.constexpr, O_L: gl.constexpr):
    """Columns [C0, C0 + 256) of the item's output rows from the accumulator ``o`` (layout ``O_L``):
    fp32 partial or bf16 final.  In the wgmma layout a thread holds 2 adjacent columns: 8-byte
    stores of fp32 partials (converted, they spilled 256 B under Triton 3.6), but 4-byte stores of
    bf16 (64 a thread), so the final output is converted first (a 2-KiB scratch and ``ldmatrix``)
    to 8 adjacent columns a thread: 16-byte stores, 64 contiguous bytes a row and warp instruction."""
    if SPLIT:
        _, hmask, _, _, part_rows = _out_rows(head0, t, tb, ts, split, outs, gl.SliceLayout(1, O_L))
        cols = C0 + gl.arange(0, DV, layout=gl.SliceLayout(0, O_L))
        mask = hmask[:, None] & (cols[None, :] >= 0)
        gl.store(outs[7] + part_rows[:, None].to(gl.int64) * 512 + cols[None, :], o, mask=mask)
    else:
        W_L: gl.constexpr = gl.DistributedLinearLayout(  # the wgmma layout's rows per warp, 8 columns a thread
            reg_bases=[[0, 1], [0, 2], [0, 4], [8, 0], [0, 32], [0, 64], [0, 128]],
            lane_bases=[[0, 8], [0, 16], [1, 0], [2, 0], [4, 0]],
            warp_bases=[[16, 0], [32, 0]], block_bases=[], shape=[HEADS, DV])
        _, hmask, out_rows, _, _ = _out_rows(head0, t, tb, ts, split, outs, gl.SliceLayout(1, W_L))
        cols = C0 + gl.arange(0, DV, layout=gl.SliceLayout(0, W_L))
        mask = hmask[:, None] & (cols[None, :] >= 0)
        gl.store(outs[0] + out_rows[:, None] + cols[None, :], gl.convert_layout(o.to(gl.bfloat16), W_L), mask=mask)


@gluon.jit
def _flush_half(C0: gl.constexpr, stage, head0, t, tb, ts, split, outs):
    """Columns [C0, C0 + 256) of the item's final (bf16) output from ``stage`` (a [64, 256] shared
    view the accumulator was written to): read back 16 bytes a thread, stored one 512-byte row a warp
    and instruction (the accumulator's own layout stores 4 bytes a thread: 64 stores a thread, two
    rows' halves of a sector each), 16 rows at a time so that a chunk's 16 registers and 4 row
    offsets are all it holds."""
    ST_L: gl.constexpr = gl.BlockedLayout([1, 8], [1, 32], [4, 1], [1, 0])
    CH: gl.constexpr = 16
    cols = C0 + gl.arange(0, DV, layout=gl.SliceLayout(0, ST_L))
    for c in gl.static_range(HEADS // CH):
        y = stage.slice(c * CH, CH, dim=0).load(ST_L)
        _, hmask, out_rows, _, _ = _out_rows(head0 + c * CH, t, tb, ts, split, outs, gl.SliceLayout(1, ST_L), CH)
        gl.store(outs[0] + out_rows[:, None] + cols[None, :], y, mask=hmask[:, None] & (cols[None, :] >= 0))


@gluon.jit
def _softmax_block(s, bias, m_i, l_i, qk_scale):
    """One online-softmax step over a block of scores: (P as bf16, the rescale factor, new max, new sum)."""
    s = s * qk_scale + bias[None, :]
    m_new = gl.maximum(m_i, gl.max(s, axis=1))
    alpha = gl.exp2(m_i - m_new)
    p = gl.exp2(s - m_new[:, None])
    return p.to(gl.bfloat16), alpha, m_new, l_i * alpha + gl.sum(p, axis=1)


@gluon.jit
def _q_at(q3, blk):
    """Q's tile as the block loop's QK^T reads it: ``q3.index(blk >> 30)``, always index 0, but not a
    constant to the compiler.  With a constant, LLVM hoists the 32 k-steps' wgmma descriptors out of
    the loop, where they hold uniform and then ordinary registers for the whole loop: in a kernel
    where two partitions do that (the seesaw), both spill hundreds of bytes."""
    return q3.index(blk >> 30)


@gluon.jit
def _qk(q_smem, kt, BLOCK_N: gl.constexpr, S_L: gl.constexpr):
    """Start S = Q K^T of one K tile (async: wait with warpgroup_mma_wait)."""
    s = gl.zeros([HEADS, BLOCK_N], gl.float32, layout=S_L)
    return warpgroup_mma(q_smem, kt.permute((1, 0)), s, use_acc=False, is_async=True)


@gluon.jit
def _pv_left(o, alpha, pb, kt, O_L: gl.constexpr, P_L: gl.constexpr):
    """Rescale O[:, :256] by ``alpha`` and start O += P V[:, :256] with P from registers (async)."""
    o = o * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
    return warpgroup_mma(gl.convert_layout(pb, P_L), kt.slice(0, DV, dim=1), o, is_async=True)


@gluon.jit
def _hand_p(pb, alpha, p_smem, alpha_smem, p_ready, p_empty, blk):
    """Give block ``blk``'s P and rescale factor to WG1 (once it is done with the previous block's)."""
    mbarrier.wait(p_empty, (blk & 1) ^ 1)
    p_smem.store(pb)
    alpha_smem.store(alpha)
    fence_async_shared()
    mbarrier.arrive(p_ready)


@gluon.jit
def _load_q(q_ptr, q_smem, head0, tb, ts, h_q, s_qb, s_qs, s_qh):
    """An item's Q rows into shared memory (rows past h_q zero, never stored): the whole [64, 512]
    tile as one cp.async copy (one round trip, and no barrier between pieces), while the producer
    gathers (wait with :func:`_q_landed`)."""
    QLD: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [4, 1], [1, 0])
    qr = gl.arange(0, HEADS, layout=gl.SliceLayout(1, QLD))
    qc = gl.arange(0, 512, layout=gl.SliceLayout(0, QLD))
    q_rows = tb * ((s_qb // 8) * 8) + ts * ((s_qs // 8) * 8) + (head0 + qr).to(gl.int64) * ((s_qh // 8) * 8)
    q_ok = ((head0 + qr)[:, None] < h_q) & (qc[None, :] >= 0)
    async_copy.async_copy_global_to_shared(q_smem, q_ptr + q_rows[:, None] + qc[None, :], mask=q_ok)
    async_copy.commit_group()


@gluon.jit
def _q_landed():
    """Wait for :func:`_load_q`'s copies: every thread's rows are in before any wgmma reads the tile."""
    async_copy.wait_group(0)
    fence_async_shared()
    gl.thread_barrier()


@gluon.jit
def _next_q(item, step, item_end, geo, q_ptr, q_smem, h_q, s_qb, s_qs, s_qh, HAS_EXTRA: gl.constexpr):
    """A persistent program's next item's Q, into Q's buffer once this item's last QK^T is done and
    its P handed to WG1 (issued under the last PV and the epilogue, not in front of WG1's last P);
    every WG0 thread's wgmma on Q is done first."""
    if item + step < item_end:
        gl.thread_barrier()
        at = _item(item + step, geo, HAS_EXTRA)
        _load_q(q_ptr, q_smem, at[0], at[2], at[3], h_q, s_qb, s_qs, s_qh)


@gluon.jit
def _softmax_pv_left(geo, n_items, len_ptr, xlen_ptr, outs, qk_scale, q_ptr, s_qb, s_qs, s_qh, sink_ptr,
                     q3, q_smem, kbuf, bias_buf, p_smem, alpha_smem, scale_smem,
                     k_ready, k_empty, p_ready, p_empty, done, scale_empty,
                     HAS_SINK: gl.constexpr, SPLIT: gl.constexpr, BLOCK_N: gl.constexpr, KSTAGES: gl.constexpr,
                     PIPE: gl.constexpr, HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr,
                     PERSIST: gl.constexpr, FLUSH: gl.constexpr, CROSS: gl.constexpr, EMPTY_OFF: gl.constexpr,
                     xlse, r_free, out_ready, MERGE: gl.constexpr, KBUF_OFF: gl.constexpr, XLSE_OFF: gl.constexpr,
                     MREADY_OFF: gl.constexpr):
    """WG0, per item: S = Q K^T, the online softmax, O[:, :256] += P V[:, :256]; then LSE, the output
    scale (for WG1 too) and its half of the output.  The next item's Q is loaded during the epilogue."""
    S_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                  instr_shape=[16, BLOCK_N, 16])
    O_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1], instr_shape=[16, DV, 16])
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=O_L, k_width=2)
    s_q = geo[2]
    h_q = outs[9]
    _cluster_sync(CROSS, MERGE)
    first, item_end, step = _my_items(n_items, PERSIST, MERGE)
    g = gl.to_tensor(0)  # K tiles consumed before this item (the ring's and P's phases run on)
    it = gl.to_tensor(0)  # items done by this program
    at = _item(first, geo, HAS_EXTRA)  # the grid is never larger than the items
    _load_q(q_ptr, q_smem, at[0], at[2], at[3], h_q, s_qb, s_qs, s_qh)
    for item in range(first, item_end, step):
        head0, t, tb, ts, split, lo, cap, x_lo, x_cap = _item(item, geo, HAS_EXTRA)
        n_blocks = _n_blocks(lo, cap, x_lo, x_cap, t, s_q, len_ptr, xlen_ptr, HAS_LEN, HAS_EXTRA, X_HAS_LEN, BLOCK_N)
        _q_landed()
        m_i = gl.full([HEADS], -1.0e30, gl.float32, layout=gl.SliceLayout(1, S_L))  # finite: no inf - inf
        l_i = gl.zeros([HEADS], gl.float32, layout=gl.SliceLayout(1, S_L))
        o = gl.zeros([HEADS, DV], gl.float32, layout=O_L)
        if PIPE:
            # Software-pipelined: block b's QK^T is issued before block b-1's PV, and the softmax of b
            # runs while the tensor cores do that PV.  Peeled: block 0's softmax, then b = 1.., then the last PV.
            if n_blocks > 0:
                ks = g % KSTAGES
                mbarrier.wait(k_ready.index(ks), (g // KSTAGES) & 1)
                s = _qk(_q_at(q3, g), kbuf.index(ks), BLOCK_N, S_L)
                s = warpgroup_mma_wait(0, deps=(s,))
                bias = bias_buf.index(ks).load(gl.SliceLayout(0, S_L))
                pb, alpha, m_i, l_i = _softmax_block(s, bias, m_i, l_i, qk_scale)
                _hand_p(pb, alpha, p_smem, alpha_smem, p_ready, p_empty, g)
                if PERSIST:  # noqa: SIM102 (a constexpr if: no code at all without PERSIST)
                    if n_blocks == 1:
                        _next_q(item, step, item_end, geo, q_ptr, q_smem, h_q, s_qb, s_qs, s_qh, HAS_EXTRA)
                for b in range(1, n_blocks):
                    blk = g + b
                    ks = blk % KSTAGES
                    prev = (blk - 1) % KSTAGES
                    mbarrier.wait(k_ready.index(ks), (blk // KSTAGES) & 1)
                    s = _qk(_q_at(q3, blk), kbuf.index(ks), BLOCK_N, S_L)
                    # A register a non-wgmma instruction writes while an async wgmma reads it makes
                    # ptxas serialize every wgmma (C7513): P's registers stay live (deps) until its
                    # PV is done, so the next softmax cannot reuse them.
                    pa = gl.convert_layout(pb, P_L)
                    o = warpgroup_mma(pa, kbuf.index(prev).slice(0, DV, dim=1), o, is_async=True)
                    s = warpgroup_mma_wait(1, deps=(s,))
                    bias = bias_buf.index(ks).load(gl.SliceLayout(0, S_L))
                    pb, alpha, m_i, l_i = _softmax_block(s, bias, m_i, l_i, qk_scale)
                    _hand_p(pb, alpha, p_smem, alpha_smem, p_ready, p_empty, blk)
                    if PERSIST:  # noqa: SIM102 (a constexpr if: no code at all without PERSIST)
                        if b == n_blocks - 1:
                            _next_q(item, step, item_end, geo, q_ptr, q_smem, h_q, s_qb, s_qs, s_qh, HAS_EXTRA)
                    o, pa = warpgroup_mma_wait(0, deps=(o, pa))
                    _release(k_empty, prev, CROSS, EMPTY_OFF)
                    # O rescaled for this block's PV (issued next trip) here, where WG0 waits for the next
                    # tile anyway: written before QK^T's issue, ptxas slotted the 128 multiplies among its
                    # k-steps and QK^T finished ~120 cycles later; block 0's zero O is not rescaled at all.
                    o = o * gl.convert_layout(alpha, gl.SliceLayout(1, O_L))[:, None]
                ks_last = (g + n_blocks - 1) % KSTAGES
                o = warpgroup_mma(gl.convert_layout(pb, P_L), kbuf.index(ks_last).slice(0, DV, dim=1), o, is_async=True)
                o = warpgroup_mma_wait(0, deps=(o,))
                _release(k_empty, ks_last, CROSS, EMPTY_OFF)
        else:
            for b in range(n_blocks):
                blk = g + b
                ks = blk % KSTAGES
                mbarrier.wait(k_ready.index(ks), (blk // KSTAGES) & 1)
                kt = kbuf.index(ks)
                s = _qk(_q_at(q3, blk), kt, BLOCK_N, S_L)
                bias = bias_buf.index(ks).load(gl.SliceLayout(0, S_L))
                s = warpgroup_mma_wait(0, deps=(s,))
                pb, alpha, m_i, l_i = _softmax_block(s, bias, m_i, l_i, qk_scale)
                _hand_p(pb, alpha, p_smem, alpha_smem, p_ready, p_empty, blk)
                o = _pv_left(o, alpha, pb, kt, O_L, P_L)
                if PERSIST:  # noqa: SIM102 (a constexpr if: no code at all without PERSIST)
                    if b == n_blocks - 1:  # Q is free (every QK^T done): under the last PV
                        _next_q(item, step, item_end, geo, q_ptr, q_smem, h_q, s_qb, s_qs, s_qh, HAS_EXTRA)
                o = warpgroup_mma_wait(0, deps=(o,))
                _release(k_empty, ks, CROSS, EMPTY_OFF)
        g += n_blocks
        if PERSIST:  # noqa: SIM102 (a constexpr if: no code at all without PERSIST)
            if n_blocks == 0:  # no QK^T read this item's Q: the next one's comes in now
                _next_q(item, step, item_end, geo, q_ptr, q_smem, h_q, s_qb, s_qs, s_qh, HAS_EXTRA)
        heads, hm, _, lse_rows, part_rows = _out_rows(head0, t, tb, ts, split, outs, gl.SliceLayout(1, S_L))
        lse, scale = _lse_and_scale(m_i, l_i, _sink_of(sink_ptr, heads, hm, HAS_SINK, SPLIT), HAS_SINK, SPLIT)
        mbarrier.wait(scale_empty, (it & 1) ^ 1)  # WG1 has read the last item's
        scale_smem.store(scale)
        if MERGE:  # this split's LSE, for this CTA's merge and the peer's (sent with a half of O)
            xlse.index(_pair_rank()).store(lse)
            fence_async_shared()
        mbarrier.arrive(done)  # WG1's half waits on this: the LSE is stored after
        if not MERGE:
            _store_lse(lse, lse_rows, part_rows, outs, hm, SPLIT)
        o = o * gl.convert_layout(scale, gl.SliceLayout(1, O_L))[:, None]
        if MERGE:
            _merge_half(o, 0, q_smem, out_ready, kbuf, k_empty, n_blocks, r_free, KSTAGES, KBUF_OFF, XLSE_OFF,
                        MREADY_OFF)
        elif not FLUSH or PIPE:  # fp32 partials or Q's buffer busy with the next item's Q (see FLUSH); PIPE's registers
            _store_half(o, 0, head0, t, tb, ts, split, outs, SPLIT, O_L)
        else:  # through Q's left half (every wgmma of the item is done)
            stage = q_smem.slice(0, DV, dim=1)
            stage.store(o.to(gl.bfloat16))
            gl.thread_barrier()
            _flush_half(0, stage, head0, t, tb, ts, split, outs)
        it += 1
    _cluster_sync(CROSS, MERGE)


@gluon.jit
def _cut(lo, cap, t, s_q, len_ptr, HAS_LEN: gl.constexpr):
    """The end of [lo, cap) cut at the row's topk_length (its batch row is t // s_q), never below
    ``lo``.  Each partition loads the length itself, after its own first loads are under way: none
    waits for a round trip before the others start."""
    hi = cap
    if HAS_LEN:
        hi = gl.minimum(hi, gl.load(len_ptr + t // s_q))
    return gl.maximum(hi, lo)


@gluon.jit
def _n_blocks(lo, cap, x_lo, x_cap, t, s_q, len_ptr, xlen_ptr, HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr,
              X_HAS_LEN: gl.constexpr, BLOCK_N: gl.constexpr):
    """How many K tiles the producer fills: each scope's candidates in blocks of BLOCK_N."""
    n = gl.cdiv(_cut(lo, cap, t, s_q, len_ptr, HAS_LEN) - lo, BLOCK_N)
    if HAS_EXTRA:
        n += gl.cdiv(_cut(x_lo, x_cap, t, s_q, xlen_ptr, X_HAS_LEN) - x_lo, BLOCK_N)
    return n


@kernel(jit=gluon.jit)
def _ws_decode_kernel(
    q_ptr, s_qb, s_qs, s_qh,
    kv_ptr, stride_page, stride_page_h, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik, len_ptr, topk,
    xkv_ptr, x_stride_page, x_stride_page_h, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik, xlen_ptr,
    x_topk,
    sink_ptr, out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr,
    n_tok, s_q, h_q, qk_scale, chunk, n_items,
    HAS_LEN: gl.constexpr, HAS_EXTRA: gl.constexpr, X_HAS_LEN: gl.constexpr, HAS_SINK: gl.constexpr,
    SPLIT: gl.constexpr, BLOCK_N: gl.constexpr, SUB: gl.constexpr, KSTAGES: gl.constexpr, STAGED: gl.constexpr,
    PIPE: gl.constexpr, PERSIST: gl.constexpr, PDL: gl.constexpr = False, CROSS: gl.constexpr = False,
    KBUF_OFF: gl.constexpr = 0, READY_OFF: gl.constexpr = 0, EMPTY_OFF: gl.constexpr = 0,
    BIAS_OFF: gl.constexpr = 0, WAIT: gl.constexpr = False, MERGE: gl.constexpr = False,
    XLSE_OFF: gl.constexpr = 0, MREADY_OFF: gl.constexpr = 0, RFREE_OFF: gl.constexpr = 0,
):
    """Program p does items p, p + P, p + 2P, ... of the (head block, token, split) items, where P is
    the grid: one item each on a full grid, a loop on a persistent one.  ``WAIT``: launched as the
    programmatic dependent of the kernel before it (``_wait_primary`` first).  ``MERGE`` (split 2,
    clusters of two): the two splits of an item merge over DSMEM, each CTA finalizing one half of the
    columns (no partials in global memory, no combine); ``*_OFF``: where the inline PTX finds things."""
    if PDL:  # the combine launches now and waits (griddepcontrol.wait) for every partial
        _launch_dependents()
    if WAIT:  # after the trigger: the combine, which waits for this whole kernel, launches sooner
        _wait_primary()
    D: gl.constexpr = 512
    K_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    VEC_SL: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    kbuf = gl.allocate_shared_memory(gl.bfloat16, [KSTAGES, BLOCK_N, D], K_SL)
    bias_buf = gl.allocate_shared_memory(gl.float32, [KSTAGES, BLOCK_N], VEC_SL)
    q3 = gl.allocate_shared_memory(gl.bfloat16, [1, HEADS, D], K_SL)  # see _q_at
    q_smem = q3.index(0)
    P_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=min(128, 2 * BLOCK_N), element_bitwidth=16, rank=2)
    p_smem = gl.allocate_shared_memory(gl.bfloat16, [HEADS, BLOCK_N], P_SL)
    alpha_smem = gl.allocate_shared_memory(gl.float32, [HEADS], VEC_SL)
    scale_smem = gl.allocate_shared_memory(gl.float32, [HEADS], VEC_SL)
    k_ready = gl.allocate_shared_memory(gl.int64, [KSTAGES, 1], mbarrier.MBarrierLayout())
    k_empty = gl.allocate_shared_memory(gl.int64, [KSTAGES, 1], mbarrier.MBarrierLayout())
    p_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    p_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    scale_empty = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    out_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    item_slot = gl.allocate_shared_memory(gl.int32, [1], VEC_SL)  # WG1's item, for the producer's store
    if MERGE:  # both splits' LSEs (slot = split), the peer's half and LSE landed, the peer's landing stage free
        xlse = gl.allocate_shared_memory(gl.float32, [2, HEADS], VEC_SL)  # (a view's layout: 1-D)
        m_ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
        r_free = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    else:  # never used: no shared memory of their own
        xlse = scale_smem
        m_ready = out_ready
        r_free = out_ready
    # The producer's staging buffers (raw bytes of one sub-block; a token where unstaged).
    ST_ROWS: gl.constexpr = SUB if STAGED else 1
    PLAIN: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    st_a = gl.allocate_shared_memory(gl.uint32, [ST_ROWS, 64], PLAIN)
    st_b = gl.allocate_shared_memory(gl.uint32, [ST_ROWS, 32], PLAIN)
    st_c = gl.allocate_shared_memory(gl.uint32, [ST_ROWS, 16], PLAIN)
    st_rope = gl.allocate_shared_memory(gl.uint32, [ST_ROWS, 32], PLAIN)
    st_lo = gl.allocate_shared_memory(gl.uint32, [ST_ROWS], VEC_SL)
    st_hi = gl.allocate_shared_memory(gl.uint32, [ST_ROWS], VEC_SL)
    for i in gl.static_range(KSTAGES):
        mbarrier.init(k_ready.index(i), count=1)  # the producer, once per block
        if CROSS:  # WG0 and WG1 of both CTAs (the peer's producer writes into this tile too)
            mbarrier.init(k_empty.index(i), count=4)
        else:  # WG0 and WG1, once per block each
            mbarrier.init(k_empty.index(i), count=2)
    mbarrier.init(p_ready, count=1)
    mbarrier.init(p_empty, count=1)
    mbarrier.init(done, count=1)  # WG0, once per item: the output scale is in scale_smem
    mbarrier.init(scale_empty, count=1)  # WG1, once per item: it has read the scale
    mbarrier.init(out_ready, count=1)  # WG1, once (a lone final item; MERGE: the keeping warpgroup)
    if MERGE:
        mbarrier.init(m_ready, count=1)  # this CTA's producer (expecting the peer's bytes)
        mbarrier.init(r_free, count=1)  # the peer's producer
    if CROSS or MERGE:  # the inits, released to the cluster (the partitions' first cluster barrier acquires them)
        init_fence()
    fence_async_shared()  # the barrier inits, seen by every partition
    gl.thread_barrier()

    geo = (gl.cdiv(h_q, HEADS), n_tok, s_q, chunk, topk, x_topk)  # what _item reads an item from
    # A lone final item's output goes through Q's buffer: WG1's half through its right half and the
    # producer (one condition for both sides: the producer waits on an ``out_ready`` only WG1 arrives
    # on), WG0's through its left half unless PIPE (whose WG0 lacks the registers for the read-back).
    FLUSH: gl.constexpr = not SPLIT and not PERSIST
    outs = (out_ptr, s_ob, s_os, s_oh, lse_ptr, s_lb, s_lh, part_o_ptr, part_lse_ptr, h_q, n_tok, h_q)
    gl.warp_specialize([
        (_softmax_pv_left, (geo, n_items, len_ptr, xlen_ptr, outs, qk_scale, q_ptr, s_qb, s_qs, s_qh, sink_ptr,
                            q3, q_smem, kbuf, bias_buf, p_smem, alpha_smem, scale_smem,
                            k_ready, k_empty, p_ready, p_empty, done, scale_empty,
                            HAS_SINK, SPLIT, BLOCK_N, KSTAGES, PIPE, HAS_LEN, HAS_EXTRA, X_HAS_LEN, PERSIST, FLUSH,
                            CROSS, EMPTY_OFF, xlse, r_free, out_ready, MERGE, KBUF_OFF, XLSE_OFF, MREADY_OFF)),
        (_pv_right, (geo, n_items, len_ptr, xlen_ptr, outs, q_smem, kbuf, p_smem, alpha_smem, scale_smem,
                     k_ready, k_empty, p_ready, p_empty, done, scale_empty, out_ready, item_slot,
                     SPLIT, FLUSH, KSTAGES, BLOCK_N, HAS_LEN, HAS_EXTRA, X_HAS_LEN, PERSIST, CROSS, EMPTY_OFF,
                     r_free, MERGE, KBUF_OFF, XLSE_OFF, MREADY_OFF)),
        (_producer, (kv_ptr, stride_page, page_size, n_slots, idx_ptr, s_ib, s_is, s_ik,
                     xkv_ptr, x_stride_page, x_page_size, x_n_slots, xidx_ptr, x_s_ib, x_s_is, x_s_ik,
                     geo, n_items, len_ptr, xlen_ptr, outs, q_smem, out_ready, item_slot,
                     kbuf, bias_buf, k_ready, k_empty, st_a, st_b, st_c, st_rope, st_lo, st_hi,
                     HAS_LEN, HAS_EXTRA, X_HAS_LEN, BLOCK_N, SUB, KSTAGES, STAGED, FLUSH, PERSIST, CROSS, KBUF_OFF,
                     READY_OFF, BIAS_OFF, xlse, m_ready, sink_ptr, HAS_SINK, MERGE, RFREE_OFF)),
    ], [4, 4], [WG1_REGS, PRODUCER_REGS])


_launch = Launcher(_ws_decode_kernel)


@functools.cache
def _multiprocessors(device: int) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def launch_ws_decode(
    q: torch.Tensor,
    main: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None],
    extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None,
    attn_sink: torch.Tensor | None,
    sm_scale: float,
    out: torch.Tensor,
    lse: torch.Tensor,
    partial: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    split_k: int,
    BLOCK_N: int,
    SUB: int,
    KSTAGES: int,
    STAGED: int,
    PIPE: int,
    PERSIST: int,
    maxnreg: int,
    pdl: bool = False,
    solo: Launcher | None = None,
    CROSS: int = 0,
    wait: bool = False,
    solo_heads: int = 64,
    MERGE: int = 0,
) -> None:
    """Launch the warp-specialized kernel (inputs already checked; e4m3fn pools): one program per
    (64 heads, token, split) item, or with ``PERSIST`` one per SM looping over them; given ``solo``
    (:func:`dsv4_tune.kernels.sm90.solo.solo_launcher`), the one-warpgroup kernel instead: two
    programs an item, KSTAGES, STAGED, PIPE, PERSIST and ``maxnreg`` unused.  ``partial`` as
    in :func:`~dsv4_tune.kernels.fused_attention.launch_sparse_decode`: with ``split_k > 1`` the
    combine kernel writes ``out`` / ``lse`` afterwards; ``pdl``: that combine is launched as a programmatic
    dependent of this kernel (:func:`~dsv4_tune.kernels.combine.launch_combine` with ``pdl``), which
    then lets it launch as it starts.  ``CROSS`` (h_q a multiple of 128, unstaged, BLOCK_N = 2 SUB): the
    two items of a token's two head blocks run as one cluster of two CTAs, each converting one
    sub-block of every K tile for both (:mod:`dsv4_tune.runtime.cluster`).  ``wait``: this kernel is
    launched as a programmatic dependent of the kernel before it (whatever that is), and waits for
    it before its first global access: its launch overlaps that kernel's end.  ``solo_heads`` (64 or
    32): the query heads of one of ``solo``'s programs (32: half of Q's bytes a program, twice the
    programs).  ``MERGE`` (no ``pdl``, no ``partial``): an item's splits as one cluster merging over
    DSMEM (no combine): the warp-specialized kernel's two (split_k 2, BLOCK_N 64, KSTAGES 2, no PIPE,
    PERSIST or CROSS), or ``solo``'s split_k (:data:`~dsv4_tune.registry.launches.WS_SOLO_MERGE_SPLITS`)
    of each output half."""
    b, s_q, h_q, _ = q.shape
    n_tok = b * s_q
    n_items = cdiv(h_q, HEADS.value) * n_tok * split_k
    total = main[1].shape[2] + (extra[1].shape[2] if extra is not None else 0)
    args = (*scopes_args(q, main, extra), *epilogue_args(attn_sink, out, lse, partial),
            n_tok, s_q, h_q, sm_scale * LOG2E, split_chunk(total, split_k, BLOCK_N))
    flags = (*scope_flags(main, extra, attn_sink), split_k > 1, BLOCK_N, SUB)
    if solo is not None:
        if CROSS:
            raise ValueError("CROSS=1 is a mode of the warp-specialized kernel, not of SOLO's")
        if solo_heads not in (32, HEADS.value):
            raise ValueError(f"solo_heads={solo_heads} not in (32, {HEADS.value})")
        grid = (2 * cdiv(h_q, solo_heads) * n_tok * split_k, 1, 1)
        if MERGE:  # (the registry's rule too) else wrong, or a hang
            if split_k not in WS_SOLO_MERGE_SPLITS or pdl or partial is not None:
                raise ValueError(f"MERGE=1 with SOLO needs split_k in {WS_SOLO_MERGE_SPLITS}, no pdl and no partial "
                                 f"buffers, not split_k={split_k}, pdl={pdl}")
            _solo_merge(solo, grid, args, flags, wait, solo_heads, split_k)
            return
        solo(grid, *args, *flags, pdl, wait, solo_heads, num_warps=4, num_stages=1, launch_pdl=wait)
        return
    programs = min(n_items, _multiprocessors(q.device.index)) if PERSIST else n_items
    knobs = (*flags, KSTAGES, bool(STAGED), bool(PIPE), bool(PERSIST), pdl)
    if MERGE:
        if (split_k, BLOCK_N, KSTAGES, PIPE, PERSIST, CROSS, pdl, partial) != (2, 2 * SUB, 2, 0, 0, 0, False, None):
            raise ValueError(f"MERGE=1 needs split_k=2, BLOCK_N={2 * SUB}, KSTAGES=2, PIPE=0, PERSIST=0, CROSS=0, no "
                             f"pdl and no partial buffers, not split_k={split_k}, BLOCK_N={BLOCK_N}, KSTAGES={KSTAGES}, "
                             f"PIPE={PIPE}, PERSIST={PERSIST}, CROSS={CROSS}, pdl={pdl}")
        (kbuf, xlse, m_ready, r_free), _ = _cluster_offsets(knobs, maxnreg, (n_items, 1, 1), args, n_items, True)
        _launch((n_items, 1, 1), *args, n_items, *knobs, False, kbuf, 0, 0, 0, wait, True, xlse, m_ready, r_free,
                num_warps=4, num_stages=1, maxnreg=maxnreg, cluster=2, launch_pdl=wait)
        return
    if not CROSS:
        _launch((programs, 1, 1), *args, n_items, *knobs, False, 0, 0, 0, 0, wait, num_warps=4, num_stages=1,
                maxnreg=maxnreg, launch_pdl=wait)
        return
    if h_q % 128 or STAGED or BLOCK_N != 2 * SUB:  # (the registry's rule too) else wrong, or a hang
        raise ValueError(f"CROSS=1 needs h_q a multiple of 128, STAGED=0 and BLOCK_N={2 * SUB}, not h_q={h_q}, "
                         f"STAGED={STAGED}, BLOCK_N={BLOCK_N}")
    offsets, clusters = _cluster_offsets(knobs, maxnreg, (programs, 1, 1), args, n_items, False)
    if PERSIST and clusters:  # no more clusters than fit at once: a persistent grid has no second wave
        programs = min(programs, 2 * clusters)
    programs -= programs % 2  # whole clusters, each a token's two head blocks (items 2i and 2i + 1)
    _launch((programs, 1, 1), *args, n_items, *knobs, True, *offsets, wait, num_warps=4, num_stages=1,
            maxnreg=maxnreg, cluster=2, launch_pdl=wait)


_CLUSTER_OFFSETS: dict[tuple, tuple[tuple[int, ...], int | None]] = {}


def _cluster_offsets(knobs: tuple, maxnreg: int, grid: tuple[int, int, int], args: tuple, n_items: int, merge: bool
                     ) -> tuple[tuple[int, ...], int | None]:
    """Where the inline PTX of CROSS (``merge`` False) finds the K tiles, ``k_ready``, ``k_empty`` and
    the bias in shared memory, or MERGE's the K tiles, both splits' LSEs, ``m_ready`` and ``r_free``,
    and how many of its clusters fit on the GPU at once (:func:`_offsets_of`)."""
    mode = (False, 0, 0, 0, 0, False, True, 0, 0, 0) if merge else (True, 0, 0, 0, 0)
    names = ("kbuf", "xlse", "m_ready", "r_free") if merge else ("kbuf", "k_ready", "k_empty", "bias_buf")
    # (the LSEs, the bias: copied by the bulk engine)
    aligned = (1024, 16, 8, 8) if merge else (1024, 8, 8, 16)
    return _offsets_of(_launch, (*knobs, maxnreg, merge, args[0].device.index), grid,  # type: ignore[attr-defined]
                       (*args, n_items, *knobs, *mode), names, aligned, 2, maxnreg)


def _offsets_of(launcher: Launcher, key: tuple, grid: tuple[int, int, int], call: tuple, names: tuple[str, ...],
                aligned: tuple[int, ...], cluster: int, maxnreg: int | None) -> tuple[tuple[int, ...], int | None]:
    """The shared-memory offsets of the allocations ``names`` of ``launcher``'s kernel (each a multiple
    of its ``aligned``: 1024 for a tile in the 128-byte swizzle's 1-KiB atoms, 16 for a bulk copy's
    source or destination: checked) and how many clusters of ``cluster`` CTAs fit on the GPU at once:
    from a compile of ``call`` (the arguments with zero offsets: nothing that allocates depends on
    them, so the same shared memory and registers), once per ``key``."""
    if key not in _CLUSTER_OFFSETS:
        compiled = launcher.compile(grid, *call, num_warps=4, num_stages=1, maxnreg=maxnreg)
        at = shared_offsets(compiled.asm["ttgir"])  # type: ignore[attr-defined]
        offsets = tuple(at[n] for n in names)
        wrong = [f"{n} at {o} B (not a multiple of {a})" for n, o, a in zip(names, offsets, aligned, strict=True) if o % a]
        if wrong:
            raise RuntimeError(f"{launcher.fn.__name__}: Triton placed {', '.join(wrong)} in shared memory")
        _CLUSTER_OFFSETS[key] = (offsets, max_active_clusters(compiled, cluster))
    return _CLUSTER_OFFSETS[key]


def _solo_merge(solo: Launcher, grid: tuple[int, int, int], args: tuple, flags: tuple, wait: bool, solo_heads: int,
                split_k: int) -> None:
    """Launch SOLO's MERGE: an item's ``split_k`` splits of each output half as one cluster."""
    head = (*args, *flags, False, wait, solo_heads, split_k)
    key = (solo.fn.__name__, *flags, wait, solo_heads, split_k, args[0].device.index)  # type: ignore[attr-defined]
    offsets, _ = _offsets_of(solo, key, grid, (*head, 0, 0, 0, 0), ("kb", "q3", "xlse", "m_ready"), (1024, 1024, 16, 8),
                             split_k, None)
    solo(grid, *head, *offsets, num_warps=4, num_stages=1, launch_pdl=wait, cluster=split_k)
