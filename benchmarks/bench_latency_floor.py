"""The latency floor of small-T decode on this GPU (issue 32): what launches, dependent memory round
trips and one wave of row gathers cost before any attention math.  Everything is timed as the sweep
times a plan (``tuner.measure.time_graph``: CUDA-graph replay right after a 256 MiB L2 flush), so a
small-T plan's time compares directly with the floor of its shape.

- ``empty``: one 1-program kernel doing nothing: graph launch + kernel start and end, the least any
  plan pays per launch as the sweep times it (one graph per call).  ``empty x20 (per launch)``: 20
  of them in one graph, per launch: what a kernel costs inside a layer's graph, where serving runs
  decode (the difference is the graph's own launch, which every timed plan pays once).
- ``... in graph``: the same launches timed as what they add to a graph holding more work
  (``tuner.measure.time_in_graph``: a graph of 20 rounds of flush and call against one of the
  flushes alone), so without a graph launch of their own: what a serving step pays for them.
- ``1 launch``: one program that loads a value and stores it + 1: one cold round trip on top.
- ``2 launches plain`` / ``PDL``: kernel B reads what kernel A wrote, as a combine reads the split
  kernel's partials; stream order vs a programmatic dependent launch (A calls
  ``gdc_launch_dependents`` first, B, launched with ``launch_pdl``, ``gdc_wait`` before its load):
  what a second launch costs and how much PDL hides of it.
- ``chain k``: k dependent loads in one program, each address the previous load's value, on a cold
  L2; the slope over k is the latency of one dependent hop (index -> row is two of them).
- ``gather xN``: N programs each load 64 int32 ids, then the 64 rows of 576 B (one KV token's data)
  at those ids, and store their byte sum: 1 program (one index -> row round trip at 64-row width),
  one program per SM (one wave), 2 and 4 per SM (more rows in flight per SM).
- ``gather ... 16 rows``: the same with 16 rows a program (a split of 4 ways): whether fewer rows
  a program shorten its round trip, or only the trip itself counts.
- ``gather async ...``: the same gathers by :mod:`benchmarks.gather_async` (CUDA sm90, Triton 3.6's
  Gluon): every row of a program copied to shared memory by cp.async before any is waited for.  The
  plain gather's row loads go to registers, and ptxas issues them a few at a time, each after the
  one before is used (13 dependent waves for 64 rows a program, 3 for 16, in its Triton 3.6 SASS):
  its 64-row time is that schedule's, the async one the memory's.
- ``empty 200 KiB ...``: an empty program holding 200 KiB of shared memory with 4 or 16 warps
  (:mod:`benchmarks.big_cta`, Gluon), one program and one a SM, beside ``empty 1/SM``: what the size
  of a CTA like ``ws_sm90``'s (206 KiB, 12 warps) costs a launch before it loads anything.
- ``gather ... window``: each program's 64 rows consecutive slots at a random start, as a sliding
  window's tokens lie in its request's pages: what random placement (a TLB and DRAM page per row)
  costs beyond the same bytes in one place.  The timed decode cases place every scope's ids at
  random, windows too.

The rows and chain links lie in a 576 MiB pool of random bytes at random places, so L2 and TLB miss
as in serving.

    python benchmarks/bench_latency_floor.py          # saves benchmarks/results/bench_latency_floor-<arch>.json
    python benchmarks/bench_latency_floor.py --smoke  # tiny sizes, correctness only; the interpreter without a GPU
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.common must precede triton and dsv4_tune

from benchmarks.common import (
    INTERPRETER_NOTE,
    add_common_args,
    default_out_dir,
    device_record,
    parse_gpu_args,
    print_table,
    result_name,
    save_results,
    time_graph,
)

# isort: split
# (after benchmarks.common, which picks the interpreter or the compiler before Triton is imported)
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from dsv4_tune.env import interpreting
from dsv4_tune.kernels.sm90 import GLUON_PROBLEM
from dsv4_tune.tuner.measure import time_in_graph

# The cp.async gather (Gluon: compiled, CUDA sm90, Triton 3.6's API) where it can run; why not, else.
ASYNC_PROBLEM = "the interpreter runs no Gluon" if interpreting() else GLUON_PROBLEM
if ASYNC_PROBLEM is None:
    try:  # async_copy is not among what the sm90 kernels' check looks for
        from benchmarks.big_cta import big_cta_kernel
        from benchmarks.gather_async import ROW_WORDS, gather_async_kernel
    except Exception as e:
        ASYNC_PROBLEM = f"benchmarks.gather_async does not import: {type(e).__name__}: {e}"

ROW_BYTES = 576  # data bytes of one token in the DSV4 KV pool
HEAD_BYTES, TAIL_BYTES = 512, 64  # a row loaded as two power-of-two tiles
ROWS = 64  # rows gathered per program
NUM_WARPS = 4
HOPS = (1, 2, 4, 8, 16)
PER_SM = (1, 2, 4)
IN_GRAPH = 20  # empty kernels in one graph: the cost of a launch inside a layer's graph
FULL_POOL_ROWS = 2**20  # 576 MiB
SMOKE_POOL_ROWS = 512

if interpreting():  # the interpreter cannot run the griddepcontrol builtins: no-ops there (one program at a time)

    @triton.jit
    def _no_op():
        pass

    gdc_launch_dependents = gdc_wait = _no_op


@triton.jit
def _empty_kernel(x_ptr):
    pass


@triton.jit
def _step_kernel(src_ptr, dst_ptr, LAUNCH_DEPENDENTS: tl.constexpr, WAIT: tl.constexpr):
    """``dst = src + 1``; LAUNCH_DEPENDENTS: let the next (PDL) launch start now; WAIT: wait for the one before."""
    if LAUNCH_DEPENDENTS:
        gdc_launch_dependents()
    if WAIT:
        gdc_wait()
    tl.store(dst_ptr, tl.load(src_ptr) + 1)


@triton.jit
def _chain_kernel(pool_ptr, start, out_ptr, HOPS: tl.constexpr):
    """``HOPS`` dependent loads of int32 words from ``pool_ptr[start]``; stores the last value."""
    cur = start.to(tl.int64)
    for _ in tl.static_range(HOPS):
        cur = tl.load(pool_ptr + cur).to(tl.int64)
    tl.store(out_ptr, cur.to(tl.int32))


@triton.jit
def _gather_kernel(
    pool_ptr, ids_ptr, out_ptr, n,
    ROWS: tl.constexpr, ROW_BYTES: tl.constexpr, HEAD_BYTES: tl.constexpr, TAIL_BYTES: tl.constexpr,
):
    """Program p: byte sum of the ``n <= ROWS`` rows whose ids are ``ids[p * n:(p + 1) * n]``."""
    pid = tl.program_id(0)
    r = tl.arange(0, ROWS)
    base = tl.load(ids_ptr + pid * n + r, mask=r < n, other=0).to(tl.int64) * ROW_BYTES
    live = (r < n)[:, None]
    head = tl.load(pool_ptr + base[:, None] + tl.arange(0, HEAD_BYTES)[None, :], mask=live, other=0)
    tail = tl.load(pool_ptr + base[:, None] + HEAD_BYTES + tl.arange(0, TAIL_BYTES)[None, :], mask=live, other=0)
    total = tl.sum(tl.sum(head.to(tl.int32), axis=1), axis=0) + tl.sum(tl.sum(tail.to(tl.int32), axis=1), axis=0)
    tl.store(out_ptr + pid, total)


def _pdl_opts(pdl: bool) -> dict[str, bool]:
    """Launch options of a programmatic dependent launch (the interpreter knows no launch options)."""
    return {"launch_pdl": True} if pdl and not interpreting() else {}


def _time(fn: Callable[[], object], timed: bool, in_graph: bool = False) -> dict[str, Any]:
    """Median / p20 / p80 us of ``fn`` as the sweep times it (after one checked run, done by the caller);
    ``in_graph``: as a call inside a step's graph (``time_in_graph``: no graph launch of its own)."""
    if not timed:
        return {"us": None, "p20_us": None, "p80_us": None, "note": INTERPRETER_NOTE}
    t = time_in_graph(fn) if in_graph else time_graph(fn)
    if t is None:
        return {"us": None, "p20_us": None, "p80_us": None, "note": "not captured"}
    return {"us": t["median_us"], "p20_us": t["p20_us"], "p80_us": t["p80_us"], "note": "" if t["graph"] else "eager"}


