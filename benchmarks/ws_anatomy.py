"""Where a ``ws_sm90`` item's time goes (issues 29 and 32), in one run on one GPU.

One (64 heads, token) item of the warp-specialized kernel is a fixed part (launch, register split,
Q load, epilogue) plus one part per BLOCK_N-candidate block.  The script times one-item plans
against the candidates of every row (``--lengths``; all rows alike, main scope first, so 0 is the
fixed part) and fits ``us = fixed + per_block x blocks`` over the lengths that fill whole blocks.
Each point is timed twice:

- ``random`` ids (as the sweep places them: every row a DRAM miss after the L2 flush; 5% of them
  invalid, never read) and ``hot`` ids (every row one of 64 slots, all valid: L2 hits after the
  first): how much of a block is the gather's DRAM latency;
- with ``--diag``, also on copies of the kernel module patched for timing only (their numbers are
  wrong, so they are not checked; :data:`DIAGNOSTICS`): ``no-gather`` (nothing gathered, and the
  compiler folds the conversion of the zero rows away: the producer stores zero tiles),
  ``no-convert`` (the FP8 bytes stored as they come), ``no-produce`` (STAGED=0's producer keeps
  only the ring's barriers: the consumers alone) and ``no-mma`` (no wgmma: the producer alone,
  with the consumers' barriers and softmax): which side of the ring bounds a block; ``no-out`` (no
  output stored) and ``no-q`` (Q never read): what an item's own traffic costs; under CROSS also
  ``no-send`` (no rows sent to the peer) and ``no-couple`` (nor k_empty shared).  Under SOLO (the
  one-warpgroup kernels: ``--config '{"SOLO": 1, ...}'``) ``no-gather``, ``no-convert``, ``no-out``
  and ``no-q`` apply as they are (SOLO calls the same helpers), and :data:`SOLO_DIAGNOSTICS` take
  a tile's parts out one at a time: ``solo-no-qk`` (no QK^T), ``solo-no-pv`` (no PV),
  ``solo-no-softmax`` (P = S as it comes, no rescale): what each adds to a tile, in turn.
  ``--diag NAME ...`` runs only those.

At T = 1 an item is the whole kernel; at T = 256 (h128: 512 items, ~4 per SM) the fixed part is paid
once a wave.  Times are graph replays after the L2 flush, as the sweep times plans.

    python benchmarks/ws_anatomy.py [--cases 64:SWA+C4 1152:1 128:SWA+C4 1152:256] [--diag [NAME ...]] [--out DIR]
        [--staged 0 1] [--config '{"BLOCK_N": 32, "PIPE": 1}']   (knobs over the one-item plan)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_record, print_table, result_name, save_results

KERNEL = Path(__file__).resolve().parents[1] / "dsv4_tune" / "kernels" / "sm90" / "decode.py"
SOLO_KERNEL = KERNEL.with_name("solo.py")
DECODE_MODULE, SOLO_MODULE = "dsv4_tune.kernels.sm90.decode", "dsv4_tune.kernels.sm90.solo"
# CROSS's producer without its sends (the local arrive stays).
_NO_SEND = (("    mbarrier.expect(k_ready.index(ks), 8 * PIECE + 4 * SUB)",
             "    mbarrier.arrive(k_ready.index(ks))"),
            ("        send_to_peer(KBUF_OFF + ks * (8 * BLOCK_BYTES) + c * BLOCK_BYTES + HALF * PIECE, "
             "READY_OFF + ks * 8, PIECE)", "        pass"),
            ("    send_to_peer(BIAS_OFF + ks * (4 * BLOCK_N) + HALF * (4 * SUB), READY_OFF + ks * 8, 4 * SUB)\n", ""))
# Timing-only edits of the kernel source, each (what to replace, its replacement) occurring once.
DIAGNOSTICS: dict[str, tuple[tuple[str, str], ...]] = {
    # No candidate valid: nothing gathered; the conversion of the zero rows folds away too (Triton
    # 3.6's SASS keeps 8 of 224 HMUL2): the producer stores zero tiles.
    "no-gather": (("    return (idx >= 0) & (idx < n_slots)\n",
                   "    return (idx >= 0) & (idx < n_slots) & (idx < -1)\n"),),
    # The FP8 bytes stored as they come: no exact dequantization.
    "no-convert": (("    lo, hi = _dequant_pair(x, c, sb)\n    y = gl.join(lo, hi)",
                    "    y = gl.join(x, x | sb)"),),
    # STAGED=0's producer only keeps the ring's barriers: no row gathered, converted or stored (the
    # consumers read stale tiles): what the consumers alone take.
    "no-produce": ((" " * 16 + "nxt = _gather_sub(kv_ptr, stride_page, page_size, n_slots, ids, SUB, GATHER, ROPE)\n",
                    " " * 16 + "nxt = cur\n"),
                   (" " * 16 + "_store_sub(kt, bias_buf.index(ks).slice((HALF + sub) * SUB, SUB), cur, ROPE)\n", "")),
    # No wgmma in either consumer (S and O stay zero; the softmax still runs): what the producer alone
    # takes, with the consumers' barriers and softmax.
    "no-mma": (("    return warpgroup_mma(q_smem, kt.permute((1, 0)), s, use_acc=False, is_async=True)",
                "    return s"),
               ("    return warpgroup_mma(gl.convert_layout(pb, P_L), kt.slice(0, DV, dim=1), o, is_async=True)",
                "    return o"),
               ("            o = warpgroup_mma(p_smem, kbuf.index(ks).slice(DV, DV, dim=1), o, is_async=True)",
                "            o = o")),
    # No output stored (the final output's stores masked off; the compiler drops the read-backs
    # before them, not the bf16 conversion or a lone item's staging in Q's buffer): a lower bound on
    # what an item's output path costs.
    "no-out": (("        mask = hmask[:, None] & (cols[None, :] >= 0)\n        gl.store(outs[0] + out_rows[:, None]",
                "        mask = hmask[:, None] & (cols[None, :] < 0)\n        gl.store(outs[0] + out_rows[:, None]"),
               ("gl.store(outs[0] + out_rows[:, None] + cols[None, :], y, mask=hmask[:, None] & (cols[None, :] >= 0))",
                "gl.store(outs[0] + out_rows[:, None] + cols[None, :], y, mask=hmask[:, None] & (cols[None, :] < 0))")),
    # Q never read (its copies masked off: zeros land in Q's buffer): what an item's Q load costs.
    "no-q": (("q_ptr + q_rows[:, None] + qc[None, :], mask=q_ok)",
              "q_ptr + q_rows[:, None] + qc[None, :], mask=q_ok & (qc[None, :] < 0))"),),
    # CROSS: no rows sent to the peer (each CTA's consumers read its own rows and stale ones): the
    # clustered ring without its DSMEM traffic.
    "no-send": _NO_SEND,
    # CROSS, no-send and no k_empty across the pair either: two CTAs that only share a cluster.
    "no-couple": (*_NO_SEND,
                  ("            mbarrier.init(k_empty.index(i), count=4)",
                   "            mbarrier.init(k_empty.index(i), count=2)"),
                  ("        arrive_on_peer(EMPTY_OFF + ks * 8)\n", "        pass\n")),
}
# Timing-only edits of the SOLO kernels' source (both kernels): each (regex, replacement, how many
# times it occurs).  The waits stay (on a plain tensor they wait for nothing).
SOLO_DIAGNOSTICS: dict[str, tuple[tuple[str, str, int], ...]] = {
    # No QK^T (S stays zero): what the tile's QK^T adds (its wgmma, their shared-memory reads).
    "solo-no-qk": ((r"s = warpgroup_mma\(q\.slice\((?:0|DV), DV, dim=1\), [^\n]*\n", "s = s\n", 4),),
    # No PV (O stays as rescaled): what the tile's PV adds.
    "solo-no-pv": ((r"o = warpgroup_mma\(gl\.convert_layout\(pb, P_L\), [^\n]*\n", "o = o\n", 2),),
    # No softmax (P = S as it comes, O "rescaled" by the running max): what the online softmax adds.
    "solo-no-softmax": ((r"pb, alpha, m_i, l_i = _softmax_block\(s, bias, m_i, l_i, qk_scale\)\n",
                         "pb, alpha = s.to(gl.bfloat16), m_i\n", 2),),
}
# The diagnostics of the warp-specialized kernel's own code (its consumers, ring and clusters).
WS_ONLY = frozenset({"no-mma", "no-produce", "no-send", "no-couple"})
HOT_SLOTS = 64
ONE_ITEM = {"BLOCK_N": 64, "KSTAGES": 2, "PIPE": 0, "SPLIT_K": 1}  # + STAGED: the policies' long-item plans


def patched_kernel(name: str, edits: tuple[tuple[str, str], ...] | None = None) -> ModuleType:
    """A copy of the ``ws_sm90`` kernel module with the diagnostic edit ``name`` (timing only), or
    with ``edits`` (each (what to replace, its replacement), occurring once) under that name."""
    src = KERNEL.read_text()
    for old, new in DIAGNOSTICS[name] if edits is None else edits:
        if src.count(old) != 1:
            raise SystemExit(f"diagnostic {name}: the kernel source no longer has its edit point once")
        src = src.replace(old, new)
    return _module_from(src, f"ws_{name.replace('-', '_')}")


def _module_from(src: str, stem: str) -> ModuleType:
    """A module run from ``src`` (written to a file of its own, which Triton's JIT reads back)."""
    path = Path(tempfile.mkdtemp()) / f"{stem}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def patched_modules(name: str) -> dict[str, ModuleType]:
    """The kernel modules of diagnostic ``name`` by the names they stand in for: the ``ws_sm90``
    module (:func:`patched_kernel`, or the package's own for a SOLO-only diagnostic) and a copy of the
    SOLO module built on it (with the :data:`SOLO_DIAGNOSTICS` edits if ``name`` is one), so the decode
    module's edits reach the SOLO kernels too."""
    decode = patched_kernel(name) if name in DIAGNOSTICS else importlib.import_module(DECODE_MODULE)
    src = SOLO_KERNEL.read_text()
    for pattern, new, count in SOLO_DIAGNOSTICS.get(name, ()):
        src, n = re.subn(pattern, new, src)
        if n != count:
            raise SystemExit(f"diagnostic {name}: the SOLO source has its edit point {n} times, not {count}")
    with kernel_module({DECODE_MODULE: decode}):  # the copy imports the decode module it runs with
        solo = _module_from(src, f"solo_{name.replace('-', '_')}")
    return {DECODE_MODULE: decode, SOLO_MODULE: solo}


def blocks(length: int, main_topk: int, block_n: int) -> int:
    """K tiles of a row with ``length`` candidates, the main scope's first (each scope rounds up)."""
    main = min(length, main_topk)
    return math.ceil(main / block_n) + math.ceil((length - main) / block_n)


def full_blocks(length: int, main_topk: int, block_n: int) -> bool:
    """Whether every K tile of such a row is full (a row of 1 candidate gathers one row, not 64)."""
    main = min(length, main_topk)
    return main % block_n == 0 and (length - main) % block_n == 0


def fit_blocks(points: list[tuple[int, float]]) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of us over blocks; None with fewer than two block counts."""
    if len({b for b, _ in points}) < 2:
        return None
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mu = sum(u for _, u in points) / n
    slope = sum((b - mb) * (u - mu) for b, u in points) / sum((b - mb) ** 2 for b, _ in points)
    return mu - slope * mb, slope


Modules = ModuleType | dict[str, ModuleType] | None


@contextmanager
def kernel_module(mod: Modules) -> Iterator[None]:
    """With ``mod`` (a :func:`patched_kernel`, or :func:`patched_modules`' modules by name) standing
    in for the kernel modules, which the ws launcher imports at each call; None: the modules as they are."""
    mods = {} if mod is None else {DECODE_MODULE: mod} if isinstance(mod, ModuleType) else mod
    saved = {key: sys.modules.get(key) for key in mods}
    sys.modules.update(mods)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is not None:
                sys.modules[key] = old
            else:
                sys.modules.pop(key, None)


def _timed(fn: Any, mod: Modules) -> float:
    """Median us of ``fn``, with ``mod`` standing in for the kernel module while it is captured and timed."""
    from dsv4_tune.tuner.measure import time_graph

    with kernel_module(mod):
        return time_graph(fn)["median_us"]


def _lengths(rows: int, n: int) -> Any:
    """``topk_length`` of ``rows`` rows, each ``n``."""
    import torch

    return torch.full((rows,), n, dtype=torch.int32, device="cuda")


def _hot(idx: Any) -> Any:
    """Ids like ``idx`` with candidate k of every token at slot k % HOT_SLOTS (L2 hits after the first)."""
    import torch

    ar = torch.arange(idx.shape[-1], device=idx.device, dtype=idx.dtype) % HOT_SLOTS
    return ar.expand_as(idx).contiguous()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["64:SWA+C4 1152:1", "128:SWA+C4 1152:256"], metavar="HEADS:LAYER:T")
    ap.add_argument("--lengths", nargs="+", type=int, default=[0, 1, 64, 128, 640, 1152])
    ap.add_argument("--staged", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    ap.add_argument("--config", type=json.loads, default={}, metavar="JSON",
                    help='knobs laid over the one-item plan, e.g. \'{"BLOCK_N": 32, "PIPE": 1}\' (SPLIT_K stays 1)')
    ap.add_argument("--diag", nargs="*", default=None, metavar="NAME", choices=sorted(DIAGNOSTICS | SOLO_DIAGNOSTICS),
                    help="also the diagnostic kernel copies (timing only): these, or all that apply without names")
    ap.add_argument("--ids", nargs="+", default=["random", "hot"], choices=["random", "hot"],
                    help="the ids each point is timed with (default both)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="result folder (default benchmarks/results/)")
    args = ap.parse_args()

    from dsv4_tune.registry.variants import plan_problems
    from dsv4_tune.registry.workload import Plan, Workload

    base = {k: v for k, v in args.config.items() if k != "SPLIT_K"}
    for staged in args.staged:
        plan = Plan.make("ws_sm90", ONE_ITEM | {"STAGED": staged} | base)
        if bad := plan_problems(Workload(64, 128, 128, 1024), plan):
            print(f"ws_anatomy: --config {json.dumps(args.config)} with STAGED={staged}: {bad[0]}")
            return 2

    solo = bool(base.get("SOLO"))
    names = []
    if args.diag is not None:
        names = args.diag or [n for n in [*DIAGNOSTICS, *SOLO_DIAGNOSTICS]
                              if (n not in WS_ONLY if solo else n not in SOLO_DIAGNOSTICS)]
        if bad := [n for n in names if (n in WS_ONLY if solo else n in SOLO_DIAGNOSTICS)]:
            print(f"ws_anatomy: {', '.join(bad)}: not a diagnostic of the "
                  f"{'one-warpgroup (SOLO)' if solo else 'warp-specialized'} kernel")
            return 2

    import torch

    from dsv4_tune.kernels.sm90 import GLUON_PROBLEM

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9 or GLUON_PROBLEM:
        print(f"ws_anatomy: needs a CUDA sm90 GPU with Gluon ({GLUON_PROBLEM or 'no such GPU here'})")
        return 2
    from benchmarks.bench_decode import FP8, Scopes, parse_point, point_form, point_inputs
    from dsv4_tune.kernels.reference import sparse_decode_ref
    from dsv4_tune.tuner.cases import DecodeCase

    points = [parse_point(c) for c in args.cases]
    if bad := [c for c, p in zip(args.cases, points, strict=True) if p is None]:
        print(f"ws_anatomy: not {point_form()}: {bad}")
        return 2
    kernels: dict[str, Modules] = {"main": None}
    if args.diag is not None:
        kernels |= {name: patched_modules(name) for name in names}
    gen = torch.Generator().manual_seed(args.seed)
    scopes = Scopes(max(t for _, _, t in points), "cuda", big=True, gen=gen)
    rows: list[dict[str, Any]] = []
    failed = False
    for h, layer, t in points:
        name = layer.name
        q, main, kw, _ = point_inputs(h, layer, t, scopes, "cuda", gen)
        b, main_topk = q.shape[0], main.indices.shape[-1]
        extra_topk = kw["extra_indices"].shape[-1] if "extra_indices" in kw else 0
        for length in [n for n in args.lengths if n <= main_topk + extra_topk]:
            for ids in args.ids:
                kwn = dict(kw, topk_length=_lengths(b, min(length, main_topk)))
                idx = main.indices
                if ids == "hot":
                    idx = _hot(idx)
                    if extra_topk:
                        kwn["extra_indices"] = _hot(kw["extra_indices"])
                if extra_topk:
                    kwn["extra_topk_length"] = _lengths(b, max(length - main_topk, 0))
                scope = dataclasses.replace(main, indices=idx, topk_length=kwn["topk_length"])
                ref = sparse_decode_ref(q, scope.kv_cache, scope.indices, fp8=FP8, out_dtype=torch.float32, **kwn)
                case = DecodeCase(q, scope, kwn, ref, FP8)
                for staged in args.staged:
                    plan = Plan.make("ws_sm90", ONE_ITEM | {"STAGED": staged} | base)
                    for kname, mod in kernels.items():
                        if kname == "no-produce" and (staged or base.get("RING") or base.get("CROSS")):
                            continue  # its edit: STAGED=0's loop without CROSS
                        if kname in ("no-send", "no-couple") and not base.get("CROSS"):
                            continue  # their edits: CROSS's producer and ring
                        row = {"case": f"h{h} {name} T={t}", "kernel": kname, "STAGED": staged, "ids": ids,
                               "length": length, "blocks": blocks(length, main_topk, plan["BLOCK_N"]),
                               "full_blocks": full_blocks(length, main_topk, plan["BLOCK_N"]), "us": None,
                               "check": "timing only"}
                        if mod is None:
                            status, error, _ = case.check(plan)
                            row["check"] = "ok" if status == "ok" else f"!!! {status}: {(error or '')[:160]}"
                            failed |= status != "ok"
                        if row["check"] in ("ok", "timing only"):
                            row["us"] = round(_timed(case.timer(plan), mod), 2)
                        rows.append(row)
                        print(row, flush=True)
            del ref
        torch.cuda.empty_cache()
    fits = []
    for key in sorted({(r["case"], r["kernel"], r["STAGED"], r["ids"]) for r in rows}):
        pts = [r for r in rows if (r["case"], r["kernel"], r["STAGED"], r["ids"]) == key and r["us"] is not None]
        zero = [r["us"] for r in pts if r["length"] == 0]
        fit = fit_blocks([(r["blocks"], r["us"]) for r in pts if r["length"] > 0 and r["full_blocks"]])
        fits.append(dict(zip(("case", "kernel", "STAGED", "ids"), key, strict=True))
                    | {"fixed_us": zero[0] if zero else None, "per_block_us": None if fit is None else round(fit[1], 3),
                       "intercept_us": None if fit is None else round(fit[0], 2)})
    print_table(rows, ["case", "kernel", "STAGED", "ids", "length", "blocks", "us", "check"], "ws_sm90 item anatomy")
    print_table(fits, ["case", "kernel", "STAGED", "ids", "fixed_us", "intercept_us", "per_block_us"],
                "fixed part (length 0) and per-block slope (fit over lengths of whole blocks)")
    path = save_results(result_name("ws_anatomy"),
                        {"device": device_record(), "command": sys.argv, "rows": rows, "fits": fits}, args.out)
    print(f"saved {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
