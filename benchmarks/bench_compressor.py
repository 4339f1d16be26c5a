"""DSV4 compressor and fused Q/K norm: Triton kernels vs eager PyTorch vs the copy-bandwidth floor.

Compressor (C4 / C128, head_dim 512; C4 head_dim 128 = the indexer's) in decode (batch 1, 8, 64, 256,
and 1024: beyond the 256 requests of DSV4 serving, to show the kernels once the bytes outweigh the
latency; every request at a block boundary = worst case, and 1/ratio of them = the usual step) and prefill
(1K, 8K, 32K new tokens of one request from position 0).  The fused and split variants run at their
default configs, at the config the shipped policy of this GPU picks ('tuned'; the dispatcher's
``lookup_op``) and at a few other configs of their space ('best' = fastest of all).  The PyTorch
baseline is a vectorised eager implementation (gather the windows, softmax, RMSNorm, RoPE,
``kv_layout.quantize_tokens``, scatter), as upstream's torch path computes it.  The floor is the
bytes that must move (kv_score rows read, ring rows written, window rows read, rows stored) at the
copy bandwidth measured in the same run ('of floor'), and a copy of those bytes timed exactly like
the kernels ('of copy': same graph replay after the same L2 flush, whose dirty lines both pay to
write back).  Fused Q/K norm: T in {1, 16, 64, 256} x h_q in {64, 128},
head_dim 512, one K head, bf16, against eager PyTorch.

Before any timing every kernel output is compared with the PyTorch baseline (and, on small cases,
with the literal reference of ``kernels/reference.py``); a mismatch aborts the run.  Timings replay
CUDA graphs on a cold L2 (``benchmarks/common.py``).

    PYTHONPATH=$PWD python benchmarks/bench_compressor.py --out benchmarks/results/bench_compressor-h100.json
    python benchmarks/bench_compressor.py --smoke    # tiny shapes; Triton interpreter when there is no GPU
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks.common must precede dsv4_tune

from benchmarks.common import (
    INTERPRETER_NOTE,
    add_common_args,
    copy_bandwidth_gbps,
    copy_us,
    default_out_dir,
    device_record,
    parse_gpu_args,
    print_table,
    result_name,
    save_results,
    time_graph,
)
from dsv4_tune.kernels import kv_layout as L
from dsv4_tune.kernels.reference import compress_decode_ref, compress_prefill_ref, qk_norm_ref
from dsv4_tune.policies.dispatcher import get_dispatcher
from dsv4_tune.registry.compressor_space import compressor_default, compressor_space, window
from dsv4_tune.registry.workload import OpWorkload
from dsv4_tune.serving.compressor import compress_decode, compress_prefill
from dsv4_tune.serving.qk_norm import qk_norm
from dsv4_tune.tuner.tolerance import mismatch

FP8 = "e4m3fn"
EPS = 1e-6
SWEEP = 2  # extra configs per variant besides the default (evenly spaced through the space)
FULL = {"kinds": ((4, 512), (128, 512), (4, 128)), "bs": (1, 8, 64, 256, 1024), "prefill": (1024, 8192, 32768),
        "qk_t": (1, 16, 64, 256), "qk_h": (64, 128)}
SMOKE = {"kinds": ((4, 128), (128, 128)), "bs": (1, 4), "prefill": (300,), "qk_t": (1, 4), "qk_h": (8,)}
REF_CHECK_ROWS = 16  # compare with the literal (slow, loop-based) reference up to this many rows


@dataclass
class Layer:
    """One compressor's weights: ratio, head_dim, APE, norm weight, RoPE table."""

    ratio: int
    dim: int
    ape: torch.Tensor
    norm_weight: torch.Tensor
    freqs: torch.Tensor

    @property
    def coff(self) -> int:
        return 2 if self.ratio == 4 else 1

    @property
    def width(self) -> int:
        return 2 * self.coff * self.dim

    @property
    def k(self) -> int:
        return window(self.ratio)


