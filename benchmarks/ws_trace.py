"""When each warpgroup of a ``ws_sm90`` program reaches its waits and ends its work (issues 29, 32).

``ws_anatomy`` says how much of an item's time each side takes alone; this says, on one plan, where
the time goes when they run together.  A copy of the kernel module is patched (:data:`EDITS`) to read
the SM's cycle counter (``%clock64``) at fixed points of each partition and store it in a trace
buffer that the launch passes in place of the split-K partials (unsplit plans read none, so the
results stay right: they are checked).  The plan runs as the sweep times it (graph replays after
the L2 flush); the last replay's stamps are read, converted to us from each program's start (at the
programs' median clock rate: ``%globaltimer`` and ``%clock64`` at a program's start and at WG0's
end), and summarised as the median over programs, item by item and K tile by K tile:

- the producer: an item's start and end (its last tile's ``k_ready`` arrive);
- WG0: an item's start, Q landed, each tile's ``k_ready`` wait reached and passed and the tile's PV
  done, ``done`` arrived (the scale handed to WG1), the item's end;
- WG1: each tile's ``p_ready`` passed, ``done`` passed, the item's end.

A wait reached long before it is passed is where that warpgroup waits for another.  At most 8 items
a program and 4 tiles an item are stamped; unsplit plans without PIPE, SOLO or CROSS only.

    python benchmarks/ws_trace.py --case "64:SWA 128:256" --config '{"PERSIST": 1}' [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import device_record, result_name, save_results
from benchmarks.ws_anatomy import ONE_ITEM, _timed, kernel_module, patched_kernel

SLOTS = 256  # int64 stamps a program
ITEMS, TILES = 8, 4  # stamped at most
_STAMP = '''@gluon.jit
def _stamp(outs, slot, ok=None, GLOBAL: gl.constexpr = False):
    """Trace (benchmarks/ws_trace.py): this partition's %clock64 (or %globaltimer) into stamp ``slot``."""
    reg: gl.constexpr = "%globaltimer" if GLOBAL else "%clock64"
    t = gl.inline_asm_elementwise("mov.u64 $0, " + reg + ";", "=l", [], dtype=gl.int64, is_pure=False, pack=1)
    gl.store(outs[7].to(gl.pointer_type(gl.int64), bitcast=True) + gl.program_id(0) * 256 + slot, t, mask=ok)


