"""Comparison of a kernel output with its reference, shared by the tests and the tuner's check.

A mismatch report says how many elements failed, where the worst one is and how many are NaN or
inf where the reference is not: a failing comparison must say where it failed.  NaN never passes.
"""

from __future__ import annotations

import torch


def mismatch(
    actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float
) -> str | None:
    """None when ``|actual - expected| <= atol + rtol * |expected|`` everywhere (inf must match
    exactly, NaN never passes); otherwise a one-line description of what failed and where.

    Computed where the tensors are (fp64 on the CPU, fp32 on a GPU, where large outputs would
    take seconds to copy); only the verdict and the worst element come back to the host.
    """
    if actual.shape != expected.shape:
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    dtype = torch.float64 if actual.device.type == "cpu" else torch.float32
    a = actual.detach().to(dtype)
    e = expected.detach().to(device=a.device, dtype=dtype)
    finite = torch.isfinite(e)
    err = (a - e).abs()
    ok = (finite & (err <= atol + rtol * e.abs())) | (~finite & (a == e))
    ok &= ~torch.isnan(a)
    if bool(ok.all()):
        return None
    bad = ~ok
    n_nan = int((torch.isnan(a) & bad).sum())
    err = torch.where(bad, torch.nan_to_num(err, nan=float("inf"), posinf=float("inf")), 0.0)
    worst = int(err.flatten().argmax())
    where = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), a.shape))
    return (
        f"{int(bad.sum())}/{a.numel()} elements off (NaN: {n_nan}); worst at {where}: "
        f"got {a.flatten()[worst].item():.6g}, expected {e.flatten()[worst].item():.6g} "
        f"(atol {atol:g}, rtol {rtol:g})"
    )


def max_abs_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference over elements where the reference is finite; inf if ``actual``
    has a NaN there.  Computed where the tensors are; one number comes back."""
    dtype = torch.float64 if actual.device.type == "cpu" else torch.float32
    a = actual.detach().to(dtype)
    e = expected.detach().to(device=a.device, dtype=dtype)
    finite = torch.isfinite(e)
    if not bool(finite.any()):
        return 0.0
    err = (a - e).abs()[finite]
    return float("inf") if bool(torch.isnan(err).any()) else float(err.max())


# FlashMLA's sparse-decode tolerances, the strictest in use: O abs 1e-3 + rel 2.01/128 and
# cos_diff <= 5e-6; LSE abs 1e-6 + rel 8.01/65536.  The reference is the fp32 one computed on the
# dequantized values, so quantization error is not counted against a kernel.
O_ATOL, O_RTOL, O_COS_DIFF = 1e-3, 2.01 / 128, 5e-6
LSE_ATOL, LSE_RTOL = 1e-6, 8.01 / 65536


def cos_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``1 - 2 <a, b> / (|a|^2 + |b|^2)``: 0 for equal tensors, sensitive to scale and direction."""
    a = a.detach().to(torch.float64).flatten()
    b = b.detach().to(device=a.device, dtype=torch.float64).flatten()
    denom = float((a * a).sum() + (b * b).sum())
    return 0.0 if denom == 0 else 1.0 - 2.0 * float((a * b).sum()) / denom


def decode_mismatch(
    out: torch.Tensor, lse: torch.Tensor, ref_out: torch.Tensor, ref_lse: torch.Tensor
) -> str | None:
    """None when a sparse-decode result meets the tolerances above, else what failed and where
    (the largest error of ``out`` is :func:`max_abs_error`)."""
    problems = []
    if (m := mismatch(out, ref_out, atol=O_ATOL, rtol=O_RTOL)) is not None:
        problems.append(f"out: {m}")
    if (m := mismatch(lse, ref_lse, atol=LSE_ATOL, rtol=LSE_RTOL)) is not None:
        problems.append(f"lse: {m}")
    cd = cos_diff(out.float().nan_to_num(1e9), ref_out.float())
    if cd > O_COS_DIFF:
        problems.append(f"out: cos_diff {cd:.3g} > {O_COS_DIFF}")
    return "; ".join(problems) or None


def compressed_mismatch(got: torch.Tensor, ref: torch.Tensor, slots: torch.Tensor, fp8: str = "e4m3fn") -> str | None:
    """None when a compressor destination matches the reference's: the written ``slots`` within one
    FP8 ulp of NoPE (2^-3 relative) and one BF16 ulp of RoPE for a pool (fp32 roundings may flip a
    quantization step), 2e-5 for fp32 rows and one BF16 ulp for bf16 rows; every other byte equal."""
    from dsv4_tune.kernels import kv_layout as L

    if got.dtype == torch.uint8:
        gb, rb = L._flat_bytes(got), L._flat_bytes(ref)
        written = torch.zeros_like(gb, dtype=torch.bool)
        written[L.written_bytes(got, slots)] = True
        outside = int(((gb != rb) & ~written).sum())
        if outside:
            return f"{outside} bytes changed outside the written slots"
        g, r = L.read_tokens(got, slots, fp8).float(), L.read_tokens(ref, slots, fp8).float()
        scale_abs = float(r.abs().max()) if r.numel() else 0.0
        for name, cols, atol, rtol in (("NoPE", slice(0, L.NOPE_DIM), scale_abs * 2**-16, 2**-3),
                                       ("RoPE", slice(L.NOPE_DIM, None), 1e-6, 2**-7)):
            if (m := mismatch(g[:, cols], r[:, cols], atol=atol, rtol=rtol)) is not None:
                return f"pool {name}: {m}"
        return None
    untouched = torch.ones(got.shape[0], dtype=torch.bool, device=got.device)
    untouched[slots.to(got.device)] = False
    if not torch.equal(got[untouched].view(torch.uint8), ref[untouched].view(torch.uint8)):
        return "rows outside the written slots changed"
    tol = (2e-5, 2e-5) if got.dtype == torch.float32 else (1e-6, 2**-7)
    if (m := mismatch(got[slots], ref[slots].float(), atol=tol[0], rtol=tol[1])) is not None:
        return f"rows: {m}"
    return None


def compressed_max_error(got: torch.Tensor, ref: torch.Tensor, slots: torch.Tensor, fp8: str = "e4m3fn") -> float:
    """Largest absolute difference of the written rows (dequantized for a pool)."""
    from dsv4_tune.kernels import kv_layout as L

    if slots.numel() == 0:
        return 0.0
    if got.dtype == torch.uint8:
        return max_abs_error(L.read_tokens(got, slots, fp8), L.read_tokens(ref, slots, fp8))
    return max_abs_error(got[slots], ref[slots])
