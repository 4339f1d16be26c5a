"""Speed of sparse decode against a physical floor: variants at their defaults, or policies side by side.

For each (h_q, layer kind, T) every registered variant runs at its default plan through the public
``sparse_decode`` entry, replayed from a CUDA graph on a cold L2 with pools far larger than L2.
The floor is max(bytes / measured copy bandwidth, FLOPs / measured bf16 matmul rate): 'of floor'
is the fraction of it achieved (1.0 = at the floor).  Each variant is checked against the reference
at T <= 8; failures are marked in the table and the JSON and make the exit status 1.

With ``--policy NEW`` it compares, on the same inputs in one run: (a) NEW's plan, (b) the ws_sm90
variant at its best of a few configs that pass their check (where it runs; persistent ones are
checked at every T, the rest at T <= 64 as the policies' plans), (c) ``--before OLD``'s plan (default: the
shipped policy of this GPU), (d) the seed's hand rules on our kernels, (e) the floor; per point
time, x floor, TFLOP/s, the ratios, and the geomeans over T >= 64; at T <= 16 also the latency
floor of the shape measured in the same run (``bench_latency_floor.WaveFloor``: one wave that
touches the shape's rows once) and time / max(floor, latency floor); JSON and a PNG.

    python benchmarks/bench_decode.py [--quick] [--variants fused gather_attend]
    python benchmarks/bench_decode.py --policy NEW.json [--before OLD.json] [--quick]
    python benchmarks/bench_decode.py --policy NEW.json --ts 1 4 16 --no-ws   # small T; no ws_sm90 column
    python benchmarks/bench_decode.py --smoke    # tiny shapes; Triton interpreter when there is no GPU

At T <= 16 the new policy's plan is also timed as what it adds to a graph holding more work
(``policy_in_graph_us``, ``tuner.measure.time_in_graph``: no graph launch of its own, which a
single-call replay pays), beside the latency floor timed the same way (``latency_floor_in_graph_us``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.common must precede dsv4_tune

from benchmarks.bench_latency_floor import WaveFloor
from benchmarks.common import (
    INTERPRETER_NOTE,
    add_common_args,
    bf16_matmul_tflops,
    copy_bandwidth_gbps,
    default_out_dir,
    device_record,
    parse_gpu_args,
    print_table,
    result_name,
    save_results,
    time_eager,
    time_graph,
)
from dsv4_tune import sparse_decode
from dsv4_tune.kernels.kv_layout import HEAD_DIM, TOKEN_BYTES, padded_page_bytes
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.policies.baseline import plan_for, seed_decision
from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
from dsv4_tune.registry.launches import PDL_KEY, WS_PERSIST_KEY, WS_SOLO_KEY
from dsv4_tune.registry.variants import VARIANTS, plan_problems
from dsv4_tune.registry.workload import Plan, Workload
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.decode import workload_of
from dsv4_tune.serving.variants import variant_problem
from dsv4_tune.tuner.cases import DecodeCase
from dsv4_tune.tuner.inputs import TIMING_LENGTHS, Scope, make_query, make_scope, make_sink
from dsv4_tune.tuner.measure import time_in_graph
from dsv4_tune.tuner.tolerance import max_abs_error, mismatch

FP8 = "e4m3fn"
SM_SCALE = HEAD_DIM**-0.5
POOL_BYTES = 9 * 2**26  # 576 MiB per pool: far larger than any L2
REF_MAX_T, CHECK_MAX_T = 64, 8
OUT_ATOL, LSE_ATOL = 2e-2, 1e-3


@dataclass(frozen=True)
class Layer:
    """A DSV4 layer kind: the main (SWA) scope and the optional compressed extra scope, as (topk, page)."""

    name: str
    main: tuple[int, int]
    extra: tuple[int, int] | None = None


LAYERS = (
    Layer("SWA 128", (128, 128)),
    Layer("SWA+C128 192", (128, 128), (64, 2)),
    Layer("SWA+C128 1152", (128, 128), (1024, 2)),
    Layer("SWA+C4 640", (128, 128), (512, 64)),
    Layer("SWA+C4 1152", (128, 128), (1024, 64)),
)
SMOKE_LAYERS = (Layer("SWA 64", (64, 64)), Layer("SWA+C128 128", (64, 64), (64, 2)))
FULL_TS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
COMPARE_TS = (1, 2, 4, 8, 16, 64, 256, 512)
SMALL_T = 16  # rows up to here are also set beside the latency floor of their shape (issue 32)
COMPARE_CHECK_MAX_T = 64  # every compared plan is checked against the reference up to here


class Scopes:
    """One pool per scope kind, built once at the largest T; smaller T use its first rows.

    Lengths as the sweep times them (``TIMING_LENGTHS``): main scopes keep every candidate (SWA windows
    are full); extra scopes get a random length in [topk / 2, topk] per row, as compressed-token
    counts vary between requests.  Ids at random slots, as the sweep places them, or with ``windows``
    each main scope's ids a sliding window (consecutive positions of a request's pages).
    """

    def __init__(self, t_max: int, device: str, big: bool, gen: torch.Generator, windows: bool = False) -> None:
        self.t_max, self.device, self.big, self.gen, self.windows = t_max, device, big, gen, windows
        self._built: dict[tuple[int, int, bool], Scope] = {}

    def get(self, spec: tuple[int, int], extra: bool, t: int) -> Scope:
        topk, page = spec
        key = (topk, page, extra)
        if key not in self._built:
            pages = math.ceil(POOL_BYTES / padded_page_bytes(page)) if self.big else None
            length = TIMING_LENGTHS[int(extra)]
            self._built[key] = make_scope(
                self.t_max, 1, topk, page, fp8=FP8, device=self.device, num_pages=pages,
                invalid_frac=0.05, topk_length=length, poison=False, window=self.windows and not extra, gen=self.gen,
            )
        sc = self._built[key]
        return Scope(sc.kv_cache, sc.indices[:t], None if sc.topk_length is None else sc.topk_length[:t])


def point_inputs(
    h: int, layer: Layer, t: int, scopes: Scopes, device: str, gen: torch.Generator,
) -> tuple[torch.Tensor, Scope, dict[str, Any], Workload]:
    """The inputs of one (h_q, layer, T): the query, the main scope, the keyword arguments of
    ``sparse_decode`` (lengths, the extra scope, a finite sink, the scale) and the workload."""
    main = scopes.get(layer.main, False, t)
    extra = scopes.get(layer.extra, True, t) if layer.extra else None
    q = make_query(t, 1, h, device=device, gen=gen)
    sink = make_sink(h, kind="finite", device=device, gen=gen)
    kw: dict[str, Any] = {"topk_length": main.topk_length, "attn_sink": sink, "sm_scale": SM_SCALE}
    if extra is not None:
        kw |= {"extra_k_cache": extra.kv_cache, "extra_indices": extra.indices, "extra_topk_length": extra.topk_length}
    w = workload_of(q, main.indices, main.topk_length, kw.get("extra_indices"), kw.get("extra_topk_length"), sink)
    return q, main, kw, w


def parse_point(text: str) -> tuple[int, Layer, int] | None:
    """``HEADS:LAYER:T`` with a layer of :data:`LAYERS` (e.g. ``64:SWA 128:256``) as (h_q, layer, T);
    None where the text is not one."""
    parts = text.split(":")
    layers = {x.name: x for x in LAYERS}
    if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in layers or not parts[2].isdigit():
        return None
    return int(parts[0]), layers[parts[1]], int(parts[2])


def point_form() -> str:
    """What :func:`parse_point` reads, for a one-line refusal of a text it cannot."""
    return f"HEADS:LAYER:T with a layer of {sorted(x.name for x in LAYERS)}"


def point_case(h: int, layer: Layer, t: int, seed: int) -> DecodeCase:
    """One point's inputs (:func:`point_inputs`, on a GPU, with scopes of its own) and their reference,
    as the tuner's case: what a script that checks and runs plans on one point needs."""
    gen = torch.Generator().manual_seed(seed)
    q, main, kw, _ = point_inputs(h, layer, t, Scopes(t, "cuda", big=True, gen=gen), "cuda", gen)
    ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8=FP8, out_dtype=torch.float32, **kw)
    return DecodeCase(q, main, kw, ref, FP8)