@kernel(jit=gluon.jit)
def _ws_decode_kernel('''
_WG0 = "it * 16"  # WG0's slots: 16 an item
_WG1 = "128 + it * 8"  # WG1's: 8 an item
# (what to replace, its replacement), each occurring once in kernels/sm90/decode.py.
EDITS: tuple[tuple[str, str], ...] = (
    ("@kernel(jit=gluon.jit)\ndef _ws_decode_kernel(", _STAMP),
    ("    gl.warp_specialize([\n",
     "    _stamp(outs, 255)\n    _stamp(outs, 254, None, True)\n    gl.warp_specialize([\n"),
    ("        _q_landed()\n",
     f"        _stamp(outs, {_WG0}, it < 8)\n        _q_landed()\n        _stamp(outs, {_WG0} + 1, it < 8)\n"),
    ("                mbarrier.wait(k_ready.index(ks), (blk // KSTAGES) & 1)\n                kt = kbuf.index(ks)\n",
     f"                _stamp(outs, {_WG0} + 2 + b, (it < 8) & (b < 4))\n"
     "                mbarrier.wait(k_ready.index(ks), (blk // KSTAGES) & 1)\n"
     f"                _stamp(outs, {_WG0} + 6 + b, (it < 8) & (b < 4))\n                kt = kbuf.index(ks)\n"),
    ("                o = warpgroup_mma_wait(0, deps=(o,))\n                _release(k_empty, ks, CROSS, EMPTY_OFF)\n",
     "                o = warpgroup_mma_wait(0, deps=(o,))\n                _release(k_empty, ks, CROSS, EMPTY_OFF)\n"
     f"                _stamp(outs, {_WG0} + 10 + b, (it < 8) & (b < 4))\n"),
    ("        mbarrier.arrive(done)  # WG1's half waits on this: the LSE is stored after\n",
     "        mbarrier.arrive(done)  # WG1's half waits on this: the LSE is stored after\n"
     f"        _stamp(outs, {_WG0} + 14, it < 8)\n"),
    ("            _flush_half(0, stage, head0, t, tb, ts, split, outs)\n        it += 1\n"
     "    _cluster_sync(CROSS, MERGE)\n",
     "            _flush_half(0, stage, head0, t, tb, ts, split, outs)\n"
     f"        _stamp(outs, {_WG0} + 15, it < 8)\n        it += 1\n"
     "    _stamp(outs, 252)\n    _stamp(outs, 253, None, True)\n    _cluster_sync(CROSS, MERGE)\n"),
    ("            mbarrier.wait(p_ready, blk & 1)\n",
     f"            mbarrier.wait(p_ready, blk & 1)\n            _stamp(outs, {_WG1} + 1 + b, (it < 8) & (b < 4))\n"),
    ("        mbarrier.wait(done, it & 1)\n",
     f"        mbarrier.wait(done, it & 1)\n        _stamp(outs, {_WG1}, it < 8)\n"),
    ("            # lowering): every thread's stores above are in when the producer's wait returns\n        it += 1\n",
     "            # lowering): every thread's stores above are in when the producer's wait returns\n"
     f"        _stamp(outs, {_WG1} + 5, it < 8)\n        it += 1\n"),
    ("            blk = _produce_item(item, blk, ",
     "            _stamp(outs, 192 + 2 * ((item - first) // step), (item - first) // step < 8)\n"
     "            blk = _produce_item(item, blk, "),
    ("READY_OFF, BIAS_OFF)\n    else:\n        n = _produce_item(first, ",
     "READY_OFF, BIAS_OFF)\n"
     "            _stamp(outs, 193 + 2 * ((item - first) // step), (item - first) // step < 8)\n"
     "    else:\n        _stamp(outs, 192)\n        n = _produce_item(first, "),
    ("        if FLUSH:  # WG1's half of the output, once it is in Q's buffer\n",
     "        _stamp(outs, 193)\n        if FLUSH:  # WG1's half of the output, once it is in Q's buffer\n"),
    ("*epilogue_args(attn_sink, out, lse, partial),",
     "*epilogue_args(attn_sink, out, lse, partial if partial is not None else (TRACE[0], lse)),"),
    ("_launch = Launcher(_ws_decode_kernel)\n", "_launch = Launcher(_ws_decode_kernel)\nTRACE: list = []\n"),
)
# The summary's columns: (name, slot of item j / tile b).
PRODUCER = (("P start", lambda j, b: 192 + 2 * j), ("P end", lambda j, b: 193 + 2 * j))
WG0 = (("WG0 start", lambda j, b: 16 * j), ("Q landed", lambda j, b: 16 * j + 1))
WG0_TILE = (("k_ready reached", lambda j, b: 16 * j + 2 + b), ("k_ready passed", lambda j, b: 16 * j + 6 + b),
            ("PV done", lambda j, b: 16 * j + 10 + b))
WG0_END = (("done arrived", lambda j, b: 16 * j + 14), ("WG0 end", lambda j, b: 16 * j + 15))
WG1_TILE = (("p_ready passed", lambda j, b: 128 + 8 * j + 1 + b),)
WG1_END = (("WG1 done passed", lambda j, b: 128 + 8 * j), ("WG1 end", lambda j, b: 128 + 8 * j + 5))


def clock_rate(rows: list[list[int]]) -> float:
    """us a cycle: the median over programs of (globaltimer span) / (cycle span) from the program's
    start to WG0's end (one program's pair is as coarse as the globaltimer's updates)."""
    rates = sorted((r[253] - r[254]) / (r[252] - r[255]) / 1000 for r in rows
                   if min(r[252], r[253], r[254], r[255]) >= 0 and r[252] > r[255])
    return rates[len(rates) // 2] if rates else float("nan")


def timelines(stamps: Any) -> list[dict[str, float]]:
    """Each program's stamps as us from its start (at the programs' median clock rate): one dict of
    event -> us, events named ``item j: NAME`` or ``item j tile b: NAME`` (absent where never stamped)."""
    rows = stamps.tolist()
    us_per_cycle = clock_rate(rows)
    out = []
    for row in rows:
        start, end = row[255], row[252]
        if min(start, end) < 0 or end <= start:
            continue
        events: dict[str, float] = {}
        for j in range(ITEMS):
            for name, slot in (*PRODUCER, *WG0, *WG0_END, *WG1_END):
                if row[slot(j, 0)] >= 0:
                    events[f"item {j}: {name}"] = (row[slot(j, 0)] - start) * us_per_cycle
            for b in range(TILES):
                for name, slot in (*WG0_TILE, *WG1_TILE):
                    if row[slot(j, b)] >= 0:
                        events[f"item {j} tile {b}: {name}"] = (row[slot(j, b)] - start) * us_per_cycle
        events["kernel end (WG0)"] = (end - start) * us_per_cycle
        out.append(events)
    return out


def summary(lines: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Per event: the programs that stamped it and the (upper) median and 90th percentile of its us."""
    names: dict[str, None] = {}
    for events in lines:
        names |= dict.fromkeys(events)
    rows = []
    for name in sorted(names, key=lambda n: min(e[n] for e in lines if n in e)):
        values = sorted(e[name] for e in lines if name in e)
        rows.append({"event": name, "programs": len(values), "median_us": round(values[len(values) // 2], 2),
                     "p90_us": round(values[int(0.9 * (len(values) - 1))], 2)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", required=True, metavar="HEADS:LAYER:T", help='e.g. "64:SWA 128:256"')
    ap.add_argument("--config", type=json.loads, default={}, metavar="JSON",
                    help='knobs laid over the plan of ws_anatomy (unsplit), e.g. \'{"PERSIST": 1}\'')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="result folder (default benchmarks/results/)")
    args = ap.parse_args()

    from dsv4_tune.registry.variants import plan_problems
    from dsv4_tune.registry.workload import Plan, Workload

    plan = Plan.make("ws_sm90", ONE_ITEM | {"STAGED": 0} | args.config)
    cfg = plan.as_dict()
    if cfg["SPLIT_K"] != 1 or cfg.get("SOLO") or cfg.get("CROSS") or cfg.get("PIPE"):
        # (PIPE: its tiles are not stamped, and with PERSIST the stamps made the kernel spill 20-32 B)
        print("ws_trace: only an unsplit plan of the warp-specialized kernel, without SOLO, CROSS or PIPE, "
              "is traced")
        return 2
    if bad := plan_problems(Workload(64, 128, 128, 1024), plan):
        print(f"ws_trace: --config {json.dumps(args.config)}: {bad[0]}")
        return 2
    import torch

    from dsv4_tune.kernels.sm90 import GLUON_PROBLEM

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9 or GLUON_PROBLEM:
        print(f"ws_trace: needs a CUDA sm90 GPU with Gluon ({GLUON_PROBLEM or 'no such GPU here'})")
        return 2
    from benchmarks.bench_decode import parse_point, point_case, point_form

    if (point := parse_point(args.case)) is None:
        print(f"ws_trace: --case {args.case!r} is not {point_form()}")
        return 2
    case = point_case(*point, args.seed)
    mod = patched_kernel("trace", EDITS)
    grid = case.q.shape[0] * case.q.shape[1] * -(-point[0] // 64)  # at most one program an item
    stamps = torch.full((grid, SLOTS), -1, dtype=torch.int64, device="cuda")
    mod.TRACE[:] = [stamps]
    with kernel_module(mod):
        status, error, _ = case.check(plan)
    if status != "ok":
        print(f"ws_trace: {plan} on the traced kernel: {status}: {(error or '')[:200]}")
        return 1
    stamps.fill_(-1)
    us = _timed(case.timer(plan), mod)
    torch.cuda.synchronize()
    lines = timelines(stamps.cpu())
    rows = summary(lines)
    print(f"{args.case} {plan}: {us:.2f} us a call (graph replay after the L2 flush, traced), "
          f"{len(lines)} programs; us from each program's start, median (p90) over programs:")
    for r in rows:
        print(f"  {r['event']:<34} {r['median_us']:8.2f}  ({r['p90_us']:.2f}, {r['programs']} programs)")
    path = save_results(result_name("ws_trace"), {"device": device_record(), "command": sys.argv, "plan": str(plan),
                                                  "us": us, "events": rows}, args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
