"""How close the FP8 -> BF16 gather + dequant kernels come to the GPU's measured copy bandwidth.

The gather is pure data movement (583 B read + 1025 B written + a 4 B id per candidate), so the
copy rate measured in the same run is its ceiling.  Pools are larger than 1 GiB so reads come from
HBM, and every launch is a CUDA-graph replay on a cold L2, as in serving.  Each (T, topk) is first
checked bit-exactly against the reference where that is cheap; a mismatch aborts the run.

    python benchmarks/bench_gather.py            # full sweep, saves benchmarks/results/bench_gather-<arch>.json
    python benchmarks/bench_gather.py --smoke    # tiny shapes; Triton interpreter when there is no GPU
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.common must precede dsv4_tune

from benchmarks.common import (
    INTERPRETER_NOTE,
    add_common_args,
    copy_bandwidth_gbps,
    default_out_dir,
    device_record,
    parse_gpu_args,
    print_table,
    result_name,
    save_results,
    time_graph,
)
from dsv4_tune.kernels.gather_dequant import BYTES_READ_PER_CANDIDATE, BYTES_WRITTEN_PER_CANDIDATE, GatherConfig
from dsv4_tune.kernels.kv_layout import HEAD_DIM, padded_page_bytes
from dsv4_tune.kernels.reference import gather_dequant_ref
from dsv4_tune.serving.gather import gather_dequant, gather_dequant_dual
from dsv4_tune.tuner.inputs import Scope, make_scope
from dsv4_tune.tuner.tolerance import mismatch

FP8 = "e4m3fn"
BYTES_PER_CANDIDATE = BYTES_READ_PER_CANDIDATE + BYTES_WRITTEN_PER_CANDIDATE + 4  # + the int32 id
POOL_BYTES = 5 * 2**28  # 1.25 GiB per pool: far larger than any L2
CHECK_LIMIT = 65536  # T * topk up to which the (slow) reference check runs
CONFIGS = ((64, 4), (128, 4), (256, 8), (128, 8))
FULL = {"ts": (1, 4, 16, 64, 256, 1024, 4096), "topks": (128, 512, 1152), "main": 128, "extras": (512, 1024)}
SMOKE = {"ts": (1, 2), "topks": (64, 128), "main": 64, "extras": (64, 128)}
MAIN_PAGE, EXTRA_PAGE = 128, 64

Slice = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # k_cache, indices, topk_length


class Scopes:
    """One pool per (topk, page size), built once at the largest T; smaller T use its first rows."""

    def __init__(self, t_max: int, device: str, big: bool, gen: torch.Generator) -> None:
        self.t_max, self.device, self.big, self.gen = t_max, device, big, gen
        self._built: dict[tuple[int, int], Scope] = {}

    def get(self, topk: int, page: int, t: int) -> Slice:
        key = (topk, page)
        if key not in self._built:
            pages = math.ceil(POOL_BYTES / padded_page_bytes(page)) if self.big else None
            self._built[key] = make_scope(
                self.t_max, 1, topk, page, fp8=FP8, device=self.device, num_pages=pages,
                invalid_frac=0.05, topk_length="full", poison=False, gen=self.gen,
            )
        sc = self._built[key]
        assert sc.topk_length is not None
        return sc.kv_cache, sc.indices[:t], sc.topk_length[:t]


def _outputs(t: int, total: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.full((t, total, HEAD_DIM), float("nan"), dtype=torch.bfloat16, device=device)
    return out, torch.zeros(t, total, dtype=torch.bool, device=device)


def _check(what: str, out: torch.Tensor, inv: torch.Tensor, ref: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Abort loudly unless the kernel's output equals the reference bit for bit."""
    msg = mismatch(out, ref[0], atol=0.0, rtol=0.0)
    if msg is None and not torch.equal(inv, ref[1]):
        msg = f"invalid mask differs in {int((inv != ref[1]).sum())} places"
    if msg is not None:
        raise SystemExit(f"\n!!! CORRECTNESS FAILURE in {what}: {msg}\n")


def _measure(fn: Callable[[], object], nbytes: int, copy_gbps: float | None) -> dict[str, Any]:
    if copy_gbps is None:
        fn()  # the interpreter proves the path runs; its time means nothing
        return {"us": None, "GB/s": None, "of copy": None, "note": INTERPRETER_NOTE}
    t = time_graph(fn)
    gbps = nbytes / t["median_us"] / 1e3
    return {"us": t["median_us"], "p20_us": t["p20_us"], "p80_us": t["p80_us"], "graph": t["graph"],
            "GB/s": gbps, "of copy": gbps / copy_gbps, "note": "" if t["graph"] else "eager"}


def _cfg_name(cfg: GatherConfig) -> str:
    return f"{cfg.BLOCK_TK}x{cfg.num_warps}w"