def floor_us(t: int, h: int, total_topk: int, copy_gbps: float, tflops: float) -> float:
    """The physical floor: KV + q + out bytes at copy bandwidth, or the QK + PV FLOPs at matmul peak."""
    nbytes = t * total_topk * TOKEN_BYTES + 2 * (t * h * HEAD_DIM * 2)
    flops = 4 * t * h * total_topk * HEAD_DIM
    return max(nbytes / (copy_gbps * 1e9), flops / (tflops * 1e12)) * 1e6


def check(out: torch.Tensor, lse: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> str:
    """'ok', or '!!! FAIL: ...' saying what differs from the reference."""
    err = max_abs_error(out, ref[0])
    problems = [] if err <= OUT_ATOL else [f"out max|err| {err:.3g} > {OUT_ATOL}"]
    lse_msg = mismatch(lse, ref[1], atol=LSE_ATOL, rtol=0.0)
    if lse_msg is not None:
        problems.append(f"lse: {lse_msg}")
    return "!!! FAIL: " + "; ".join(problems) if problems else "ok"


def bench_workload(
    h: int, layer: Layer, t: int, scopes: Scopes, variants: list[str], ceilings: dict[str, float] | None,
    device: str, gen: torch.Generator,
) -> list[dict[str, Any]]:
    """Rows for one (h_q, layer, T): every requested variant at its default plan."""
    q, main, scope_kw, w = point_inputs(h, layer, t, scopes, device, gen)
    base = {"h_q": h, "layer": layer.name, "T": t, "total_topk": w.total_topk}
    if ceilings is not None:
        base["floor_us"] = floor_us(t, h, w.total_topk, ceilings["copy_gbps"], ceilings["bf16_tflops"])
    ref_fn = partial(sparse_decode_ref, q, main.kv_cache, main.indices, fp8=FP8, **scope_kw)
    ref = ref_fn() if t <= CHECK_MAX_T else None
    if ceilings is not None and t <= REF_MAX_T:
        base["ref_us"] = time_eager(ref_fn, reps=5, warmup=1)["median_us"]
    rows = []
    for name in variants:
        if variant_problem(name):
            continue
        plan = VARIANTS[name].default(w)
        row: dict[str, Any] = {**base, "variant": name, "plan": str(plan)}
        rows.append(row)
        problems = VARIANTS[name].problems(w, plan.as_dict())
        if problems:
            row["check"] = "skipped: " + "; ".join(problems)
            continue
        out = torch.full((t, 1, h, HEAD_DIM), float("nan"), dtype=torch.bfloat16, device=device)
        lse = torch.full((t, h, 1), float("nan"), dtype=torch.float32, device=device)
        fn = partial(sparse_decode, q, main.kv_cache, main.indices, plan=plan, fp8=FP8, out=(out, lse),
                     workspace=Workspace(), **scope_kw)
        fn()  # compiles, allocates the workspace before capture, and is the output checked below
        row["check"] = check(out, lse, ref) if ref is not None else ""
        if ceilings is None:
            row["note"] = INTERPRETER_NOTE
            continue
        timing = time_graph(fn)
        us = row["us"] = timing["median_us"]
        row |= {"p20_us": timing["p20_us"], "p80_us": timing["p80_us"], "graph": timing["graph"],
                "of floor": base["floor_us"] / us}
        if "ref_us" in base:
            row["speedup"] = base["ref_us"] / us
    return rows


def ws_candidates(w: Workload) -> list[Plan]:
    """A few ws_sm90 configs (both pipelines on and off, one grid and persistent; split 2-8 ways at
    T <= 16, the combine launched plainly and as a programmatic dependent; there also the
    one-warpgroup kernel, unsplit and split 8 ways) valid for ``w``."""
    plans = [Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=st, PIPE=pi, SPLIT_K=1)
             for st in (0, 1) for pi in (0, 1)]
    plans += [Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=st, PIPE=pi, SPLIT_K=1, **{WS_PERSIST_KEY: 1})
              for st, pi in ((0, 0), (1, 0), (1, 1))]
    if w.total_tokens <= 16:
        plans += [Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=1, PIPE=1, SPLIT_K=sk, COMBINE_BLOCK_H=8,
                            combine_warps=4, **pdl) for sk in (2, 4, 8) for pdl in ({}, {PDL_KEY: 1})]
        plans += [Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=1, **{WS_SOLO_KEY: 1}),
                  Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=0, PIPE=0, SPLIT_K=8, COMBINE_BLOCK_H=8,
                            combine_warps=4, **{PDL_KEY: 1, WS_SOLO_KEY: 1})]
    return [p for p in plans if not plan_problems(w, p, "sm90")]


