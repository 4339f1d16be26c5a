"""A/B of kernel versions in one run on one GPU, where machine-to-machine variance cannot blur them.

An arm is a folder of files that replace the package's (``git archive REV dsv4_tune/kernels | tar -x
-C DIR`` makes one from a revision).  Each arm runs in a process of its own on a copy of the package
with its files laid over it, so the checkout is never touched; the arms alternate for ``--rounds``
rounds.  Per case, each plan (the policy's for the case, and any ``--plans``) is checked against the
checkout's reference as the sweep checks a candidate (``tuner.cases.DecodeCase.check``) on
``bench_decode``'s inputs (576 MiB pools, random ids) and timed as the sweep times a plan (CUDA-graph
replay after an L2 flush), or with ``--in-graph`` as what a call adds to a graph holding more work
(``tuner.measure.time_in_graph``: a serving step's view, where a kernel follows another in the
graph).  Prints each plan's mean time per arm and its ratio to the first arm, and the geomean
ratios; saves JSON.  Exits 1 when a plan failed its check in any arm.  Each arm's run prints its
plans' times as it ends (``round R ARM: CASE PLAN: US``), and a run stopped by SIGTERM (``timeout``
around it: a device visit's budget) still prints the summary of the runs that ended, marked as cut,
and saves nothing.

    git archive main dsv4_tune/kernels | tar -x -C /tmp/ab/main
    python benchmarks/ab_kernels.py --arm main=/tmp/ab/main --arm new=/tmp/ab/new \\
        --cases "64:SWA 128:1" "128:SWA+C4 1152:4" [--policy FILE] [--plans JSON] [--rounds 2]
    python benchmarks/ab_kernels.py --smoke --arm a=DIR --arm b=DIR   # the interpreter: checks only

A case is ``HEADS:LAYER:T`` with a layer of ``bench_decode.LAYERS`` (``--smoke``: ``SMOKE_LAYERS``);
``--plans`` is a JSON list of ``[variant, config]``, tried where the workload's rules allow them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dsv4_tune"
MARK = "ab_kernels: "  # prefix of the child's result lines


class _Cut(Exception):
    """SIGTERM arrived: stop the rounds (the running arm's process is killed) and summarise."""


def _stop(signum: int, frame: object) -> None:
    raise _Cut


def _child(root: Path, args: argparse.Namespace) -> None:
    """Run the cases with the package under ``root`` (one arm), one result line per (case, plan)."""
    import torch

    # Before the kernels are defined (benchmarks.common's rule): the interpreter for --smoke without a GPU.
    os.environ.setdefault("TRITON_INTERPRET", "1" if args.smoke and not torch.cuda.is_available() else "0")
    sys.path.insert(0, str(root))
    import dsv4_tune  # first, from the arm's copy: its submodules follow it

    if not Path(dsv4_tune.__file__).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"the arm's package did not load: {dsv4_tune.__file__}")
    sys.path.insert(1, str(ROOT))
    from benchmarks.bench_decode import FP8, LAYERS, SMOKE_LAYERS, Scopes, point_inputs
    from dsv4_tune.kernels.reference import sparse_decode_ref
    from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
    from dsv4_tune.registry.variants import plan_problems
    from dsv4_tune.registry.workload import Plan
    from dsv4_tune.runtime.target import interpreting
    from dsv4_tune.tuner.cases import DecodeCase
    from dsv4_tune.tuner.measure import time_graph, time_in_graph

    timed = torch.cuda.is_available() and not interpreting()
    device = "cuda" if timed else "cpu"
    layers = {x.name: x for x in (SMOKE_LAYERS if args.smoke else LAYERS)}
    dispatcher = Dispatcher.from_file(args.policy) if args.policy else get_dispatcher()
    extra = [Plan.make(v, c) for v, c in json.loads(args.plans)] if args.plans else []
    gen = torch.Generator().manual_seed(args.seed)
    cases = [c.split(":") for c in args.cases]
    scopes = Scopes(max(int(t) for _, _, t in cases), device, big=timed, gen=gen)
    for h, name, t in cases:
        q, main, kw, w = point_inputs(int(h), layers[name], int(t), scopes, device, gen)
        ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8=FP8, out_dtype=torch.float32, **kw)
        case = DecodeCase(q, main, kw, ref, FP8)  # checked as the sweep checks its candidates
        plans = [dispatcher.lookup(w)] + [p for p in extra if not plan_problems(w, p)]
        for plan in dict.fromkeys(plans):
            row: dict[str, Any] = {"case": f"h{h} {name} T={t}", "plan": str(plan), "us": None}
            status, error, _ = case.check(plan)
            row["check"] = "ok" if status == "ok" else f"!!! {status}: {(error or '')[:200]}"
            if timed and status == "ok":
                try:
                    timing = (time_in_graph if args.in_graph else time_graph)(case.timer(plan))
                    if timing is None:  # time_in_graph: no graph could be captured
                        raise RuntimeError("no CUDA graph for the in-graph timing")
                    row["us"], row["graph"] = timing["median_us"], timing["graph"]
                except Exception as e:  # one plan that fails costs its row, not the run
                    row["check"] = f"!!! timing: {type(e).__name__}: {str(e)[:200]}"
            print(MARK + json.dumps(row), flush=True)


