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
    exactly, NaN never passes); otherwise a one-line description of what failed and where."""
    if actual.shape != expected.shape:
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    finite = torch.isfinite(e)
    same_inf = ~finite & (a == e)
    err = (a - e).abs()
    ok = (finite & (err <= atol + rtol * e.abs())) | same_inf
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
    """Largest absolute difference over elements where the reference is finite (inf if NaN)."""
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    finite = torch.isfinite(e)
    if bool(torch.isnan(a).any()):
        return float("inf")
    if not bool(finite.any()):
        return 0.0
    return float((a - e).abs()[finite].max())
