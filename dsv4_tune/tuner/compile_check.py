"""The compile check: every kernel of every variant config, for each target arch, in parallel.

Kernels are enumerated from the registry's spaces for the DSV4 constexpr specialisations (with and
without extra scope, topk_length and sink) and deduplicated; each is cross-compiled
(:mod:`dsv4_tune.tuner.crosscompile`), stored in the SQLite ``compile`` table, and the unfit ones
(failed, spilling, over the arch's shared memory / LDS) become the registry's per-arch rules.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from pathlib import Path

from dsv4_tune.files import write_text
from dsv4_tune.policies.schema import Policy
from dsv4_tune.registry import plans as registry_plans
from dsv4_tune.registry.arch import ARCH_RULES_FILE, variant_arch_problems
from dsv4_tune.registry.launches import kernel_key
from dsv4_tune.registry.ops import OPS, op_space
from dsv4_tune.registry.variants import VARIANTS
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload
from dsv4_tune.tuner.grid import default_op_classes

ARCH_NAMES = ("sm90", "gfx942", "gfx950")
# The constexpr specialisations of the DSV4 shapes: two scopes with lengths and sink; one scope;
# two scopes without lengths or sink.  h_q 128 admits every BLOCK_H.
SPECIALISATIONS = (
    Workload(1, 128, 128, 1024, True, True, True),
    Workload(1, 128, 128, 0, True, True, True),
    Workload(1, 128, 128, 512, False, False, False),
)
# The compressor / Q/K-norm classes of the default grid (their constexprs do not depend on size).
OP_SPECIALISATIONS = tuple(dict.fromkeys(o.workload(1) for o in default_op_classes()))


def _spaces(name: str) -> list[tuple[Workload | OpWorkload, list[Plan]]]:
    """(workload, plans) of a decode variant or an op (all its variants) over its specialisations."""
    if name in OPS:
        return [(w, op_space(w)) for w in OP_SPECIALISATIONS if w.op == name]
    return [(w, VARIANTS[name].space(w)) for w in SPECIALISATIONS]


def check_targets(
    arches: Iterable[str], variants: Iterable[str] | None = None, sample: int | None = None, seed: int = 0,
    plans: Iterable[tuple[Workload | OpWorkload, Plan]] | None = None,
) -> list[tuple[str, tuple]]:
    """Distinct (arch, kernel launch) pairs: of every config of the variants and ops (or a fixed
    random sample of ``sample`` configs per variant and specialisation), or of the given
    (workload, plan) pairs."""
    pairs: list[tuple[Workload | OpWorkload, Plan]] = list(plans) if plans is not None else []
    if plans is None:
        rng = random.Random(seed)
        for name in variants or [*VARIANTS, *OPS]:
            if name not in VARIANTS and name not in OPS:
                raise ValueError(f"variants: unknown {name!r}; known {[*VARIANTS, *OPS]}")
            for w, space in _spaces(name):
                if sample is not None:
                    space = rng.sample(space, min(sample, len(space)))
                pairs += [(w, p) for p in space]
    seen: dict[tuple, None] = {}
    for arch in arches:
        for w, plan in pairs:
            if isinstance(w, Workload) and variant_arch_problems(plan, arch):
                continue  # a plan that can never run there (ws_sm90 off sm90): nothing to learn
            for launch in registry_plans.kernels(plan, w, arch):
                seen.setdefault((arch, launch), None)
    return list(seen)


def _compile(target: tuple[str, tuple]) -> dict:
    from dsv4_tune.tuner.crosscompile import KernelSpec, compile_kernel

    return compile_kernel(KernelSpec(*target))


def with_problems(rows: list[dict]) -> list[dict]:
    """Attach each row's verdict under the current per-arch limits (re-derivable from stored rows)."""
    from dsv4_tune.tuner.crosscompile import problems_of

    return [{**r, "problems": problems_of(r)} for r in rows]