def _launch_rows(device: str, timed: bool) -> list[dict[str, Any]]:
    """Empty kernel, one load+store launch, and two dependent launches plain and PDL."""
    x = torch.zeros(1, dtype=torch.int32, device=device)
    cnt, mid = torch.zeros(1, dtype=torch.int32, device=device), torch.zeros(1, dtype=torch.int32, device=device)

    def empty() -> None:
        _empty_kernel[(1,)](x, num_warps=NUM_WARPS)

    def one() -> None:
        _step_kernel[(1,)](cnt, cnt, False, False, num_warps=NUM_WARPS)

    def two(pdl: bool) -> None:
        _step_kernel[(1,)](cnt, mid, pdl, False, num_warps=NUM_WARPS)  # A: mid = cnt + 1
        _step_kernel[(1,)](mid, cnt, False, pdl, num_warps=NUM_WARPS, **_pdl_opts(pdl))  # B: cnt = mid + 1

    def empties() -> None:  # a layer's graph launches its kernels back to back: the cost of one there
        for _ in range(IN_GRAPH):
            empty()

    rows = []
    for name, fn, launches, in_graph in (
            ("empty", empty, 1, False), ("1 launch", one, 1, False),
            ("2 launches plain", lambda: two(False), 2, False), ("2 launches PDL", lambda: two(True), 2, False),
            (f"empty x{IN_GRAPH} (per launch)", empties, IN_GRAPH, False),
            ("empty in graph", empty, 1, True), ("1 launch in graph", one, 1, True),
            ("2 launches plain in graph", lambda: two(False), 2, True),
            ("2 launches PDL in graph", lambda: two(True), 2, True)):
        fn()
        t = _time(fn, timed, in_graph)
        if fn is empties and t["us"] is not None:
            t = {k: (v / IN_GRAPH if k.endswith("us") and v is not None else v) for k, v in t.items()}
        rows.append({"what": name, "programs": 1, "launches": launches, **t})
        if launches == 2:  # B must have read A's store: cnt = mid + 1 after every run, the last included
            c, m = int(cnt.item()), int(mid.item())
            assert c == m + 1, f"{name}: B read a stale value (cnt {c}, mid {m})"
    return rows


