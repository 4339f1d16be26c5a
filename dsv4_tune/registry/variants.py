"""The variant registry: every sparse-decode kernel variant, its tunable space for a workload and
the rules that make a config invalid.  The tuner (what to sweep) and the policy validator (what may
ship) both read these rules: this is the one place for them.

Pure Python (no torch, no Triton): policies and the dispatcher use the rules without the kernels.
How each variant launches its kernels is :data:`dsv4_tune.serving.variants.LAUNCHERS`; which kernels
and constexprs those are, per arch, is :func:`dsv4_tune.registry.launches.plan_kernels`; what the
compile check found unfit per arch, :mod:`dsv4_tune.registry.arch`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dsv4_tune.registry.arch import arch_problems
from dsv4_tune.registry.intmath import cdiv, next_pow2
from dsv4_tune.registry.launches import (
    PDL_KEY,
    WS_CROSS_KEY,
    WS_HEADS32_KEY,
    WS_MERGE_KEY,
    WS_PERSIST_KEY,
    WS_SOLO_KEY,
    WS_SOLO_MERGE_SPLITS,
    WS_SUB,
)
from dsv4_tune.registry.workload import Plan, Workload

BLOCK_H_CHOICES = (16, 32, 64)
BLOCK_N_CHOICES = (16, 32, 64)
NUM_WARPS_CHOICES = (4, 8)
NUM_STAGES_CHOICES = (1, 2)
SPLIT_K_CHOICES = (2, 3, 4, 6, 8, 12, 16)
COMBINE_CHOICES = ((4, 4), (8, 4), (16, 8))  # (COMBINE_BLOCK_H, combine_warps)
GATHER_CHOICES = ((64, 4), (128, 4), (256, 8))  # (BLOCK_TK, gather_warps)
GTA_SPLIT_K_CHOICES = (1, 2, 3, 4, 8)
GTA_BLOCK_N_CHOICES = (32, 64)
WS_BLOCK_N_CHOICES = (32, 64)  # ws_sm90: candidates per K tile
WS_KSTAGES_CHOICES = (2, 3, 4)  # ws_sm90: K tiles in flight between the producer and the consumers
# ws_sm90's optional PERSIST knob (registry.launches.WS_PERSIST_KEY) is swept without a split only:
# split plans serve small T, where the items fit in one wave and the grid is the same either way.
# Its split plans take the PDL knob as fused_splitk's do (the combine a programmatic dependent).
# Its optional SOLO knob (registry.launches.WS_SOLO_KEY) is swept at both tile sizes, split or not,
# and with it HEADS32 (registry.launches.WS_HEADS32_KEY: 32 query heads a program).  MERGE
# (registry.launches.WS_MERGE_KEY) is swept in its warp-specialized mode (split 2, staged or not) and
# in SOLO's at clusters of WS_SOLO_MERGE_SWEPT (``swept_modes``).
# Optional knobs a plan may name but no sweep tries (not in any space, never a refine step): a new
# kernel mode until a GPU has run it (CROSS was, until 2026-12-06: a cluster kernel that deadlocked
# would hang a sweep; HEADS32 and MERGE were, until an H100 had checked and timed them on 2026-12-07).
NOT_SWEPT: frozenset[str] = frozenset()


def sweeps(key: str) -> bool:
    """Whether sweeps try the optional knob ``key`` (see ``NOT_SWEPT``)."""
    return key not in NOT_SWEPT


# SOLO's MERGE cluster sizes sweeps try: in a graph on an H100 (2026-12-08) clusters of 2 and 3 beat
# the shipped plan at T = 16 with 128-192 candidates (one wave of programs of one or two tiles:
# 0.88-0.97x), while clusters of 4 lost at every T timed (1.01-1.46x the split with its PDL combine).
WS_SOLO_MERGE_SWEPT = (2, 3)


def swept_modes(config: dict[str, int]) -> bool:
    """Whether sweeps try ``config``'s combination of modes: all but SOLO's MERGE (its splits merged
    over DSMEM) in clusters other than WS_SOLO_MERGE_SWEPT; a plan may still name those."""
    return not (config.get(WS_SOLO_KEY) and config.get(WS_MERGE_KEY)) or config["SPLIT_K"] in WS_SOLO_MERGE_SWEPT


WS_SPLIT_K_CHOICES = (1, *SPLIT_K_CHOICES)
WS_SMEM_BYTES = 227 * 1024  # sm90's shared memory per block
SMEM_BUDGET = 160 * 1024  # bytes of staged KV tiles + Q a config may ask for (gfx950 LDS, < sm90's 228 KiB)
ACC_REGS_PER_THREAD = 128  # fp32 accumulator registers per thread a config may need

DEFAULT_COMBINE = {"COMBINE_BLOCK_H": 8, "combine_warps": 4}
# fused_splitk's optional PDL knob (registry.launches.PDL_KEY): its space adds PDL = 1 to each
# config rather than PDL = 0, since absent means 0.


def without_pdl(config: dict[str, int]) -> dict[str, int]:
    """``config`` with PDL off (the optional key dropped: absent means 0)."""
    return {k: v for k, v in config.items() if k != PDL_KEY}


def without_combine(config: dict[str, int]) -> dict[str, int]:
    """``config`` less the combine kernel's keys and PDL, which launches that combine (a split
    merged in-kernel, or no split)."""
    return {k: v for k, v in config.items() if k not in DEFAULT_COMBINE and k != PDL_KEY}


def _pow2_at_least_16(n: int) -> int:
    return max(16, next_pow2(n))


def _attention_problems(w: Workload, c: dict[str, int], block_n_choices: tuple[int, ...]) -> list[str]:
    """Rules shared by every attention kernel (fused or over gathered keys)."""
    out = []
    if c["BLOCK_H"] not in BLOCK_H_CHOICES:
        out.append(f"BLOCK_H={c['BLOCK_H']} not in {BLOCK_H_CHOICES}")
    elif c["BLOCK_H"] > _pow2_at_least_16(w.h_q):
        out.append(f"BLOCK_H={c['BLOCK_H']} exceeds h_q={w.h_q} (rounded up to a power of two >= 16)")
    if c["BLOCK_N"] not in block_n_choices:
        out.append(f"BLOCK_N={c['BLOCK_N']} not in {block_n_choices}")
    elif c["BLOCK_N"] > _pow2_at_least_16(w.total_topk):
        out.append(f"BLOCK_N={c['BLOCK_N']} exceeds total topk={w.total_topk} (rounded up)")
    if c["num_warps"] not in NUM_WARPS_CHOICES:
        out.append(f"num_warps={c['num_warps']} not in {NUM_WARPS_CHOICES}")
    elif c.get("BLOCK_H", 16) * 512 > ACC_REGS_PER_THREAD * c["num_warps"] * 32:
        out.append(
            f"BLOCK_H={c['BLOCK_H']} x 512 fp32 accumulator needs more than {ACC_REGS_PER_THREAD} registers "
            f"per thread at num_warps={c['num_warps']}"
        )
    if c["num_stages"] not in NUM_STAGES_CHOICES:
        out.append(f"num_stages={c['num_stages']} not in {NUM_STAGES_CHOICES}")
    elif c["BLOCK_N"] * 512 * 2 * c["num_stages"] + c["BLOCK_H"] * 512 * 2 > SMEM_BUDGET:
        out.append(f"staged KV tiles + Q exceed {SMEM_BUDGET // 1024} KiB of shared memory")
    return out


def _split_problems(w: Workload, c: dict[str, int], allowed: tuple[int, ...], combine_kernel: bool = True) -> list[str]:
    out = []
    sk = c["SPLIT_K"]
    if sk not in allowed:
        out.append(f"SPLIT_K={sk} not in {allowed}")
    elif sk > 1 and c["BLOCK_N"] > 0 and sk > cdiv(w.total_topk, c["BLOCK_N"]):  # BLOCK_N <= 0: reported above
        out.append(f"SPLIT_K={sk} exceeds the {cdiv(w.total_topk, c['BLOCK_N'])} BLOCK_N steps of topk {w.total_topk}")
    combine = (c.get("COMBINE_BLOCK_H"), c.get("combine_warps"))
    if not combine_kernel:
        if combine != (None, None):
            out.append("the in-kernel combine takes no combine config")
    elif sk > 1 and combine not in COMBINE_CHOICES:
        out.append(f"(COMBINE_BLOCK_H, combine_warps)={combine} not in {COMBINE_CHOICES}")
    if sk == 1 and combine != (None, None):
        out.append("SPLIT_K=1 takes no combine config")
    return out


def _switch(c: dict[str, int], key: str, out: list[str]) -> bool:
    """Whether the on/off knob ``key`` is on (an optional one absent is off); a value other than 0
    or 1 joins ``out`` as a problem."""
    value = c.get(key, 0)
    if value not in (0, 1):
        out.append(f"{key}={value} not in (0, 1)")
    return value == 1


def _fused_problems(w: Workload, c: dict[str, int]) -> list[str]:
    return _attention_problems(w, c, BLOCK_N_CHOICES)


def _fused_splitk_problems(w: Workload, c: dict[str, int]) -> list[str]:
    out = _attention_problems(w, c, BLOCK_N_CHOICES) + _split_problems(w, c, SPLIT_K_CHOICES)
    _switch(c, PDL_KEY, out)
    return out


def _fused_splitk_inline_problems(w: Workload, c: dict[str, int]) -> list[str]:
    return _attention_problems(w, c, BLOCK_N_CHOICES) + _split_problems(w, c, SPLIT_K_CHOICES, combine_kernel=False)


def _gta_problems(w: Workload, c: dict[str, int]) -> list[str]:
    out = _attention_problems(w, c, GTA_BLOCK_N_CHOICES) + _split_problems(w, c, GTA_SPLIT_K_CHOICES)
    if (c["BLOCK_TK"], c["gather_warps"]) not in GATHER_CHOICES:
        out.append(f"(BLOCK_TK, gather_warps)={(c['BLOCK_TK'], c['gather_warps'])} not in {GATHER_CHOICES}")
    if _switch(c, "ONE_LAUNCH", out) and not w.dual:
        out.append("ONE_LAUNCH=1 needs an extra scope")
    return out


def ws_smem_bytes(c: dict[str, int]) -> int:
    """Shared memory of a ws_sm90 config: K tiles (bf16, 512 wide), Q (64 heads), P, biases, the
    producer's staging of one sub-block (576 data + 8 scale bytes a token), the 2-KiB scratch of each
    consumer that converts its bf16 output for 16-byte stores (both persistent ones, a lone PIPE's WG0),
    barriers and slots (within 500 B of Triton 3.6's figure for every config of 2026-12-06).  SOLO:
    Q, its K tiles with their biases and raw bytes, under MERGE every split's LSE and a barrier
    (Triton 3.6's figure exactly)."""
    if c.get(WS_SOLO_KEY):  # 64-token tiles: one K tile, two raw; 32-token tiles: two K tiles, three raw
        k_tiles, raw_tiles = (1, 2) if c["BLOCK_N"] == 2 * WS_SUB else (2, 3)
        merge = 256 * c["SPLIT_K"] + 8 if c.get(WS_MERGE_KEY) else 0
        return 64 * 1024 + k_tiles * c["BLOCK_N"] * (1024 + 4) + raw_tiles * c["BLOCK_N"] * 584 + merge
    staging = WS_SUB * 584 if c.get("STAGED") else 0
    converting = 0 if c["SPLIT_K"] > 1 else 2 if c.get(WS_PERSIST_KEY) else c.get("PIPE", 0)
    merge = 672 if c.get(WS_MERGE_KEY) else 0  # both splits' LSEs and two barriers, as Triton 3.6 places them
    return (c["KSTAGES"] * c["BLOCK_N"] * (1024 + 4) + 64 * 1024 + 64 * c["BLOCK_N"] * 2 + staging
            + 2048 * converting + 1088 + merge)


def _ws_problems(w: Workload, c: dict[str, int]) -> list[str]:
    out = []
    if c["BLOCK_N"] not in WS_BLOCK_N_CHOICES:
        out.append(f"BLOCK_N={c['BLOCK_N']} not in {WS_BLOCK_N_CHOICES}")
    if c["KSTAGES"] not in WS_KSTAGES_CHOICES:
        out.append(f"KSTAGES={c['KSTAGES']} not in {WS_KSTAGES_CHOICES}")
    _switch(c, "PIPE", out)
    if _switch(c, WS_PERSIST_KEY, out) and c["SPLIT_K"] != 1:
        out.append(f"{WS_PERSIST_KEY}=1 needs SPLIT_K=1 (a split fills the SMs with items of its own)")
    solo_knobs = (c["KSTAGES"], c["STAGED"], c["PIPE"], c.get(WS_PERSIST_KEY, 0))
    if _switch(c, WS_SOLO_KEY, out) and solo_knobs != (2, 0, 0, 0):
        out.append(f"{WS_SOLO_KEY}=1 needs KSTAGES=2, STAGED=0, PIPE=0 and no {WS_PERSIST_KEY} "
                   "(one warpgroup does each tile in turn)")
    cross_knobs = (c["STAGED"], c.get(WS_SOLO_KEY, 0), c["BLOCK_N"])
    if _switch(c, WS_CROSS_KEY, out) and (w.h_q % 128 or cross_knobs != (0, 0, 2 * WS_SUB)):
        out.append(f"{WS_CROSS_KEY}=1 needs h_q a multiple of 128 (a token's head blocks in pairs), STAGED=0, "
                   f"BLOCK_N={2 * WS_SUB} (a sub-block each) and no {WS_SOLO_KEY}")
    merge_knobs = (c["SPLIT_K"], c["BLOCK_N"], c["KSTAGES"], c["PIPE"], c.get(WS_PERSIST_KEY, 0),
                   c.get(WS_CROSS_KEY, 0), c.get(PDL_KEY, 0))
    merge = _switch(c, WS_MERGE_KEY, out)
    if merge and c.get(WS_SOLO_KEY):
        if c["SPLIT_K"] not in WS_SOLO_MERGE_SPLITS or c.get(PDL_KEY, 0):
            out.append(f"{WS_MERGE_KEY}=1 needs SPLIT_K in {WS_SOLO_MERGE_SPLITS} with {WS_SOLO_KEY}=1 (the 32-column "
                       f"blocks a CTA receives fit its Q buffer) and no {PDL_KEY} (no combine to launch)")
    elif merge and merge_knobs != (2, 2 * WS_SUB, 2, 0, 0, 0, 0):
        out.append(f"{WS_MERGE_KEY}=1 needs SPLIT_K=2, BLOCK_N={2 * WS_SUB}, KSTAGES=2 (a K stage holds a half "
                   f"of the output in fp32), PIPE=0 and no {WS_PERSIST_KEY}, {WS_CROSS_KEY} or {PDL_KEY} (no combine "
                   f"to launch), or {WS_SOLO_KEY}=1")
    if _switch(c, WS_HEADS32_KEY, out) and not c.get(WS_SOLO_KEY):
        out.append(f"{WS_HEADS32_KEY}=1 needs {WS_SOLO_KEY}=1 (a one-warpgroup program's Q rows)")
    if _switch(c, PDL_KEY, out) and c["SPLIT_K"] == 1:
        out.append(f"{PDL_KEY}=1 needs SPLIT_K > 1 (it launches the combine as a programmatic dependent)")
    if _switch(c, "STAGED", out) and c["BLOCK_N"] != 2 * WS_SUB:
        out.append(f"STAGED=1 needs BLOCK_N={2 * WS_SUB} (a sub-block through registers, one through staging)")
    if not out and ws_smem_bytes(c) > WS_SMEM_BYTES:
        out.append(f"KSTAGES={c['KSTAGES']} x BLOCK_N={c['BLOCK_N']} K tiles + Q need {ws_smem_bytes(c)} B of shared "
                   f"memory, over sm90's {WS_SMEM_BYTES}")
    if c["BLOCK_N"] in WS_BLOCK_N_CHOICES:
        out += _split_problems(w, c, WS_SPLIT_K_CHOICES, combine_kernel=not merge)
    return out


def _ws_space(w: Workload) -> Iterator[dict[str, int]]:
    def splits(base: dict[str, int]) -> Iterator[dict[str, int]]:
        if base["SPLIT_K"] == 1:
            yield base
        else:
            for (cb, cw), pdl in itertools.product(COMBINE_CHOICES, (0, 1)):
                yield {**base, "COMBINE_BLOCK_H": cb, "combine_warps": cw, **({PDL_KEY: 1} if pdl else {})}

    for bn, st, staged, pipe, sk in itertools.product(WS_BLOCK_N_CHOICES, WS_KSTAGES_CHOICES, (0, 1), (0, 1),
                                                      WS_SPLIT_K_CHOICES):
        base = {"BLOCK_N": bn, "KSTAGES": st, "STAGED": staged, "PIPE": pipe, "SPLIT_K": sk}
        yield from splits(base)
        if sk == 1:
            yield {**base, WS_PERSIST_KEY: 1}
        if sweeps(WS_MERGE_KEY) and (bn, st, pipe, sk) == (2 * WS_SUB, 2, 0, 2):
            yield {**base, WS_MERGE_KEY: 1}
        if sweeps(WS_CROSS_KEY):  # (its rule keeps the unstaged 64-token ones at h_q % 128 == 0)
            yield from splits({**base, WS_CROSS_KEY: 1})
            if sk == 1:
                yield {**base, WS_PERSIST_KEY: 1, WS_CROSS_KEY: 1}
    for bn, sk in itertools.product(WS_BLOCK_N_CHOICES, WS_SPLIT_K_CHOICES):
        yield from splits({**_ws_default(w), "BLOCK_N": bn, "SPLIT_K": sk, WS_SOLO_KEY: 1})
        if sweeps(WS_HEADS32_KEY):
            yield from splits({**_ws_default(w), "BLOCK_N": bn, "SPLIT_K": sk, WS_SOLO_KEY: 1, WS_HEADS32_KEY: 1})
        if sweeps(WS_MERGE_KEY) and sk in WS_SOLO_MERGE_SWEPT:  # (its splits merged in clusters: no combine)
            merged = {**_ws_default(w), "BLOCK_N": bn, "SPLIT_K": sk, WS_SOLO_KEY: 1, WS_MERGE_KEY: 1}
            yield merged
            if sweeps(WS_HEADS32_KEY):
                yield {**merged, WS_HEADS32_KEY: 1}


def _ws_default(w: Workload) -> dict[str, int]:
    return {"BLOCK_N": 64, "KSTAGES": 2, "STAGED": 0, "PIPE": 0, "SPLIT_K": 1}


def _attention_grid(block_n: tuple[int, ...]) -> Iterator[dict[str, int]]:
    for bh, bn, nw, ns in itertools.product(BLOCK_H_CHOICES, block_n, NUM_WARPS_CHOICES, NUM_STAGES_CHOICES):
        yield {"BLOCK_H": bh, "BLOCK_N": bn, "num_warps": nw, "num_stages": ns}


def _fused_space(w: Workload) -> Iterator[dict[str, int]]:
    yield from _attention_grid(BLOCK_N_CHOICES)


def _fused_splitk_space(w: Workload) -> Iterator[dict[str, int]]:
    for pdl, att, sk, (cb, cw) in itertools.product(
        (0, 1), _attention_grid(BLOCK_N_CHOICES), SPLIT_K_CHOICES, COMBINE_CHOICES
    ):
        yield {**att, "SPLIT_K": sk, "COMBINE_BLOCK_H": cb, "combine_warps": cw, **({PDL_KEY: 1} if pdl else {})}


def _fused_splitk_inline_space(w: Workload) -> Iterator[dict[str, int]]:
    for att, sk in itertools.product(_attention_grid(BLOCK_N_CHOICES), SPLIT_K_CHOICES):
        yield {**att, "SPLIT_K": sk}


def _gta_space(w: Workload) -> Iterator[dict[str, int]]:
    launches = (0, 1) if w.dual else (0,)
    for one, (tk, gw), att, sk in itertools.product(
        launches, GATHER_CHOICES, _attention_grid(GTA_BLOCK_N_CHOICES), GTA_SPLIT_K_CHOICES
    ):
        base = {**att, "ONE_LAUNCH": one, "BLOCK_TK": tk, "gather_warps": gw, "SPLIT_K": sk}
        if sk == 1:
            yield base
        else:
            for cb, cw in COMBINE_CHOICES:
                yield {**base, "COMBINE_BLOCK_H": cb, "combine_warps": cw}


@dataclass(frozen=True)
class Variant:
    """A registry entry: its tunable space, its validity rules, its default."""

    name: str
    summary: str
    space_fn: Callable[[Workload], Iterator[dict[str, int]]]
    problems_fn: Callable[[Workload, dict[str, int]], list[str]]
    default_fn: Callable[[Workload], dict[str, int]]
    optional: frozenset[str] = frozenset()  # config keys a plan may leave out (absent = 0)

    def problems(self, w: Workload, config: dict[str, int]) -> list[str]:
        """Why ``config`` is invalid for ``w`` (empty when it is valid)."""
        required = set(self.default_fn(w)) - set(DEFAULT_COMBINE)
        known = required | (set(DEFAULT_COMBINE) if "SPLIT_K" in required else set()) | self.optional
        unknown = sorted(set(config) - known)
        missing = sorted(required - set(config))
        if unknown or missing:
            return [f"{self.name}: unknown config keys {unknown}, missing {missing}"]
        return self.problems_fn(w, config)

    def space(self, w: Workload, arch: str | None = None) -> list[Plan]:
        """Every valid config of this variant for ``w`` (on ``arch``, if named), as plans."""
        plans = [Plan.make(self.name, c) for c in self.space_fn(w) if not self.problems_fn(w, c)]
        return plans if arch is None else [p for p in plans if not arch_problems(w, p, arch)]

    def default(self, w: Workload) -> Plan:
        return Plan.make(self.name, self.default_fn(w))


# Defaults: the configs that did best across the DSV4 shapes in the first H100 sweep
# (benchmarks/results/sweep_preview-*.json): 64-head blocks on 8 warps without a split, 16-head
# blocks split 8 ways when T is small.  The dispatcher replaces them per bucket.
def _fused_default(w: Workload) -> dict[str, int]:
    return {"BLOCK_H": min(64, _pow2_at_least_16(w.h_q)), "BLOCK_N": min(64, _pow2_at_least_16(w.total_topk)),
            "num_warps": 8, "num_stages": 1}


def _fused_splitk_default(w: Workload) -> dict[str, int]:
    block_n = 64 if w.total_topk >= 128 else 16
    steps = cdiv(w.total_topk, block_n)
    return {"BLOCK_H": 16, "BLOCK_N": block_n, "num_warps": 8, "num_stages": 1,
            "SPLIT_K": max(2, min(8, steps)), **DEFAULT_COMBINE}


def _fused_splitk_inline_default(w: Workload) -> dict[str, int]:
    return without_combine(_fused_splitk_default(w))


def _gta_default(w: Workload) -> dict[str, int]:
    return {**_fused_default(w), "ONE_LAUNCH": int(w.dual), "BLOCK_TK": 64, "gather_warps": 4, "SPLIT_K": 1}


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fused", "gather + dequant + attention in one kernel, both scopes in one softmax",
                _fused_space, _fused_problems, _fused_default),
        Variant("fused_splitk", "the fused kernel over SPLIT_K slices of the candidates, then the combine",
                _fused_splitk_space, _fused_splitk_problems,
                _fused_splitk_default, frozenset({PDL_KEY})),
        Variant("fused_splitk_inline", "the fused kernel over SPLIT_K slices; the last slice of each head block "
                "to finish merges them (one launch)",
                _fused_splitk_inline_space, _fused_splitk_inline_problems, _fused_splitk_inline_default),
        Variant("gather_attend", "gather to a BF16 buffer (one launch or one per scope), then attention "
                "(one pass or split-K + combine)",
                _gta_space, _gta_problems, _gta_default),
        Variant("ws_sm90", "CUDA sm90 only: warp-specialized (Gluon) gather + exact dequant into shared memory "
                "beside wgmma attention, 64 heads per program (one pass or split-K + combine)",
                _ws_space, _ws_problems, _ws_default,
                frozenset({WS_PERSIST_KEY, WS_SOLO_KEY, WS_CROSS_KEY, WS_HEADS32_KEY, WS_MERGE_KEY, PDL_KEY})),
    )
}


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"variant: unknown {name!r}, expected one of {sorted(VARIANTS)}") from None


def plan_problems(
    w: Workload, plan: Plan, arch: str | None = None, unfit: dict[str, list[str]] | None = None
) -> list[str]:
    """Why ``plan`` cannot run ``w`` (empty when it can), on ``arch`` when one is named (then the
    compile-check rules of that arch apply too, plus ``unfit``: more {kernel key: problems}, e.g.
    from a store's compile table); the policy validator's and the tuner's entry point."""
    if plan.variant not in VARIANTS:
        return [f"unknown variant {plan.variant!r} (known: {sorted(VARIANTS)})"]
    problems = VARIANTS[plan.variant].problems(w, plan.as_dict())
    if arch is not None and not problems:
        problems = arch_problems(w, plan, arch, unfit)
    return problems


def default_plan(w: Workload) -> Plan:
    """The fixed, safe plan used when no policy applies: the fused kernel at a small config."""
    return VARIANTS["fused"].default(w)