def make_layer(ratio: int, dim: int, max_pos: int, device: str, gen: torch.Generator) -> Layer:
    theta = torch.rand(max_pos, 32, generator=gen) * 2 * math.pi
    freqs = torch.stack([theta.cos(), theta.sin()], dim=-1).reshape(max_pos, 64)
    return Layer(ratio, dim, (torch.randn(window(ratio), dim, generator=gen) * 0.5).to(device),
                 (torch.rand(dim, generator=gen) + 0.5).to(device), freqs.to(device))


def make_dest(layer: Layer, slots: int, device: str) -> torch.Tensor:
    """The attention pool (FP8, head_dim 512) or dense bf16 rows (the indexer's head_dim 128).

    The last slot is the torch baseline's trash row for rows it must not store; kernels never get it."""
    if layer.dim == L.HEAD_DIM:
        page = 64 if layer.ratio == 4 else 2
        return L.make_kv_cache(math.ceil((slots + 1) / page), page, device)
    return torch.zeros(slots + 1, layer.dim, dtype=torch.bfloat16, device=device)


def n_slots(dest: torch.Tensor) -> int:
    return L.num_slots(dest) if dest.dtype == torch.uint8 else dest.shape[0]


# ---------------------------------------------------------------------------------------------
# Eager PyTorch baseline (vectorised; the timed comparison)


def torch_finish(layer: Layer, kv: torch.Tensor, score: torch.Tensor, rope_pos: torch.Tensor,
                 slots: torch.Tensor, dest: torch.Tensor) -> torch.Tensor:
    """Softmax pool ``[M, K, D]`` -> RMSNorm -> RoPE -> store at ``slots`` (trash slot for no-store rows)."""
    w = torch.softmax(score + layer.ape, dim=1).nan_to_num_(0.0)  # all -inf channels: NaN -> 0
    c = (w * kv).sum(dim=1)
    y = c * torch.rsqrt(c.pow(2).mean(dim=-1, keepdim=True) + EPS) * layer.norm_weight
    f = layer.freqs[rope_pos]
    x0, x1 = y[:, -64::2], y[:, -63::2]
    rot = torch.stack([x0 * f[:, 0::2] - x1 * f[:, 1::2], x0 * f[:, 1::2] + x1 * f[:, 0::2]], dim=-1)
    y = torch.cat([y[:, :-64], rot.flatten(1)], dim=1)
    if dest.dtype == torch.uint8:
        nope, rope, scales = L.quantize_tokens(y, FP8)
        flat = L._flat_bytes(dest)
        data, scale_off = L._slot_byte_offsets(dest, slots)
        cols = torch.arange(L.DATA_BYTES, device=dest.device)
        flat[data[:, None] + cols] = torch.cat([nope, rope], dim=1)
        flat[scale_off[:, None] + cols[:L.NUM_TILES]] = scales
    else:
        dest[slots] = y.to(dest.dtype)
    return y


