"""A report as PNGs (matplotlib, the optional ``dsv4-tune[report]`` extra) and one self-contained
HTML page that embeds them, with the tables a reviewer reads before shipping a policy."""

from __future__ import annotations

import base64
import html
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from dsv4_tune.errors import InputError
from dsv4_tune.report.data import ClassView, Report

STYLE = {"winner": ("C0", "o", "-"), "runner-up": ("C1", "s", "--"), "default": ("C7", "^", ":")}


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("report: needs matplotlib (pip install 'dsv4-tune[report]')") from None
    return plt


def class_figure(view: ClassView, path: Path) -> Path:
    """Time over size, log-log: winner, runner-up, default and other policies; the crossovers marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for i, curve in enumerate(view.curves):
        pts = sorted(curve.us.items())
        if not pts:
            continue
        colour, marker, line = STYLE.get(curve.label, (f"C{2 + i}", "D", "-."))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle=line, color=colour,
                label=curve.label, markersize=4)
    for size, _, new in view.crossovers():
        ax.axvline(size, color="C3", alpha=0.35, linewidth=1)
        ax.annotate(new, (size, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize=7, va="top",
                    ha="right", color="C3")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (tokens)" if view.decode else "size (requests, new tokens or T)")
    ax.set_ylabel("us per call")
    ax.set_title(view.name, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if any(c.us for c in view.curves):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap_figure(views: list[ClassView], ratio: Callable[[ClassView], dict[int, float]], title: str,
                   path: Path) -> Path:
    """Classes x sizes, each cell a ratio (> 1: the winner is faster), annotated."""
    plt = _pyplot()
    sizes = sorted({s for v in views for s in v.sizes})
    cells = [[ratio(v).get(s, math.nan) for s in sizes] for v in views]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(sizes) + 3.5), max(2.5, 0.32 * len(views) + 1.5)), dpi=100)
    finite = [x for row in cells for x in row if not math.isnan(x)]
    if finite:
        span = max(abs(math.log2(x)) for x in finite if x > 0) or 1.0
        image = ax.imshow([[math.log2(x) if x > 0 else math.nan for x in row] for row in cells], cmap="RdYlGn",
                          vmin=-span, vmax=span, aspect="auto")
        fig.colorbar(image, ax=ax, label="log2 ratio")
        for i, row in enumerate(cells):
            for j, x in enumerate(row):
                if not math.isnan(x):
                    ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=6)
    else:
        ax.text(0.5, 0.5, "no size measured by both", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(sizes)), [str(s) for s in sizes], fontsize=7)
    ax.set_yticks(range(len(views)), [v.name for v in views], fontsize=7)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: Report, out: Path, on_image: Callable[[int, int], None] | None = None) -> Path:
    """Write the PNGs and ``index.html`` under ``out`` (the folder is made, never its parents); returns
    the HTML's path.  Everything is drawn in a hidden folder inside ``out`` and moved into place at the
    end, so a failed report leaves no files.  ``on_image(done, total)`` follows the drawing."""
    made = not out.exists()
    out.mkdir(exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".report-", dir=out) as tmp:
            images = _draw(report, Path(tmp), on_image or (lambda done, total: None))
            (Path(tmp) / "index.html").write_text(_html(report, images))
            for name in [*(p.name for _, p in images), "index.html"]:
                os.replace(Path(tmp) / name, out / name)
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out / "index.html"


def _draw(report: Report, folder: Path, on_image: Callable[[int, int], None]) -> list[tuple[str, Path]]:
    """(caption, PNG) of every figure, drawn into ``folder``."""
    jobs: list[tuple[str, Callable[[], Path]]] = []
    decode = [v for v in report.classes if v.decode and v.sizes]
    ops = [v for v in report.classes if not v.decode and v.sizes]
    for base in report.baselines:
        title = f"speed-up of the winner over {base} (> 1: the winner is faster)"
        for group, views in (("classes", decode), ("ops", ops)):
            if views:
                name = f"heatmap-{group}-vs-{re.sub(r'[^A-Za-z0-9_.-]+', '-', base)}.png"
                jobs.append((f"{title}: {group}", lambda views=views, b=base, title=title, name=name: heatmap_figure(
                    views, lambda v: v.speedup(b), title, folder / name)))
    for view in decode + ops:
        jobs.append((view.name, lambda view=view: class_figure(view, folder / f"class-{view.slug}.png")))
    images = []
    for n, (caption, draw) in enumerate(jobs, 1):
        images.append((caption, draw()))
        on_image(n, len(jobs))
    return images


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(report: Report, images: list[tuple[str, Path]]) -> str:
    parts = [f"<h1>{html.escape(report.title)}</h1>"]
    parts += [f"<p class=note>{html.escape(n)}</p>" for n in report.notes]
    parts.append("<h2>Provenance</h2>" + _table(["", ""], [list(p) for p in report.provenance]))
    summary = []
    for v in report.classes:
        cross = ", ".join(f"T {s}: {a} -> {b}" for s, a, b in v.crossovers()) or "-"
        up = v.speedup()
        best = f"{min(up.values()):.2f}-{max(up.values()):.2f}x" if up else "-"
        summary.append([v.name, str(len(v.sizes)), best, cross])
    parts.append("<h2>Classes</h2>" + _table(["class", "sizes", "speed-up over the default", "crossovers"], summary))
    look = [[v.name, str(s), why] for v in report.classes for s, why in v.attention()]
    parts.append("<h2>Buckets worth a second look (re-timed for noise, or close calls)</h2>"
                 + (_table(["class", "size", "why"], look) if look else "<p>none</p>"))
    parts.append("<h2>Figures</h2>")
    for caption, path in images:
        data = base64.b64encode(path.read_bytes()).decode()
        parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{html.escape(caption)} ({path.name})</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:12px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}.note{color:#a60}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
