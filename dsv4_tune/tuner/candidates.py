"""The candidates a sweep measures per workload: the coarse stage's plans, and the refine stage's
neighbours of the best plans so far.  Candidates of decode workloads come from the variant
registry, those of the other ops from the op registry.
"""

from __future__ import annotations

import itertools

from dsv4_tune.registry.launches import (
    PDL_KEY,
    WS_CROSS_KEY,
    WS_HEADS32_KEY,
    WS_MERGE_KEY,
    WS_PERSIST_KEY,
    WS_SOLO_KEY,
)
from dsv4_tune.registry.ops import get_op, op_neighbours
from dsv4_tune.registry.variants import (
    BLOCK_H_CHOICES,
    BLOCK_N_CHOICES,
    COMBINE_CHOICES,
    DEFAULT_COMBINE,
    GATHER_CHOICES,
    GTA_BLOCK_N_CHOICES,
    GTA_SPLIT_K_CHOICES,
    NUM_STAGES_CHOICES,
    NUM_WARPS_CHOICES,
    SPLIT_K_CHOICES,
    VARIANTS,
    WS_BLOCK_N_CHOICES,
    WS_KSTAGES_CHOICES,
    WS_SOLO_MERGE_SWEPT,
    WS_SPLIT_K_CHOICES,
    plan_problems,
    sweeps,
    swept_modes,
    without_combine,
)
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload
from dsv4_tune.serving.variants import variant_problem

REFINE_SEEDS = 2  # best plans per workload whose neighbourhoods a refine round measures
SOLO_MAX_TOKENS = 64  # ws_sm90's SOLO plans are coarse candidates up to this T (refinement may reach them beyond)


def coarse_candidates(w: Workload | OpWorkload, arch: str | None = None, limit: int | None = None) -> list[Plan]:
    """Stage one: a decode workload's coarse plans (:func:`decode_coarse_candidates`) or an op's
    (:func:`op_coarse_candidates`, ``limit`` per variant)."""
    if isinstance(w, OpWorkload):
        return op_coarse_candidates(w, limit or OP_COARSE)
    return decode_coarse_candidates(w, arch)


def sweepable(w: Workload, plan: Plan, arch: str | None) -> bool:
    """Whether a sweep may measure ``plan``: the registry's rules (on ``arch``) allow it for ``w``, and
    this process can launch its variant (ws_sm90 only with the Gluon API it was written for)."""
    return not plan_problems(w, plan, arch) and variant_problem(plan.variant) is None


def decode_coarse_candidates(w: Workload, arch: str | None = None) -> list[Plan]:
    """Each variant at its default, plus the configs that led in the H100 preview sweep (64- and
    32-head blocks on 8 warps; split-K 2-16 of small-head blocks; gather-then-attend with wide head
    blocks), pruned by the registry's rules."""
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
    # The sm90 kernel: plain, with both pipelines (staged gathers, pipelined softmax), 32-token tiles;
    # the pipelined one split 2-16 ways for small T, its combine plain or a programmatic dependent
    # (refinement reaches the other knobs).
    # Each unsplit one also persistent (a program per SM looping over the items).
    for bn, st, staged, pipe in ((64, 2, 0, 0), (64, 2, 1, 1), (32, 4, 0, 1)):
        plans.append(Plan.make("ws_sm90", BLOCK_N=bn, KSTAGES=st, STAGED=staged, PIPE=pipe, SPLIT_K=1))
        plans.append(Plan.make("ws_sm90", BLOCK_N=bn, KSTAGES=st, STAGED=staged, PIPE=pipe, SPLIT_K=1,
                               **{WS_PERSIST_KEY: 1}))
    for sk, pdl in itertools.product((2, 4, 8, 16), (0, 1)):
        plans.append(Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=1, PIPE=1, SPLIT_K=sk, **DEFAULT_COMBINE,
                               **({PDL_KEY: 1} if pdl else {})))
    # Each producer of a cluster of two converting half of every tile's rows (CROSS; its rule keeps it to
    # h_q % 128 == 0), once sweeps try it: plain and persistent, and split for small T; none with PIPE
    # (CROSS + PIPE was 1.4x slower than CROSS on an H100; refinement may still try it).
    if sweeps(WS_CROSS_KEY):
        for persist in ({}, {WS_PERSIST_KEY: 1}):
            plans.append(Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=1, **persist,
                                   **{WS_CROSS_KEY: 1}))
        for sk in (2, 4, 8):
            plans.append(Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=sk, **DEFAULT_COMBINE,
                                   **{PDL_KEY: 1, WS_CROSS_KEY: 1}))
    # An item's two splits merging over DSMEM in a cluster of two (MERGE), once sweeps try it: staged and
    # not (for T = 16-64, where split 2's combine gives back what the split saves; docs/ws-sm90.md).
    if sweeps(WS_MERGE_KEY):
        for staged in (0, 1):
            plans.append(Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=staged, PIPE=0, SPLIT_K=2,
                                   **{WS_MERGE_KEY: 1}))
    # Its one-warpgroup kernel (two programs an item, tiles in turn: for small T, where the SMs are
    # not all busy): alone and split 2-16 ways behind a programmatic-dependent combine.
    # With HEADS32 too (32 query heads a program) once sweeps try it; its MERGE at 64 heads in the
    # clusters sweeps try (WS_SOLO_MERGE_SWEPT: for T = 8-16, one wave of programs of one or two tiles).
    if w.total_tokens <= SOLO_MAX_TOKENS:
        heads = ({}, {WS_HEADS32_KEY: 1}) if sweeps(WS_HEADS32_KEY) else ({},)
        for bn, h32 in itertools.product(WS_BLOCK_N_CHOICES, heads):
            plans.append(Plan.make("ws_sm90", BLOCK_N=bn, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=1,
                                   **{WS_SOLO_KEY: 1}, **h32))
            for sk in (2, 4, 8, 16):
                plans.append(Plan.make("ws_sm90", BLOCK_N=bn, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=sk,
                                       **DEFAULT_COMBINE, **{PDL_KEY: 1, WS_SOLO_KEY: 1}, **h32))
            if sweeps(WS_MERGE_KEY) and not h32:
                for sk in WS_SOLO_MERGE_SWEPT:
                    plans.append(Plan.make("ws_sm90", BLOCK_N=bn, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=sk,
                                           **{WS_SOLO_KEY: 1, WS_MERGE_KEY: 1}))
    unique = list(dict.fromkeys(plans))
    return [p for p in unique if sweepable(w, p, arch)]