def _big_cta_rows(device: str, timed: bool, sms: int) -> list[dict[str, Any]]:
    """Empty launches of CTAs as big as ``ws_sm90``'s (:mod:`benchmarks.big_cta`: 200 KiB of shared
    memory, 4 or 16 warps), one program and one a SM, beside the plain empty kernel one a SM; single
    call and in a graph."""
    x = torch.zeros(1, dtype=torch.int32, device=device)
    out = torch.full((sms * 256,), -1, dtype=torch.int32, device=device)
    rows = []
    for label, programs, warps in (("empty 1/SM", sms, 0), ("empty 200 KiB 4 warps", 1, 4),
                                   ("empty 200 KiB 16 warps", 1, 16), ("empty 200 KiB 4 warps 1/SM", sms, 4),
                                   ("empty 200 KiB 16 warps 1/SM", sms, 16)):
        def fn(programs: int = programs, warps: int = warps) -> None:
            if warps:
                big_cta_kernel[(programs,)](out, 128, 64, 8, warps, num_warps=warps)
            else:
                _empty_kernel[(programs,)](x, num_warps=NUM_WARPS)

        out.fill_(-1)
        fn()
        if warps:  # every program stored its 256 zeros
            assert int(out[: programs * 256].abs().sum()) == 0, f"{label}: a program did not run through"
        for in_graph in (False, True):
            rows.append({"what": label + (" in graph" if in_graph else ""), "programs": programs, "launches": 1,
                         **_time(fn, timed, in_graph)})
    return rows


def _chain_rows(pool: torch.Tensor, device: str, timed: bool, gen: torch.Generator) -> tuple[list[dict], float | None]:
    """``chain k`` rows and the fitted us per hop (None untimed)."""
    words = pool.view(torch.int32)
    links = torch.randint(2, words.numel(), (max(HOPS) + 1,), generator=gen, dtype=torch.int32)  # never 0 or 1
    assert links.unique().numel() == links.numel(), "chain links collide: try another --seed"
    words[links[:-1].to(device).long()] = links[1:].to(device)  # words[links[j]] = links[j + 1]
    out = torch.zeros(1, dtype=torch.int32, device=device)
    start = int(links[0])
    rows = []
    for k in HOPS:
        def fn(k: int = k) -> None:
            _chain_kernel[(1,)](words, start, out, k, num_warps=NUM_WARPS)

        fn()
        assert int(out.item()) == int(links[k]), f"chain {k}: ended at {int(out.item())}, expected {int(links[k])}"
        rows.append({"what": f"chain {k}", "programs": 1, "launches": 1, "hops": k, **_time(fn, timed)})
    slope = None
    if timed:
        slope = float(np.polyfit([r["hops"] for r in rows], [r["us"] for r in rows], 1)[0])
    return rows, slope