def bench_single(scopes: Scopes, grid: dict, copy_gbps: float | None, device: str) -> list[dict[str, Any]]:
    """Every config of the one-scope kernel at every (T, topk); marks the fastest per (T, topk)."""
    rows = []
    for topk in grid["topks"]:
        for t in grid["ts"]:
            kv, idx, length = scopes.get(topk, EXTRA_PAGE, t)
            out, inv = _outputs(t, topk, device)
            if t * topk <= CHECK_LIMIT:
                gather_dequant(kv, idx, length, fp8=FP8, config=GatherConfig(), out=out, invalid=inv)
                _check(f"gather_dequant T={t} topk={topk}", out, inv, gather_dequant_ref(kv, idx, length, fp8=FP8))
            group = []
            for tk, warps in CONFIGS:
                cfg = GatherConfig(tk, warps, 1)
                fn = partial(gather_dequant, kv, idx, length, fp8=FP8, config=cfg, out=out, invalid=inv)
                row = {"kernel": "single", "T": t, "topk": str(topk), "topk_main": topk, "topk_extra": 0,
                       "config": _cfg_name(cfg), "BLOCK_TK": tk, "num_warps": warps, "best": False,
                       **_measure(fn, t * topk * BYTES_PER_CANDIDATE, copy_gbps)}
                group.append(row)
            timed = [r for r in group if r["us"] is not None]
            if timed:
                min(timed, key=lambda r: r["us"])["best"] = True
            rows += group
    return rows


def _best_config(rows: list[dict[str, Any]], t: int, total: int) -> GatherConfig:
    """The fastest one-scope config at T for the measured topk nearest ``total`` (default if untimed)."""
    timed = [r for r in rows if r["best"] and r["T"] == t]
    if not timed:
        return GatherConfig()
    r = min(timed, key=lambda r: abs(r["topk_main"] - total))
    return GatherConfig(r["BLOCK_TK"], r["num_warps"], 1)


def _two_launches(m: Slice, x: Slice, cfg: GatherConfig, out: torch.Tensor, inv: torch.Tensor) -> None:
    """The dual gather as two one-scope launches (what ONE_LAUNCH=0 does), for comparison."""
    gather_dequant(*m, fp8=FP8, config=cfg, out=out, invalid=inv)
    gather_dequant(*x, fp8=FP8, config=cfg, out=out, invalid=inv, k_offset=m[1].shape[2])


def bench_dual(
    scopes: Scopes, grid: dict, single: list[dict[str, Any]], copy_gbps: float | None, device: str
) -> list[dict[str, Any]]:
    """Both scopes in one launch vs the same work as two one-scope launches, at the best config."""
    rows = []
    main = grid["main"]
    for extra in grid["extras"]:
        for t in grid["ts"]:
            m, x = scopes.get(main, MAIN_PAGE, t), scopes.get(extra, EXTRA_PAGE, t)
            total = main + extra
            out, inv = _outputs(t, total, device)
            cfg = _best_config(single, t, total)
            if t * total <= CHECK_LIMIT:
                gather_dequant_dual(*m, *x, fp8=FP8, config=GatherConfig(), out=out, invalid=inv)
                _check(f"gather_dequant_dual T={t} topk={main}+{extra}", out, inv,
                       gather_dequant_ref(*m, *x, fp8=FP8))
            one_launch = partial(gather_dequant_dual, *m, *x, fp8=FP8, config=cfg, out=out, invalid=inv)
            two_launches = partial(_two_launches, m, x, cfg, out, inv)
            for kind, fn in (("dual", one_launch), ("2 launches", two_launches)):
                rows.append({"kernel": kind, "T": t, "topk": f"{main}+{extra}", "topk_main": main,
                             "topk_extra": extra, "config": _cfg_name(cfg), "BLOCK_TK": cfg.BLOCK_TK,
                             "num_warps": cfg.num_warps, "best": False,
                             **_measure(fn, t * total * BYTES_PER_CANDIDATE, copy_gbps)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    args, timed = parse_gpu_args(parser)
    device = "cuda" if torch.cuda.is_available() and timed else "cpu"
    grid = SMOKE if args.smoke else FULL
    copy_gbps = copy_bandwidth_gbps() if timed else None
    if copy_gbps is not None:
        print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)")
    scopes = Scopes(max(grid["ts"]), device, big=not args.smoke, gen=torch.Generator().manual_seed(args.seed))
    single = bench_single(scopes, grid, copy_gbps, device)
    rows = single + bench_dual(scopes, grid, single, copy_gbps, device)
    payload = {"device": device_record(), "copy_gbps": copy_gbps, "bytes_per_candidate": BYTES_PER_CANDIDATE,
               "pool_bytes": POOL_BYTES if not args.smoke else None, "rows": rows}
    path = save_results(result_name("bench_gather"), payload, args.out or default_out_dir(args.smoke))
    for r in rows:
        r["best"] = "*" if r["best"] else ""
    print_table(rows, ["kernel", "T", "topk", "config", "us", "GB/s", "of copy", "best", "note"],
                f"gather + dequant (bytes = T*topk*{BYTES_PER_CANDIDATE}; 'of copy' = achieved / measured "
                f"copy bandwidth; * = fastest config of (T, topk))")
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
