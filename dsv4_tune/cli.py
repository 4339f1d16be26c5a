"""The ``dsv4-tune`` command line: thin, parses and prints; the work lives in the package."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Autotuning and dispatch policies for DSV4 sparse-decode Triton kernels.", no_args_is_help=True)
console = Console()


@app.callback()
def main() -> None:
    """dsv4-tune: sweep kernel configs on this GPU, export policies, look plans up."""


@app.command()
def info() -> None:
    """Print the detected GPU and arch, torch/triton versions and the FP8 flavour in use."""
    import torch
    import triton

    from dsv4_tune.policies.gpu import detect

    gpu = detect()
    table = Table(show_header=False, box=None)
    table.add_row("GPU", gpu.name if gpu.is_real else "none")
    table.add_row("arch", gpu.arch)
    table.add_row("SMs / CUs", str(gpu.multiprocessors) if gpu.is_real else "-")
    table.add_row("fp8 flavour", gpu.fp8)
    table.add_row("torch", torch.__version__)
    table.add_row("triton", triton.__version__)
    console.print(table)
    if not gpu.is_real:
        console.print("[yellow]No GPU: kernels run on the Triton interpreter; timings are not real measurements.[/]")


if __name__ == "__main__":
    app()


def _load_or_exit(path: Path):
    from dsv4_tune.policies.schema import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as e:
        console.print(f"[red]invalid policy[/] {e}", highlight=False)
        raise typer.Exit(1) from None


@app.command()
def lookup(
    tokens: int = typer.Option(..., "--tokens", help="total tokens T = b * s_q"),
    heads: int = typer.Option(..., "--heads", help="h_q"),
    topk_main: int = typer.Option(128, "--topk-main"),
    topk_extra: int = typer.Option(0, "--topk-extra", help="0: no extra scope"),
    no_len_main: bool = typer.Option(False, "--no-len-main", help="main scope has no topk_length"),
    no_len_extra: bool = typer.Option(False, "--no-len-extra", help="extra scope has no topk_length"),
    no_sink: bool = typer.Option(False, "--no-sink", help="no attention sink"),
    policy: Path | None = typer.Option(None, "--policy", help="policy file (default: the one chosen for this GPU)"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
    explain: bool = typer.Option(False, "--explain", help="say which file, GPU id, class and bucket answered"),
) -> None:
    """Print the plan a policy gives a workload, and the thresholds of its class."""
    import json

    from dsv4_tune.policies.buckets import bucket_tokens
    from dsv4_tune.policies.dispatcher import Dispatcher, select_policy
    from dsv4_tune.policies.gpu import detect
    from dsv4_tune.workload import Workload

    notes: list[str] = []
    if policy is not None:
        dispatcher = Dispatcher(_load_or_exit(policy), str(policy))
    else:
        dispatcher, notes = select_policy()
    w = Workload(tokens, heads, topk_main, topk_extra, not no_len_main, not no_len_extra, not no_sink)
    plan = dispatcher.lookup(w)
    cls = dispatcher.class_of(w)
    info = {
        "plan": {"variant": plan.variant, "config": plan.as_dict()},
        "thresholds": cls.thresholds if cls else [],
        "source": dispatcher.source,
        "gpu": None if dispatcher.policy is None else dispatcher.policy.gpu.id,
        "detected_gpu": detect().id,
        "class": None if cls is None else list(cls.key),
        "nearest_class": cls is not None and cls.key != (
            heads, topk_main, topk_extra, not no_len_main, not no_len_extra, not no_sink),
        "bucket": bucket_tokens(tokens),
        "notes": notes,
    }
    if as_json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return
    console.print(f"[bold]{plan}[/]", highlight=False)
    for line in info["thresholds"]:
        console.print(f"  {line}", highlight=False)
    if explain:
        console.print(f"source: {info['source']} (policy GPU {info['gpu']}, detected {info['detected_gpu']})",
                      highlight=False)
        how = "nearest class" if info["nearest_class"] else "exact class"
        console.print(f"class: {info['class']} ({how}); T = {tokens} is in bucket {info['bucket']}", highlight=False)
        for note in notes:
            console.print(f"note: {note}", highlight=False)


@app.command()
def validate(path: Path) -> None:
    """Check a policy file; exit 1 with the exact problem (its place inside the JSON)."""
    policy = _load_or_exit(path)
    console.print(f"ok: {path} ({policy.gpu.id}, {len(policy.classes)} classes, source {policy.provenance.source})",
                  highlight=False)


@app.command()
def show(path: Path) -> None:
    """Print a policy as a table of workload classes x T ranges."""
    from dsv4_tune.policies.schema import describe_segments

    policy = _load_or_exit(path)
    table = Table(title=f"{path.name}: {policy.gpu.id} ({policy.provenance.source})")
    for col in ("h_q", "topk main+extra", "flags len/len/sink", "T range: plan"):
        table.add_column(col)
    for c in sorted(policy.classes, key=lambda c: c.key):
        flags = "/".join("y" if f else "n" for f in c.key[3:])
        table.add_row(str(c.h_q), f"{c.topk_main}+{c.topk_extra}", flags, "\n".join(describe_segments(c.segments)))
    console.print(table)


@app.command()
def diff(a: Path, b: Path, max_tokens: int = typer.Option(4096, help="compare T = 1..this")) -> None:
    """Show where two policies choose differently (per class, runs of T)."""
    from dsv4_tune.policies.dispatcher import Dispatcher
    from dsv4_tune.workload import Workload

    pa, pb = _load_or_exit(a), _load_or_exit(b)
    da, db = Dispatcher(pa, str(a)), Dispatcher(pb, str(b))
    keys = sorted({c.key for c in pa.classes} | {c.key for c in pb.classes})
    differences = 0
    for key in keys:
        run: tuple[int, int, str, str] | None = None
        rows = []
        for t in range(1, max_tokens + 1):
            w = Workload(t, *key)
            x, y = str(da.lookup(w)), str(db.lookup(w))
            if x != y and run and (run[2], run[3]) == (x, y):
                run = (run[0], t, x, y)
            else:
                if run:
                    rows.append(run)
                run = (t, t, x, y) if x != y else None
        if run:
            rows.append(run)
        for lo, hi, x, y in rows:
            differences += 1
            console.print(f"{key} T {lo}-{hi}:\n  {a.name}: {x}\n  {b.name}: {y}", highlight=False)
    if differences == 0:
        console.print("no differences", highlight=False)
