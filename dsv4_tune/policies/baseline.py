"""The seed's MI355X hand rules (SGLang #26208, `dispatch_baseline.md` sections 4-7) as a policy.

:func:`seed_decision` states the rules for one exact T; :func:`build_baseline_policy` evaluates
them for every T up to ``T_MAX`` on each DSV4 workload class, merges runs of equal decisions into
segments (so the exact element-count thresholds are kept, not rounded to buckets) and maps each
decision onto our variants at their default configs:

* fused single scope, fused dual scope without split -> ``fused``
* fused dual split-K n -> ``fused_splitk`` with SPLIT_K = n
* the gather fallback and token-ranged gather-then-attend -> ``gather_attend`` (ONE_LAUNCH per the
  150,000-element rule, SPLIT_K 2 or 3 where the seed splits over the gathered keys)

Regenerate the shipped file with ``python -m dsv4_tune.policies.baseline``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from dsv4_tune.policies.schema import (
    BucketSpec,
    GpuSpec,
    PlanSpec,
    Policy,
    Provenance,
    Segment,
    WorkloadClass,
    describe_segments,
    save_policy,
)
from dsv4_tune.registry.arch import arch_problems
from dsv4_tune.registry.buckets import (
    FIXED_GATHER_KERNEL_BELOW,
    SPLITK_DUAL_SCOPE_TOPK_THRESHOLD,
    SPLITK_TOPK_THRESHOLD,
    dual_gather_one_launch,
    token_ranges,
)
from dsv4_tune.registry.variants import VARIANTS
from dsv4_tune.registry.workload import Plan, Workload

T_MAX = 1 << 14  # decisions are evaluated exactly up to here; the last segment is open-ended
BASELINE_FILE = Path(__file__).resolve().parent / "data" / "gfx950-mi355x.json"
ARCH = "gfx950"
HEADS = (64, 128)
TOPK_MAIN = 128  # the SWA window
TOPK_EXTRA = (0, 64, 256, 512, 1024)  # none; C128 at <= 8K / 32K context (padded); C4 Flash / Pro


@dataclass(frozen=True)
class SeedDecision:
    variant: str  # fused | fused_splitk | gather_attend
    split_k: int  # 1 = no split
    one_launch: bool = False  # gather_attend: both scopes gathered in one launch


def fused_dual_ok(t: int, h_q: int, total: int) -> bool:
    """Upstream ``_should_use_fused_dual_scope``: the first matching row decides."""
    if t <= 4:
        return True
    if h_q <= 64 and total <= 800:
        return t <= 256
    if h_q <= 64 and total >= 1024:
        return t <= 128
    if h_q > 64:
        return t <= 256
    return True


def dual_split_k(t: int, h_q: int, total: int) -> int:
    """The dual-scope split-K factor; 0 means no split."""
    a = t <= 8 and (h_q >= 128 or total >= 1024)
    b = h_q <= 64 and total >= 1024 and 8 < t <= 128
    c = t > 64 and total >= SPLITK_DUAL_SCOPE_TOPK_THRESHOLD
    d = h_q > 64 and t > 8 and total >= 256
    if not (a or b or c or d):
        return 0
    if t <= 8:
        return 8 if (total >= 512 and t <= 4) else 4
    if d:
        return 4 if total >= 512 else 2
    if b:
        return 2
    return 4 if total >= SPLITK_TOPK_THRESHOLD else 2


def _gathered_split(total: int) -> int:
    """Attention over the gathered keys (section 7.2): split-K 2 or 3 from 8192 candidates on."""
    if total >= SPLITK_TOPK_THRESHOLD:
        return 3 if total >= 16384 else 2
    return 1


def seed_decision(t: int, w: Workload) -> SeedDecision:
    """What the seed runs for T = ``t`` tokens of workload class ``w`` (sections 4-7)."""
    total = w.total_topk
    if not w.dual:
        if w.topk_main < SPLITK_TOPK_THRESHOLD:
            return SeedDecision("fused", 1)
        return SeedDecision("gather_attend", _gathered_split(total))
    one = dual_gather_one_launch(t, total, w.has_len_main, w.has_len_extra)
    if len(token_ranges(t, total)) > 1:
        # Token-ranged gather-then-attend: each range's own T decides the one-launch gather.
        per = token_ranges(t, total)[0][1]
        return SeedDecision("gather_attend", _gathered_split(total),
                            dual_gather_one_launch(per, total, w.has_len_main, w.has_len_extra))
    if fused_dual_ok(t, w.h_q, total):
        n = dual_split_k(t, w.h_q, total)
        return SeedDecision("fused_splitk", n) if n else SeedDecision("fused", 1)
    return SeedDecision("gather_attend", 1, one)  # the fallback: dual gather + one unified launch


@lru_cache(maxsize=4096)
def plan_for(decision: SeedDecision, w: Workload) -> Plan:
    """Our variant for a seed decision, at its default config (BLOCK_N lowered where the split
    needs more steps than the default gives); where the compile check rules that config out on
    the baseline's arch, the nearest valid config of the space with the same split and gather."""
    plan = _default_for(decision, w)
    if not arch_problems(w, plan, ARCH):
        return plan
    fixed = {k: v for k, v in plan.as_dict().items() if k in ("SPLIT_K", "ONE_LAUNCH")}
    candidates = [p for p in VARIANTS[decision.variant].space(w, ARCH)
                  if all(p.as_dict().get(k) == v for k, v in fixed.items())]
    if not candidates:
        raise ValueError(f"baseline: no config of {decision.variant} with {fixed} compiles cleanly for {ARCH}")
    want = plan.as_dict()
    return min(candidates, key=lambda p: sum(v != want.get(k) for k, v in p.as_dict().items()))


