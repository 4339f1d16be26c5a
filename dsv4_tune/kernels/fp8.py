"""FP8 decoding (and encoding) inside kernels: the NoPE bytes' flavour and the UE8M0 scales.

``FP8`` is a constexpr string chosen by the launcher (:func:`dsv4_tune.runtime.target.fp8_mode`):
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


def extra_mode(modes: tuple[str, str], has_extra: bool) -> str:
    """The ``X_FP8`` constexpr of a two-scope kernel: the extra scope's decode mode where it differs
    from the main scope's, else ``""`` (the kernel then decodes both in ``FP8``: one binary, and the
    launch keys of one-flavour calls stay as they were)."""
    return modes[1] if has_extra and modes[1] != modes[0] else ""


@triton.jit
def ue8m0_to_f32(byte):
    """UE8M0 exponent byte -> 2^(byte - 127) built as fp32 bits (exact for bytes 1..254)."""
    return (byte.to(tl.int32) << 23).to(tl.float32, bitcast=True)


@triton.jit
def encode_fp8(x, FP8: tl.constexpr):
    """fp32 -> FP8 byte (uint8) in the flavour ``FP8`` ("e4m3fn" or "e4m3fnuz"), in integer ops.

    Round to nearest even, saturating to ±448 (e4m3fn) / ±240 (e4m3fnuz), ±inf included; NaN gives
    the flavour's NaN code; e4m3fnuz has no -0, so a result of magnitude 0 loses its sign.  Built
    from the fp32 bit fields so the bytes are identical on CUDA, ROCm and the interpreter (whose
    native FP8 casts differ in rounding and overflow), and no target needs an FP8 type.
    """
    if FP8 == "e4m3fn":
        BIAS: tl.constexpr = 7
        MAX_CODE: tl.constexpr = 0x7E
        NAN_CODE: tl.constexpr = 0x7F
    else:
        BIAS: tl.constexpr = 8
        MAX_CODE: tl.constexpr = 0x7F
        NAN_CODE: tl.constexpr = 0x80
    bits = x.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = bits & 0x7FFFFFFF
    # Normal FP8 numbers: drop 20 mantissa bits with round-to-nearest-even (a carry into the
    # exponent is the right result), then rebias the exponent from 127 to BIAS.
    normal = ((a + 0x7FFFF + ((a >> 20) & 1)) >> 20) - ((127 - BIAS) << 3)
    # Subnormal FP8 numbers (exponent below 1 - BIAS): the multiple m of 2^-(BIAS + 2), rounded to
    # nearest even from the 24-bit significand; m = 8 is the smallest normal, whose code is 8.
    e = (a >> 23) - 127
    sig = (a & 0x7FFFFF) | 0x800000
    sh = tl.minimum(tl.maximum(21 - BIAS - e, 1), 31)
    q = sig >> sh
    rem = sig & ((1 << sh) - 1)
    half = 1 << (sh - 1)
    sub = q + ((rem > half) | ((rem == half) & ((q & 1) == 1))).to(tl.int32)
    mag = tl.minimum(tl.where(e < 1 - BIAS, sub, normal), MAX_CODE)
    if FP8 == "e4m3fn":  # noqa: SIM108 (constexpr branches)
        code = sign | mag
    else:
        code = tl.where(mag == 0, 0, sign | mag)
    code = tl.where(a > 0x7F800000, NAN_CODE, code)
    return code.to(tl.uint8)
