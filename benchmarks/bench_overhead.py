"""Compile time per variant config and host time of one eager ``sparse_decode`` call.

Compile time: the first call of each plan in a fresh Triton cache (a temporary TRITON_CACHE_DIR),
minus the steady-state time of that call.  Host time: wall time of many back-to-back eager calls
at T = 1 without synchronising (the GPU work is shorter than the launch path, so the loop measures
the host: input checks, workspace lookup, launches).  Targets: <= 15 s compile, <= 15 us host.

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

from dsv4_tune import Plan, sparse_decode
from dsv4_tune.decode import workload_of
from dsv4_tune.kernels.variants import VARIANTS
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


def host_times(plans: list[Plan], h: int, x_topk: int, device: str, calls: int = 2000) -> list[dict]:
    q, main, kw, _ = _inputs(h, x_topk, device)
    out = (torch.empty(1, 1, h, 512, dtype=torch.bfloat16, device=device), torch.empty(1, h, 1, device=device))
    rows = []
    for plan in plans:
        for _ in range(20):
            sparse_decode(q, main.kv_cache, main.indices, plan=plan, out=out, **kw)
        torch.cuda.synchronize()
        samples = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(calls // 5):
                sparse_decode(q, main.kv_cache, main.indices, plan=plan, out=out, **kw)
            samples.append((time.perf_counter() - t0) / (calls // 5) * 1e6)
            torch.cuda.synchronize()
        samples.sort()
        rows.append({"plan": str(plan), "variant": plan.variant, "host_us": round(samples[2], 2),
                     "host_us_min": round(samples[0], 2)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--heads", type=int, default=128)
    ap.add_argument("--extra-topk", type=int, default=1024)
    ap.add_argument("--per-variant", type=int, default=6, help="configs per variant to compile")
    args = ap.parse_args()
    device = "cuda"
    _, _, _, w = _inputs(args.heads, args.extra_topk, device)
    plans: list[Plan] = []
    for v in VARIANTS.values():
        space = v.space(w)
        step = max(1, len(space) // args.per_variant)
        plans += [v.default(w)] + [p for p in space[::step][: args.per_variant] if p != v.default(w)]
    comp = compile_times(plans, args.heads, args.extra_topk, device)
    host = host_times([v.default(w) for v in VARIANTS.values()], args.heads, args.extra_topk, device)
    print_table(comp, ["variant", "compile_s", "plan"], "compile time per config (fresh Triton cache)")
    print_table(host, ["variant", "host_us", "host_us_min", "plan"], "host time per eager call, T=1")
    save_results("overhead", {"device": device_record(), "workload": str(w), "compile": comp, "host": host}, args.out)


if __name__ == "__main__":
    main()