def torch_split(layer: Layer, rows: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """kv and score ``[M, K, D]`` of gathered window rows ``[M, K, W]`` (C4: A half, then B half)."""
    d, r = layer.dim, layer.ratio
    if layer.coff == 2:
        kv = torch.cat([rows[:, :r, :d], rows[:, r:, d:2 * d]], dim=1)
        score = torch.cat([rows[:, :r, 2 * d:3 * d], rows[:, r:, 3 * d:]], dim=1)
    else:
        kv, score = rows[..., :d], rows[..., d:]
    return kv, score.masked_fill(~valid[..., None], float("-inf"))


def torch_decode(layer: Layer, kvs: torch.Tensor, state: torch.Tensor, base: torch.Tensor, seq: torch.Tensor,
                 loc: torch.Tensor, dest: torch.Tensor, ring: int) -> torch.Tensor:
    """Write the tokens into their rings, then pool every request's window (upstream computes every
    row); rows off a boundary or without a slot go to the trash slot.  Bases are all >= 0 here."""
    p = (seq - 1).long()
    state[base.long() + p % ring] = kvs
    s = p[:, None] - layer.k + 1 + torch.arange(layer.k, device=kvs.device)
    rows = state[base.long()[:, None] + s.clamp_min(0) % ring]
    kv, score = torch_split(layer, rows, s >= 0)
    store = (seq % layer.ratio == 0) & (loc >= 0) & (loc < n_slots(dest) - 1)
    return torch_finish(layer, kv, score, (p + 1 - layer.ratio).clamp_min(0), torch.where(
        store, loc, n_slots(dest) - 1).long(), dest)


def torch_prefill(layer: Layer, kvs: torch.Tensor, plan: dict[str, torch.Tensor], state: torch.Tensor,
                  dest: torch.Tensor) -> torch.Tensor:
    """One request from position 0; ``plan`` (boundary windows, built on the host like upstream's
    prefill plan) gives each window's input rows."""
    rows = kvs[plan["rows"].clamp_min(0)]
    kv, score = torch_split(layer, rows, plan["rows"] >= 0)
    y = torch_finish(layer, kv, score, plan["rope_pos"], plan["slots"], dest)
    state[plan["ring_dst"]] = kvs[plan["ring_src"]]
    return y


# ---------------------------------------------------------------------------------------------
# Cases


def _rows(n: int, width: int, device: str, gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(n, width, generator=gen)
    x[:, width // 2:] *= 2
    return x.to(device)


def decode_case(layer: Layer, bs: int, all_boundary: bool, device: str, gen: torch.Generator) -> dict:
    ring = layer.k
    n_b = bs if all_boundary else round(bs / layer.ratio)
    blocks = torch.randint(1, 4096 // layer.ratio, (bs,), generator=gen)
    off = torch.randint(1, layer.ratio, (bs,), generator=gen)
    at_boundary = torch.randperm(bs, generator=gen) < n_b  # scattered through the batch, as in serving
    seq = blocks * layer.ratio + torch.where(at_boundary, 0, off)
    i32 = dict(dtype=torch.int32, device=device)
    return {"kvs": _rows(bs, layer.width, device, gen), "state": _rows(bs * ring + 1, layer.width, device, gen),
            "base": (torch.arange(bs) * ring).to(**i32), "seq": seq.to(**i32),
            "loc": torch.randperm(bs, generator=gen).to(**i32), "dest": make_dest(layer, bs, device),
            "ring": ring, "produced": n_b}


def prefill_case(layer: Layer, n: int, device: str, gen: torch.Generator) -> dict:
    ring, k, r = layer.k, layer.k, layer.ratio
    i32 = dict(dtype=torch.int32, device=device)
    bound = torch.arange(r - 1, n, r)
    slots = torch.randperm(bound.numel(), generator=gen)
    loc = torch.full((n,), -1, dtype=torch.int32)
    loc[bound] = slots.int()
    rows = bound[:, None] - k + 1 + torch.arange(k)
    keep = torch.arange(max(0, n - ring), n)
    plan = {"rows": rows.to(device).masked_fill(rows.to(device) < 0, -1), "rope_pos": (bound + 1 - r).to(device),
            "slots": slots.to(device), "ring_dst": (keep % ring).to(device), "ring_src": keep.to(device)}
    return {"kvs": _rows(n, layer.width, device, gen), "state": _rows(ring, layer.width, device, gen),
            "cu": torch.tensor([0, n], **i32), "prefix": torch.zeros(1, **i32), "base": torch.zeros(1, **i32),
            "loc": loc.to(device), "dest": make_dest(layer, bound.numel(), device), "plan": plan,
            "ring": ring, "produced": bound.numel()}


def floor_bytes(layer: Layer, case: dict, mode: str) -> int:
    """Bytes that must move: kv_score rows read, ring rows written, window rows of the state read
    (decode: K - 1 positions of half a row each; prefill reads the input once), rows stored."""
    row_out = L.TOKEN_BYTES - 1 if layer.dim == L.HEAD_DIM else 2 * layer.dim
    w4 = layer.width * 4
    if mode == "decode":
        bs = case["kvs"].shape[0]
        return 2 * bs * w4 + case["produced"] * ((layer.k - 1) * w4 // layer.coff + row_out)
    n = case["kvs"].shape[0]
    return n * w4 + min(n, case["ring"]) * w4 + case["produced"] * row_out


def _stored(layer: Layer, dest: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    if dest.dtype == torch.uint8:
        return L.read_tokens(dest, slots, FP8).float()
    return dest[slots].float()


def _fail(what: str, msg: str) -> None:
    raise SystemExit(f"\n!!! CORRECTNESS FAILURE in {what}: {msg}\n")


def check_rows(what: str, layer: Layer, got: torch.Tensor, ref: torch.Tensor) -> None:
    """Stored rows vs fp32 rows: one FP8 / BF16 ulp (the stored format's rounding) plus fp32 noise."""
    if got.numel() == 0:
        return
    if layer.dim == L.HEAD_DIM:
        msg = mismatch(got[:, :448], ref[:, :448], atol=float(ref.abs().max()) * 2**-8, rtol=2**-3) or \
            mismatch(got[:, 448:], ref[:, 448:], atol=1e-5, rtol=2**-7)
    else:
        msg = mismatch(got, ref, atol=1e-5, rtol=2**-7)
    if msg is not None:
        _fail(what, msg)


def run_kernel(layer: Layer, case: dict, mode: str, variant: str, cfg: dict, state: torch.Tensor,
               dest: torch.Tensor) -> Callable[[], None]:
    kw = {"ratio": layer.ratio, "ring_size": case["ring"], "eps": EPS, "fp8": FP8, "config": cfg, "variant": variant}
    if mode == "decode":
        return lambda: compress_decode(case["kvs"], state, case["base"], case["seq"], layer.ape, layer.norm_weight,
                                       layer.freqs, case["loc"], dest, **kw)
    n = case["kvs"].shape[0]
    return lambda: compress_prefill(case["kvs"], case["cu"], case["prefix"], state, case["base"], layer.ape,
                                    layer.norm_weight, layer.freqs, case["loc"], dest, max_new_tokens=n, **kw)


def _clone_dest(dest: torch.Tensor) -> torch.Tensor:
    if dest.dtype != torch.uint8:
        return dest.clone()
    out = L.make_kv_cache(dest.shape[0], dest.shape[1], dest.device)
    L._flat_bytes(out).copy_(L._flat_bytes(dest))
    return out


def bench_compressor(layer: Layer, case: dict, mode: str, label: str, copy_gbps: float | None) -> list[dict]:
    """Check, then time: torch baseline, and each variant at its default and SWEEP more configs."""
    name = f"C{layer.ratio} D{layer.dim} {mode} {label}"
    state0, dest0 = case["state"], case["dest"]
    # The torch baseline's rows (every request's in decode) and where the produced ones go.
    t_state, t_dest = state0.clone(), _clone_dest(dest0)
    if mode == "decode":
        torch_fn = lambda: torch_decode(layer, case["kvs"], t_state, case["base"], case["seq"], case["loc"],
                                        t_dest, case["ring"])
        mask = (case["seq"] % layer.ratio == 0) & (case["seq"] > 0)
        ref_rows, slots = torch_fn()[mask], case["loc"][mask].long()
    else:
        torch_fn = lambda: torch_prefill(layer, case["kvs"], case["plan"], t_state, t_dest)
        ref_rows, slots = torch_fn(), case["plan"]["slots"]
    assert slots.numel() == case["produced"]
    if 0 < case["produced"] <= REF_CHECK_ROWS:  # the baseline itself against the literal reference
        r_state, r_dest = state0.clone(), _clone_dest(dest0)
        if mode == "decode":
            lit, lit_slots, _ = compress_decode_ref(case["kvs"], r_state, case["base"], case["seq"], layer.ape,
                                                    layer.norm_weight, layer.freqs, case["loc"], r_dest,
                                                    ratio=layer.ratio, ring_size=case["ring"], eps=EPS, fp8=FP8)
        else:
            lit, lit_slots, _ = compress_prefill_ref(case["kvs"], case["cu"], case["prefix"], r_state, case["base"],
                                                     layer.ape, layer.norm_weight, layer.freqs, case["loc"], r_dest,
                                                     ratio=layer.ratio, ring_size=case["ring"], eps=EPS, fp8=FP8)
        order = torch.argsort(slots.cpu())
        if not torch.equal(lit_slots.sort().values, slots.cpu()[order]):
            _fail(f"{name} torch baseline", "slots differ from the literal reference's")
        msg = mismatch(ref_rows.cpu()[order], lit[torch.argsort(lit_slots)], atol=1e-4, rtol=1e-4)
        if msg is not None:
            _fail(f"{name} torch baseline vs literal reference", msg)
    rows: list[dict[str, Any]] = []
    base_row = {"case": name, "mode": mode, "ratio": layer.ratio, "dim": layer.dim, "size": label,
                "rows": case["produced"]}
    floor = floor_bytes(layer, case, mode)
    torch_us = None
    if copy_gbps is not None:
        torch_us = time_graph(torch_fn)["median_us"]
        base_row["floor_us"] = floor / (copy_gbps * 1e3)
        base_row["copy_us"] = copy_us(floor)
    rows.append({**base_row, "impl": "torch", "us": torch_us})
    size = case["kvs"].shape[0]
    try:
        tuned = get_dispatcher().lookup_op(OpWorkload.make("compress", size, ratio=layer.ratio, head_dim=layer.dim,
                                                           mode=mode))
    except ValueError:  # not a tuned op class (the smoke run's C128 with head_dim 128)
        tuned = None
    for variant in ("fused", "split"):
        space = compressor_space(layer.ratio, layer.dim, mode, variant)
        default = compressor_default(layer.ratio, layer.dim, mode, variant)
        step = max(1, len(space) // (SWEEP + 1))
        configs = [default, *[c for c in space[step // 2::step] if c != default][:SWEEP]]
        if tuned is not None and tuned.variant == variant and tuned.as_dict() not in configs:
            configs.insert(1, tuned.as_dict())
        for i, cfg in enumerate(configs):
            k_state, k_dest = state0.clone(), _clone_dest(dest0)
            fn = run_kernel(layer, case, mode, variant, cfg, k_state, k_dest)
            fn()
            what = f"{name} {variant} {cfg}"
            if not torch.equal(k_state, t_state):
                _fail(what, "state ring differs from the torch baseline's")
            check_rows(what, layer, _stored(layer, k_dest, slots), ref_rows)
            row = {**base_row, "impl": variant, "config": ",".join(f"{k}={v}" for k, v in cfg.items()),
                   "default": i == 0,
                   "tuned": tuned is not None and tuned.variant == variant and cfg == tuned.as_dict()}
            if copy_gbps is not None:
                us = row["us"] = time_graph(fn)["median_us"]
                row["of floor"] = base_row["floor_us"] / us
                row["of copy"] = base_row["copy_us"] / us
                row["vs torch"] = torch_us / us
            else:
                row["note"] = INTERPRETER_NOTE
            rows.append(row)
    timed = [r for r in rows if r["impl"] != "torch" and r.get("us") is not None]
    if timed:
        min(timed, key=lambda r: r["us"])["best"] = True
    print(f"  done {name}", flush=True)
    return rows


def bench_qk_norm(t: int, h: int, device: str, copy_gbps: float | None, gen: torch.Generator) -> list[dict]:
    q = torch.randn(t, h, 512, generator=gen).to(device, torch.bfloat16)
    k = torch.randn(t, 1, 512, generator=gen).to(device, torch.bfloat16)
    wq = (torch.rand(512, generator=gen) + 0.5).to(device)
    out_q, out_k = torch.empty_like(q), torch.empty_like(k)

    def eager() -> None:
        for x, w, o in ((q, wq, out_q), (k, None, out_k)):
            y = x.float()
            y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + EPS)
            o.copy_(y * w if w is not None else y)

    ref_q, ref_k = qk_norm_ref(q, k, wq, None, eps=EPS)
    rows = []
    nbytes = 2 * (q.numel() + k.numel()) * 2
    base = {"T": t, "h_q": h, "floor_us": nbytes / (copy_gbps * 1e3) if copy_gbps else None,
            "copy_us": copy_us(nbytes) if copy_gbps else None}
    eager_us = time_graph(eager)["median_us"] if copy_gbps else None
    rows.append({**base, "impl": "torch", "us": eager_us})
    for cfg in ({"ROWS": 4, "num_warps": 8}, {"ROWS": 1, "num_warps": 4}, {"ROWS": 2, "num_warps": 2}):
        fn = lambda cfg=cfg: qk_norm(q, k, wq, None, eps=EPS, out_q=out_q, out_k=out_k, config=cfg)
        fn()
        for name, got, ref in (("q", out_q, ref_q), ("k", out_k, ref_k)):
            msg = mismatch(got.float(), ref.to(device), atol=1e-5, rtol=2**-8)
            if msg is not None:
                _fail(f"qk_norm T={t} h={h} {cfg} {name}", msg)
        row = {**base, "impl": "fused", "config": f"ROWS={cfg['ROWS']},w={cfg['num_warps']}"}
        if copy_gbps:
            us = row["us"] = time_graph(fn)["median_us"]
            row |= {"of floor": base["floor_us"] / us, "of copy": base["copy_us"] / us, "vs torch": eager_us / us}
        else:
            row["note"] = INTERPRETER_NOTE
        rows.append(row)
    timed = [r for r in rows if r["impl"] == "fused" and r.get("us") is not None]
    if timed:
        min(timed, key=lambda r: r["us"])["best"] = True
    return rows


def _selected(only: str, name: str) -> bool:
    return not only or any(part in name for part in only.split(","))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(parser)
    parser.add_argument("--only", default="", help="run only the compressor cases whose name contains one of "
                        "these comma-separated strings (e.g. 'N=32768,bs=256 all'); skips the Q/K norm")
    args, timed = parse_gpu_args(parser)
    device = "cuda" if timed else "cpu"
    grid = SMOKE if args.smoke else FULL
    gen = torch.Generator().manual_seed(args.seed)
    copy_gbps = copy_bandwidth_gbps() if timed else None
    if copy_gbps is not None:
        print(f"device-to-device copy: {copy_gbps:.0f} GB/s (read + write)")
    comp: list[dict[str, Any]] = []
    for ratio, dim in grid["kinds"]:
        layer = make_layer(ratio, dim, 4096 + max(grid["prefill"]), device, gen)
        for bs in grid["bs"]:
            for all_b in (True, False):
                label = f"bs={bs} {'all' if all_b else '1/R'}"
                if _selected(args.only, f"C{ratio} D{dim} decode {label}"):
                    comp += bench_compressor(layer, decode_case(layer, bs, all_b, device, gen), "decode", label,
                                             copy_gbps)
        for n in grid["prefill"]:
            if _selected(args.only, f"C{ratio} D{dim} prefill N={n}"):
                comp += bench_compressor(layer, prefill_case(layer, n, device, gen), "prefill", f"N={n}", copy_gbps)
    qk = [] if args.only else [r for t in grid["qk_t"] for h in grid["qk_h"]
                               for r in bench_qk_norm(t, h, device, copy_gbps, gen)]
    payload = {"device": device_record(), "copy_gbps": copy_gbps, "fp8": FP8, "eps": EPS,
               "policy": get_dispatcher().source, "compressor": comp,
               "qk_norm": qk}
    out = args.out or default_out_dir(args.smoke)
    if out.suffix == ".json":
        path = save_results(out.stem, payload, out.parent)
    else:
        path = save_results(result_name("bench_compressor"), payload, out)
    for r in [*comp, *qk]:
        r["best"] = "*" if r.get("best") else ""
        r["default"] = ("d" if r.get("default") else "") + ("t" if r.get("tuned") else "")
    print_table(comp, ["case", "impl", "config", "default", "rows", "us", "floor_us", "copy_us", "of floor", "of copy",
                       "vs torch", "best", "note"],
                "compressor ('of floor' = the bytes at the 1-GiB copy rate / measured; 'of copy' = a copy of the "
                "same bytes timed like the kernel / measured; vs torch = eager torch / measured; d = default "
                "config, t = the shipped policy's; * = fastest kernel of the case; targets: vs torch >= 3 in "
                "decode, of copy >= 0.7 at large batch)")
    print_table(qk, ["T", "h_q", "impl", "config", "us", "floor_us", "copy_us", "of floor", "of copy", "vs torch",
                     "best", "note"],
                "fused Q/K RMSNorm, head_dim 512, 1 K head, bf16")
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