# Ordered knobs step to the adjacent choice; paired knobs (one launch's block and warps) move together.
_ORDERED = {"BLOCK_H": BLOCK_H_CHOICES, "num_warps": NUM_WARPS_CHOICES, "num_stages": NUM_STAGES_CHOICES}
_PAIRS = {("COMBINE_BLOCK_H", "combine_warps"): COMBINE_CHOICES, ("BLOCK_TK", "gather_warps"): GATHER_CHOICES}


def _ordered_choices(variant: str) -> dict[str, tuple[int, ...]]:
    if variant == "ws_sm90":
        return {"BLOCK_N": WS_BLOCK_N_CHOICES, "KSTAGES": WS_KSTAGES_CHOICES, "STAGED": (0, 1), "PIPE": (0, 1),
                "SPLIT_K": WS_SPLIT_K_CHOICES}
    gta = variant == "gather_attend"
    return {**_ORDERED, "BLOCK_N": GTA_BLOCK_N_CHOICES if gta else BLOCK_N_CHOICES,
            "SPLIT_K": GTA_SPLIT_K_CHOICES if gta else SPLIT_K_CHOICES, "ONE_LAUNCH": (0, 1)}


def neighbours(plan: Plan) -> list[Plan]:
    """Plans one step from ``plan``: one knob to an adjacent choice, or one paired knob set to
    another choice, or an optional switch (PDL, PERSIST, SOLO; not those of ``NOT_SWEPT``) flipped (no
    combination of modes sweeps leave out: ``swept_modes``); a
    split-K plan also tries SPLIT_K = 1 (no combine) where its variant allows (``refine_candidates``
    drops the neighbours an arch cannot run)."""
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
    for key in sorted(k for k in VARIANTS[plan.variant].optional if sweeps(k)):  # toggled: absent (0) <-> 1
        out.append({k: v for k, v in c.items() if k != key} if c.get(key) else {**c, key: 1})
    plans = []
    for cfg in filter(swept_modes, out):
        if cfg.get("SPLIT_K") == 1 or cfg.get(WS_MERGE_KEY):  # (MERGE: the splits merge in the kernel)
            cfg = without_combine(cfg)
        elif cfg.get("SPLIT_K", 1) > 1 and "COMBINE_BLOCK_H" not in cfg and plan.variant in ("gather_attend",
                                                                                               "ws_sm90"):
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
    found = [p for p in dict.fromkeys(found) if op or sweepable(w, p, arch)]  # type: ignore[arg-type]
    return list(seeds) + (found if limit is None else found[:limit])


LAUNCHES = {"fused": 1, "fused_splitk_inline": 1, "fused_splitk": 2, "gather_attend": 3, "ws_sm90": 1}


def simplicity(plan: Plan) -> tuple[int, int]:
    """Order for 'simpler': fewer launches, then fewer splits."""
    split = plan.as_dict().get("SPLIT_K", 1)
    combine = plan.variant == "ws_sm90" and split > 1  # its split-K adds the combine launch
    return LAUNCHES.get(plan.variant, 9) + combine, split