def _gather(pool: torch.Tensor, programs: int, n: int, device: str,
            gen: torch.Generator, window: bool = False,
            cp_async: bool = False) -> tuple[Callable[[], None], Callable[[str], None]]:
    """A launch of ``programs`` programs, each summing ``n`` random rows of ``pool`` (``window``: n
    consecutive rows from a random start; ``cp_async``: by :mod:`benchmarks.gather_async`, words
    through shared memory, where the plain kernel sums bytes from registers), and the check of its
    sums against torch's (after a launch; its argument names the row in the message)."""
    n_rows = pool.numel() // ROW_BYTES
    if window:
        starts = torch.randint(0, n_rows - n + 1, (programs, 1), generator=gen, dtype=torch.int32)
        ids = (starts + torch.arange(n, dtype=torch.int32)).reshape(-1).to(device)
    else:
        ids = torch.randint(0, n_rows, (programs * n,), generator=gen, dtype=torch.int32).to(device)
    out = torch.zeros(programs, dtype=torch.int32, device=device)
    block = max(2, triton.next_power_of_2(n))

    def launch() -> None:
        if cp_async:
            gather_async_kernel[(programs,)](pool.view(torch.int32), ids, out, n, block, num_warps=4)
        else:
            _gather_kernel[(programs,)](pool, ids, out, n, block, ROW_BYTES, HEAD_BYTES, TAIL_BYTES,
                                        num_warps=NUM_WARPS)

    def check(label: str) -> None:
        if cp_async:  # int32 words, summed with wrap-around as the kernel does
            ref = pool.view(torch.int32).view(n_rows, ROW_WORDS)[ids.long()].view(programs, n * ROW_WORDS)
            ref = ((ref.to(torch.int64).sum(1) + 2**31) % 2**32 - 2**31).to(torch.int32)
        else:
            ref = pool.view(n_rows, ROW_BYTES)[ids.long()].view(programs, n * ROW_BYTES).to(torch.int32)
            ref = ref.sum(1, dtype=torch.int32)
        assert torch.equal(out, ref), f"{label}: sums differ in {int((out != ref).sum())} programs"

    return launch, check


def _gather_rows(pool: torch.Tensor, programs: list[tuple[str, int, int, bool]], device: str, timed: bool,
                 gen: torch.Generator, cp_async: bool = False) -> list[dict[str, Any]]:
    """One ``gather`` row per (label, program count, rows a program, window): each program sums its
    rows of the pool (random ones, or consecutive from a random start); ``cp_async``: rows ``gather
    async ...`` of the cp.async kernel."""
    rows = []
    for label, p, n, window in programs:
        fn, check = _gather(pool, p, n, device, gen, window, cp_async)
        label = f"async {label}" if cp_async else label
        fn()
        check(f"gather {label}")
        t = _time(fn, timed)
        moved = p * n * (ROW_BYTES + 4)
        rows.append({"what": f"gather {label}", "programs": p, "launches": 1, "rows": p * n, "bytes": moved,
                     **t, "GB/s": moved / t["us"] / 1e3 if t["us"] else None})
    return rows


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


