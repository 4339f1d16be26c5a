"""The ws_sm90 kernel's first GPU visits (issue 29): a few configs beside the shipped policy and the
floor on the issue's shapes, each checked against the reference, plus a diagnostic: the same kernel
with every gather masked off (no KV bytes move; the compiler also folds the conversion of the zero
rows away, so the producer only stores zero tiles), which says
how fast the consumers and the conversion alone are.

    python benchmarks/ws_visit.py [--out DIR] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_decode import LAYERS, Scopes, check, floor_us
from benchmarks.common import bf16_matmul_tflops, copy_bandwidth_gbps, device_record, print_table, save_results
from benchmarks.ws_anatomy import patched_kernel
from dsv4_tune import Plan, sparse_decode
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.policies.dispatcher import get_dispatcher
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.decode import workload_of
from dsv4_tune.tuner.inputs import make_query, make_sink
from dsv4_tune.tuner.measure import time_graph

SM_SCALE = 512**-0.5
BY_NAME = {layer.name: layer for layer in LAYERS}
POINTS = [  # (h, layer, T)
    (128, "SWA+C4 1152", 512), (128, "SWA+C4 1152", 256), (128, "SWA+C4 1152", 64), (128, "SWA 128", 512),
    (64, "SWA+C4 640", 512), (128, "SWA+C128 1152", 256), (64, "SWA+C128 1152", 64),
    (64, "SWA 128", 1), (64, "SWA 128", 4), (128, "SWA+C4 1152", 1), (128, "SWA+C4 1152", 4),
    (128, "SWA+C4 1152", 16), (64, "SWA+C128 192", 4),
]


def ws(bn: int, st: int, sk: int, staged: int = 0) -> Plan:
    extra = {"COMBINE_BLOCK_H": 8, "combine_warps": 4} if sk > 1 else {}
    return Plan.make("ws_sm90", BLOCK_N=bn, KSTAGES=st, STAGED=staged, SPLIT_K=sk, **extra)


def plans_for(t: int) -> list[Plan | None]:
    out: list[Plan | None] = [None, ws(64, 2, 1), ws(64, 2, 1, 1), ws(32, 4, 1)]
    if t <= 64:
        out += [ws(64, 2, sk, st) for sk in (2, 4) for st in (0, 1)]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    ceilings = {"copy_gbps": copy_bandwidth_gbps(), "bf16_tflops": bf16_matmul_tflops()}
    print(f"ceilings {ceilings}", flush=True)
    gen = torch.Generator().manual_seed(1234)
    scopes = Scopes(512, "cuda", big=True, gen=gen)
    disp = get_dispatcher()
    print("policy:", disp.source, flush=True)
    rows = []
    points = POINTS[:3] + POINTS[7:9] if args.quick else POINTS
    for h, name, t in points:
        layer = BY_NAME[name]
        main_s = scopes.get(layer.main, False, t)
        extra = scopes.get(layer.extra, True, t) if layer.extra else None
        q = make_query(t, 1, h, device="cuda", gen=gen)
        sink = make_sink(h, kind="finite", device="cuda", gen=gen)
        kw = {"topk_length": main_s.topk_length, "attn_sink": sink, "sm_scale": SM_SCALE}
        if extra is not None:
            kw |= {"extra_k_cache": extra.kv_cache, "extra_indices": extra.indices,
                   "extra_topk_length": extra.topk_length}
        w = workload_of(q, main_s.indices, main_s.topk_length, kw.get("extra_indices"), kw.get("extra_topk_length"),
                        sink)
        fl = floor_us(t, h, w.total_topk, ceilings["copy_gbps"], ceilings["bf16_tflops"])
        ref = sparse_decode_ref(q, main_s.kv_cache, main_s.indices, fp8="e4m3fn", **kw)
        flop = 4 * t * h * w.total_topk * 512
        for plan in plans_for(t):
            label = f"policy {disp.lookup(w)}" if plan is None else str(plan)
            out = torch.full((t, 1, h, 512), float("nan"), dtype=torch.bfloat16, device="cuda")
            lse = torch.full((t, h, 1), float("nan"), device="cuda")
            fn = partial(sparse_decode, q, main_s.kv_cache, main_s.indices, plan=plan, out=(out, lse),
                         workspace=Workspace(), **kw)
            row = {"h": h, "layer": name, "T": t, "plan": label, "floor_us": round(fl, 2)}
            t0 = time.time()
            try:
                fn()
                torch.cuda.synchronize()
                row["first_s"] = round(time.time() - t0, 1)
                row["check"] = check(out, lse, ref)
                us = time_graph(fn)["median_us"]
                row |= {"us": round(us, 2), "x_floor": round(us / fl, 2), "TFLOP/s": round(flop / us / 1e6, 1)}
            except Exception as e:
                row["check"] = f"!!! {type(e).__name__}: {str(e)[:300]}"
            rows.append(row)
            print(row, flush=True)
        if t >= 256:  # the consumers' bound: the same kernel with every gather masked off
            mod = patched_kernel("no-gather")
            x_main = (main_s.kv_cache, main_s.indices, main_s.topk_length)
            x_extra = None if extra is None else (extra.kv_cache, extra.indices, extra.topk_length)
            for staged in (0, 1):
                go = partial(mod.launch_ws_decode, q, x_main, x_extra, sink, SM_SCALE, out, lse, None, split_k=1,
                             BLOCK_N=64, SUB=32, KSTAGES=2, STAGED=staged, PIPE=0, maxnreg=168)
                go()
                us = time_graph(go)["median_us"]
                rows.append({"h": h, "layer": name, "T": t, "plan": f"DIAG no gathers STAGED={staged}",
                             "us": round(us, 2), "floor_us": round(fl, 2), "x_floor": round(us / fl, 2),
                             "TFLOP/s": round(flop / us / 1e6, 1)})
                print(rows[-1], flush=True)
        del ref
        torch.cuda.empty_cache()
    save_results("ws_visit", {"device": device_record(), "ceilings": ceilings, "policy": disp.source, "rows": rows},
                 args.out)
    print_table(rows, ["h", "layer", "T", "plan", "us", "floor_us", "x_floor", "TFLOP/s", "check"], "ws_sm90 visit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
