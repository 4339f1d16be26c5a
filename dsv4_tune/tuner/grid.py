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

from dsv4_tune.kernels.ops import get_op, op_neighbours
from dsv4_tune.kernels.variants import (
    BLOCK_H_CHOICES,
    BLOCK_N_CHOICES,
    COMBINE_CHOICES,
    DEFAULT_COMBINE,
    GATHER_CHOICES,
    GTA_BLOCK_N_CHOICES,
    GTA_SPLIT_K_CHOICES,
    NUM_STAGES_CHOICES,
    NUM_WARPS_CHOICES,
    PDL_KEY,
    SPLIT_K_CHOICES,
    VARIANTS,
    plan_problems,
    without_combine,
    without_pdl,
)
from dsv4_tune.workload import OpWorkload, Plan, Workload

STAGE_COARSE = "coarse"
STAGE_REFINE = "refine"
STAGE_FINAL = "final"
STAGES = (STAGE_COARSE, STAGE_REFINE, STAGE_FINAL)
REFINE_SEEDS = 2  # best coarse plans per workload whose neighbourhoods the refine stage measures


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

    def workload(self, total_tokens: int) -> Workload:
        x_len = self.with_length if self.extra_length is None else self.extra_length
        return Workload(total_tokens, self.h_q, self.topk_main, self.topk_extra,
                        self.with_length, x_len and self.topk_extra > 0, self.has_sink)

    def to_json(self) -> dict:
        data = asdict(self)
        for name, default in (("extra_length", None), ("has_sink", True)):  # absent at their defaults:
            if data[name] == default:  # grids written before they existed keep their hash
                del data[name]
        return data


@dataclass(frozen=True)
class OpGridClass:
    """A compressor / Q/K-norm class (:mod:`dsv4_tune.kernels.ops`) and the sizes it is measured at."""

    op: str
    params: tuple[tuple[str, object], ...]
    rows: tuple[int, ...]

    @classmethod
    def make(cls, op: str, rows: tuple[int, ...], **params: object) -> OpGridClass:
        return cls(op, tuple(sorted(params.items())), tuple(rows))

    def workload(self, rows: int) -> OpWorkload:
        return OpWorkload(self.op, rows, self.params)

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


def workload_key(w: Workload | OpWorkload) -> str:
    """Stable text key of a workload, e.g. ``h128-m128-x1024-len11-sink1-T64`` or
    ``compress-head_dim512-mode_decode-ratio4-R64``."""
    if isinstance(w, OpWorkload):
        return "-".join([w.op, *(f"{k}{v}" if isinstance(v, int) else f"{k}_{v}" for k, v in w.params)]) + f"-R{w.rows}"
    return (f"h{w.h_q}-m{w.topk_main}-x{w.topk_extra}-len{int(w.has_len_main)}{int(w.has_len_extra)}"
            f"-sink{int(w.has_sink)}-T{w.total_tokens}")


def coarse_candidates(w: Workload | OpWorkload, arch: str | None = None, limit: int | None = None) -> list[Plan]:
    """Stage one: each variant at its default, plus the configs that led in the H100 preview sweep
    (64- and 32-head blocks on 8 warps; split-K 2-16 of small-head blocks; gather-then-attend with
    wide head blocks), pruned by the registry's rules."""
    if isinstance(w, OpWorkload):
        return op_coarse_candidates(w, limit or OP_COARSE)
    plans = [v.default(w) for v in VARIANTS.values()]
    for bh, bn, nw in ((64, 64, 8), (64, 32, 8), (32, 64, 8), (32, 32, 4), (16, 32, 4), (16, 64, 8)):
        plans.append(Plan.make("fused", BLOCK_H=bh, BLOCK_N=bn, num_warps=nw, num_stages=1))
    for bh, bn in ((16, 64), (32, 64), (16, 32)):
        for sk in (2, 4, 8, 16):
            plans.append(Plan.make("fused_splitk", BLOCK_H=bh, BLOCK_N=bn, num_warps=8, num_stages=1, SPLIT_K=sk,
                                   **DEFAULT_COMBINE))
            plans.append(Plan.make("fused_splitk_inline", BLOCK_H=bh, BLOCK_N=bn, num_warps=8, num_stages=1,
                                   SPLIT_K=sk))
    gta = VARIANTS["gather_attend"].default(w).as_dict()
    for bh, nw in ((64, 8), (32, 8), (16, 4)):
        plans.append(Plan.make("gather_attend", gta, BLOCK_H=bh, num_warps=nw))
    unique = list(dict.fromkeys(plans))
    return [p for p in unique if not plan_problems(w, p, arch)]


