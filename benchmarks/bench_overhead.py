"""Compile time per variant config and host time of one eager ``sparse_decode`` call.

Compile time: the first call of each plan in a fresh Triton cache (a temporary TRITON_CACHE_DIR),
minus the steady-state time of that call.  Host time: wall time of many back-to-back eager calls
at T = 1 without synchronising (the GPU work is shorter than the launch path, so the loop measures
the host), three ways: ``host_us`` a normal call (metadata lookup + replay of the recorded
launches), ``checked_us`` with replays off (every check, the launchers, Triton's compiled-kernel
call), ``replay_us`` the replay alone (the launch floor of this design), ``find_us`` the lookup of
the call's replay (the metadata guard); ``direct``: whether the replay launches through the CUDA
driver directly (``runtime/cuda_driver.py``); ``replay_c_us`` / ``replay_ctypes_us``: the replay
with those launches made from C (``runtime/fastlaunch.c``; None where it is not built) and the
same replay through ctypes.  Targets: <= 15 s compile, <= 15 us host.  ``--dispatched``: the host
time of eager calls that the policy answers (``plan=None``), per workload class at T = 1, beside the
same call with the policy's graph plan.  Host times are of each variant's default, and of the
split-K default with its combine as a programmatic dependent launch (``PDL`` = 1).

    python benchmarks/bench_overhead.py [--out DIR] [--host-only] [--dispatched]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="dsv4-triton-cache-"))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_record, print_table, save_results

import dsv4_tune.serving.decode as decode_mod
from dsv4_tune import Plan, sparse_decode
from dsv4_tune.policies.dispatcher import get_dispatcher
from dsv4_tune.registry.variants import PDL_KEY, VARIANTS
from dsv4_tune.runtime import fastlaunch
from dsv4_tune.runtime.cuda_driver import DirectLaunch
from dsv4_tune.runtime.recording import Replay
from dsv4_tune.runtime.workspace import DEFAULT_WORKSPACE
from dsv4_tune.serving.decode import replay_kind, workload_of
from dsv4_tune.tuner.candidates import LAUNCHES
from dsv4_tune.tuner.grid import default_grid
from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink
from dsv4_tune.tuner.measure import host_us_per_call


def _inputs(h: int, x_topk: int, device: str):
    main = make_scope(1, 1, 128, 128, fp8="e4m3fn", device=device, topk_length="full", poison=False)
    extra = make_scope(1, 1, x_topk, 64, fp8="e4m3fn", device=device, topk_length="random", poison=False)
    q = make_query(1, 1, h, device=device)
    sink = make_sink(h, kind="finite", device=device)
    kw = dict(topk_length=main.topk_length, extra_k_cache=extra.kv_cache, extra_indices=extra.indices,
              extra_topk_length=extra.topk_length, attn_sink=sink, sm_scale=512**-0.5)
    return q, main, kw, workload_of(q, main.indices, main.topk_length, extra.indices, extra.topk_length, sink)


def _through_ctypes(replay: Replay) -> Replay:
    """``replay`` with its direct launches made through ctypes (the C launcher off)."""
    launches = [copy.copy(x) for x in replay.launches]
    for x in launches:
        if isinstance(x, DirectLaunch):
            x.fast = None
    return Replay(replay.device, launches, [], replay.aliases)


def compile_times(plans: list[Plan], h: int, x_topk: int, device: str) -> list[dict]:
    q, main, kw, _ = _inputs(h, x_topk, device)
    rows = []
    for plan in plans:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sparse_decode(q, main.kv_cache, main.indices, plan=plan, **kw)
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        sparse_decode(q, main.kv_cache, main.indices, plan=plan, **kw)
        torch.cuda.synchronize()
        steady = time.perf_counter() - t0
        rows.append({"plan": str(plan), "variant": plan.variant, "compile_s": round(first - steady, 2)})
        print(f"compile {rows[-1]['compile_s']:7.2f} s  {plan}", flush=True)
    return rows


def host_times(plans: list[Plan], h: int, x_topk: int, device: str, calls: int = 2000) -> list[dict]:
    q, main, kw, _ = _inputs(h, x_topk, device)
    out = (torch.empty(1, 1, h, 512, dtype=torch.bfloat16, device=device), torch.empty(1, h, 1, device=device))
    rows = []
    for plan in plans:
        def call(plan=plan):
            sparse_decode(q, main.kv_cache, main.indices, plan=plan, out=out, **kw)

        host, host_min = host_us_per_call(call, calls)
        replays = list(DEFAULT_WORKSPACE.replays.replays())
        replay = replays[-1] if replays else None
        tensors = [q, main.kv_cache, main.indices, kw["topk_length"], kw["extra_k_cache"], kw["extra_indices"],
                   kw["extra_topk_length"], kw["attn_sink"], *out]
        ptrs = [t.data_ptr() for t in tensors]
        replay_us = host_us_per_call(lambda r=replay, p=ptrs: r(p), calls)[0] if replay is not None else None
        twin = None if replay is None else _through_ctypes(replay)
        ctypes_us = host_us_per_call(lambda r=twin, p=ptrs: r(p), calls)[0] if twin is not None else None
        c_path = replay is not None and any(getattr(x, "fast", None) is not None for x in replay.launches)
        kind = replay_kind(plan, "e4m3fn", float(kw["sm_scale"]), tensors[:8], out)
        find_us = host_us_per_call(lambda k=kind, ts=tensors: DEFAULT_WORKSPACE.replays.find(k, ts), calls)[0]
        decode_mod._REPLAY = False
        checked, _ = host_us_per_call(call, calls)
        decode_mod._REPLAY = True
        rows.append({"plan": str(plan), "variant": plan.variant, "host_us": host, "host_us_min": host_min,
                     "checked_us": checked, "replay_us": replay_us, "find_us": find_us,
                     "replay_c_us": replay_us if c_path else None, "replay_ctypes_us": ctypes_us,
                     "direct": replay is not None and all(type(x).__name__ == "DirectLaunch" for x in replay.launches),
                     "launches": len(replay.launches) if replay is not None else None})
        DEFAULT_WORKSPACE.replays.clear()
    return rows


def dispatched_host_times(calls: int = 2000) -> list[dict]:
    """Host time of an eager dispatched call (``plan=None``: the process's policy answers) at T = 1
    for every decode class of the default grid, beside the same call with the policy's graph plan
    (what an eager call cost before the policy had eager plans)."""
    d = get_dispatcher()
    rows = []
    for cls in default_grid().classes:
        case = cls.build_case(1, "cuda", with_ref=False)
        out = (torch.empty(case.ref[0].shape, dtype=torch.bfloat16, device="cuda"),
               torch.empty(case.ref[1].shape, device="cuda"))
        w = cls.workload(1)
        graph_plan, eager_plan = d.lookup(w), d.lookup(w, eager=True)
        host, _ = host_us_per_call(lambda c=case, o=out: c.run(None, DEFAULT_WORKSPACE, o), calls)
        graph_host, _ = host_us_per_call(lambda c=case, o=out, p=graph_plan: c.run(p, DEFAULT_WORKSPACE, o), calls)
        rows.append({"class": str(w), "host_us": host, "graph_plan_host_us": graph_host,
                     "eager_plan": str(eager_plan), "graph_plan": str(graph_plan),
                     "eager_launches": LAUNCHES[eager_plan.variant], "graph_launches": LAUNCHES[graph_plan.variant]})
        print(f"dispatched {host:6.2f} us (graph plan {graph_host:6.2f} us)  {w}", flush=True)
    DEFAULT_WORKSPACE.replays.clear()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--heads", type=int, default=128)
    ap.add_argument("--extra-topk", type=int, default=1024)
    ap.add_argument("--per-variant", type=int, default=6, help="configs per variant to compile")
    ap.add_argument("--host-only", action="store_true", help="skip the compile-time part")
    ap.add_argument("--dispatched", action="store_true",
                    help="also time dispatched calls (plan=None) of every grid class at T=1 under this GPU's policy")
    args = ap.parse_args()
    device = "cuda"
    _, _, _, w = _inputs(args.heads, args.extra_topk, device)
    plans: list[Plan] = []
    for v in VARIANTS.values():
        space = v.space(w)
        step = max(1, len(space) // args.per_variant)
        plans += [v.default(w)] + [p for p in space[::step][: args.per_variant] if p != v.default(w)]
    comp = [] if args.host_only else compile_times(plans, args.heads, args.extra_topk, device)
    host_plans = [v.default(w) for v in VARIANTS.values()]
    split = VARIANTS["fused_splitk"].default(w)
    host_plans.insert(2, Plan.make(split.variant, split.as_dict(), **{PDL_KEY: 1}))  # combine as a PDL launch
    host = host_times(host_plans, args.heads, args.extra_topk, device)
    x = torch.zeros(16, device=device)
    unit, _ = host_us_per_call(lambda: x.add_(1), 2000)  # one eager PyTorch op on this host, for scale
    for r in host:
        r["torch_op_us"] = unit
    print_table(comp, ["variant", "compile_s", "plan"], "compile time per config (fresh Triton cache)")
    print_table(host, ["variant", "host_us", "host_us_min", "checked_us", "replay_us", "find_us", "direct", "launches",
                       "replay_c_us", "replay_ctypes_us", "torch_op_us", "plan"],
                "host time per eager call, T=1 (target <= 15 us)")
    if fastlaunch.failure:
        print(f"C launcher not in use: {fastlaunch.failure}")
    dispatched = dispatched_host_times() if args.dispatched else []
    if dispatched:
        print_table(dispatched,
                    ["host_us", "graph_plan_host_us", "eager_launches", "graph_launches", "class", "eager_plan"],
                    f"host time per eager dispatched call, T=1, policy {get_dispatcher().source} (target <= 15 us)")
    save_results("overhead", {"device": device_record(), "workload": str(w), "compile": comp, "host": host,
                              "dispatched": dispatched, "c_launcher_failure": fastlaunch.failure}, args.out)


if __name__ == "__main__":
    main()
