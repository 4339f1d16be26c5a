"""DSV4 compressor kernels (C4 "CSA" and C128 "HCA"): state ring + per-channel softmax pooling +
RMSNorm + interleaved RoPE + store into the FP8 pool or a dense tensor.

Notation: ratio R in {4, 128}; coff = 2 for C4, else 1; window K = R * coff; head_dim D in {512, 128};
row width W = 2 * coff * D.  ``kv_score`` rows are fp32 ``[kv_A | kv_B | score_A | score_B]`` (C4) or
``[kv | score]`` (C128).  Request b owns state ring rows ``ring_base[b] + (pos mod ring_size)``.

The compressed row of boundary position p (``(p + 1) mod R == 0``) pools positions
``s = p - K + 1 + k`` for k < K: per channel d, ``c[d] = sum_k softmax_k(score_k[d] + ape[k, d]) kv_k[d]``
with the A half for k < R and the B half for k >= R (C4).  Empty slots (s < 0, or ring positions of a
request with ``ring_base < 0``) and scores of -inf get weight exactly 0; a channel with no weight is 0.
Then ``y = c * rsqrt(mean(c^2) + eps) * norm_weight`` and RoPE on the last 64 dims at position
``p + 1 - R``.  The row never leaves registers between the pooling and the store (no store-reload).

Upstream bugs this code avoids by construction (see spec compressor.md §5): the softmax subtracts a
finite running max (0 while a channel has seen only -inf), so a -inf score weighs exp(-inf) = 0 and
``-inf - -inf`` is never formed (no NaN to mask afterwards); no write goes through a negative
or out-of-range ring base or out_loc (slot 0 is never a fallback); the spec's "write the ring, then
read the window" holds in effect: decode takes position p from the input row and never reads the
ring row it writes (ring_size >= K), so it stores that row last, after every load; prefill writes
the ring only after every window that reads it has been read (block 0 of a request after its
windows, which are the ring's only readers, in the fused C4 kernel with ROWS >= 2; else a later
launch: the ring kernel after the fused one, the split variant's finish kernel).

Kernels in :mod:`.decode` (one token per request), :mod:`.prefill` (ragged new tokens) and the
device helpers both use in :mod:`.shared`; config spaces and launch shapes in
:mod:`dsv4_tune.registry.compressor_space` and :mod:`dsv4_tune.registry.launches`; the checked
host API in :mod:`dsv4_tune.serving.compressor`.  Nothing in the launch path synchronises with the GPU.
"""

from __future__ import annotations

from dsv4_tune.kernels.compressor.decode import (
    _compress_decode_finish_kernel,
    _compress_decode_kernel,
    _compress_decode_split_kernel,
)
from dsv4_tune.kernels.compressor.prefill import (
    _compress_prefill_finish_kernel,
    _compress_prefill_kernel,
    _compress_prefill_split_kernel,
    _ring_write_kernel,
)

# For the kernel catalog (dsv4_tune.kernels.catalog): the kernels by name and the type of every pointer parameter.
# The destination is always passed as bytes (``dst_ptr``) and re-typed in the kernel by ``DEST``.
KERNELS = {fn.fn.__name__: fn for fn in (
    _compress_decode_kernel, _compress_decode_split_kernel, _compress_decode_finish_kernel,
    _compress_prefill_kernel, _compress_prefill_split_kernel, _compress_prefill_finish_kernel, _ring_write_kernel,
)}
POINTER_TYPES = {
    "kvs_ptr": "*fp32", "state_ptr": "*fp32", "ring_ptr": "*i32", "seqlens_ptr": "*i32", "ape_ptr": "*fp32",
    "normw_ptr": "*fp32", "freqs_ptr": "*fp32", "loc_ptr": "*i32", "dst_ptr": "*u8", "ws_ptr": "*fp32",
    "cu_ptr": "*i32", "prefix_ptr": "*i32",
}