# Ordered knobs step to the adjacent choice; paired knobs (one launch's block and warps) move together.
_ORDERED = {"BLOCK_H": BLOCK_H_CHOICES, "num_warps": NUM_WARPS_CHOICES, "num_stages": NUM_STAGES_CHOICES}
_PAIRS = {("COMBINE_BLOCK_H", "combine_warps"): COMBINE_CHOICES, ("BLOCK_TK", "gather_warps"): GATHER_CHOICES}


def _ordered_choices(variant: str) -> dict[str, tuple[int, ...]]:
    gta = variant == "gather_attend"
    return {**_ORDERED, "BLOCK_N": GTA_BLOCK_N_CHOICES if gta else BLOCK_N_CHOICES,
            "SPLIT_K": GTA_SPLIT_K_CHOICES if gta else SPLIT_K_CHOICES, "ONE_LAUNCH": (0, 1)}


def neighbours(plan: Plan) -> list[Plan]:
    """Plans one step from ``plan``: one knob to an adjacent choice, or one paired knob set to
    another choice, or PDL switched; a split-K plan also tries SPLIT_K = 1 (no combine) where its
    variant allows (``refine_candidates`` drops the neighbours an arch cannot run)."""
    c = plan.as_dict()
    out = []
    for knob, choices in _ordered_choices(plan.variant).items():
        if knob not in c or c[knob] not in choices:
            continue
        i = choices.index(c[knob])
        for j in (i - 1, i + 1):
            if 0 <= j < len(choices):
                out.append({**c, knob: choices[j]})
    for pair, choices in _PAIRS.items():
        if pair[0] in c:
            out += [{**c, pair[0]: a, pair[1]: b} for a, b in choices if (a, b) != (c[pair[0]], c[pair[1]])]
    if PDL_KEY in VARIANTS[plan.variant].optional:  # toggled: absent (0) <-> 1
        out.append(without_pdl(c) if c.get(PDL_KEY) else {**c, PDL_KEY: 1})
    plans = []
    for cfg in out:
        if cfg.get("SPLIT_K") == 1:
            cfg = without_combine(cfg)
        elif cfg.get("SPLIT_K", 1) > 1 and "COMBINE_BLOCK_H" not in cfg and plan.variant == "gather_attend":
            cfg = {**cfg, **DEFAULT_COMBINE}
        plans.append(Plan.make(plan.variant, cfg))
    return list(dict.fromkeys(plans))


OP_COARSE = 8  # configs per op variant in the coarse stage: the default and a spread of the space


def op_coarse_candidates(w: OpWorkload, per_variant: int) -> list[Plan]:
    """Each variant's default and up to ``per_variant - 1`` configs spread evenly through its space."""
    spec = get_op(w.op)
    plans = []
    for v in spec.variants.values():
        space = [Plan.make(v.name, c) for c in v.space_fn(w.params_dict)]
        step = max(1, len(space) // max(1, per_variant - 1))
        plans += [Plan.make(v.name, v.default_fn(w.params_dict)), *space[::step][: per_variant - 1]]
    return list(dict.fromkeys(plans))


def refine_candidates(
    w: Workload | OpWorkload, seeds: list[Plan], arch: str | None = None, limit: int | None = None
) -> list[Plan]:
    """Stage two: the seeds (re-timed beside their neighbours) and every valid neighbour of each,
    at most ``limit`` neighbours in all (the interpreter's small sweep)."""
    op = isinstance(w, OpWorkload)  # op neighbours come from the op's valid space already
    found = [n for s in seeds for n in (op_neighbours(w, s) if op else neighbours(s)) if n not in seeds]
    found = [p for p in dict.fromkeys(found) if op or not plan_problems(w, p, arch)]  # type: ignore[arg-type]
    return list(seeds) + (found if limit is None else found[:limit])


LAUNCHES = {"fused": 1, "fused_splitk_inline": 1, "fused_splitk": 2, "gather_attend": 3}


def simplicity(plan: Plan) -> tuple[int, int]:
    """Order for 'simpler': fewer launches, then fewer splits."""
    return LAUNCHES.get(plan.variant, 9), plan.as_dict().get("SPLIT_K", 1)
