"""Workload bucketing, exactly as the spec states it (`dispatch_baseline.md` section 2).

Pure integer functions: the dispatcher calls :func:`bucket_index` on every lookup.
"""

from __future__ import annotations

from dsv4_tune.registry.intmath import next_pow2

# The seed's named thresholds (element counts T * topk, and the BF16 buffer bound).
DUAL_GATHER_ONE_LAUNCH_BELOW = 150_000  # DSV4_USE_FUSED_THRESHOLD
FIXED_GATHER_KERNEL_BELOW = 32_768  # DSV4_USE_FIXED_KERNEL_THRESHOLD
SPLITK_TOPK_THRESHOLD = 8192
SPLITK_DUAL_SCOPE_TOPK_THRESHOLD = 2048
GATHER_BUFFER_BYTES = 2**31  # compute_token_ranges' max_buffer_bytes
SIZE_CATEGORY_BOUNDS = (10_000, 100_000, 1_000_000)


def bucket_tokens(total_tokens: int) -> int:
    """The smallest power of two >= T; 1 for T <= 0 (upstream ``_bucket_total_tokens``)."""
    return next_pow2(total_tokens)


def bucket_index(total_tokens: int) -> int:
    """log2 of :func:`bucket_tokens`: 0 for T <= 1, 1 for T = 2, 2 for T = 3..4, ..."""
    return 0 if total_tokens <= 1 else (total_tokens - 1).bit_length()


def size_category(total_tokens: int, topk: int) -> int:
    """Element-count category of ``T * topk``: 0 below 1e4, 1 below 1e5, 2 below 1e6, else 3."""
    e = total_tokens * topk
    for i, bound in enumerate(SIZE_CATEGORY_BOUNDS):
        if e < bound:
            return i
    return len(SIZE_CATEGORY_BOUNDS)


def token_ranges(
    n_tok: int, total_topk: int, max_bytes: int = GATHER_BUFFER_BYTES, d_qk: int = 512
) -> list[tuple[int, int]]:
    """Consecutive token ranges whose gathered BF16 buffer ``[T_r, total_topk, d_qk]`` stays within
    ``max_bytes`` (upstream ``compute_token_ranges``: one range when it all fits)."""
    if n_tok * total_topk * d_qk * 2 <= max_bytes:
        return [(0, n_tok)] if n_tok > 0 else []
    per = max(1, max_bytes // (total_topk * d_qk * 2))
    return [(t, min(t + per, n_tok)) for t in range(0, n_tok, per)]


def dual_gather_one_launch(total_tokens: int, total_topk: int, has_len_main: bool, has_len_extra: bool) -> bool:
    """The seed's dual-scope gather choice: one launch below 150,000 elements when both scopes
    agree on having a topk_length, else one launch per scope."""
    return total_tokens * total_topk < DUAL_GATHER_ONE_LAUNCH_BELOW and has_len_main == has_len_extra
