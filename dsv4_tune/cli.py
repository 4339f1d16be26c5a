"""The ``dsv4-tune`` command line: thin, parses and prints; the work lives in the package."""

from __future__ import annotations

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
