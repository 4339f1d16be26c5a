"""Realistic inputs of the compressor and Q/K-norm ops for the tuner, their reference checks, and a
runner per op of the registry (:data:`RUNNERS`, :mod:`dsv4_tune.registry.ops`).

Compressor decode: ``rows`` requests, ring of K per request, random sequence lengths (so about
1/ratio of the requests sit at a block boundary and compress, as in serving; at least one does),
a unique destination slot per compressing request.  Prefill: ``rows`` new tokens split over
requests of at most 4096 new tokens each, random prefixes whose last positions are in the ring.
Destination: the FP8 pool for head_dim 512, bf16 rows for the indexer's 128.  Q/K norm: ``rows``
tokens of ``h_q`` bf16 query heads and ``h_k`` key heads, with weights.

A candidate is checked on inputs of the same class with at most ``CHECK_ROWS`` rows (the literal
reference loops over rows in Python): the same kernel binary and every code path of the config, at
a size the reference can afford.  Check inputs and their reference are built once per (class,
size) and reused by every candidate and stage.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from dsv4_tune.kernels import kv_layout as L
from dsv4_tune.kernels.reference import compress_decode_ref, compress_prefill_ref, qk_norm_ref
from dsv4_tune.registry.compressor_space import window
from dsv4_tune.registry.layout import Fp8Flavour
from dsv4_tune.registry.workload import OpWorkload, Plan
from dsv4_tune.serving.compressor import compress_decode, compress_prefill
from dsv4_tune.serving.qk_norm import qk_norm
from dsv4_tune.tuner.cases import Check, failed, verdict
from dsv4_tune.tuner.tolerance import compressed_max_error, compressed_mismatch, max_abs_error, mismatch

CHECK_ROWS = {"decode": 48, "prefill": 700, "qk_norm": 64}
MAX_POS = 1 << 17
PREFILL_CHUNK = 4096  # new tokens per request in a prefill case


@dataclass
class CompressInputs:
    """Arguments of one compressor call (positional tensors in the API's order, then keywords)."""

    mode: str
    args: tuple
    kw: dict
    slots: torch.Tensor  # destination slots the call writes (for the check)

    @property
    def dest(self) -> torch.Tensor:
        return self.args[-1]

    @property
    def state(self) -> torch.Tensor:
        return self.args[1] if self.mode == "decode" else self.args[3]


def make_compress_inputs(
    params: dict, rows: int, device: str, seed: int = 0, chunk: int = PREFILL_CHUNK, boundary_every: int = 0,
    fp8: Fp8Flavour = "e4m3fn",
) -> CompressInputs:
    """Inputs of one compressor call: ``rows`` requests (decode) or new tokens in requests of at most
    ``chunk`` (prefill); ``boundary_every`` > 0 also puts every such request of a decode batch at a
    block boundary (checks: many compressing rows whatever the ratio); ``fp8``: the pool's flavour."""
    ratio, dim, mode = params["ratio"], params["head_dim"], params["mode"]
    gen = torch.Generator().manual_seed(seed)
    k, coff = window(ratio), 2 if ratio == 4 else 1
    width, ring = 2 * coff * dim, window(ratio)
    theta = torch.rand(MAX_POS, 32, generator=gen) * 2 * math.pi
    freqs = torch.stack([theta.cos(), theta.sin()], dim=-1).reshape(MAX_POS, 64)
    ape = torch.randn(k, dim, generator=gen) * 0.5
    norm_w = torch.rand(dim, generator=gen) + 0.5

    def kv_rows(n: int) -> torch.Tensor:
        x = torch.randn(n, width, generator=gen)
        x[:, width // 2:] *= 2
        return x

    if mode == "decode":
        bs = rows
        seq = torch.randint(1, 60000, (bs,), generator=gen, dtype=torch.int32)
        forced = torch.arange(0, bs, boundary_every) if boundary_every else torch.zeros(1, dtype=torch.long)
        seq[forced] = (seq[forced] // ratio + 1) * ratio  # at least one request compresses
        boundary = (seq % ratio == 0).nonzero().flatten()
        state = kv_rows(bs * ring)
        out_loc = torch.full((bs,), -1, dtype=torch.int32)
        out_loc[boundary] = torch.arange(1, boundary.numel() + 1, dtype=torch.int32)
        dest = _dest(ratio, dim, boundary.numel() + 1, device)
        args = (kv_rows(bs), state, torch.arange(bs, dtype=torch.int32) * ring, seq, ape, norm_w, freqs, out_loc)
        slots = out_loc[boundary]
    else:
        n_req = max(1, -(-rows // chunk))
        new = torch.full((n_req,), rows // n_req, dtype=torch.int32)
        new[: rows % n_req] += 1
        prefix = torch.randint(0, 3000, (n_req,), generator=gen, dtype=torch.int32)
        cu = torch.zeros(n_req + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(new, 0)
        pos = torch.cat([torch.arange(int(p), int(p) + int(n), dtype=torch.int32) for p, n in zip(prefix, new,
                                                                                                  strict=True)])
        boundary = ((pos + 1) % ratio == 0).nonzero().flatten()
        out_loc = torch.full((rows,), -1, dtype=torch.int32)
        out_loc[boundary] = torch.arange(1, boundary.numel() + 1, dtype=torch.int32)
        dest = _dest(ratio, dim, boundary.numel() + 1, device)
        args = (kv_rows(rows), cu, prefix, kv_rows(n_req * ring), torch.arange(n_req, dtype=torch.int32) * ring,
                ape, norm_w, freqs, out_loc)
        slots = out_loc[boundary]
    args = (*[a.to(device) for a in args], dest)
    kw = {"ratio": ratio, "ring_size": ring, "fp8": fp8}
    if mode == "prefill":
        kw["max_new_tokens"] = int(new.max())
    return CompressInputs(mode, args, kw, slots.to(device))


def _dest(ratio: int, dim: int, slots: int, device: str) -> torch.Tensor:
    if dim == L.HEAD_DIM:
        page = 64 if ratio == 4 else 2
        return L.make_kv_cache(-(-slots // page), page, device)
    return torch.zeros(slots, dim, dtype=torch.bfloat16, device=device)


def run_compress(x: CompressInputs, plan: Plan) -> None:
    fn = compress_decode if x.mode == "decode" else compress_prefill
    fn(*x.args, **x.kw, config=plan.as_dict(), variant=plan.variant)


@lru_cache(maxsize=64)
def _compress_check(
    params: tuple, rows: int, device: str, fp8: Fp8Flavour
) -> Callable[[Plan], tuple[str | None, float]]:
    # Requests of at most 256 new tokens and every third decode request at a boundary: the check
    # covers several requests (program ids, cu_seqlens, ring bases) at any size.
    x = make_compress_inputs(dict(params), rows, device, seed=rows, chunk=256, boundary_every=3, fp8=fp8)
    ref_state, ref_dest = x.state.clone(), _clone_dest(x.dest)
    ref_fn = compress_decode_ref if x.mode == "decode" else compress_prefill_ref
    i_state = 1 if x.mode == "decode" else 3
    ref_args = list(x.args)
    ref_args[i_state], ref_args[-1] = ref_state, ref_dest
    ref_fn(*ref_args, **{k: v for k, v in x.kw.items() if k != "max_new_tokens"})
    state0 = x.state.clone()

    def check(plan: Plan) -> tuple[str | None, float]:
        x.state.copy_(state0)
        _poison(x.dest, x.slots)
        run_compress(x, plan)
        err = compressed_max_error(x.dest, ref_dest, x.slots)
        if not torch.equal(x.state.view(torch.int32), ref_state.view(torch.int32)):
            return "ring state differs from the reference's", err
        return compressed_mismatch(x.dest, ref_dest, x.slots), err

    return check


def _clone_dest(dest: torch.Tensor) -> torch.Tensor:
    if dest.dtype != torch.uint8:
        return dest.clone()
    out = L.make_kv_cache(dest.shape[0], dest.shape[1], str(dest.device))
    L._flat_bytes(out).copy_(L._flat_bytes(dest))
    return out


def _poison(dest: torch.Tensor, slots: torch.Tensor) -> None:
    """Every slot zero like the reference's copy, except the ones the call must write: NaN rows or
    0xFF bytes, so a slot the kernel forgets fails the check."""
    if dest.dtype == torch.uint8:
        flat = L._flat_bytes(dest)
        flat.zero_()
        flat[L.written_bytes(dest, slots)] = 0xFF
    else:
        dest.zero_()
        dest[slots] = float("nan")


@dataclass
class QkInputs:
    q: torch.Tensor
    k: torch.Tensor
    wq: torch.Tensor
    wk: torch.Tensor


def make_qk_inputs(params: dict, rows: int, device: str, seed: int = 0) -> QkInputs:
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, params["h_q"], params["head_dim_q"], generator=gen).to(device, torch.bfloat16)
    k = torch.randn(rows, params["h_k"], params["head_dim_k"], generator=gen).to(device, torch.bfloat16)
    wq = (torch.rand(params["head_dim_q"], generator=gen) + 0.5).to(device)
    wk = (torch.rand(params["head_dim_k"], generator=gen) + 0.5).to(device)
    return QkInputs(q, k, wq, wk)


def run_qk_norm(x: QkInputs, plan: Plan, out: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    qk_norm(x.q, x.k, x.wq, x.wk, out_q=None if out is None else out[0], out_k=None if out is None else out[1],
            config=plan.as_dict())


RUNNERS: dict[str, Callable] = {"compress": run_compress, "qk_norm": run_qk_norm}


@lru_cache(maxsize=64)
def _qk_check(params: tuple, rows: int, device: str) -> Callable[[Plan], tuple[str | None, float]]:
    x = make_qk_inputs(dict(params), rows, device, seed=rows)
    ref_q, ref_k = qk_norm_ref(x.q, x.k, x.wq, x.wk)
    out = (torch.empty_like(x.q), torch.empty_like(x.k))

    def check(plan: Plan) -> tuple[str | None, float]:
        out[0].fill_(float("nan"))
        out[1].fill_(float("nan"))
        run_qk_norm(x, plan, out)
        err = max(max_abs_error(out[0], ref_q), max_abs_error(out[1], ref_k))
        for name, got, ref in (("q", out[0], ref_q), ("k", out[1], ref_k)):
            if (m := mismatch(got.float(), ref.bfloat16().float(), atol=1e-6, rtol=2**-7)) is not None:
                return f"{name}: {m}", err
        return None, err

    return check


@dataclass
class OpCase:
    """One op grid point: timed inputs, and a check of a plan against the reference (the problem,
    or None, and the largest absolute error)."""

    w: OpWorkload
    run_fn: Callable[[Plan], None]
    check_fn: Callable[[Plan], tuple[str | None, float | None]]
    decode: bool = False
    checked_us: dict[Plan, float] = field(default_factory=dict)  # never filled: checks run fewer rows

    def check(self, plan: Plan) -> Check:
        try:
            problem, max_err = self.check_fn(plan)
        except Exception as err:
            return failed(err)
        return verdict(problem, max_err)

    def timer(self, plan: Plan) -> Callable[[], None]:
        return lambda: self.run_fn(plan)

    def compile(self, plan: Plan) -> None:
        with contextlib.suppress(Exception):
            self.run_fn(plan)


def build_op_case(w: OpWorkload, device: str, seed: int = 0, with_ref: bool = True,
                  fp8: Fp8Flavour = "e4m3fn") -> OpCase:
    p = w.params_dict
    if w.op == "compress":
        x = make_compress_inputs(p, w.rows, device, seed, fp8=fp8)
        rows = min(w.rows, CHECK_ROWS[p["mode"]])
        check = _compress_check(w.params, rows, device, fp8) if with_ref else _no_check
        return OpCase(w, lambda plan: run_compress(x, plan), check)
    if w.op == "qk_norm":
        xq = make_qk_inputs(p, w.rows, device, seed)
        out = (torch.empty_like(xq.q), torch.empty_like(xq.k))
        check = _qk_check(w.params, min(w.rows, CHECK_ROWS["qk_norm"]), device) if with_ref else _no_check
        return OpCase(w, lambda plan: run_qk_norm(xq, plan, out), check)
    raise ValueError(f"op: unknown {w.op!r}")


def _no_check(plan: Plan) -> tuple[str | None, float | None]:
    return None, None