def _arm_problem(files: Path) -> str | None:
    """Why the folder ``files`` cannot be an arm (None when it can): it must hold files under
    ``dsv4_tune/`` (a folder of ``kernels/...`` alone would lay nothing over the package), and
    not a reference of its own (each arm is checked against the checkout's)."""
    ours = [p for p in (files / PACKAGE).rglob("*") if p.is_file()] if (files / PACKAGE).is_dir() else []
    if not ours:
        return f"no file under {files / PACKAGE} to lay over the package"
    ref = files / PACKAGE / "kernels" / "reference.py"
    if ref.is_file() and ref.read_bytes() != (ROOT / PACKAGE / "kernels" / "reference.py").read_bytes():
        return f"{ref} differs from the checkout's: every arm is checked against the same reference"
    return None


def _arm_root(root: Path, files: Path) -> Path:
    """A copy of the package at ``root`` with the arm's files laid over it."""
    shutil.copytree(ROOT / PACKAGE, root / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(files, root, dirs_exist_ok=True)
    return root


def child_env(root: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """An arm's environment: its package copy first on the path, then what the path held (where the
    device machine's wheels are), and a Triton cache of its own."""
    path = os.pathsep.join(filter(None, [str(root), environ.get("PYTHONPATH", "")]))
    return {**environ, "PYTHONPATH": path, "TRITON_CACHE_DIR": str(root / ".triton")}


def _summary(arms: list[str], rows: dict[tuple[str, str], dict[str, list[dict[str, Any]]]],
             rounds: int | None) -> dict[str, Any]:
    """Per (case, plan): each arm's mean time, checks and ratio to the first arm ("checks" FAILED
    where any run failed or an arm missed one of ``rounds`` rounds; None: a cut run, whose arms
    ran what they ran); the geomean ratios; the failed checks."""
    points, ratios, failed = [], {a: [] for a in arms[1:]}, []
    for (case, plan), by_arm in rows.items():
        point: dict[str, Any] = {"case": case, "plan": plan, "checks": "ok"}
        for arm in arms:
            runs = by_arm.get(arm, [])
            point[f"{arm}_checks"] = [r.get("check") for r in runs]
            if any(r.get("check") != "ok" for r in runs) or (rounds is not None and len(runs) != rounds):
                point["checks"] = "FAILED"
            elif not runs and point["checks"] == "ok":  # a cut run: this arm never reached the plan
                point["checks"] = "cut"
            bad = [r["check"] for r in runs if str(r.get("check", "")).startswith("!!!")]
            failed += [f"{arm}: {case} {plan}: {b}" for b in bad[:1]]
            us = [r["us"] for r in runs if r.get("us") is not None]
            point[f"{arm}_us"] = statistics.mean(us) if us else None
            point[f"{arm}_all_us"] = us
        base = point[f"{arms[0]}_us"]
        for arm in arms[1:]:
            if base and point[f"{arm}_us"]:
                point[f"{arm}/{arms[0]}"] = point[f"{arm}_us"] / base
                ratios[arm].append(point[f"{arm}/{arms[0]}"])
        points.append(point)
    geo = {f"{a}/{arms[0]}": math.exp(statistics.mean(map(math.log, r))) for a, r in ratios.items() if r}
    return {"points": points, "geomean": geo, "failed": failed}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arm", action="append", default=[], metavar="NAME=DIR", help="an arm (two or more)")
    ap.add_argument("--cases", nargs="+", default=None, metavar="HEADS:LAYER:T")
    ap.add_argument("--policy", type=Path, default=None, help="policy file (default: the shipped one of this GPU)")
    ap.add_argument("--plans", default="", help='JSON list of [variant, config] tried beside the policy\'s')
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--in-graph", action="store_true",
                    help="time what a call adds to a graph holding more work (default: a single-call graph replay)")
    ap.add_argument("--child-timeout", type=float, default=900.0, help="seconds an arm's run may take")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="small layers; the Triton interpreter without a GPU")
    ap.add_argument("--out", type=Path, default=None, help="folder of the JSON (default benchmarks/results/)")
    ap.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cases is None:
        args.cases = ["16:SWA 64:1", "16:SWA+C128 128:2"] if args.smoke else ["64:SWA 128:1", "128:SWA+C4 1152:4"]
    if args.child is not None:
        _child(args.child, args)
        return 0
    arms: dict[str, Path] = {}
    for spec in args.arm:
        name, sep, folder = spec.partition("=")
        if not sep or not re.fullmatch(r"[\w.-]+", name) or not Path(folder).is_dir():
            ap.error(f"--arm: {spec!r} is not NAME=FOLDER (NAME of letters, digits, . _ -) with an existing folder")
        if name in arms:
            ap.error(f"--arm: {name!r} given twice")
        if problem := _arm_problem(Path(folder)):
            ap.error(f"--arm {name}: {problem}")
        arms[name] = Path(folder)
    if len(arms) < 2:
        ap.error("--arm: give two or more")
    if args.rounds < 1:
        ap.error("--rounds: at least 1")
    for c in args.cases:
        parts = c.split(":")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            ap.error(f"--cases: {c!r} is not HEADS:LAYER:T")
    if args.policy is not None and not args.policy.is_file():
        ap.error(f"--policy: {args.policy} does not exist")
    rows: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    passthrough = ["--cases", *args.cases, "--plans", args.plans, "--seed", str(args.seed)]
    passthrough += ["--policy", str(args.policy)] if args.policy else []
    passthrough += ["--smoke"] if args.smoke else []
    passthrough += ["--in-graph"] if args.in_graph else []
    names = list(arms)
    crashed: list[str] = []
    cut, at = "", "before the first run"
    before = signal.signal(signal.SIGTERM, _stop)
    with tempfile.TemporaryDirectory(prefix="ab_kernels-") as tmp:
        try:
            roots = {name: _arm_root(Path(tmp) / f"arm{i}", files) for i, (name, files) in enumerate(arms.items())}
            for r in range(args.rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:  # each arm first in turn
                    at = f"in round {r + 1}'s run of {name}"
                    env = child_env(roots[name], os.environ)
                    try:
                        done = subprocess.run([sys.executable, __file__, "--child", str(roots[name]), *passthrough],
                                              env=env, capture_output=True, text=True, timeout=args.child_timeout)
                        out, code, err = done.stdout, done.returncode, done.stderr
                    except subprocess.TimeoutExpired as e:
                        out, code, err = e.stdout or "", "timeout", ""
                        out = out.decode() if isinstance(out, bytes) else out
                    got = [json.loads(line[len(MARK):]) for line in out.splitlines() if line.startswith(MARK)]
                    for row in got:
                        rows.setdefault((row["case"], row["plan"]), {}).setdefault(name, []).append(row)
                        us = "-" if row.get("us") is None else f"{row['us']:.2f} us"
                        print(f"round {r + 1} {name}: {row['case']} {row['plan']}: {us} {row['check']}", flush=True)
                    print(f"round {r + 1} {name}: {len(got)} plans (exit {code})", flush=True)
                    if code != 0:
                        crashed.append(f"{name}: round {r + 1} exited {code}: {(err.strip().splitlines() or [''])[-1]}")
                        print(err[-2000:], file=sys.stderr)
        except _Cut:  # subprocess.run has killed the running arm's process
            cut = f"cut by SIGTERM {at}: the summary holds the runs that ended; nothing saved"
    signal.signal(signal.SIGTERM, before)
    summary = _summary(names, rows, None if cut else args.rounds)
    summary["failed"] += crashed
    for p in summary["points"]:
        cols = "  ".join(f"{a} {p[f'{a}_us']:.2f}" if p[f"{a}_us"] is not None else f"{a} -" for a in names)
        rel = "  ".join(f"{a}/{names[0]} {p[f'{a}/{names[0]}']:.3f}" for a in names[1:] if f"{a}/{names[0]}" in p)
        print(f"{p['case']} {p['plan']}: {cols}  {rel}  checks {p['checks']}")
    for k, v in summary["geomean"].items():
        print(f"geomean {k} {v:.3f}")
    for f in summary["failed"]:
        print(f"!!! {f}")
    if cut:
        print(f"!!! {cut}")
        return 1
    sys.path.insert(0, str(ROOT))
    from benchmarks.common import default_out_dir, device_record, result_name, save_results

    payload = {"device": device_record(), "command": " ".join(sys.argv), "arms": {k: str(v) for k, v in arms.items()},
               "rounds": args.rounds, **summary}
    path = save_results(result_name("ab_kernels"), payload, args.out or default_out_dir(args.smoke))
    print(f"saved {path}")
    bad = summary["failed"] or not rows or any(p["checks"] != "ok" for p in summary["points"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
