"""The policy file: pydantic models, validation against the variant registry, atomic JSON I/O.

A policy belongs to one GPU id.  Per workload class (h_q, topk_main, topk_extra and the flags that
change the code path) it holds a piecewise-constant plan over T: ``segments`` ordered by
``max_tokens`` (inclusive), the last one open-ended.  Tuned policies cut at power-of-two buckets;
the seed's hand rules also cut at the exact element-count thresholds they use.  Files are JSON with
sorted keys (readable diffs) and are written through a temporary file and a rename.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError, model_validator

from dsv4_tune.errors import InputError
from dsv4_tune.files import write_text
from dsv4_tune.registry.arch import arch_problems, op_arch_problems
from dsv4_tune.registry.gpus import arch_of_id
from dsv4_tune.registry.ops import op_plan_problems, upgrade_op_config
from dsv4_tune.registry.variants import plan_problems
from dsv4_tune.registry.workload import HEAD_MULTIPLE, OpWorkload, Plan, Workload, class_problems

SCHEMA_VERSION = 1


class PolicyError(InputError):
    """A policy file that cannot be used; the message names the file and the place in it."""


class _Model(BaseModel):
    # strict: a policy says 16, not "16" or true; JSON numbers still fill float fields
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class PlanSpec(_Model):
    variant: str
    config: dict[str, StrictInt]

    def to_plan(self) -> Plan:
        return Plan.make(self.variant, self.config)

    @classmethod
    def of(cls, plan: Plan) -> PlanSpec:
        return cls(variant=plan.variant, config=plan.as_dict())


class Segment(_Model):
    max_tokens: int | None = Field(description="largest T this plan serves (inclusive); null: no limit")
    plan: PlanSpec
    margin: float | None = Field(None, description="measured lead over the runner-up (smallest over the "
                                 "buckets merged here); null when not measured")
    eager_plan: PlanSpec | None = Field(
        None, description="for calls outside a CUDA graph, where each launch costs host time: the plan "
        "with the least max(host time, GPU time); null: the same as plan")

    def plans(self) -> list[tuple[str, PlanSpec]]:
        """(field name, plan) of the plans this segment holds, for the checks."""
        return [("plan", self.plan)] + ([("eager_plan", self.eager_plan)] if self.eager_plan else [])


class Measured(_Model):
    """What the sweep measured at one T bucket (for people and ``verify-policy``; the dispatcher
    reads only the segments)."""

    total_tokens: int = Field(gt=0)
    median_us: float | None = None
    margin: float | None = Field(None, description="the winner's lead over the runner-up at this T")
    runner_up: str | None = None


class WorkloadClass(_Model):
    h_q: int = Field(gt=0, description=f"a multiple of {HEAD_MULTIPLE}")
    topk_main: int = Field(gt=0)
    topk_extra: int = Field(ge=0)
    has_len_main: bool = True
    has_len_extra: bool = True
    has_sink: bool = True
    segments: list[Segment] = Field(min_length=1)
    thresholds: list[str] = Field(default_factory=list, description="for people: where the plan changes")
    measured: list[Measured] = Field(default_factory=list, description="per T bucket: time, margin, runner-up")

    @property
    def key(self) -> tuple[int, int, int, bool, bool, bool]:
        return (self.h_q, self.topk_main, self.topk_extra, self.has_len_main, self.has_len_extra, self.has_sink)

    def workload(self, total_tokens: int = 1) -> Workload:
        return Workload(total_tokens, *self.key)

    @model_validator(mode="after")
    def _check(self) -> WorkloadClass:
        if problems := class_problems(self.h_q, self.topk_main, self.topk_extra):
            raise ValueError("; ".join(problems))
        _check_bounds(self.segments)
        w = self.workload()
        for i, seg in enumerate(self.segments):
            for name, spec in seg.plans():
                problems = plan_problems(w, spec.to_plan())
                if problems:
                    raise ValueError(f"segments.{i}.{name}: {'; '.join(problems)}")
        return self


def _check_bounds(segments: list[Segment]) -> None:
    bounds = [s.max_tokens for s in segments]
    if bounds[-1] is not None:
        raise ValueError("the last segment must be open-ended (max_tokens: null)")
    finite = bounds[:-1]
    if any(b is None for b in finite):
        raise ValueError("only the last segment may have max_tokens: null")
    if any(b < 1 for b in finite) or any(a >= b for a, b in pairwise(finite)):
        raise ValueError(f"segment max_tokens must be >= 1 and strictly increasing, got {finite}")


class OpClass(_Model):
    """Plans of another tuned op (:mod:`dsv4_tune.registry.ops`) for one parameter set; the segments'
    ``max_tokens`` count the op's size axis (requests, new tokens or T)."""

    op: str
    params: dict[str, StrictInt | StrictStr]
    segments: list[Segment] = Field(min_length=1)
    thresholds: list[str] = Field(default_factory=list, description="for people: where the plan changes")
    measured: list[Measured] = Field(default_factory=list, description="per size bucket: time, margin, runner-up")

    @property
    def key(self) -> tuple:
        return self.workload().key

    def workload(self, rows: int = 1) -> OpWorkload:
        return OpWorkload.make(self.op, rows, **self.params)

    @model_validator(mode="before")
    @classmethod
    def _upgrade(cls, data: object) -> object:
        """Plans written by an older version, in this version's config form."""
        if not isinstance(data, dict) or not isinstance(data.get("segments"), list):
            return data
        op, params = str(data.get("op")), data.get("params")
        segments = []
        for seg in data["segments"]:
            plan = seg.get("plan") if isinstance(seg, dict) else None
            if isinstance(plan, dict) and isinstance(plan.get("config"), dict) and isinstance(params, dict):
                config = upgrade_op_config(op, params, str(plan.get("variant")), plan["config"])
                seg = {**seg, "plan": {**plan, "config": config}}
            segments.append(seg)
        return {**data, "segments": segments}

    @model_validator(mode="after")
    def _check(self) -> OpClass:
        _check_bounds(self.segments)
        w = self.workload()
        for i, seg in enumerate(self.segments):
            if seg.eager_plan is not None:
                raise ValueError(f"segments.{i}.eager_plan: op classes have one plan per segment (no eager_plan)")
            problems = op_plan_problems(w, seg.plan.to_plan())
            if problems:
                raise ValueError(f"segments.{i}.plan: {'; '.join(problems)}")
        return self


