"""Integer helpers every layer shares (host side; no torch, no Triton)."""

from __future__ import annotations


def cdiv(a: int, b: int) -> int:
    """Ceiling division.  (``triton.cdiv`` is a JIT function in recent Triton: calling it from
    Python goes through the JIT dispatcher, ~5 us a call.)"""
    return -(-a // b)


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n``; 1 for ``n <= 1``."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()
