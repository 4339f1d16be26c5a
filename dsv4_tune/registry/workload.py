"""The two value types every layer shares: what a decode call looks like, and what to launch.

Pure Python (no torch, no Triton), so that policies and the dispatcher can use them freely.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Workload:
    """One sparse-decode call as the dispatcher sees it.

    ``total_tokens`` is ``T = b * s_q``; ``topk_extra = 0`` means no extra scope.  The flags change
    the compiled code path (each is a constexpr of the kernels).
    """

    total_tokens: int
    h_q: int
    topk_main: int
    topk_extra: int = 0
    has_len_main: bool = True
    has_len_extra: bool = True
    has_sink: bool = True
    key: tuple[int, int, int, bool, bool, bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The workload class (everything but T), built once: the dispatcher's dict key.
        object.__setattr__(self, "key", (self.h_q, self.topk_main, self.topk_extra, self.has_len_main,
                                         self.has_len_extra, self.has_sink))

    @property
    def total_topk(self) -> int:
        return self.topk_main + self.topk_extra

    @property
    def dual(self) -> bool:
        return self.topk_extra > 0

    @property
    def label(self) -> str:
        """Its class as people read it: ``h64 topk 128+512 len y/y sink y``."""
        yn = lambda f: "y" if f else "n"
        return (f"h{self.h_q} topk {self.topk_main}+{self.topk_extra} len {yn(self.has_len_main)}/"
                f"{yn(self.has_len_extra)} sink {yn(self.has_sink)}")


HEAD_MULTIPLE = 8  # DSV4's 64 or 128 query heads split by tensor parallelism: multiples of 8


def class_problems(h_q: object, topk_main: object, topk_extra: object) -> list[str]:
    """Why (h_q, topk_main, topk_extra) is not a decode workload class (empty when it is): the rule
    that policy files, grids and ``lookup`` share.  The kernels mask any head count; classes are
    kept to the head counts a DSV4 deployment has."""
    return list(class_problems_by_field(h_q, topk_main, topk_extra).values())


def class_problems_by_field(h_q: object, topk_main: object, topk_extra: object) -> dict[str, str]:
    """:func:`class_problems` keyed by the field at fault (``h_q``, ``topk_main``, ``topk_extra``)."""
    out = {}
    if not _is_int(h_q) or h_q < 1 or h_q % HEAD_MULTIPLE:  # type: ignore[operator]
        out["h_q"] = f"h_q must be a positive multiple of {HEAD_MULTIPLE}, got {h_q!r}"
    if not _is_int(topk_main) or topk_main < 1:  # type: ignore[operator]
        out["topk_main"] = f"topk_main must be >= 1, got {topk_main!r}"
    if not _is_int(topk_extra) or topk_extra < 0:  # type: ignore[operator]
        out["topk_extra"] = f"topk_extra must be >= 0 (0: no extra scope), got {topk_extra!r}"
    return out


def size_problems(name: str, value: object) -> list[str]:
    """Why ``value`` is not a size (T, requests, new tokens): a positive int."""
    return [] if _is_int(value) and value >= 1 else [f"{name} must be >= 1, got {value!r}"]  # type: ignore[operator]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class OpWorkload:
    """One call of another tuned op (see :mod:`dsv4_tune.registry.ops`) as the dispatcher sees it.

    ``rows`` is the op's size axis (requests in compressor decode, new tokens in prefill, T for the
    Q/K norm), bucketed like T; ``params`` its class parameters as sorted (name, value) pairs.
    """

    op: str
    rows: int
    params: tuple[tuple[str, Any], ...]
    key: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.op, self.params))

    @classmethod
    def make(cls, op: str, rows: int, **params: Any) -> OpWorkload:
        return cls(op, rows, tuple(sorted(params.items())))

    @property
    def params_dict(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def total_tokens(self) -> int:  # the bucketing axis, named like the decode workload's
        return self.rows

    @property
    def label(self) -> str:
        """Its class as people read it: ``compress head_dim=512 mode=decode ratio=4``."""
        return " ".join([self.op, *(f"{k}={v}" for k, v in self.params)])


@dataclass(frozen=True)
class Plan:
    """A kernel variant and its explicit config; frozen and hashable, so it can key caches.

    ``config`` holds (name, int) pairs in sorted order; names are the kernels' own constexpr and
    launch names (``BLOCK_H``, ``BLOCK_N``, ``SPLIT_K``, ``num_warps``, ...).
    """

    variant: str
    config: tuple[tuple[str, int], ...]

    @classmethod
    def make(cls, variant: str, config: dict[str, Any] | None = None, **kw: int) -> Plan:
        merged = {**(config or {}), **kw}
        return cls(variant, tuple(sorted((k, int(v)) for k, v in merged.items())))

    def __getitem__(self, key: str) -> int:
        for k, v in self.config:
            if k == key:
                return v
        raise KeyError(f"plan {self.variant} has no config key {key!r}")

    def as_dict(self) -> dict[str, int]:
        return dict(self.config)

    def __str__(self) -> str:
        return f"{self.variant}(" + ", ".join(f"{k}={v}" for k, v in self.config) + ")"