def compare_point(
    h: int, layer: Layer, t: int, scopes: Scopes, ceilings: dict[str, float], new: Dispatcher, before: Dispatcher,
    gen: torch.Generator, wave: WaveFloor, ws: bool = True,
) -> dict[str, Any]:
    """One (h_q, layer, T) of the policy comparison: every plan checked (T <= 64) and timed on the same
    inputs; at small T also the latency floor of the shape (one wave touching its rows once)."""
    q, main_s, kw, w = point_inputs(h, layer, t, scopes, "cuda", gen)
    fl = floor_us(t, h, w.total_topk, ceilings["copy_gbps"], ceilings["bf16_tflops"])
    ref = sparse_decode_ref(q, main_s.kv_cache, main_s.indices, fp8=FP8, **kw) if t <= COMPARE_CHECK_MAX_T else None
    out = torch.empty(t, 1, h, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    lse = torch.empty(t, h, 1, dtype=torch.float32, device="cuda")

    def measure(plan: Plan, against: torch.Tensor | None = ref, in_graph: bool = False
                ) -> tuple[float, str, float | None]:
        """(us, check status, ``in_graph``: us the call adds inside a step's graph (NaN if not captured))."""
        out.fill_(float("nan"))
        lse.fill_(float("nan"))
        fn = partial(sparse_decode, q, main_s.kv_cache, main_s.indices, plan=plan, fp8=FP8, out=(out, lse),
                     workspace=Workspace(), **kw)
        fn()
        status = check(out, lse, against) if against is not None else ""
        graph_us = None
        if in_graph:
            timing = time_in_graph(fn)
            graph_us = timing["median_us"] if timing else float("nan")
        return time_graph(fn)["median_us"], status, graph_us

    row: dict[str, Any] = {"h_q": h, "layer": layer.name, "T": t, "total_topk": w.total_topk, "floor_us": fl,
                           "TFLOP": 4 * t * h * w.total_topk * HEAD_DIM / 1e12}
    checks = []
    seed = plan_for(seed_decision(t, w), w)
    for col, plan in (("policy", new.lookup(w)), ("before", before.lookup(w)), ("seed", seed)):
        row[f"{col}_plan"] = str(plan)
        row[f"{col}_us"], status, graph_us = measure(plan, in_graph=col == "policy" and t <= SMALL_T)
        if graph_us is not None:
            row["policy_in_graph_us"] = graph_us
        checks.append(status)
    if ws and not variant_problem("ws_sm90", q.device):
        cands = ws_candidates(w)
        # A persistent grid loops over items only past one item per SM: checked at every T.
        persistent = {p for p in cands if p.as_dict().get(WS_PERSIST_KEY)}
        ws_ref = ref
        if ws_ref is None and persistent:
            ws_ref = sparse_decode_ref(q, main_s.kv_cache, main_s.indices, fp8=FP8, **kw)
        timed = []
        for p in cands:
            try:
                us, status, _ = measure(p, ws_ref if p in persistent else ref)
            except Exception as e:  # one config that fails to build or run costs its row, not the run
                us, status = float("nan"), f"!!! {type(e).__name__}: {str(e)[:160]}"
            timed.append((us, status, p))
        good = [r for r in timed if not r[1].startswith("!!!")]
        if good:  # the best of those that passed their check
            best = min(good, key=lambda r: r[0])
            row["ws_us"], row["ws_plan"] = best[0], str(best[2])
        row["ws_all_us"] = {str(p): us for us, _, p in timed}  # what each knob does, beside the best
        checks += [status for _, status, _ in timed]
    bad = [c for c in checks if c.startswith("!!!")]
    row["check"] = bad[0] if bad else ("ok" if ref is not None else "")
    row["x_floor"] = row["policy_us"] / fl
    if t <= SMALL_T:
        row["latency_floor_us"] = wave.us(t * w.total_topk)
        row["x_small_floor"] = row["policy_us"] / max(fl, row["latency_floor_us"])
        row["latency_floor_in_graph_us"] = wave.us(t * w.total_topk, in_graph=True)
    row["TFLOP/s"] = row["TFLOP"] / (row["policy_us"] * 1e-6)
    row["before/policy"] = row["before_us"] / row["policy_us"]
    row["seed/policy"] = row["seed_us"] / row["policy_us"]
    return row


def geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def compare_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Geomeans over T >= 64: time / floor of each column, and the speed-ups of the new policy."""
    big = [r for r in rows if r["T"] >= 64]
    out = {f"{c}_x_floor": geomean([r[f"{c}_us"] / r["floor_us"] for r in big if f"{c}_us" in r])
           for c in ("policy", "before", "seed", "ws")}
    out["before/policy"] = geomean([r["before/policy"] for r in big])
    out["seed/policy"] = geomean([r["seed/policy"] for r in big])
    out["before/policy all T"] = geomean([r["before/policy"] for r in rows])
    small = [r["x_small_floor"] for r in rows if "x_small_floor" in r]
    if small:  # T <= SMALL_T: time / max(floor, latency floor of the shape)
        out["policy_x_small_floor T<=16"] = geomean(small)
    tiny = [r["policy_in_graph_us"] for r in rows if r["T"] <= 4 and "policy_in_graph_us" in r]
    if tiny:  # issue 32's T <= 4 range, as a call inside a step's graph costs
        out["policy_in_graph_us T<=4 min"], out["policy_in_graph_us T<=4 max"] = min(tiny), max(tiny)
    return out


def compare_plot(rows: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    """Time / floor over T per class and column (log-log), one panel per (h_q, layer)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = list(dict.fromkeys((r["h_q"], r["layer"]) for r in rows))
    cols = 5
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3.2 * nrows), squeeze=False)
    for ax, (h, name) in zip(axes.flat, panels, strict=False):
        mine = [r for r in rows if (r["h_q"], r["layer"]) == (h, name)]
        ts = [r["T"] for r in mine]
        for col, style in (("policy", "-o"), ("before", "--s"), ("seed", ":^"), ("ws", "-.x")):
            ys = [r[f"{col}_us"] / r["floor_us"] for r in mine if f"{col}_us" in r]
            if len(ys) == len(ts):
                ax.plot(ts, ys, style, label=col)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"h{h} {name}", fontsize=9)
        ax.set_xlabel("T")
        ax.set_ylabel("time / floor")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def compare_main(args: argparse.Namespace) -> int:
    new = Dispatcher.from_file(args.policy)
    before = Dispatcher.from_file(args.before) if args.before else get_dispatcher()
    ceilings = {"copy_gbps": copy_bandwidth_gbps(), "bf16_tflops": bf16_matmul_tflops()}
    print(f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s, bf16 matmul {ceilings['bf16_tflops']:.0f} TFLOP/s; "
          f"new {new.source}; before {before.source}", flush=True)
    hs, ts = ((128,), (4, 64, 512)) if args.quick else ((64, 128), COMPARE_TS)
    hs, ts = tuple(args.heads or hs), tuple(args.ts or ts)
    gen = torch.Generator().manual_seed(args.seed)
    scopes = Scopes(max(ts), "cuda", big=True, gen=gen, windows=args.windows)
    wave = WaveFloor("cuda", torch.cuda.get_device_properties(0).multi_processor_count, gen)
    rows = []
    for h in hs:
        for layer in LAYERS:
            for t in ts:
                rows.append(compare_point(h, layer, t, scopes, ceilings, new, before, gen, wave, ws=not args.no_ws))
                r = rows[-1]
                print(f"  h_q={h} {layer.name} T={t}: policy {r['policy_us']:.1f} us ({r['x_floor']:.2f}x floor, "
                      f"{r['TFLOP/s']:.0f} TFLOP/s), before {r['before_us']:.1f}, seed {r['seed_us']:.1f}"
                      + (f", in a graph {r['policy_in_graph_us']:.1f}" if "policy_in_graph_us" in r else "")
                      + (f", ws {r['ws_us']:.1f}" if "ws_us" in r else "") + f" {r['check']}", flush=True)
                if "ws_all_us" in r:  # each ws config, in the log too (a run cut short saves no JSON)
                    print("    ws: " + "; ".join(f"{p} {us:.1f}" for p, us in r["ws_all_us"].items()), flush=True)
    summary = compare_summary(rows)
    failures = [r for r in rows if r["check"].startswith("!!!")]
    out_dir = args.out or default_out_dir(False)
    name = result_name("bench_decode-compare")
    payload = {"device": device_record(), "ceilings": ceilings, "new_policy": new.source,
               "before_policy": before.source, "command": " ".join(sys.argv), "sm_scale": SM_SCALE, "fp8": FP8,
               "pool_bytes": POOL_BYTES, "main_ids": "windows" if args.windows else "random", "summary": summary,
               "failures": len(failures), "rows": rows}
    path = save_results(name, payload, out_dir)
    png = compare_plot(rows, out_dir / f"{name}.png", f"{payload['device']['device']}: time / floor "
                       f"(policy = {Path(args.policy).name})")
    print_table(rows, ["h_q", "layer", "T", "policy_us", "policy_in_graph_us", "ws_us", "before_us", "seed_us",
                       "floor_us", "x_floor", "latency_floor_us", "latency_floor_in_graph_us", "x_small_floor",
                       "TFLOP/s", "before/policy", "seed/policy", "check"],
                "policies side by side (us; x_floor, x_small_floor (T <= 16: time / max(floor, latency floor)) "
                "and TFLOP/s of the new policy; policy_in_graph_us (T <= 16): what the call adds to a graph of "
                "20, without a graph launch of its own)")
    print("\ngeomeans (over T >= 64 unless named): " + ", ".join(f"{k} {v:.2f}" for k, v in summary.items()))
    print(f"saved {path}" + (f" and {png}" if png else ""))
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--quick", action="store_true", help="T in (1, 8, 64, 256) and h_q = 128 only")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--policy", type=Path, default=None, help="compare this policy with --before and the seed")
    parser.add_argument("--before", type=Path, default=None, help="the policy to compare against (default: shipped)")
    parser.add_argument("--heads", type=int, nargs="+", default=None, help="h_q values of the comparison")
    parser.add_argument("--ts", type=int, nargs="+", default=None, help="T values of the comparison")
    parser.add_argument("--no-ws", action="store_true", help="no column of ws_sm90's best config (compiles fewer)")
    parser.add_argument("--windows", action="store_true",
                        help="main scopes' ids as sliding windows in their requests' pages (the sweep's: random)")
    args, timed = parse_gpu_args(parser)
    if args.policy is not None:
        if not timed:
            raise SystemExit("--policy needs a GPU")
        return compare_main(args)
    device = "cuda" if timed else "cpu"
    if args.smoke:
        hs, layers, ts = (16,), SMOKE_LAYERS, (1, 2)
    else:
        hs, layers, ts = ((128,), LAYERS, (1, 8, 64, 256)) if args.quick else ((64, 128), LAYERS, FULL_TS)
    ceilings = None
    if timed:
        ceilings = {"copy_gbps": copy_bandwidth_gbps(), "bf16_tflops": bf16_matmul_tflops()}
        print(f"ceilings: copy {ceilings['copy_gbps']:.0f} GB/s (read + write), "
              f"bf16 matmul {ceilings['bf16_tflops']:.0f} TFLOP/s")
    gen = torch.Generator().manual_seed(args.seed)
    scopes = Scopes(max(ts), device, big=not args.smoke, gen=gen)
    rows = []
    for h in hs:
        for layer in layers:
            for t in ts:
                rows += bench_workload(h, layer, t, scopes, args.variants, ceilings, device, gen)
                print(f"  done h_q={h} {layer.name} T={t}", flush=True)
    failures = [r for r in rows if r.get("check", "").startswith("!!!")]
    payload = {"device": device_record(), "ceilings": ceilings, "sm_scale": SM_SCALE, "fp8": FP8,
               "pool_bytes": None if args.smoke else POOL_BYTES, "tolerance": {"out": OUT_ATOL, "lse": LSE_ATOL},
               "failures": len(failures), "rows": rows}
    path = save_results(result_name("bench_decode"), payload, args.out or default_out_dir(args.smoke))
    print_table(rows, ["h_q", "layer", "T", "variant", "us", "floor_us", "of floor", "ref_us", "speedup", "check",
                       "note"],
                "sparse_decode default plans ('of floor' = floor / measured; speedup = reference / measured)")
    print(f"\nsaved {path}")
    if failures:
        print(f"\n!!! {len(failures)} CORRECTNESS FAILURE(S): see the 'check' column")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
