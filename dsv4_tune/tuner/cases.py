"""One case protocol for every grid point, decode or op: build its inputs (and reference), check a
plan against the reference on NaN-poisoned outputs, give a timer of a plan, compile a plan.

The sweep, the compile workers, ``verify-policy`` and the benchmarks use cases only through
:class:`Case`; a grid class builds its own (:meth:`~dsv4_tune.tuner.grid.GridClass.build_case`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.registry.layout import Fp8Flavour, Fp8Pair, fp8_pair
from dsv4_tune.registry.workload import Plan
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.decode import sparse_decode
from dsv4_tune.tuner.inputs import TIMING_LENGTHS, make_query, make_scope, make_sink
from dsv4_tune.tuner.tolerance import decode_mismatch, max_abs_error

Check = tuple[str, str | None, float | None]  # status, error text or None, largest error vs the reference


class Case(Protocol):
    """The inputs of one grid point, as the tuner uses them."""

    decode: bool  # a sparse-decode case: served from CUDA graphs, with eager plans chosen by host time
    # Interpreter only: wall-clock us of each plan's checked call on these inputs, which the
    # interpreter's stand-in "timing" reuses instead of interpreting the plan once more.
    checked_us: dict[Plan, float]

    def check(self, plan: Plan) -> Check:
        """Run ``plan`` on poisoned outputs and compare with the reference; every failure is a status."""

    def timer(self, plan: Plan) -> Callable[[], None]:
        """A call of ``plan`` on these inputs, for timing (allocates nothing per call)."""

    def compile(self, plan: Plan) -> None:
        """Run ``plan`` once so that its kernels are compiled (failures are left to :meth:`check`)."""


def status_of(err: BaseException) -> str:
    name = type(err).__name__
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "oom"
    if "Compilation" in name or "OutOfResources" in name:
        return "compile_error"
    return "launch_error"


def failed(err: BaseException) -> Check:
    """The stored row of a plan that raised: never a crash of the sweep."""
    return status_of(err), f"{type(err).__name__}: {err}"[:2000], None


def verdict(problem: str | None, max_err: float | None) -> Check:
    return ("ok", None, max_err) if problem is None else ("mismatch", problem[:2000], max_err)


@dataclass
class DecodeCase:
    """Inputs of one sparse-decode grid point and their reference result."""

    q: torch.Tensor
    main: object
    kw: dict
    ref: tuple[torch.Tensor, torch.Tensor]
    fp8: Fp8Flavour | Fp8Pair = "e4m3fn"
    decode: bool = True
    checked_us: dict[Plan, float] = field(default_factory=dict)

    def run(self, plan: Plan, ws: Workspace, out: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        sparse_decode(self.q, self.main.kv_cache, self.main.indices, plan=plan, workspace=ws, out=out, fp8=self.fp8,
                      **self.kw)

    def check(self, plan: Plan) -> Check:
        ws = Workspace(poisoned=True)
        out = (torch.full(self.ref[0].shape, float("nan"), dtype=torch.bfloat16, device=self.q.device),
               torch.full(self.ref[1].shape, float("nan"), device=self.q.device))
        try:
            if self.q.is_cuda:
                # On the GPU the checked call is a second one on a used workspace (poisoned again): a
                # plan must leave it fit for the next call (the in-kernel merge's counters at zero).
                # The interpreter's sweep proves the pipeline: one call, on a poisoned workspace.
                self.run(plan, ws, out)
                ws.poison()
                out[0].fill_(float("nan"))
                out[1].fill_(float("nan"))
            t0 = time.perf_counter()
            self.run(plan, ws, out)
            if not self.q.is_cuda:
                self.checked_us[plan] = (time.perf_counter() - t0) * 1e6
            problem = decode_mismatch(out[0], out[1], *self.ref)
            max_err = max_abs_error(out[0], self.ref[0])
        except Exception as err:
            return failed(err)
        return verdict(problem, max_err)

    def timer(self, plan: Plan) -> Callable[[], None]:
        ws = Workspace()
        out = (torch.empty(self.ref[0].shape, dtype=torch.bfloat16, device=self.q.device),
               torch.empty(self.ref[1].shape, device=self.q.device))
        return lambda: self.run(plan, ws, out)

    def compile(self, plan: Plan) -> None:
        with contextlib.suppress(Exception):
            self.run(plan, Workspace(), None)


def decode_case(
    h_q: int, topk_main: int, topk_extra: int, page_main: int, page_extra: int, has_len_main: bool,
    has_len_extra: bool, has_sink: bool, t: int, device: str, seed: int = 0, with_ref: bool = True,
    fp8: Fp8Flavour | Fp8Pair = "e4m3fn",
) -> DecodeCase:
    """Inputs of ``t`` decode tokens of one class, pools in the ``fp8`` flavour (one, or the (main,
    extra) pair) and the reference, unless ``with_ref`` is False: compiling and timing need outputs
    of the right shape, not the values.  A scope with a length gets the lengths timing should see
    (:data:`~dsv4_tune.tuner.inputs.TIMING_LENGTHS`)."""
    pair = fp8_pair(fp8, "e4m3fn")
    gen = torch.Generator().manual_seed(seed)
    length, x_length = (mode if has else None for mode, has in zip(TIMING_LENGTHS, (has_len_main, has_len_extra),
                                                                    strict=True))
    main = make_scope(t, 1, topk_main, page_main, fp8=pair[0], device=device, topk_length=length, gen=gen)
    extra = None
    if topk_extra:
        extra = make_scope(t, 1, topk_extra, page_extra, fp8=pair[1], device=device, topk_length=x_length, gen=gen)
    q = make_query(t, 1, h_q, device=device, gen=gen)
    sink = make_sink(h_q, kind="finite", device=device, gen=gen) if has_sink else None
    kw = dict(topk_length=main.topk_length, extra_k_cache=extra.kv_cache if extra else None,
              extra_indices=extra.indices if extra else None, extra_topk_length=extra.topk_length if extra else None,
              attn_sink=sink, sm_scale=512**-0.5)
    if with_ref:
        ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8=pair, out_dtype=torch.float32, **kw)
    else:
        ref = (torch.empty(t, 1, h_q, 512, device=device), torch.empty(t, h_q, 1, device=device))
    return DecodeCase(q, main, kw, ref, pair)


def case_flavour(device: str) -> Fp8Flavour:
    """The FP8 flavour a case's pools take on ``device``: the GPU arch's, ``e4m3fn`` on the CPU."""
    if device == "cpu":
        return "e4m3fn"
    from dsv4_tune.policies.gpu import detect

    return detect().fp8