def run_check(targets: list[tuple[str, tuple]], jobs: int, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Compile all targets in ``jobs`` fresh processes; rows in completion order.

    The workers always import the kernels compiled (``TRITON_INTERPRET=0``), also when this
    process runs on the interpreter, whose kernels cannot be handed to ``triton.compile``.
    """
    rows = []
    ctx = mp.get_context("spawn")
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        with ctx.Pool(max(1, jobs)) as pool:
            for row in pool.imap_unordered(_compile, targets):
                rows.append(row)
                if on_row:
                    on_row(row)
    finally:
        if saved is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved
    return rows


def _toolchain_tag(toolchain: str | None) -> str:
    return f" [{toolchain}]" if toolchain else ""


def rule_toolchain(problem: str) -> str | None:
    """The toolchain a rule's problem text was found with (its ``[triton X.Y.Z]`` tail), or None."""
    return problem[problem.rindex("[") + 1 : -1] if problem.endswith("]") and "[" in problem else None


def write_rules(rows: list[dict], path: Path = ARCH_RULES_FILE) -> Path:
    """The per-arch rules file: every kernel with problems, keyed by arch and kernel key, each problem
    tagged with the toolchain that found it (``spills 812 B on sm90 (budget 256) [triton 3.6.0]``).

    A check replaces only its own toolchain's verdicts on the kernels it compiled: rules that other
    toolchains found stay (so CI's Triton and the GPU machine's can both contribute to sm90's rules),
    as do the verdicts of kernels it did not compile.  A kernel skipped here (a Gluon kernel this
    Triton cannot build) changes nothing."""
    try:
        data = json.loads(path.read_text())
        bad: dict[str, dict[str, list[str]]] = data["bad_kernels"]
    except (OSError, ValueError, KeyError):
        data, bad = {}, {}
    here = {r["toolchain"] for r in rows}
    checked = {r["key"] for r in rows if r["status"] != "skipped"}
    kept: dict[str, dict[str, list[str]]] = {}
    for arch, kernels in bad.items():
        for key, problems in kernels.items():
            left = [p for p in problems if key not in checked or rule_toolchain(p) not in here]
            if left:
                kept.setdefault(arch, {})[key] = left
    for r in rows:
        if r["problems"]:
            arch_rules = kept.setdefault(r["arch"], {})
            found = [p + _toolchain_tag(r["toolchain"]) for p in r["problems"]]
            arch_rules[r["key"]] = list(dict.fromkeys([*arch_rules.get(r["key"], []), *found]))
    toolchains = sorted({*data.get("toolchains", []), *here})
    payload = {"toolchains": toolchains, "date": datetime.now(timezone.utc).date().isoformat(),
               "checked": len(rows), "bad_kernels": {a: dict(sorted(k.items())) for a, k in sorted(kept.items())}}
    return write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


SKIPPED = "skipped: this Triton cannot build it"
WHY = {"spills": "spill", "needs": "shared memory / LDS", "does": "compile failure", "cannot": "occupancy 0"}


def summary(rows: list[dict], targets: list[tuple[str, tuple]], arches: Iterable[str]) -> list[dict]:
    """Per arch and variant: how many configs of the space are valid, and why the rest are not."""
    by_key = {r["key"]: r for r in rows}
    out = []
    for arch in arches:
        for name in [*VARIANTS, *OPS]:
            valid = total = 0
            reasons: dict[str, int] = {}
            for w, space in _spaces(name):
                for plan in space:
                    if isinstance(w, Workload) and variant_arch_problems(plan, arch):
                        continue
                    keys = [kernel_key(arch, launch) for launch in registry_plans.kernels(plan, w, arch)]
                    if not all(k in by_key for k in keys):
                        continue
                    total += 1
                    problems = [p for k in keys for p in by_key[k]["problems"]]
                    if any(by_key[k]["status"] == "skipped" for k in keys):
                        reasons[SKIPPED] = reasons.get(SKIPPED, 0) + 1
                    elif problems:
                        kind = WHY.get(problems[0].split(" ")[0], problems[0])
                        reasons[kind] = reasons.get(kind, 0) + 1
                    else:
                        valid += 1
            if total:
                out.append({"arch": arch, "variant": name, "configs": total, "valid": valid,
                            "why not": ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())) or "-"})
    return out


def policy_targets(policies: Iterable[Policy]) -> tuple[list[tuple[str, tuple]], list[str]]:
    """(targets, arches): the kernel launches of every plan of these policies, each for its own arch."""
    targets: list[tuple[str, tuple]] = []
    arches: list[str] = []
    for pol in policies:
        pairs = [(c.workload(), spec.to_plan()) for c in [*pol.classes, *pol.ops] for s in c.segments
                 for _, spec in s.plans()]
        targets += check_targets([pol.gpu.arch], plans=pairs)
        arches = list(dict.fromkeys([*arches, pol.gpu.arch]))
    return targets, arches


def write_tables(rows: list[dict], arches: Iterable[str], folder: Path) -> None:
    """``compile-check-<arch>.json`` per arch: its rows in key order and the toolchain."""
    folder.mkdir(exist_ok=True)  # the folder named, never its parents
    for a in arches:
        mine = sorted((r for r in rows if r["arch"] == a), key=lambda r: r["key"])
        write_text(folder / f"compile-check-{a}.json", json.dumps(
            {"arch": a, "rows": mine, "toolchain": mine[0]["toolchain"] if mine else None}, indent=1) + "\n")