class WaveFloor:
    """The latency floor of a small-T shape: one wave (a program per SM) that touches its ``rows``
    KV rows once, ``ceil(rows / SMs)`` a program, from a 576 MiB pool, timed as the sweep times a
    plan.  No plan that reads each of those rows can be faster under that timing (it also pays
    for its ids, its math and its stores), so ``bench_decode`` sets small-T plans beside it."""

    def __init__(self, device: str, sms: int, gen: torch.Generator, pool_rows: int = FULL_POOL_ROWS) -> None:
        self.device, self.sms, self.gen = device, sms, gen
        self.pool = torch.randint(0, 256, (pool_rows * ROW_BYTES,), generator=gen, dtype=torch.uint8).to(device)
        self._us: dict[tuple[int, bool], float] = {}

    def _wave(self, rows: int) -> tuple[Callable[[], None], Callable[[str], None]]:
        """One wave over ``rows`` random rows: its launch and its check."""
        return _gather(self.pool, self.sms, max(1, math.ceil(rows / self.sms)), self.device, self.gen)

    def check(self, rows: int) -> None:
        """Run one wave over ``rows`` rows and compare its sums with torch's."""
        fn, check = self._wave(rows)
        fn()
        check(f"wave over {rows} rows")

    def us(self, rows: int, in_graph: bool = False) -> float:
        """Median us of one wave gathering ``rows`` rows (cached per row count); ``in_graph``: as a
        call inside a step's graph (``time_in_graph``; NaN if it cannot be captured)."""
        if (rows, in_graph) not in self._us:
            fn, _ = self._wave(rows)
            fn()
            us = _time(fn, True, in_graph)["us"]
            self._us[rows, in_graph] = math.nan if us is None else us
        return self._us[rows, in_graph]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    args, timed = parse_gpu_args(parser)
    device = "cuda" if timed else "cpu"
    gen = torch.Generator().manual_seed(args.seed)
    sms = torch.cuda.get_device_properties(0).multi_processor_count if timed else 4
    pool_rows = SMOKE_POOL_ROWS if args.smoke else FULL_POOL_ROWS
    pool = torch.randint(0, 256, (pool_rows * ROW_BYTES,), generator=gen, dtype=torch.uint8).to(device)
    if interpreting():
        print("interpreter: gdc_wait / gdc_launch_dependents run as no-ops, launch_pdl is not passed; no timing")

    rows = _launch_rows(device, timed)
    chain, hop_us = _chain_rows(pool, device, timed, gen)
    rows += chain
    gathers = [("1 program", 1, ROWS, False)] + [(f"{k}/SM", k * sms, ROWS, False) for k in PER_SM]
    gathers += [("1 program 16 rows", 1, 16, False), ("1/SM 16 rows", sms, 16, False),
                ("1 program window", 1, ROWS, True), ("1/SM window", sms, ROWS, True)]
    rows += _gather_rows(pool, gathers, device, timed, gen)
    async_failed = False
    if ASYNC_PROBLEM is None:  # the same gathers, one wave of cp.async a program
        try:
            rows += _gather_rows(pool, [("1 program", 1, ROWS, False), ("1/SM", sms, ROWS, False),
                                        ("1 program 16 rows", 1, 16, False), ("1/SM 16 rows", sms, 16, False)],
                                 device, timed, gen, cp_async=True)
        except Exception as e:  # costs these rows, not the run's others; the exit status says so
            print(f"!!! cp.async gather rows: {type(e).__name__}: {str(e)[:300]}")
            async_failed = True
        try:  # CTAs as big as ws_sm90's, empty
            rows += _big_cta_rows(device, timed, sms)
        except Exception as e:
            print(f"!!! big CTA rows: {type(e).__name__}: {str(e)[:300]}")
            async_failed = True
    else:
        print(f"no cp.async gather or big CTA rows: {ASYNC_PROBLEM}")
    if args.smoke:  # bench_decode's per-shape floor: a masked tail (37 rows over the SMs) and a full program
        wave = WaveFloor(device, sms, gen, pool_rows=SMOKE_POOL_ROWS)
        for n in (37, 64 * sms):
            wave.check(n)

    by = {r["what"]: r["us"] for r in rows}
    summary: dict[str, float | None] = {"us_per_hop": hop_us}
    if timed:
        summary |= {"second_launch_plain_us": by["2 launches plain"] - by["1 launch"],
                    "second_launch_pdl_us": by["2 launches PDL"] - by["1 launch"],
                    "gather_wave_over_1_program_us": by["gather 1/SM"] - by["gather 1 program"],
                    "gather_48_rows_more_us": by["gather 1 program"] - by["gather 1 program 16 rows"],
                    "random_placement_us": by["gather 1 program"] - by["gather 1 program window"],
                    "graph_launch_us": by["empty"] - by[f"empty x{IN_GRAPH} (per launch)"],
                    "empty_in_graph_us": by["empty in graph"],
                    "second_launch_pdl_in_graph_us": _minus(by["2 launches PDL in graph"], by["1 launch in graph"])}
        if "gather async 1 program" in by:
            summary["async_48_rows_more_us"] = by["gather async 1 program"] - by["gather async 1 program 16 rows"]
    payload = {"device": device_record(), "sm_count": sms, "pool_bytes": pool.numel(), "row_bytes": ROW_BYTES,
               "rows_per_program": ROWS, "num_warps": NUM_WARPS, "timing": "tuner.measure.time_graph (median of 50)",
               "summary": summary, "rows": rows}
    path = save_results(result_name("bench_latency_floor"), payload, args.out or default_out_dir(args.smoke))
    print_table(rows, ["what", "programs", "launches", "us", "p20_us", "p80_us", "GB/s", "note"],
                f"latency floor: CUDA-graph replay after an L2 flush, {NUM_WARPS} warps a program, "
                f"pool {pool.numel() / 2**20:.3g} MiB, {ROWS} rows x {ROW_BYTES} B a gather program")
    print("\n" + "  ".join(f"{k} = {'-' if v is None else f'{v:.2f}'}" for k, v in summary.items()))
    print(f"\nsaved {path}")
    return 1 if async_failed else 0


if __name__ == "__main__":
    sys.exit(main())