class GpuSpec(_Model):
    id: str = Field(min_length=1, description="canonical GPU id, e.g. sm90-h100, gfx950-mi355x")
    arch: str = Field(min_length=1)
    device_name: str = ""
    multiprocessors: int = 0
    fp8: Literal["e4m3fn", "e4m3fnuz"] | None = Field(
        None, description="the FP8 flavour of the pools the sweep measured; null: the arch's (older files)")

    @model_validator(mode="after")
    def _check(self) -> GpuSpec:
        if arch_of_id(self.id) != self.arch:
            raise ValueError(f"id {self.id!r} does not start with the arch {self.arch!r}")
        return self


class Provenance(_Model):
    source: str = Field(description="'seed-hand-rules' or 'sweep:<id>'")
    created: str
    torch: str | None = None
    triton: str | None = None
    command: str | None = None


class BucketSpec(_Model):
    kind: Literal["pow2"] = "pow2"
    max_tokens: int = Field(1024, gt=0, description="largest T bucket measured; larger T use the last segment")


class Policy(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    gpu: GpuSpec
    provenance: Provenance
    buckets: BucketSpec = BucketSpec()
    classes: list[WorkloadClass] = Field(min_length=1)
    ops: list[OpClass] = Field(default_factory=list, description="compressor / Q/K-norm plans")

    @model_validator(mode="after")
    def _check(self) -> Policy:
        seen_ops: dict[tuple, int] = {}
        for i, o in enumerate(self.ops):
            if o.key in seen_ops:
                raise ValueError(f"ops.{i} repeats the op class of ops.{seen_ops[o.key]}: {o.key}")
            seen_ops[o.key] = i
            for j, seg in enumerate(o.segments):
                problems = op_arch_problems(o.workload(), seg.plan.to_plan(), self.gpu.arch)
                if problems:
                    raise ValueError(f"ops.{i}.segments.{j}.plan on {self.gpu.arch}: {'; '.join(problems)}")
        seen: dict[tuple, int] = {}
        for i, c in enumerate(self.classes):
            if c.key in seen:
                raise ValueError(f"classes.{i} repeats the workload class of classes.{seen[c.key]}: {c.key}")
            seen[c.key] = i
            w = c.workload()
            for j, seg in enumerate(c.segments):  # the compile-check rules of the policy's own arch
                for name, spec in seg.plans():
                    problems = arch_problems(w, spec.to_plan(), self.gpu.arch)
                    if problems:
                        raise ValueError(f"classes.{i}.segments.{j}.{name} on {self.gpu.arch}: {'; '.join(problems)}")
        return self


def t_span(lo: int, hi: int | None) -> str:
    """A run of T as people read it: ``T = 5``, ``T 5-256`` or ``T >= 5`` (``hi`` None: no end)."""
    return f"T >= {lo}" if hi is None else (f"T = {lo}" if hi == lo else f"T {lo}-{hi}")


def lead_text(margin: float, smallest: bool = False) -> str:
    """The winner's margin over the runner-up in words.  A margin that rounds to zero is a tie, and a
    negative one (a simpler plan chosen within the noise of a faster one) is no lead at all;
    ``smallest``: the margin is the smallest over a segment's buckets (whole percents), else one
    bucket's (tenths)."""
    pct = f"{abs(margin):.0%}" if smallest else f"{abs(margin):.1%}"
    if not pct.strip("0.%"):  # rounds to zero
        return f"ties the runner-up (within {'0.5%' if smallest else '0.05%'})"
    if margin > 0:
        return f"leads the runner-up by {'>= ' if smallest else ''}{pct}"
    return f"the runner-up is {'up to ' if smallest else ''}{pct} faster (within noise; this plan is simpler)"


def describe_segments(segments: list[Segment]) -> list[str]:
    """One line per segment: ``T 5-256: fused_splitk(...)``; what a person reads to see thresholds."""
    out, lo = [], 1
    for seg in segments:
        hi = seg.max_tokens
        lead = "" if seg.margin is None else f" ({lead_text(seg.margin, smallest=True)})"
        eager = "" if seg.eager_plan is None else f"; eager calls: {seg.eager_plan.to_plan()}"
        out.append(f"{t_span(lo, hi)}: {seg.plan.to_plan()}{lead}{eager}")
        lo = (hi or lo) + 1
    return out


def threshold_lines(cls: WorkloadClass | OpClass) -> list[str]:
    """Where a class's plan changes, for people: written from its segments now (the ``thresholds``
    text of a file exported earlier may use older words), then the file's other notes."""
    return describe_segments(cls.segments) + [t for t in cls.thresholds if not t.startswith("T ")]


def _error_text(path: str | Path, err: ValidationError) -> str:
    lines = []
    for e in err.errors()[:5]:
        loc = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"{loc}: {e['msg']}")
    more = "" if err.error_count() <= 5 else f" (+{err.error_count() - 5} more)"
    return f"{path}: " + "; ".join(lines) + more


