"""Assertions shared by the kernel tests."""

from __future__ import annotations

import torch

from dsv4_tune.tuner.tolerance import mismatch


def assert_match(name: str, actual: torch.Tensor, expected: torch.Tensor, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Fail with where and how ``actual`` differs from ``expected`` (exact when tolerances are 0)."""
    msg = mismatch(actual, expected, atol=atol, rtol=rtol)
    assert msg is None, f"{name}: {msg}"


def nan_like(shape: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    """An output buffer poisoned with NaN, so any element a kernel forgets to write fails."""
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def record_launched_variants(monkeypatch, decode_mod) -> list[str]:
    """The names of the variants ``sparse_decode`` launches from now on, in launch order."""
    ran: list[str] = []
    wrapped = {name: (lambda *a, _n=name, _f=fn: ran.append(_n) or _f(*a)) for name, fn in decode_mod.LAUNCHERS.items()}
    monkeypatch.setattr(decode_mod, "LAUNCHERS", wrapped)
    return ran
