"""FP8 decoding inside kernels: the NoPE bytes' flavour and the UE8M0 scales.

``FP8`` is a constexpr string chosen by the launcher (:func:`dsv4_tune.kernels.runtime.fp8_mode`):
``"e4m3fn"`` bitcasts to Triton's float8e4nv; ``"e4m3fnuz"`` to float8e4b8 where the target has
it (ROCm, the interpreter); ``"e4m3fnuz_sw"`` decodes e4m3fnuz in integer/float ops on targets
without that type (CUDA), from the bit fields.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def decode_fp8(raw, FP8: tl.constexpr):
    """uint8 bytes -> fp32 values in the pool's FP8 flavour."""
    if FP8 == "e4m3fn":
        val = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    elif FP8 == "e4m3fnuz":
        val = raw.to(tl.float8e4b8, bitcast=True).to(tl.float32)
    else:
        # e4m3fnuz by hand: bias 8, no inf, 0x80 the only NaN.  Normal numbers are assembled as
        # fp32 bits (exponent rebiased by 127 - 8), subnormals are mantissa * 2^-10.
        b = raw.to(tl.int32)
        e = (b >> 3) & 15
        m = b & 7
        bits = ((b & 0x80) << 24) | ((e + 119) << 23) | (m << 20)
        sub = m.to(tl.float32) * 0.0009765625
        sub = tl.where(b >= 128, -sub, sub)
        val = tl.where(e == 0, sub, bits.to(tl.float32, bitcast=True))
        val = tl.where(b == 128, float("nan"), val)
    return val


@triton.jit
def ue8m0_to_f32(byte):
    """UE8M0 exponent byte -> 2^(byte - 127) built as fp32 bits (exact for bytes 1..254)."""
    return (byte.to(tl.int32) << 23).to(tl.float32, bitcast=True)
