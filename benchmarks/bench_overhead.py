"""Compile time per variant config and host time of one eager ``sparse_decode`` call.

Compile time: the first call of each plan in a fresh Triton cache (a temporary TRITON_CACHE_DIR),
minus the steady-state time of that call.  Host time: wall time of many back-to-back eager calls
at T = 1 without synchronising (the GPU work is shorter than the launch path, so the loop measures
the host), three ways: ``host_us`` a normal call (metadata lookup + replay of the recorded
launches), ``checked_us`` with replays off (every check, the launchers, Triton's compiled-kernel
call), ``replay_us`` the replay alone (the launch floor of this design), ``find_us`` the lookup of
the call's replay (the metadata guard); ``direct``: whether the replay launches through the CUDA
driver directly (``kernels/cuda_launch.py``).  Targets: <= 15 s compile,
<= 15 us host.

    python benchmarks/bench_overhead.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="dsv4-triton-cache-"))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_record, print_table, save_results

import dsv4_tune.decode as decode_mod
from dsv4_tune import Plan, sparse_decode
from dsv4_tune.decode import replay_kind, workload_of
from dsv4_tune.kernels.variants import VARIANTS
from dsv4_tune.kernels.workspace import DEFAULT_WORKSPACE
from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink


def _inputs(h: int, x_topk: int, device: str):
    main = make_scope(1, 1, 128, 128, fp8="e4m3fn", device=device, topk_length="full", poison=False)
    extra = make_scope(1, 1, x_topk, 64, fp8="e4m3fn", device=device, topk_length="random", poison=False)
    q = make_query(1, 1, h, device=device)
    sink = make_sink(h, kind="finite", device=device)
    kw = dict(topk_length=main.topk_length, extra_k_cache=extra.kv_cache, extra_indices=extra.indices,
              extra_topk_length=extra.topk_length, attn_sink=sink, sm_scale=512**-0.5)
    return q, main, kw, workload_of(q, main.indices, main.topk_length, extra.indices, extra.topk_length, sink)


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


def _per_call_us(fn, calls: int, burst: int = 100) -> tuple[float, float]:
    """(median, min) host time per call over bursts of ``burst`` calls, each burst started on an
    idle GPU: a burst enqueues at most a few hundred kernels, far below the launch queue's depth, so
    the host never waits for the GPU and the time is the host's alone."""
    for _ in range(20):
        fn()
    samples = []
    for _ in range(max(1, calls // burst)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(burst):
            fn()
        samples.append((time.perf_counter() - t0) / burst * 1e6)
    torch.cuda.synchronize()
    samples.sort()
    return round(samples[len(samples) // 2], 2), round(samples[0], 2)


def host_times(plans: list[Plan], h: int, x_topk: int, device: str, calls: int = 2000) -> list[dict]:
    q, main, kw, _ = _inputs(h, x_topk, device)
    out = (torch.empty(1, 1, h, 512, dtype=torch.bfloat16, device=device), torch.empty(1, h, 1, device=device))
    rows = []
    for plan in plans:
        def call(plan=plan):
            sparse_decode(q, main.kv_cache, main.indices, plan=plan, out=out, **kw)

        host, host_min = _per_call_us(call, calls)
        replays = list(DEFAULT_WORKSPACE.replays.replays())
        replay = replays[-1] if replays else None
        tensors = [q, main.kv_cache, main.indices, kw["topk_length"], kw["extra_k_cache"], kw["extra_indices"],
                   kw["extra_topk_length"], kw["attn_sink"], *out]
        ptrs = [t.data_ptr() for t in tensors]
        replay_us = _per_call_us(lambda r=replay, p=ptrs: r(p), calls)[0] if replay is not None else None
        kind = replay_kind(plan, "e4m3fn", float(kw["sm_scale"]), tensors[:8], out)
        find_us = _per_call_us(lambda k=kind, ts=tensors: DEFAULT_WORKSPACE.replays.find(k, ts), calls)[0]
        decode_mod._REPLAY = False
        checked, _ = _per_call_us(call, calls)
        decode_mod._REPLAY = True
        rows.append({"plan": str(plan), "variant": plan.variant, "host_us": host, "host_us_min": host_min,
                     "checked_us": checked, "replay_us": replay_us, "find_us": find_us,
                     "direct": replay is not None and all(type(x).__name__ == "DirectLaunch" for x in replay.launches),
                     "launches": len(replay.launches) if replay is not None else None})
        DEFAULT_WORKSPACE.replays.clear()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--heads", type=int, default=128)
    ap.add_argument("--extra-topk", type=int, default=1024)
    ap.add_argument("--per-variant", type=int, default=6, help="configs per variant to compile")
    ap.add_argument("--host-only", action="store_true", help="skip the compile-time part")
    args = ap.parse_args()
    device = "cuda"
    _, _, _, w = _inputs(args.heads, args.extra_topk, device)
    plans: list[Plan] = []
    for v in VARIANTS.values():
        space = v.space(w)
        step = max(1, len(space) // args.per_variant)
        plans += [v.default(w)] + [p for p in space[::step][: args.per_variant] if p != v.default(w)]
    comp = [] if args.host_only else compile_times(plans, args.heads, args.extra_topk, device)
    host = host_times([v.default(w) for v in VARIANTS.values()], args.heads, args.extra_topk, device)
    x = torch.zeros(16, device=device)
    unit, _ = _per_call_us(lambda: x.add_(1), 2000)  # one eager PyTorch op on this host, for scale
    for r in host:
        r["torch_op_us"] = unit
    print_table(comp, ["variant", "compile_s", "plan"], "compile time per config (fresh Triton cache)")
    print_table(host, ["variant", "host_us", "host_us_min", "checked_us", "replay_us", "find_us", "direct", "launches",
                       "torch_op_us",
                       "plan"],
                "host time per eager call, T=1 (target <= 15 us)")
    save_results("overhead", {"device": device_record(), "workload": str(w), "compile": comp, "host": host}, args.out)


if __name__ == "__main__":
    main()
