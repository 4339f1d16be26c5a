"""The workload grid a sweep measures, and the staged candidate sets per workload.

Default grid (``../shared/spec/shapes.md``): h_q 64 and 128; SWA-only (topk 128); SWA 128 + C128
at 8K / 32K / 128K context (extra topk 64 / 256 / 1024, page 2); SWA 128 + C4 (extra 512 / 1024,
page 64); each with and without topk_length; T = 1, 2, 4, ..., 1024.  C128 at 128K and C4-Pro share
the workload class (extra topk 1024); the class is measured on the C4 pool.  With no GPU the
interpreter grid is tiny and labelled as not a real measurement.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar

from dsv4_tune.registry.workload import OpWorkload, Plan, Workload
from dsv4_tune.tuner.cases import Case, decode_case
from dsv4_tune.tuner.op_cases import build_op_case


@dataclass(frozen=True)
class GridClass:
    """A workload class and the pool geometry its inputs are built with.

    ``extra_length`` (None: as ``with_length``) and ``has_sink`` exist for classes of hand-written
    policies (verify, warmup); the default grid leaves them at their defaults."""

    h_q: int
    topk_main: int = 128
    topk_extra: int = 0
    with_length: bool = True
    page_main: int = 128
    page_extra: int = 64
    extra_length: bool | None = None
    has_sink: bool = True
    decode: ClassVar[bool] = True  # a sparse-decode class (the op classes: False)

    def workload(self, total_tokens: int) -> Workload:
        x_len = self.with_length if self.extra_length is None else self.extra_length
        return Workload(total_tokens, self.h_q, self.topk_main, self.topk_extra,
                        self.with_length, x_len and self.topk_extra > 0, self.has_sink)

    def build_case(self, t: int, device: str, seed: int = 0, with_ref: bool = True) -> Case:
        """Inputs of ``t`` tokens of this class (and the reference, unless ``with_ref`` is False)."""
        w = self.workload(t)
        return decode_case(self.h_q, self.topk_main, self.topk_extra, self.page_main, self.page_extra,
                           w.has_len_main, w.has_len_extra, w.has_sink, t, device, seed, with_ref)

    def compile_key(self, plan: Plan) -> tuple:
        """Plans of equal keys share their kernels (SPLIT_K is a launch size, not a constexpr)."""
        cfg = {k: v for k, v in plan.as_dict().items() if k != "SPLIT_K"}
        split = plan.as_dict().get("SPLIT_K", 1) > 1
        return (self.topk_extra > 0, self.with_length, plan.variant, tuple(sorted(cfg.items())), split)

    def to_json(self) -> dict:
        data = asdict(self)
        for name, default in (("extra_length", None), ("has_sink", True)):  # absent at their defaults:
            if data[name] == default:  # grids written before they existed keep their hash
                del data[name]
        return data


@dataclass(frozen=True)
class OpGridClass:
    """A compressor / Q/K-norm class (:mod:`dsv4_tune.registry.ops`) and the sizes it is measured at."""

    op: str
    params: tuple[tuple[str, object], ...]
    rows: tuple[int, ...]
    decode: ClassVar[bool] = False

    @classmethod
    def make(cls, op: str, rows: tuple[int, ...], **params: object) -> OpGridClass:
        return cls(op, tuple(sorted(params.items())), tuple(rows))

    def workload(self, rows: int) -> OpWorkload:
        return OpWorkload(self.op, rows, self.params)

    def build_case(self, rows: int, device: str, seed: int = 0, with_ref: bool = True) -> Case:
        return build_op_case(self.workload(rows), device, seed, with_ref)

    def compile_key(self, plan: Plan) -> tuple:
        return (self.op, self.params, plan)

    def to_json(self) -> dict:
        return {"op": self.op, "params": dict(self.params), "rows": list(self.rows)}


GridPoint = tuple[GridClass | OpGridClass, int]



@dataclass(frozen=True)
class Grid:
    classes: tuple[GridClass, ...]
    tokens: tuple[int, ...]
    ops: tuple[OpGridClass, ...] = ()

    def points(self) -> list[GridPoint]:
        return [(c, t) for c in self.classes for t in self.tokens] + [(o, r) for o in self.ops for r in o.rows]

    def to_json(self) -> dict:
        data: dict = {"classes": [c.to_json() for c in self.classes], "tokens": list(self.tokens)}
        if self.ops:  # absent when empty: grids written before ops existed keep their hash
            data["ops"] = [o.to_json() for o in self.ops]
        return data

    @classmethod
    def from_json(cls, data: dict) -> Grid:
        ops = tuple(OpGridClass.make(o["op"], tuple(int(r) for r in o["rows"]), **o["params"])
                    for o in data.get("ops", []))
        return cls(tuple(GridClass(**c) for c in data["classes"]), tuple(int(t) for t in data["tokens"]), ops)

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"grid {path}: expected {{'classes': [...], 'tokens': [...]}}: {e}") from None


def default_grid() -> Grid:
    classes = []
    for h in (64, 128):
        for extra, page in ((0, 64), (64, 2), (256, 2), (512, 64), (1024, 64)):
            for with_length in (True, False):
                classes.append(GridClass(h, 128, extra, with_length, 128, page))
    return Grid(tuple(classes), tuple(1 << i for i in range(11)), default_op_classes())


def default_op_classes() -> tuple[OpGridClass, ...]:
    """The compressors of a DSV4 layer (C4 and C128 attention, C4 indexer) in decode (batch 1..256)
    and prefill (1K..32K new tokens), and the Q/K norm (h_q 64 / 128, one K head, 512 dims, T 1..1024)."""
    decode, prefill = tuple(1 << i for i in range(9)), tuple(1 << i for i in range(10, 16))
    ops = []
    for mode, rows in (("decode", decode), ("prefill", prefill)):
        for ratio, dim in ((4, 512), (128, 512), (4, 128)):
            ops.append(OpGridClass.make("compress", rows, ratio=ratio, head_dim=dim, mode=mode))
    for h in (64, 128):
        ops.append(OpGridClass.make("qk_norm", tuple(1 << i for i in range(11)), h_q=h, h_k=1, head_dim_q=512,
                                    head_dim_k=512))
    return tuple(ops)


def interpreter_grid() -> Grid:
    """A few seconds on the Triton interpreter: proves the pipeline, measures nothing real."""
    return Grid((GridClass(16, 64, 64, True, 64, 64),), (1, 2),
                (OpGridClass.make("compress", (3,), ratio=4, head_dim=128, mode="decode"),
                 OpGridClass.make("qk_norm", (2,), h_q=4, h_k=1, head_dim_q=128, head_dim_k=128)))