def parse_policy(text: str, source: str | Path = "<policy>") -> Policy:
    """Parse and validate policy JSON; any problem is a PolicyError naming where it is."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PolicyError(f"{source}: not JSON: {e}") from None
    except RecursionError:
        raise PolicyError(f"{source}: not a policy: JSON nested too deeply") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(_error_text(source, e)) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; every problem (unreadable, not UTF-8, not JSON, invalid) is a
    PolicyError naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise PolicyError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text (byte {e.start}: {data[e.start:e.start + 1]!r})") from None
    return parse_policy(text, path)


def dump_policy(policy: Policy) -> str:
    """Canonical JSON: classes in key order, sorted keys, two-space indent, trailing newline; a
    segment without an eager plan has no ``eager_plan`` key (files from before it stay the same)."""
    ordered = policy.model_copy(update={"classes": sorted(policy.classes, key=lambda c: c.key),
                                        "ops": sorted(policy.ops, key=lambda o: repr(o.key))})
    data = ordered.model_dump(mode="json")
    if data["gpu"]["fp8"] is None:  # absent, not null: files from before it stay the same
        del data["gpu"]["fp8"]
    for group in (*data["classes"], *data["ops"]):  # an absent eager plan is left out, not written as null
        for seg in group["segments"]:
            if seg["eager_plan"] is None:
                del seg["eager_plan"]
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def save_policy(policy: Policy, path: str | Path) -> Path:
    """Write whole or not at all, readable by a serving process of another user (:mod:`dsv4_tune.files`)."""
    return write_text(path, dump_policy(policy))
