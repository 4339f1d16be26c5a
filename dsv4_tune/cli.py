"""The ``dsv4-tune`` command line: thin, parses and prints; the work lives in the package.

Exit codes: 0 done, 1 a failed check or an input that cannot be used (a bad policy, store or grid
file: one line on stderr naming it), 2 bad usage (an option out of range, an unknown name).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from dsv4_tune.errors import InputError
from dsv4_tune.registry.ops import OPS
from dsv4_tune.registry.variants import VARIANTS

app = typer.Typer(help="Autotuning and dispatch policies for DSV4 sparse-decode Triton kernels.", no_args_is_help=True)
# Markup off: text printed here holds paths, pip extras ('dsv4-tune[report]') and user values whose
# square brackets rich would eat; styles are given as ``style=`` instead.  Soft wrap: a line is one
# line in a pipe or a log, a path never broken (tables still fit the terminal).
console = Console(markup=False, highlight=False, soft_wrap=True)
err_console = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def command(*names: str, **kw: Any) -> Callable:
    """``app.command`` whose command ends in one line on stderr and exit 1, not a traceback, when a
    user's input cannot be used (:class:`~dsv4_tune.errors.InputError`) or a file cannot be read or
    written."""
    def register(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except InputError as e:
                _fail(str(e), e.exit_code)
            except OSError as e:
                _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}", 1)

        app.command(*names, **kw)(guarded)
        return fn
    return register


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"dsv4-tune {version('dsv4-tune')}")
        except PackageNotFoundError:
            print("dsv4-tune (not installed)")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version, help="print the version"),
) -> None:
    """dsv4-tune: sweep kernel configs on this GPU, export policies, look plans up."""


class Arch(str, Enum):
    """The cross-compile targets (:data:`dsv4_tune.tuner.crosscompile.ARCHS`, which imports Triton;
    tests/test_cli.py keeps the two equal)."""

    sm90 = "sm90"
    gfx942 = "gfx942"
    gfx950 = "gfx950"


# What ``compile-check --variants`` may name: the decode variants and the ops (registry names).
Kernel = Enum("Kernel", {name: name for name in [*VARIANTS, *OPS]}, type=str)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


JSON = typer.Option(False, "--json", help="machine-readable output on stdout")


def default_jobs() -> int:
    """Compile processes unless --jobs says: the CPUs this process may use, at most 12 (each Triton
    compile holds a few hundred MB; 12 kept a GPU host's compiles ahead of its timing)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(12, cpus or 1))


JOBS_HELP = "compile processes (default: this machine's CPUs, at most 12)"


@command()
def info(as_json: bool = JSON) -> None:
    """Print the detected GPU and arch, torch/triton versions and the FP8 flavour in use."""
    import torch
    import triton

    from dsv4_tune.policies.dispatcher import select_policy
    from dsv4_tune.policies.gpu import detect, driver_version

    gpu = detect()
    dispatcher, notes = select_policy(gpu)
    if as_json:
        _print_json({"gpu": gpu.name if gpu.is_real else None, "id": gpu.id, "arch": gpu.arch, "real": gpu.is_real,
                     "multiprocessors": gpu.multiprocessors, "pci_device_id": gpu.pci_device_id, "fp8": gpu.fp8,
                     "driver": driver_version(), "torch": torch.__version__,
                     "triton": triton.__version__, "policy": dispatcher.source, "policy_notes": notes})
        return
    table = Table(show_header=False, box=None)
    table.add_row("GPU", gpu.name if gpu.is_real else "none")
    table.add_row("arch", gpu.arch)
    table.add_row("SMs / CUs", str(gpu.multiprocessors) if gpu.is_real else "-")
    table.add_row("PCI device id", f"{gpu.pci_device_id:#06x}" if gpu.pci_device_id else "-")
    table.add_row("driver", driver_version())
    table.add_row("fp8 flavour", gpu.fp8)
    table.add_row("torch", torch.__version__)
    table.add_row("triton", triton.__version__)
    table.add_row("policy", dispatcher.source)
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    if not gpu.is_real:
        console.print("No GPU: kernels run on the Triton interpreter; timings are not real measurements.",
                      style="yellow")


PROGRESS_EVERY_S = 5.0  # with no terminal to draw a bar on, long work says where it is this often


@contextlib.contextmanager
def _working(what: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """Long work says what it is doing, on stderr (stdout may hold --json): a bar on a terminal, else
    (output redirected, CI) one line every PROGRESS_EVERY_S seconds, even while a step is slow.
    Yields ``update(done=None, total=None, what=None)``; ``done`` None counts one more."""
    state: dict[str, Any] = {"done": 0, "total": total, "what": what}

    def update(done: int | None = None, total: int | None = None, what: str | None = None) -> None:
        state["done"] = state["done"] + 1 if done is None else done
        state["total"] = state["total"] if total is None else total
        state["what"] = state["what"] if what is None else what

    if err_console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TimeRemainingColumn())
        with Progress(*columns, console=err_console, transient=True) as progress:
            task = progress.add_task(what, total=total)

            def show(**kw: Any) -> None:
                update(**kw)
                progress.update(task, completed=state["done"], total=state["total"], description=state["what"])

            yield show
        return
    t0, stop = time.monotonic(), threading.Event()

    def tick() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            of = "" if state["total"] is None else f" of {state['total']}"
            err_console.print(f"{state['what']}: {state['done']}{of} done, {time.monotonic() - t0:.0f} s")

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield update
    finally:
        stop.set()
        thread.join()


def _load_or_exit(path: Path):
    from dsv4_tune.policies.schema import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as e:
        _fail(f"invalid policy: {e}", 1)


def _fail(message: str, code: int = 2) -> NoReturn:
    """One line on stderr; exit ``code`` (2: bad usage, 1: a failed check or unusable input)."""
    err_console.print(Text.assemble(("error", "red"), f" {message}"), soft_wrap=True)
    raise typer.Exit(code)


def _class_option(heads: int, topk_main: int, topk_extra: int) -> None:
    """Exit 2 naming the option when (h_q, topk_main, topk_extra) is not a workload class."""
    from dsv4_tune.registry.workload import class_problems_by_field

    options = {"h_q": "--heads", "topk_main": "--topk-main", "topk_extra": "--topk-extra"}
    for field, problem in class_problems_by_field(heads, topk_main, topk_extra).items():
        _fail(f"{options[field]}: {problem}")


def _kernels_can_run() -> None:
    """With no GPU the kernels run on the Triton interpreter, which must be on before Triton and the
    kernels are imported: switch it on here and say so (never a sweep of launch errors)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return
    import torch

    if torch.cuda.is_available():
        return
    if "dsv4_tune.env" in sys.modules:  # too late to switch in this process
        _fail("no GPU, and the Triton interpreter is off: run with TRITON_INTERPRET=1", 2)
    os.environ["TRITON_INTERPRET"] = "1"
    err_console.print("no GPU: the kernels run on the Triton interpreter (TRITON_INTERPRET=1)")


def _devices(spec: str, info) -> list[int]:
    """``--devices``: all, or comma-separated indices; GPUs of different kinds are refused."""
    import torch

    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.tuner.workers import check_devices

    count = torch.cuda.device_count() if info.is_real else 0
    if spec.strip() == "all":
        return list(range(count)) or [0]
    try:
        chosen = [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        _fail(f"--devices: expected all or indices like 0,1, got {spec!r}")
    if not chosen or len(set(chosen)) != len(chosen) or min(chosen) < 0 or (count and max(chosen) >= count):
        _fail(f"--devices: expected distinct indices of the {count} GPUs here, got {spec!r}")
    if info.is_real:
        check_devices([detect(i) for i in chosen])  # a DeviceError: exit 2
    return chosen


def _open_store(db: Path, readonly: bool = True):
    """The store at ``db`` (read-only: it must exist, and nothing is written); a StoreError otherwise."""
    from dsv4_tune.cache.store import Store

    return Store(db, readonly=readonly)


def _dispatcher_for(policy: Path | None):
    """(dispatcher, selection notes) of ``--policy``, or of the policy chosen for this GPU; every note
    (a fallback to the built-in default above all) is also said on stderr, whatever the output."""
    from dsv4_tune.policies.dispatcher import Dispatcher, select_policy

    if policy is not None:
        return Dispatcher(_load_or_exit(policy), str(policy)), []
    dispatcher, notes = select_policy()
    for note in notes:
        err_console.print(f"note: {note}", soft_wrap=True)
    return dispatcher, notes


def _no_class_note(dispatcher, label: str) -> None:
    """One line on stderr when a policy has no class for a workload (the answer is the built-in default)."""
    if dispatcher.policy is not None:  # with no policy at all, the selection note said so
        err_console.print(f"note: {dispatcher.source} has no class for {label} (nor a nearest one): the built-in "
                          "default plan", soft_wrap=True)


@command()
def lookup(
    tokens: int = typer.Option(..., "--tokens", min=1, help="total tokens T = b * s_q"),
    heads: int = typer.Option(..., "--heads", help="h_q (a multiple of 8)"),
    topk_main: int = typer.Option(128, "--topk-main", min=1),
    topk_extra: int = typer.Option(0, "--topk-extra", min=0, help="0: no extra scope"),
    no_len_main: bool = typer.Option(False, "--no-len-main", help="main scope has no topk_length"),
    no_len_extra: bool = typer.Option(False, "--no-len-extra", help="extra scope has no topk_length"),
    no_sink: bool = typer.Option(False, "--no-sink", help="no attention sink"),
    policy: Path | None = typer.Option(None, "--policy", help="policy file (default: the one chosen for this GPU)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    explain: bool = typer.Option(False, "--explain", help="say which file, GPU id, class and bucket answered"),
) -> None:
    """Print the plan a policy gives a workload, and the thresholds of its class."""
    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.policies.schema import threshold_lines
    from dsv4_tune.registry.buckets import bucket_tokens
    from dsv4_tune.registry.workload import Workload

    _class_option(heads, topk_main, topk_extra)
    dispatcher, notes = _dispatcher_for(policy)
    w = Workload(tokens, heads, topk_main, topk_extra, not no_len_main, not no_len_extra, not no_sink)
    plan, eager = dispatcher.lookup(w), dispatcher.lookup(w, eager=True)
    cls = dispatcher.class_of(w)
    if cls is None:
        _no_class_note(dispatcher, w.label)
    info = {
        "plan": {"variant": plan.variant, "config": plan.as_dict()},
        "eager_plan": {"variant": eager.variant, "config": eager.as_dict()},
        "thresholds": threshold_lines(cls) if cls else [],
        "source": dispatcher.source,
        "gpu": None if dispatcher.policy is None else dispatcher.policy.gpu.id,
        "detected_gpu": detect().id,
        "class": None if cls is None else list(cls.key),
        "class_label": None if cls is None else cls.workload(1).label,
        "nearest_class": cls is not None and cls.key != (
            heads, topk_main, topk_extra, not no_len_main, not no_len_extra, not no_sink),
        "bucket": bucket_tokens(tokens),
        "notes": notes,
    }
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    console.print(str(plan), style="bold")
    if eager != plan:
        console.print(Text.assemble("eager calls (outside a CUDA graph): ", (str(eager), "bold")))
    for line in info["thresholds"]:
        console.print(f"  {line}", highlight=False)
    if explain:
        console.print(f"source: {info['source']} (policy GPU {info['gpu']}, detected {info['detected_gpu']})",
                      highlight=False)
        if info["class"] is None:
            answered = "no class of the policy: the built-in default plan"
        else:
            answered = f"class {info['class_label']} ({'nearest class' if info['nearest_class'] else 'exact class'})"
        console.print(f"{answered}; T = {tokens} is in bucket {info['bucket']}", highlight=False)


@command("lookup-op")
def lookup_op(
    op: str = typer.Argument(..., help="compress or qk_norm"),
    rows: int = typer.Option(..., "--rows", min=1,
                             help="requests (compress decode), new tokens (compress prefill) or T"),
    param: list[str] = typer.Option([], "--param", "-p", help="NAME=VALUE, e.g. -p ratio=4 -p head_dim=512 "
                                    "-p mode=decode (qk_norm: h_q, h_k, head_dim_q, head_dim_k)"),
    policy: Path | None = typer.Option(None, "--policy", help="policy file (default: the one chosen for this GPU)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Print the plan a policy gives a compressor or Q/K-norm call."""
    from dsv4_tune.policies.schema import threshold_lines
    from dsv4_tune.registry.workload import OpWorkload

    params: dict[str, int | str] = {}
    for item in param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            _fail(f"--param: expected NAME=VALUE, got {item!r}")
        try:
            params[name] = int(value)
        except ValueError:
            params[name] = value
    from dsv4_tune.registry.ops import get_op

    try:
        problems = get_op(op).param_problems(params)
    except ValueError as e:
        problems = [str(e)]
    if problems:
        _fail("; ".join(problems))
    dispatcher, notes = _dispatcher_for(policy)
    w = OpWorkload.make(op, rows, **params)
    plan = dispatcher.lookup_op(w)
    cls = dispatcher.op_class_of(w)
    if cls is None:
        _no_class_note(dispatcher, w.label)
    if as_json:
        print(json.dumps({"plan": {"variant": plan.variant, "config": plan.as_dict()}, "source": dispatcher.source,
                          "measured_class": cls is not None, "thresholds": threshold_lines(cls) if cls else [],
                          "notes": notes},
                         indent=2, sort_keys=True))
        return
    console.print(Text.assemble((f"{op} {plan}", "bold"),
                                "" if cls else "  (default: the policy has no such op class)"))
    for line in threshold_lines(cls) if cls else []:
        console.print(f"  {line}", highlight=False)


@command()
def validate(path: Path, as_json: bool = JSON) -> None:
    """Check a policy file; exit 1 with the exact problem (its place inside the JSON)."""
    from dsv4_tune.policies.schema import PolicyError, load_policy

    if as_json:
        try:
            policy = load_policy(path)
        except PolicyError as e:
            _print_json({"ok": False, "path": str(path), "error": str(e)})
            raise typer.Exit(1) from None
        _print_json({"ok": True, "path": str(path), "gpu": policy.gpu.id, "classes": len(policy.classes),
                     "ops": len(policy.ops), "source": policy.provenance.source})
        return
    policy = _load_or_exit(path)
    console.print(f"ok: {path} ({policy.gpu.id}, {len(policy.classes)} classes, source {policy.provenance.source})",
                  highlight=False)


@command()
def show(
    path: Path, buckets: bool = typer.Option(False, "--buckets", help="also list each measured T bucket: time, "
                                             "lead over the runner-up, runner-up"),
    as_json: bool = JSON,
) -> None:
    """Print a policy as a table of workload classes x T ranges."""
    from dsv4_tune.policies.schema import describe_segments

    policy = _load_or_exit(path)
    if as_json:
        _print_json({
            "path": str(path), "gpu": policy.gpu.id, "source": policy.provenance.source,
            "classes": [{"key": list(c.key), "segments": describe_segments(c.segments),
                         "measured": [m.model_dump() for m in c.measured]} for c in sorted(policy.classes,
                                                                                           key=lambda c: c.key)],
            "ops": [{"op": o.op, "params": o.params, "segments": describe_segments(o.segments),
                     "measured": [m.model_dump() for m in o.measured]} for o in policy.ops]})
        return
    table = Table(title=f"{path.name}: {policy.gpu.id} ({policy.provenance.source})")
    for col in ("h_q", "topk main+extra", "flags len/len/sink", "T range: plan"):
        table.add_column(col)
    if buckets:
        table.add_column("T: us, lead, runner-up")
    for c in sorted(policy.classes, key=lambda c: c.key):
        flags = "/".join("y" if f else "n" for f in c.key[3:])
        row = [str(c.h_q), f"{c.topk_main}+{c.topk_extra}", flags, "\n".join(describe_segments(c.segments))]
        if buckets:
            row.append("\n".join(
                f"{m.total_tokens}: {m.median_us} us, "
                f"{'-' if m.margin is None else f'{m.margin:.0%}'}, {m.runner_up or '-'}" for m in c.measured))
        table.add_row(*row)
    console.print(table)
    if policy.ops:
        ops = Table(title="compressor / Q/K-norm ops (sizes: requests, new tokens or T)")
        for col in ("op", "params", "size range: plan"):
            ops.add_column(col)
        for o in sorted(policy.ops, key=lambda o: repr(o.key)):
            ops.add_row(o.op, " ".join(f"{k}={v}" for k, v in sorted(o.params.items())),
                        "\n".join(describe_segments(o.segments)))
        console.print(ops)


MAX_DIFF_TOKENS = 1 << 16  # diff walks every T up to --max-tokens: a bound keeps it seconds and megabytes


@command()
def diff(
    a: Path, b: Path, max_tokens: int = typer.Option(4096, min=1, max=MAX_DIFF_TOKENS, help="compare T = 1..this"),
    exit_code: bool = typer.Option(False, "--exit-code", help="exit 1 when the policies differ (like git diff)"),
    as_json: bool = JSON,
) -> None:
    """Show where two policies choose differently (per class, runs of T; eager plans and op classes
    included) and what each measured there; then how far their times agree where both measured."""
    from dsv4_tune.policies.compare import agreement, class_name, differences
    from dsv4_tune.policies.dispatcher import Dispatcher
    from dsv4_tune.policies.schema import t_span

    da, db_ = Dispatcher(_load_or_exit(a), str(a)), Dispatcher(_load_or_exit(b), str(b))
    found = differences(da, db_, max_tokens)
    if as_json:
        _print_json([{"kind": d.kind, "class": class_name(d.kind, d.key), "key": list(d.key), "from_tokens": d.lo,
                      "to_tokens": d.hi,
                      "a": d.a, "b": d.b, "measured": [{"tokens": t, "a_us": x, "b_us": y} for t, x, y in d.measured]}
                     for d in found])
    else:
        for d in found:
            console.print(f"{class_name(d.kind, d.key)} {t_span(d.lo, d.hi)}:\n  {a.name}: {d.a}\n  {b.name}: {d.b}")
            if d.measured:
                console.print("  measured us, A / B (B/A): " + ", ".join(
                    f"T={t} {_us(x)} / {_us(y)}" + (f" ({y / x:.2f}x)" if x and y else "") for t, x, y in d.measured))
        if not found:
            console.print("no differences", highlight=False)
        agree = agreement(da, db_)
        if agree["buckets"]:
            console.print(f"{b.name} / {a.name} where both measured ({agree['buckets']} buckets): median "
                          f"{agree['median']:.3f}, middle 90% {agree['p05']:.3f}-{agree['p95']:.3f}, "
                          f"range {agree['min']:.3f}-{agree['max']:.3f}", highlight=False)
    if exit_code and found:
        raise typer.Exit(1)


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


DEFAULT_DB = Path("dsv4-tune.db")


@command()
def sweep(
    gpu: str = typer.Option("auto", "--gpu", help="auto, an arch (sm90, gfx942, gfx950) or a device name / GPU id"),
    grid: Path | None = typer.Option(None, "--grid", help="grid JSON {classes, tokens} (default: the DSV4 grid)"),
    db: Path = typer.Option(DEFAULT_DB, "--db", help="SQLite store"),
    resume: bool = typer.Option(True, "--resume/--fresh", help="continue the matching sweep, or start anew"),
    jobs: int = typer.Option(default_jobs(), "--jobs", min=1, help=JOBS_HELP[:-1] + ", GPU only)"),
    rounds: int = typer.Option(3, "--rounds", min=1,
                               help="interleaved timing rounds (the final stage does twice as many)"),
    reps: int = typer.Option(10, "--reps", min=1, help="graph replays per candidate per round"),
    refine_rounds: int = typer.Option(1, "--refine-rounds", min=1,
                                      help="local-search rounds (each from the best plans so far; more on a "
                                           "finished sweep deepens it)"),
    devices: str | None = typer.Option(None, "--devices", help="all, or GPU indices 0,1,...: one worker process "
                                       "per GPU, the store handing out the workloads (with no GPU: that many "
                                       "interpreter workers)"),
    ray_address: str | None = typer.Option(None, "--ray", help="a Ray cluster's address (auto: the one this "
                                           "machine is in; local: a new one here): one worker per GPU of the "
                                           "cluster, the rows sent back to this store (pip install "
                                           "'dsv4-tune[ray]')"),
) -> None:
    """Measure every candidate of the grid on this GPU, store it, pick winners (resumable); exit 1
    when nothing could be measured."""
    import time

    _kernels_can_run()

    from dsv4_tune.cache.store import Store
    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.tuner.grid import Grid, default_grid, interpreter_grid
    from dsv4_tune.tuner.sweep import run_sweep

    common = {"fresh": not resume, "jobs": jobs, "rounds": rounds, "reps": reps, "refine_rounds": refine_rounds}
    if ray_address is not None:
        if devices is not None:
            _fail("--ray and --devices: choose one (--ray places one worker per GPU of the cluster)")
        from dsv4_tune.tuner.ray_sweep import run_sweep_ray

        ray_grid = Grid.load(grid) if grid is not None else None
        console.print(f"sweep on the Ray cluster at {ray_address}: one worker per GPU, db {db}", highlight=False)

        def runner(open_store: Callable[[], Store], **kw: Any) -> str:
            try:  # a cluster it cannot use is a DeviceError (exit 2, as every InputError)
                return run_sweep_ray(open_store, ray_grid, address=None if ray_address == "local" else ray_address,
                                     expect=gpu, **kw)
            except RuntimeError as e:  # the cluster failed the sweep: exit 1, resume it
                _fail(str(e), 1)
    else:
        info = detect()
        workers = None if devices is None else _devices(devices, info)
        if workers and info.is_real:
            info = detect(workers[0])  # the sweep's GPU is the one its workers use
        if not info.matches(gpu):
            _fail(f"--gpu {gpu} does not match the detected GPU: {info.name} ({info.id}, arch {info.arch})")
        the_grid = Grid.load(grid) if grid is not None else default_grid() if info.is_real else interpreter_grid()
        label = "" if info.is_real else " (Triton interpreter: NOT a real measurement)"
        console.print(Text.assemble(f"sweep on {info.name} ({info.id})", (label, "yellow"),
                                    f": {len(the_grid.points())} workloads, db {db}"))

        def runner(open_store: Callable[[], Store], **kw: Any) -> str:
            if workers is None:
                return run_sweep(open_store(), the_grid, info, **kw)
            from dsv4_tune.tuner.workers import run_sweep_parallel

            return run_sweep_parallel(open_store(), the_grid, info, workers, **kw)

    opened: list[Store] = []  # the store is created only once the sweep can start

    def open_store() -> Store:
        opened.append(Store(db))
        return opened[-1]

    t0 = time.time()

    def on_open(sweep_id: str, resumed: bool, kept: int) -> None:
        if resumed:
            console.print(f"resuming sweep {sweep_id}: {kept} rows kept (failed launches are tried again; "
                          "--fresh starts anew)", highlight=False)
        if opened and opened[-1].stale:
            changed = ", ".join(f"{k} ({n} rows)" for k, n in sorted(opened[-1].stale.items()))
            console.print(f"kernels changed since this sweep measured them: {changed}; those are timed again",
                          highlight=False)

    with _working("workloads x stages") as update:
        sweep_id = runner(open_store, on_point=lambda n, total, key: update(n, total, key), on_open=on_open,
                          **common)
    store = opened[-1]
    swept = store.sweep(sweep_id)
    real, points = not swept["interpreter"], len(Grid.from_json(json.loads(swept["grid"])).points())
    winners = store.winners(sweep_id)
    table = Table(title=f"winners of sweep {sweep_id}{' (interpreter: not real)' if not real else ''}")
    for col in ("workload", "plan", "us", "margin", "reason"):
        table.add_column(col)
    for w in winners:
        margin = "-" if w["margin"] is None else f"{w['margin']:.1%}"
        table.add_row(w["workload"], w["plan"], f"{w['median_us']:.1f}", margin, w["reason"])
    console.print(table)
    if store.measurement_count(sweep_id, "ok") == 0:
        first = store.first_error(sweep_id)
        why = f"; the first: {first['status']} of {first['plan']} at {first['workload']}: {first['error']}" \
            if first else ""
        _fail(f"sweep {sweep_id}: no candidate could be measured{why}", 1)
    missing = points - len(winners)
    if missing:
        console.print(f"{missing} grid points have no winner (every candidate failed there): `export` refuses this "
                      "sweep", style="yellow")
        raise typer.Exit(1)
    console.print(f"sweep {sweep_id}: {time.time() - t0:.0f} s; export with "
                  f"`dsv4-tune export --db {db} --out {swept['gpu_id']}.json`", highlight=False)


@command()
def status(db: Path = typer.Option(DEFAULT_DB, "--db"), as_json: bool = JSON) -> None:
    """Where the sweeps of a store stand: per stage done / total, the ETA (compile time counted),
    a sweep whose process died shown as interrupted, and what to run next."""
    from dsv4_tune.tuner.progress import sweep_status

    store = _open_store(db)
    rows = [sweep_status(store, s, db) for s in store.sweeps()]
    if as_json:
        _print_json({"db": str(db), "sweeps": rows})
        return
    if not rows:
        console.print(f"{db}: no sweeps yet; start one with `dsv4-tune sweep --db {db}`", highlight=False,
                      soft_wrap=True)
    for r in rows:
        finished = r["finished"] or "-"
        console.print(Text.assemble((f"sweep {r['id']}", "bold"), f" on {r['gpu']}: {r['state']}, {r['rows']} rows, "
                                    f"{r['winners']} winners (started {r['started']}, finished {finished})"),
                      soft_wrap=True)
        for st in r["stages"]:
            name = st["stage"]
            total = "" if st.get("total") is None else f" / {st['total']}"
            extra = f", {st['seconds']} s" if "seconds" in st else ""
            count = f"{st['kernels']} kernels" if "kernels" in st else f"{st['done']}{total}"
            console.print(f"  {name}: {count}{extra}", highlight=False, soft_wrap=True)
        if r["eta_s"] is not None:
            console.print(f"  ETA about {r['eta_s'] / 60:.0f} min (at the pace so far, compile time included)",
                          highlight=False, soft_wrap=True)
        console.print(f"  next: {r['next']}", highlight=False, soft_wrap=True)


@command()
def export(
    out: Path = typer.Option(..., "--out", help="policy file to write"),
    db: Path = typer.Option(DEFAULT_DB, "--db"),
    sweep_id: str | None = typer.Option(None, "--sweep", help="sweep id (default: the latest)"),
    gpu: str | None = typer.Option(None, "--gpu", help="export the latest sweep of this GPU id (a store merged "
                                   "from several GPUs)"),
) -> None:
    """Write the policy of a sweep (validated; refuses grid points without a winner); with a folder as
    --out, one policy per GPU id of the store (<folder>/<gpu id>.json)."""
    from dsv4_tune.policies.schema import save_policy
    from dsv4_tune.tuner.export import export_policy, gpu_ids

    store = _open_store(db)
    ids = gpu_ids(store)
    if out.is_dir():
        if sweep_id is not None:
            _fail("export: --sweep writes one policy: give a file as --out")
        targets = [(g, out / f"{g}.json") for g in ([gpu] if gpu else ids)]
    elif sweep_id is None and gpu is None and len(ids) > 1:
        _fail(f"export: {db} holds sweeps of several GPUs ({', '.join(ids)}): give --gpu ID, or a folder as --out "
              "for one policy per GPU", 1)
    else:
        targets = [(gpu, out)]
    for g, path in targets:
        try:
            policy, s = export_policy(store, sweep_id, "dsv4-tune " + " ".join(sys.argv[1:]), g)
        except ValueError as e:
            _fail(str(e), 1)
        save_policy(policy, path)
        note = " (from an interpreter sweep: NOT a real measurement)" if s["interpreter"] else ""
        console.print(f"wrote {path}: {policy.gpu.id}, {len(policy.classes)} classes{note}", highlight=False)


@command()
def merge(
    sources: list[Path] = typer.Argument(..., help="the stores to merge (e.g. one per host)"),
    out: Path = typer.Option(..., "--out", help="the merged store (created, or added to)"),
    as_json: bool = JSON,
) -> None:
    """Merge stores into one without duplicates: the same sweep in two stores is merged, different
    sweeps that share an id are both kept (renumbered), each with its GPU identity and provenance."""
    from dsv4_tune.cache.merge import merge_stores

    summary = merge_stores(sources, out)
    if as_json:
        _print_json(summary)
        return
    console.print(f"{out}: {summary['sweeps_added']} sweeps added, {summary['sweeps_merged']} merged into one "
                  f"already there; it holds {summary['measurements']} measurements ({summary['measurements_new']} "
                  f"new) and {summary['winners']} winners ({summary['winners_new']} new)")
    for origin, new in summary["renumbered"].items():
        console.print(f"  {origin} is {new} here (its id was taken)", highlight=False)


def _policy_for_command(path: Path | None):
    """The named policy file, or the one chosen for this GPU; exits 1 when there is none."""
    from dsv4_tune.policies.dispatcher import FALLBACK, select_policy

    if path is not None:
        return _load_or_exit(path), str(path)
    dispatcher, notes = select_policy()
    if dispatcher.policy is None:  # the notes say why none applies and how to make one; nothing falls back here
        why = " ".join(n.removeprefix("dsv4-tune: ").replace(FALLBACK, "") for n in notes)
        _fail(f"no policy applies to this GPU: {why}", 1)
    for note in notes:
        err_console.print(f"note: {note}", soft_wrap=True)
    return dispatcher.policy, dispatcher.source


@command()
def warmup(
    policy: Path | None = typer.Argument(None, help="policy file (default: the one chosen for this GPU)"),
    jobs: int = typer.Option(default_jobs(), "--jobs", min=1, help=JOBS_HELP),
) -> None:
    """Compile every kernel a policy can pick, in parallel, so serving never compiles on a request."""
    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.tuner.verify import warmup as do_warmup

    pol, source = _policy_for_command(policy)
    if not detect().is_real:
        console.print("no GPU: nothing to compile (the interpreter does not compile)", highlight=False)
        return
    with _working(f"compiling the kernels of {source} with {jobs} processes"):
        kernels, seconds = do_warmup(pol, jobs)
    console.print(f"compiled {kernels} kernels of {source} in {seconds:.0f} s", highlight=False)


@command("verify-policy")
def verify_policy(
    policy: Path | None = typer.Argument(None, help="policy file (default: the one chosen for this GPU)"),
    max_points: int = typer.Option(24, "--max-points", min=1, help="(class, T) samples to re-time"),
    as_json: bool = JSON,
) -> None:
    """Re-time a sample of the policy's buckets against the default plan on this GPU and toolchain;
    exit 1 where the policy has become measurably slower (stale)."""
    _kernels_can_run()
    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.tuner.verify import verify

    pol, source = _policy_for_command(policy)
    gpu = detect()
    if gpu.is_real and gpu.arch != pol.gpu.arch:
        _fail(f"{source} is for {pol.gpu.arch}; this GPU is {gpu.arch}")
    with _working("re-timing") as update:
        rows = verify(pol, real=gpu.is_real, max_points=max_points, on_row=lambda n, total: update(n, total))
    stale = sum(r["stale"] for r in rows)
    if as_json:
        _print_json({"policy": source, "gpu": gpu.id, "real": gpu.is_real, "samples": rows, "stale": stale})
        if stale:
            raise typer.Exit(1)
        return
    table = Table(title=f"{source} vs the default plan on {gpu.name}" + ("" if gpu.is_real else " (interpreter)"))
    for col in ("class", "T", "policy us", "default us", "stale"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["label"], str(r["T"]), f"{r['policy_us']:.1f}", f"{r['default_us']:.1f}",
                      Text("yes", "red") if r["stale"] else "no")
    console.print(table)
    if stale:
        console.print(f"{stale} of {len(rows)} samples are slower than the default: re-run the sweep", style="red")
        raise typer.Exit(1)


@command("compile-check")
def compile_check(
    arch: list[Arch] = typer.Option(list(Arch), "--arch", help="a target (repeat for more; default: all)"),
    variants: list[Kernel] = typer.Option([], "--variants", help="a decode variant or op to check (repeat for "
                                          "more; default: all)"),
    sample: int | None = typer.Option(None, "--sample", min=1, help="a fixed random sample of N configs per variant "
                                      "and specialisation (the workload shapes a kernel is compiled for)"),
    policy: list[Path] = typer.Option([], "--policy", help="check the plans of these policies (for their own arch)"),
    jobs: int = typer.Option(default_jobs(), "--jobs", min=1, help=JOBS_HELP),
    db: Path | None = typer.Option(None, "--db", help="store the rows in this SQLite file (table 'compile')"),
    table_dir: Path | None = typer.Option(None, "--table-dir", help="write compile-check-<arch>.json tables here"),
    write_rules: bool = typer.Option(False, "--write-rules", help="rewrite the registry's per-arch rules file"),
    as_json: bool = JSON,
) -> None:
    """Cross-compile every kernel config for each arch (no GPU needed); exit 1 on any compile failure, and
    with --policy on any kernel of a shipped plan that is unfit (spills past the budget, too much shared
    memory, occupancy 0): a kernel change that spoils a shipped plan fails here.  Kernels whose wgmma
    ptxas serialized (its notes C7513, C7514, ...: correct, but no MMA overlaps anything) are named, not failed."""
    from dsv4_tune.files import check_folder
    from dsv4_tune.tuner import compile_check as cc

    for where in (db, table_dir):  # before minutes of compiling, not after
        if where is not None:
            check_folder(where)
    arches = list(dict.fromkeys(a.value for a in arch))
    if policy:
        targets, arches = cc.policy_targets([_load_or_exit(path) for path in policy])
    else:
        targets = cc.check_targets(arches, [v.value for v in variants] or None, sample)
    sampled = "" if sample is None or policy else \
        f" (a fixed random sample of {sample} configs per variant and specialisation)"
    err_console.print(f"compiling {len(targets)} kernels for {', '.join(arches)} with {jobs} processes{sampled}")
    with _working("compiled", total=len(targets)) as update:
        rows = cc.with_problems(cc.run_check(targets, jobs, on_row=lambda r: update()))
    if db is not None:
        _open_store(db, readonly=False).add_compile_rows(rows)
    if table_dir is not None:
        cc.write_tables(rows, arches, table_dir)
    if write_rules:
        console.print(f"wrote {cc.write_rules(rows)}", highlight=False)
    failed = [r for r in rows if r["status"] not in ("ok", "skipped")]
    unfit = [r for r in rows if policy and r["status"] == "ok" and r["problems"]]
    skipped = [r for r in rows if r["status"] == "skipped"]
    serialized = [r["key"] for r in rows if r.get("wgmma_serialized")]
    for why in dict.fromkeys(r["error"] for r in skipped):
        err_console.print(f"skipped {sum(r['error'] == why for r in skipped)} kernels: {why}", highlight=False,
                          markup=False)
    if as_json:
        _print_json({"arches": arches, "kernels": len(targets), "sample": None if policy else sample,
                     "summary": cc.summary(rows, targets, arches),
                     "failed": [{"key": r["key"], "error": r["error"]} for r in failed],
                     "unfit": [{"key": r["key"], "problems": r["problems"]} for r in unfit],
                     "skipped": [{"key": r["key"], "why": r["error"]} for r in skipped],
                     "wgmma_serialized": serialized})
        if failed or unfit:
            raise typer.Exit(1)
        return
    table = Table(title="valid configs per arch and variant" + sampled)
    for col in ("arch", "variant", "configs" if not sampled else "configs sampled", "valid", "why not"):
        table.add_column(col)
    for r in cc.summary(rows, targets, arches):
        table.add_row(r["arch"], r["variant"], str(r["configs"]), str(r["valid"]), r["why not"])
    console.print(table)
    for r in failed[:10]:
        console.print(Text.assemble(("FAILED", "red"), f" {r['key']}: {r['error'][:300]}"))
    for r in unfit[:10]:
        console.print(Text.assemble(("UNFIT", "red"), f" a shipped plan's {r['key']}: {'; '.join(r['problems'])}"))
    if serialized:
        console.print(f"{len(serialized)} kernels have every wgmma serialized by ptxas (its note C7513, C7514, ...: "
                      f"a register an async wgmma uses is touched before its wait), e.g. {serialized[0]}",
                      highlight=False, markup=False)
    if failed or unfit:
        raise typer.Exit(1)

@command()
def report(
    policies: list[Path] = typer.Argument(None, help="policy files: drawn beside the sweep's winners (with --db), "
                                          "or reported alone (the first one's classes; two are compared)"),
    out: Path = typer.Option(..., "--out", help="folder for index.html and the PNGs"),
    db: Path | None = typer.Option(None, "--db", help="the sweep's store"),
    sweep_id: str | None = typer.Option(None, "--sweep", help="sweep id (default: the latest)"),
    as_json: bool = JSON,
) -> None:
    """Write what a sweep found (or what policies hold) as PNGs and one self-contained HTML page:
    time over T per class, crossovers, speed-up heat maps, noisy buckets, provenance."""
    from dsv4_tune.files import check_folder
    from dsv4_tune.report.data import from_policies, from_store
    from dsv4_tune.report.render import write_report

    loaded = [(path.stem, _load_or_exit(path)) for path in policies or []]
    if db is None and not loaded:
        _fail("report: give --db FILE (a sweep's store) or at least one policy file")
    check_folder(out)  # before the drawing, not after
    with _working("reading the sweep and policies") as update:
        data = from_store(_open_store(db), sweep_id, loaded) if db is not None else from_policies(loaded)
        update(0, None, "drawing figures")
        page = write_report(data, out, on_image=lambda n, total: update(n, total))
    images = sorted(str(p) for p in out.glob("*.png"))
    if as_json:
        _print_json({"html": str(page), "images": images, "classes": [c.name for c in data.classes]})
        return
    console.print(f"wrote {page} and {len(images)} PNGs ({len(data.classes)} classes)", highlight=False)


if __name__ == "__main__":
    app()
