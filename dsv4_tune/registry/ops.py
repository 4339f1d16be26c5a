"""The registry of the other tuned ops: the DSV4 compressor and the fused Q/K RMSNorm.

Like :mod:`dsv4_tune.registry.variants` for sparse decode, this is the one place that says, per op,
which class parameters it has, which kernel variants exist, their tunable space, the rules that
make a config invalid and a safe default; the tuner, the policy validator and the dispatcher read
it.  Pure Python.  The tuner builds each op's inputs and checks (:mod:`dsv4_tune.tuner.op_cases`);
serving runs it (:mod:`dsv4_tune.serving.compressor`, :mod:`dsv4_tune.serving.qk_norm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dsv4_tune.registry import compressor_space as cs
from dsv4_tune.registry.workload import OpWorkload, Plan

ParamValues = tuple[object, ...] | None  # allowed values; None: any positive int


@dataclass(frozen=True)
class OpVariant:
    """One kernel variant of an op: its space, rules and default for the op's class parameters."""

    name: str
    summary: str
    space_fn: Callable[[dict], list[dict[str, int]]]
    problems_fn: Callable[[dict, dict[str, int]], list[str]]
    default_fn: Callable[[dict], dict[str, int]]


@dataclass(frozen=True)
class OpSpec:
    """An op: class parameters (with allowed values), size meaning, variants, how to run it."""

    name: str
    summary: str
    rows: str  # what the dispatcher's size axis counts for this op
    params: dict[str, ParamValues]
    variants: dict[str, OpVariant]
    default_variant: Callable[[dict], str]  # the variant of the fallback plan, per parameter set

    def param_problems(self, params: dict) -> list[str]:
        out = []
        if set(params) != set(self.params):
            return [f"{self.name}: expected the parameters {sorted(self.params)}, got {sorted(params)}"]
        for k, allowed in self.params.items():
            v = params[k]
            if allowed is None and not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                out.append(f"{self.name}: {k} must be a positive int, got {v!r}")
            elif allowed is not None and v not in allowed:
                out.append(f"{self.name}: {k} must be one of {list(allowed)}, got {v!r}")
        if self.name == "compress" and not out and params["head_dim"] == 128 and params["ratio"] != 4:
            out.append("compress: head_dim 128 is the C4 indexer's; only ratio 4 has it")
        return out


def _compress_variant(name: str, summary: str) -> OpVariant:
    def args(p: dict) -> tuple:
        return p["ratio"], p["head_dim"], p["mode"]

    return OpVariant(
        name, summary,
        space_fn=lambda p: cs.compressor_space(*args(p), variant=name),
        problems_fn=lambda p, c: cs.compressor_problems(*args(p), c, variant=name),
        default_fn=lambda p: cs.compressor_default(*args(p), variant=name),
    )


OPS: dict[str, OpSpec] = {
    "compress": OpSpec(
        "compress", "APE + online-softmax pooling + RMSNorm + RoPE + FP8 store of the C4/C128 compressor",
        rows="requests (decode) or new tokens (prefill)",
        params={"ratio": cs.RATIOS, "head_dim": cs.HEAD_DIMS, "mode": cs.MODES},
        variants={
            "fused": _compress_variant("fused", "one program per compressed row: pool, norm, RoPE, store"),
            "split": _compress_variant("split", "pooling over head_dim / BLOCK_D programs, then norm + RoPE + store"),
        },
        default_variant=lambda p: cs.default_variant(p["ratio"]),
    ),
    "qk_norm": OpSpec(
        "qk_norm", "per-head RMSNorm of Q and K in one launch", rows="tokens T",
        params={"h_q": None, "h_k": None, "head_dim_q": None, "head_dim_k": None},
        variants={"fused": OpVariant(
            "fused", "one launch over the Q and K head rows",
            space_fn=lambda p: cs.qk_norm_space(p["head_dim_q"], p["head_dim_k"]),
            problems_fn=lambda p, c: cs.qk_norm_problems(p["head_dim_q"], p["head_dim_k"], c),
            default_fn=lambda p: cs.qk_norm_default(p["head_dim_q"], p["head_dim_k"]),
        )},
        default_variant=lambda p: "fused",
    ),
}


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"op: unknown {name!r}, expected one of {sorted(OPS)}") from None


def op_plan_problems(w: OpWorkload, plan: Plan) -> list[str]:
    """Why ``plan`` cannot run ``w`` (empty when it can): unknown op/variant, bad parameters, bad config."""
    if w.op not in OPS:
        return [f"unknown op {w.op!r} (known: {sorted(OPS)})"]
    spec = OPS[w.op]
    problems = spec.param_problems(w.params_dict)
    if problems:
        return problems
    variant = spec.variants.get(plan.variant)
    if variant is None:
        return [f"{w.op}: unknown variant {plan.variant!r} (known: {sorted(spec.variants)})"]
    return variant.problems_fn(w.params_dict, plan.as_dict())


def op_space(w: OpWorkload) -> list[Plan]:
    """Every valid plan of every variant of ``w``'s op."""
    spec = get_op(w.op)
    return [Plan.make(v.name, c) for v in spec.variants.values() for c in v.space_fn(w.params_dict)]


def op_default_plan(w: OpWorkload) -> Plan:
    """The fixed, safe plan used when no policy applies."""
    spec = get_op(w.op)
    name = spec.default_variant(w.params_dict)
    return Plan.make(name, spec.variants[name].default_fn(w.params_dict))


def upgrade_op_config(op: str, params: dict, variant: str, config: dict[str, int]) -> dict[str, int]:
    """An op config from an older policy file in this version's form (see the op's config space)."""
    if op == "compress" and isinstance(params.get("mode"), str):
        return cs.upgrade_config(params["mode"], variant, config)
    return config


def op_neighbours(w: OpWorkload, plan: Plan) -> list[Plan]:
    """Valid plans of the same variant that differ from ``plan`` in exactly one knob (refine stage)."""
    base = plan.as_dict()
    out = []
    for p in op_space(w):
        if p.variant == plan.variant:
            c = p.as_dict()
            if sum(c[k] != base.get(k) for k in c) == 1:
                out.append(p)
    return out