def _default_for(decision: SeedDecision, w: Workload) -> Plan:
    variant = VARIANTS[decision.variant]
    config = variant.default(w).as_dict()
    if decision.variant == "fused_splitk":
        config["SPLIT_K"] = decision.split_k
        for block_n in (64, 32, 16):
            config["BLOCK_N"] = block_n
            if not variant.problems(w, config):
                break
    elif decision.variant == "gather_attend":
        config["ONE_LAUNCH"] = int(decision.one_launch)
        config["SPLIT_K"] = decision.split_k
        if decision.split_k > 1:
            config.update(COMBINE_BLOCK_H=8, combine_warps=4)
    return Plan.make(decision.variant, config)


def segments_for(w: Workload, t_max: int = T_MAX) -> list[Segment]:
    """Runs of equal plans over T = 1..t_max; the last run is open-ended."""
    runs: list[tuple[int, Plan]] = []
    for t in range(1, t_max + 1):
        plan = plan_for(seed_decision(t, w), w)
        if runs and runs[-1][1] == plan:
            runs[-1] = (t, plan)
        else:
            runs.append((t, plan))
    return [Segment(max_tokens=None if i == len(runs) - 1 else end, plan=PlanSpec.of(plan))
            for i, (end, plan) in enumerate(runs)]


def build_baseline_policy() -> Policy:
    classes = []
    for h in HEADS:
        for extra in TOPK_EXTRA:
            w = Workload(1, h, TOPK_MAIN, extra)
            segments = segments_for(w)
            notes = describe_segments(segments)
            if w.dual:
                notes.append(f"seed gather: both scopes in one launch while T * {w.total_topk} < 150000; "
                             f"per scope, its fixed 128-pair kernel while T * topk < {FIXED_GATHER_KERNEL_BELOW} "
                             "(dsv4-tune uses one gather config for both)")
            classes.append(WorkloadClass(h_q=h, topk_main=TOPK_MAIN, topk_extra=extra, segments=segments,
                                         thresholds=notes))
    return Policy(
        gpu=GpuSpec(id="gfx950-mi355x", arch=ARCH, device_name="AMD Instinct MI355X", multiprocessors=256),
        provenance=Provenance(source="seed-hand-rules", created=datetime.now(timezone.utc).date().isoformat(),
                              command="python -m dsv4_tune.policies.baseline"),
        buckets=BucketSpec(max_tokens=T_MAX),
        classes=classes,
    )


if __name__ == "__main__":
    print(save_policy(build_baseline_policy(), BASELINE_FILE))
