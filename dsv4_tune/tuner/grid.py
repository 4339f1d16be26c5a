"""The workload grid a sweep measures, and the staged candidate sets per workload.

Default grid (``../shared/spec/shapes.md``): h_q 64 and 128; SWA-only (topk 128); SWA 128 + C128
at 8K / 32K / 128K context (extra topk 64 / 256 / 1024, page 2); SWA 128 + C4 (extra 512 / 1024,
page 64); each with and without topk_length; T = 1, 2, 4, ..., 1024.  C128 at 128K and C4-Pro share
the workload class (extra topk 1024); the class is measured on the C4 pool.  With no GPU the
interpreter grid is tiny and labelled as not a real measurement.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

from dsv4_tune.errors import InputError
from dsv4_tune.registry.ops import get_op
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload, class_problems, size_problems
from dsv4_tune.tuner.cases import Case, case_flavour, decode_case
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

    def build_case(self, t: int, device: str, seed: int = 0, with_ref: bool = True,
                   fp8: str | tuple[str, str] | None = None) -> Case:
        """Inputs of ``t`` tokens of this class (and the reference, unless ``with_ref`` is False), pools
        in the ``fp8`` flavour, one or the (main, extra) pair (None: the device's)."""
        w = self.workload(t)
        return decode_case(self.h_q, self.topk_main, self.topk_extra, self.page_main, self.page_extra,
                           w.has_len_main, w.has_len_extra, w.has_sink, t, device, seed, with_ref,
                           fp8 or case_flavour(device))  # type: ignore[arg-type]

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

    def build_case(self, rows: int, device: str, seed: int = 0, with_ref: bool = True, fp8: str | None = None) -> Case:
        return build_op_case(self.workload(rows), device, seed, with_ref, fp8 or case_flavour(device))  # type: ignore[arg-type]

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
    def from_json(cls, data: object) -> Grid:
        """The grid of a JSON object ``{"classes": [...], "tokens": [...], "ops": [...]}``; a GridError
        names the first thing wrong (a grid with nothing to measure is wrong too)."""
        if not isinstance(data, dict):
            raise GridError(f"expected a JSON object {{'classes': [...], 'tokens': [...]}}, got {type(data).__name__}")
        unknown = sorted(set(data) - {"classes", "tokens", "ops"})
        if unknown:
            raise GridError(f"unknown keys {unknown} (expected classes, tokens, ops)")
        classes = tuple(_grid_class(i, c) for i, c in enumerate(_list(data, "classes")))
        tokens = tuple(_size(f"tokens.{i}", t) for i, t in enumerate(_list(data, "tokens")))
        ops = tuple(_op_class(i, o) for i, o in enumerate(_list(data, "ops")))
        if classes and not tokens:
            raise GridError("tokens: empty, but the grid has classes (give the T values to measure)")
        if not classes and not ops:
            raise GridError("nothing to measure: no classes and no ops")
        return cls(classes, tokens, ops)

    @classmethod
    def load(cls, path: str | Path) -> Grid:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise GridError(f"grid {path}: cannot read: {e}") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise GridError(f"grid {path}: not JSON: {e}") from None
        try:
            return cls.from_json(data)
        except GridError as e:
            raise GridError(f"grid {path}: {e}") from None


class GridError(InputError):
    """A grid file or object that cannot be swept; the message names the place in it."""

    exit_code = 2  # ``sweep --grid``: bad usage


def _list(data: dict, key: str) -> list:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise GridError(f"{key}: expected a list, got {type(value).__name__}")
    return value


def _size(where: str, value: object) -> int:
    if problems := size_problems(where, value):
        raise GridError(problems[0])
    return value  # type: ignore[return-value]


_CLASS_FIELDS = {f.name: f.type for f in fields(GridClass)}


def _grid_class(i: int, c: object) -> GridClass:
    if not isinstance(c, dict):
        raise GridError(f"classes.{i}: expected an object, got {type(c).__name__}")
    if "h_q" not in c:
        raise GridError(f"classes.{i}: h_q is required")
    unknown = sorted(set(c) - set(_CLASS_FIELDS))
    if unknown:
        raise GridError(f"classes.{i}: unknown keys {unknown} (known: {sorted(_CLASS_FIELDS)})")
    for name in ("with_length", "has_sink"):
        if name in c and not isinstance(c[name], bool):
            raise GridError(f"classes.{i}.{name}: expected true or false, got {c[name]!r}")
    if c.get("extra_length") is not None and not isinstance(c["extra_length"], bool):
        raise GridError(f"classes.{i}.extra_length: expected true, false or null, got {c['extra_length']!r}")
    cls = GridClass(**c)
    problems = class_problems(cls.h_q, cls.topk_main, cls.topk_extra)
    problems += [p for name in ("page_main", "page_extra") for p in size_problems(name, getattr(cls, name))]
    if problems:
        raise GridError(f"classes.{i}: " + "; ".join(problems))
    return cls


def _op_class(i: int, o: object) -> OpGridClass:
    if not isinstance(o, dict) or set(o) != {"op", "params", "rows"}:
        raise GridError(f"ops.{i}: expected an object with op, params and rows, got {o!r:.80}")
    if not isinstance(o["params"], dict) or not isinstance(o["rows"], list) or not o["rows"]:
        raise GridError(f"ops.{i}: params must be an object and rows a non-empty list")
    try:
        problems = get_op(o["op"]).param_problems(o["params"]) if isinstance(o["op"], str) else ["op: not a name"]
    except ValueError as e:
        problems = [str(e)]
    if problems:
        raise GridError(f"ops.{i}: " + "; ".join(problems))
    rows = tuple(_size(f"ops.{i}.rows.{j}", r) for j, r in enumerate(o["rows"]))
    return OpGridClass.make(o["op"], rows, **o["params"])


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
