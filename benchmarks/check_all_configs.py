"""Run every config in each variant's space on realistic DSV4 shapes and report any mismatch.

Kernels are compiled first by ``--jobs`` worker processes that fill one Triton cache (each worker
records the first-call time of the plans it compiles: the compile time), then the main process
runs every (shape, plan) on poisoned inputs (NaN in unused KV slots, NaN outputs and workspace,
bad ids, random topk_length) and checks it against the fp32 reference with FlashMLA's tolerances.

    python benchmarks/check_all_configs.py [--jobs 12] [--out DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="dsv4-triton-cache-"))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_record, print_table, save_results

from dsv4_tune import Plan, sparse_decode
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.registry.variants import VARIANTS
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.decode import workload_of
from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink
from dsv4_tune.tuner.tolerance import decode_mismatch

# (label, h_q, extra topk, extra page size); main scope: SWA topk 128, page 128.
SHAPES = [
    ("h64 SWA128+C4 512", 64, 512, 64),
    ("h128 SWA128+C4 1024", 128, 1024, 64),
    ("h128 SWA128+C128 64", 128, 64, 2),
    ("h64 SWA128 only", 64, 0, 0),
]
SM_SCALE = 512**-0.55


def build(shape: tuple, b: int, s_q: int, seed: int, device: str = "cuda"):
    """Inputs of one shape: (q, main scope, keyword args, workload)."""
    _, h, x_topk, x_page = shape
    gen = torch.Generator().manual_seed(seed)
    main = make_scope(b, s_q, 128, 128, fp8="e4m3fn", device=device, bad_ids=True, topk_length="random", gen=gen)
    extra = None
    if x_topk:
        extra = make_scope(b, s_q, x_topk, x_page, fp8="e4m3fn", device=device, bad_ids=True,
                           topk_length="random", gen=gen)
    q = make_query(b, s_q, h, device=device, gen=gen)
    sink = make_sink(h, kind="mixed", device=device, gen=gen)
    kw = dict(topk_length=main.topk_length, extra_k_cache=extra.kv_cache if extra else None,
              extra_indices=extra.indices if extra else None, extra_topk_length=extra.topk_length if extra else None,
              attn_sink=sink, sm_scale=SM_SCALE)
    w = workload_of(q, main.indices, main.topk_length, kw["extra_indices"], kw["extra_topk_length"], sink)
    return q, main, kw, w


def all_plans(variants: list[str]) -> list[tuple[int, Plan]]:
    out = []
    for i, shape in enumerate(SHAPES):
        _, _, _, w = build(shape, 1, 1, 0, "cpu")
        for name in variants:
            out += [(i, p) for p in VARIANTS[name].space(w)]
    return out


def _compile_key(plan: Plan) -> tuple:
    """Plans that differ only in run-time arguments share their kernels."""
    return (plan.variant, tuple((k, v) for k, v in plan.config if k != "SPLIT_K"), plan["SPLIT_K"] > 1
            if "SPLIT_K" in plan.as_dict() else False)


def worker(jobs: list[tuple[int, Plan]], queue: mp.Queue) -> None:
    """Compile by running each plan once on a tiny input; report first-call times."""
    cache = {}
    for i, plan in jobs:
        if i not in cache:
            cache[i] = build(SHAPES[i], 1, 1, 1)
        q, main, kw, _ = cache[i]
        t0 = time.perf_counter()
        try:
            sparse_decode(q, main.kv_cache, main.indices, plan=plan, **kw)
            torch.cuda.synchronize()
            queue.put((i, str(plan), plan.variant, time.perf_counter() - t0, None))
        except Exception as e:
            queue.put((i, str(plan), plan.variant, time.perf_counter() - t0, f"{type(e).__name__}: {e}"))


def compile_all(plans: list[tuple[int, Plan]], jobs: int) -> list[tuple]:
    firsts: dict[tuple, tuple[int, Plan]] = {}
    for i, p in plans:
        firsts.setdefault((i, _compile_key(p)), (i, p))
    todo = list(firsts.values())
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(todo[k::jobs], queue)) for k in range(jobs)]
    for p in procs:
        p.start()
    results = []
    for n in range(len(todo)):
        results.append(queue.get())
        if n % 20 == 0:
            print(f"compiled {n + 1}/{len(todo)}", flush=True)
    for p in procs:
        p.join()
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--b", type=int, default=2)
    ap.add_argument("--s-q", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated variants (default: all)")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; known {list(VARIANTS)}")
    plans = all_plans(variants)
    print(f"{len(plans)} (shape, plan) pairs", flush=True)
    t0 = time.time()
    compiled = compile_all(plans, args.jobs)
    compile_wall = time.time() - t0
    compile_errors = [c for c in compiled if c[4]]
    rows, failures = [], []
    for i, shape in enumerate(SHAPES):
        q, main, kw, _ = build(shape, args.b, args.s_q, 1000 + i)
        ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8="e4m3fn", out_dtype=torch.float32, **kw)
        counts = {}
        for j, plan in plans:
            if j != i:
                continue
            ws = Workspace()
            out = torch.full(ref[0].shape, float("nan"), dtype=torch.bfloat16, device="cuda")
            lse = torch.full(ref[1].shape, float("nan"), device="cuda")
            try:
                sparse_decode(q, main.kv_cache, main.indices, plan=plan, workspace=ws, out=(out, lse), **kw)
                ws.poison()
                out.fill_(float("nan"))
                lse.fill_(float("nan"))
                sparse_decode(q, main.kv_cache, main.indices, plan=plan, workspace=ws, out=(out, lse), **kw)
                torch.cuda.synchronize()
                problem = decode_mismatch(out, lse, *ref)
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
            ok, bad = counts.get(plan.variant, (0, 0))
            counts[plan.variant] = (ok + (problem is None), bad + (problem is not None))
            if problem:
                failures.append({"shape": shape[0], "plan": str(plan), "problem": problem[:400]})
                print(f"MISMATCH {shape[0]} {plan}: {problem[:200]}", flush=True)
        for variant, (ok, bad) in counts.items():
            rows.append({"shape": shape[0], "variant": variant, "configs": ok + bad, "ok": ok, "failed": bad})
    by_variant = {}
    for _, _, variant, secs, err in compiled:
        if not err:
            by_variant.setdefault(variant, []).append(secs)
    comp_rows = [{"variant": v, "kernels": len(s), "median_s": round(statistics.median(s), 2),
                  "max_s": round(max(s), 2)} for v, s in by_variant.items()]
    print_table(comp_rows, ["variant", "kernels", "median_s", "max_s"],
                f"first-call (compile) time per distinct kernel config, {args.jobs} workers, {compile_wall:.0f} s wall")
    print_table(rows, ["shape", "variant", "configs", "ok", "failed"],
                f"every config vs reference, T={args.b * args.s_q}")
    print(f"compile errors: {len(compile_errors)}; mismatches: {len(failures)}")
    for c in compile_errors[:10]:
        print("COMPILE ERROR", c[1], c[4][:300])
    name = "check_all_configs" if set(variants) == set(VARIANTS) else f"check_all_configs-{'+'.join(variants)}"
    save_results(name, {
        "device": device_record(), "shapes": SHAPES, "tokens": args.b * args.s_q, "rows": rows,
        "failures": failures, "compile": comp_rows, "compile_wall_s": round(compile_wall, 1),
        "compile_errors": [{"plan": c[1], "error": c[4][:1000]} for c in compile_errors],
        "compile_times": [{"shape": SHAPES[c[0]][0], "plan": c[1], "first_call_s": round(c[3], 2)} for c in compiled],
    }, args.out)
    if failures or compile_errors:
        sys.exit(1)  # the results are saved; the caller stops here


if __name__ == "__main__":
    main()
