"""A first look at the config landscape, before the tuner exists: time every fused config and a
split-K slice on the DSV4 shapes of ``check_all_configs.py`` at a few T, as serving runs them
(CUDA-graph replay, cold L2), and report the best plan per (shape, T) against each variant's
default.  Kernels are compiled first by worker processes.

    python benchmarks/sweep_preview.py [--jobs 12] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="dsv4-triton-cache-"))

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_all_configs import SHAPES, build, compile_all
from common import device_record, print_table, save_results, time_graph

from dsv4_tune import Plan, sparse_decode
from dsv4_tune.registry.variants import DEFAULT_COMBINE, VARIANTS
from dsv4_tune.runtime.workspace import Workspace

TOKENS = (1, 8, 64, 256)
SPLITS = (2, 4, 8)


def candidates(shape_index: int) -> list[Plan]:
    _, _, _, w = build(SHAPES[shape_index], 1, 1, 0, "cpu")
    fused = VARIANTS["fused"].space(w)
    out = list(fused)
    for p in fused:
        for sk in SPLITS:
            plan = Plan.make("fused_splitk", p.as_dict(), SPLIT_K=sk, **DEFAULT_COMBINE)
            if not VARIANTS["fused_splitk"].problems(w, plan.as_dict()):
                out.append(plan)
    gta = VARIANTS["gather_attend"].default(w).as_dict()
    for bh in (16, 32, 64):
        for nw in (4, 8):
            plan = Plan.make("gather_attend", gta, BLOCK_H=bh, num_warps=nw, BLOCK_TK=64)
            if not VARIANTS["gather_attend"].problems(w, plan.as_dict()):
                out.append(plan)
    return out + [v.default(w) for v in VARIANTS.values()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    plans = {i: sorted(set(candidates(i)), key=str) for i in range(len(SHAPES))}
    compile_all([(i, p) for i, ps in plans.items() for p in ps], args.jobs)
    rows, best_rows = [], []
    for i, shape in enumerate(SHAPES):
        for t in TOKENS:
            q, main, kw, w = build(shape, t, 1, 7, "cuda")
            out = (torch.empty(t, 1, w.h_q, 512, dtype=torch.bfloat16, device="cuda"),
                   torch.empty(t, w.h_q, 1, device="cuda"))
            timed = []
            for plan in plans[i]:
                ws = Workspace()

                def call(plan=plan, ws=ws, q=q, main=main, out=out, kw=kw):
                    sparse_decode(q, main.kv_cache, main.indices, plan=plan, workspace=ws, out=out, **kw)

                us = time_graph(call, reps=args.reps, warmup=2)["median_us"]
                timed.append((us, plan))
                rows.append({"shape": shape[0], "T": t, "plan": str(plan), "us": round(us, 2)})
            timed.sort(key=lambda x: x[0])
            defaults = {str(v.default(w)): v.name for v in VARIANTS.values()}
            row = {"shape": shape[0], "T": t, "best_us": round(timed[0][0], 1), "best": str(timed[0][1])}
            for us, plan in timed:
                if str(plan) in defaults:
                    row[f"default {defaults[str(plan)]}"] = round(us, 1)
            for name in VARIANTS:
                us, plan = min(((u, p) for u, p in timed if p.variant == name), key=lambda x: x[0])
                row[f"best {name}"] = round(us, 1)
            best_rows.append(row)
            print(row, flush=True)
    cols = ["shape", "T", "best_us", "best fused", "best fused_splitk", "best gather_attend",
            "default fused", "default fused_splitk", "default gather_attend", "best"]
    print_table(best_rows, cols, "best plan per (shape, T) vs defaults, µs (CUDA graph, cold L2)")
    save_results("sweep_preview", {"device": device_record(), "best": best_rows, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
