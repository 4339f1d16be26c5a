"""Every Triton kernel of the package by name, and the type of every pointer parameter: what the
cross-compiler needs to build a launch of :func:`dsv4_tune.registry.launches.plan_kernels` for any
arch without a GPU (pointers of the compressor and Q/K norm pass as bytes, re-typed in the kernel).

Gluon kernels (:mod:`dsv4_tune.kernels.sm90`) join :data:`KERNELS` only where this Triton offers the
Gluon API they are written for; elsewhere :data:`UNBUILDABLE` says why, and the compile check
skips them with that message.  :data:`OPTIONS` holds the compile options a kernel's launcher always
passes (the register cap of a warp-specialized kernel)."""

from __future__ import annotations

from dsv4_tune.kernels import compressor, qk_norm
from dsv4_tune.kernels.combine import _combine_kernel
from dsv4_tune.kernels.fused_attention import _sparse_decode_kernel
from dsv4_tune.kernels.gather_dequant import _gather_dequant_dual_kernel, _gather_dequant_kernel
from dsv4_tune.kernels.gathered_attention import _gathered_attention_kernel
from dsv4_tune.kernels.sm90 import GLUON_PROBLEM
from dsv4_tune.registry.launches import WS_MAXNREG

KERNELS = {fn.fn.__name__: fn for fn in (_sparse_decode_kernel, _combine_kernel, _gather_dequant_kernel,
                                         _gather_dequant_dual_kernel, _gathered_attention_kernel)}
POINTER_TYPES = {
    "q_ptr": "*bf16", "kv_ptr": "*u8", "xkv_ptr": "*u8", "idx_ptr": "*i32", "xidx_ptr": "*i32",
    "len_ptr": "*i32", "xlen_ptr": "*i32", "sink_ptr": "*fp32", "out_ptr": "*bf16", "lse_ptr": "*fp32",
    "part_o_ptr": "*fp32", "part_lse_ptr": "*fp32", "inv_ptr": "*u8", "count_ptr": "*i32",
}
for _family in (compressor, qk_norm):
    KERNELS.update(_family.KERNELS)
    POINTER_TYPES.update(_family.POINTER_TYPES)
OPTIONS: dict[str, dict[str, int]] = {"_ws_decode_kernel": {"maxnreg": WS_MAXNREG}}
UNBUILDABLE: dict[str, str] = {}
if GLUON_PROBLEM is None:
    from dsv4_tune.kernels.sm90.decode import _ws_decode_kernel
    from dsv4_tune.kernels.sm90.solo import _solo_decode_kernel, _solo_pipe_decode_kernel

    KERNELS.update({fn.fn.__name__: fn for fn in (_ws_decode_kernel, _solo_decode_kernel, _solo_pipe_decode_kernel)})
else:
    UNBUILDABLE.update(dict.fromkeys(("_ws_decode_kernel", "_solo_decode_kernel", "_solo_pipe_decode_kernel"),
                                     GLUON_PROBLEM))
