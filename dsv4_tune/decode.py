"""The public entry: ``sparse_decode``, same argument meaning as FlashMLA's sparse FP8 decode.

Checks read metadata only (no host sync) unless ``validate=True``.  With ``plan=None`` the
process-wide dispatcher picks the plan from the policy chosen for this GPU (``DSV4_TUNE_POLICY``, a
shipped policy, or the built-in default; see :mod:`dsv4_tune.policies.dispatcher`).

A dispatched call outside a CUDA graph capture takes the policy's eager plan where it has one
(:meth:`~dsv4_tune.policies.dispatcher.Dispatcher.lookup`): eagerly, every launch costs host time.
The first such call of a kind also runs the graph plan once, so that warming up eagerly and then
capturing compiles and allocates nothing during the capture.

Host cost: the first call of a kind (same plan, scale, FP8 flavour, workspace and tensor metadata)
runs every check and records its launches; later calls of that kind look the recording up by the
tensors' metadata and replay it with the new addresses (:class:`~dsv4_tune.kernels.launch.Replay`),
which skips the checks (they depend on metadata only, which the lookup key pins) and Triton's
argument handling.
"""

from __future__ import annotations

import os
from functools import reduce
from operator import or_

import torch

from dsv4_tune.kernels.checks import check_device, check_index_values, check_scope
from dsv4_tune.kernels.kv_layout import HEAD_DIM, Fp8Flavour, check_flavour
from dsv4_tune.kernels.launch import Recording, Replay, hooks_active
from dsv4_tune.kernels.launchers import DecodeInputs
from dsv4_tune.kernels.replay_cache import BY_CAPTURE
from dsv4_tune.kernels.runtime import interpreting
from dsv4_tune.kernels.variants import get_variant, plan_problems
from dsv4_tune.kernels.workspace import DEFAULT_WORKSPACE, Workspace
from dsv4_tune.policies.dispatcher import get_dispatcher
from dsv4_tune.workload import Plan, Workload


def _check_q(q: torch.Tensor) -> None:
    if q.dtype != torch.bfloat16:
        raise ValueError(f"q: expected dtype torch.bfloat16, got {q.dtype}")
    if q.dim() != 4 or q.shape[3] != HEAD_DIM:
        raise ValueError(f"q: expected shape [b, s_q, h_q, {HEAD_DIM}], got {tuple(q.shape)}")
    check_device("q", q)


def _check_sink(sink: torch.Tensor, h_q: int, device: torch.device) -> None:
    if sink.dtype != torch.float32 or sink.dim() != 1 or sink.shape[0] != h_q:
        raise ValueError(f"attn_sink: expected a float32 tensor [{h_q}], got {sink.dtype} {tuple(sink.shape)}")
    check_device("attn_sink", sink, device)


def workload_of(
    q: torch.Tensor,
    indices: torch.Tensor,
    topk_length: torch.Tensor | None,
    extra_indices: torch.Tensor | None,
    extra_topk_length: torch.Tensor | None,
    attn_sink: torch.Tensor | None,
) -> Workload:
    """The dispatcher's view of a call (metadata only)."""
    return Workload(
        total_tokens=q.shape[0] * q.shape[1],
        h_q=q.shape[2],
        topk_main=indices.shape[2],
        topk_extra=0 if extra_indices is None else extra_indices.shape[2],
        has_len_main=topk_length is not None,
        has_len_extra=extra_topk_length is not None,
        has_sink=attn_sink is not None,
    )


def sparse_decode(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    indices: torch.Tensor,
    *,
    topk_length: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    sm_scale: float,
    plan: Plan | None = None,
    fp8: Fp8Flavour = "e4m3fn",
    validate: bool = False,
    workspace: Workspace | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse FP8 decode attention over the main scope and an optional extra scope, one softmax.

    ``q [b, s_q, h_q, 512]`` bf16; ``k_cache`` / ``extra_k_cache`` pool views ``[pages, P, 1, 584]``
    uint8; ``indices [b, s_q, topk]`` int32 slot ids (outside the pool = invalid);
    ``topk_length [b]`` int32; ``attn_sink [h_q]`` fp32.  Returns ``(out [b, s_q, h_q, 512] bf16,
    lse [b, h_q, s_q] fp32)``; the sink scales ``out`` and is not part of ``lse``; a row with no
    valid candidate gets ``out = 0``, ``lse = +inf``.  ``fp8`` is the pool's FP8 flavour (the GPU
    arch's: ``e4m3fnuz`` on gfx942).  ``out`` optionally gives the two output tensors to write.
    """
    inputs = [q, k_cache, indices, topk_length, extra_k_cache, extra_indices, extra_topk_length, attn_sink]
    ws = workspace or DEFAULT_WORKSPACE
    sm_scale = float(sm_scale)
    eager = None  # a dispatched call outside a CUDA graph capture: asked only where the answer matters
    kind = None  # the cheap key of a call that may be recorded (see kernels/replay_cache.py)
    if _REPLAY and not validate:
        # The replay's address slots index `tensors` (the given tensors, then out and lse): the
        # cheap key pins which optional tensors are given, so the positions are the recorded ones.
        tensors = [t for t in inputs if t is not None]
        if out is not None:
            tensors += out
        try:
            kind = replay_kind(plan, fp8, sm_scale, inputs, out)
            known, replay = ws.replays.find(kind, tensors)
            if replay is BY_CAPTURE:  # a dispatched kind whose eager and graph plans differ
                eager = _outside_graph(q)
                kind = (*kind, eager)
                known, replay = ws.replays.find(kind, tensors)
        except (TypeError, AttributeError):  # an unhashable plan, a non-tensor: the checked path says which
            known, replay, kind = True, None, None
        if replay is not None:
            o, lse = out or _outputs(None, q.shape[0], q.shape[1], q.shape[2], q.device)
            ptrs = list(map(_data_ptr, tensors))
            if out is None:
                ptrs += (o.data_ptr(), lse.data_ptr())
            if not _misaligned(ptrs) and not hooks_active() and replay.fits(ptrs):  # type: ignore[attr-defined]
                replay(ptrs)  # type: ignore[operator]
                return o, lse
        if known:
            kind = None  # replayed above, known not replayable, or an odd call: remember nothing
    check_flavour(fp8)
    _check_q(q)
    b, s_q, h_q, _ = q.shape
    check_scope("", k_cache, indices, topk_length, b, s_q)
    check_device("k_cache", k_cache, q.device)
    extra = None
    if (extra_k_cache is None) != (extra_indices is None):
        raise ValueError("extra_k_cache, extra_indices: give both or neither")
    if extra_k_cache is not None:
        check_scope("extra_", extra_k_cache, extra_indices, extra_topk_length, b, s_q)
        check_device("extra_k_cache", extra_k_cache, q.device)
        extra = (extra_k_cache, extra_indices, extra_topk_length)
    elif extra_topk_length is not None:
        raise ValueError("extra_topk_length: given without an extra scope")
    if attn_sink is not None:
        _check_sink(attn_sink, h_q, q.device)
    if q.stride(3) != 1 or q.stride(0) % 8 or q.stride(1) % 8 or q.stride(2) % 8:
        q = q.contiguous()  # the kernels read 16-byte rows of q
    w = workload_of(q, indices, topk_length, extra_indices, extra_topk_length, attn_sink)
    graph_plan = None  # a dispatched eager call: the plan a CUDA graph capture of this call would take
    if plan is None:
        dispatcher = get_dispatcher()
        plan = dispatcher.lookup(w)
        eager_plan = dispatcher.lookup(w, True) if dispatcher.has_eager else plan
        if eager_plan != plan:  # which one depends on whether a graph is being captured
            if eager is None:
                eager = _outside_graph(q)
                if kind is not None:  # first call of this kind: replays are kept per capture state
                    ws.replays.remember(kind, tensors, BY_CAPTURE)
                    kind = (*kind, eager)
            if eager:
                plan, graph_plan = eager_plan, plan
    if validate:
        problems = plan_problems(w, plan)
        if problems:
            raise ValueError(f"plan: {plan} cannot run {w}: {'; '.join(problems)}")
        check_index_values("", k_cache, indices, topk_length)
        if extra is not None:
            check_index_values("extra_", *extra)
    o, lse = _outputs(out, b, s_q, h_q, q.device)
    if b * s_q == 0:
        return o, lse
    x = DecodeInputs(q, (k_cache, indices, topk_length), extra, attn_sink, sm_scale, fp8)
    if graph_plan is not None and graph_plan != plan and (graph_plan, w, q.device) not in ws.warmed:
        # Run the graph plan once too: the usual "run once, then capture" must not compile kernels
        # or allocate workspace while capturing, and eagerly it ran the eager plan.
        ws.warmed.add((graph_plan, w, q.device))
        get_variant(graph_plan.variant).launch()(x, graph_plan.as_dict(), o, lse, ws)
    launch = get_variant(plan.variant).launch()
    if kind is None or hooks_active() or _misaligned([t.data_ptr() for t in (*inputs, o, lse) if t is not None]):
        launch(x, plan.as_dict(), o, lse, ws)
        return o, lse
    with Recording() as rec:
        launch(x, plan.as_dict(), o, lse, ws)
    if rec.complete:  # every kernel was compiled before this call: the launches are final
        slots = tensors if out is not None else [*tensors, o, lse]
        ws.replays.remember(kind, tensors, Replay.build(rec, slots, ws.buffers()))
    return o, lse


def replay_kind(
    plan: Plan | None, fp8: str, sm_scale: float, inputs: list[torch.Tensor | None],
    out: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple:
    """The cheap key of a call in the replay cache: the plan (or the dispatcher that picks it), the
    scalars, q's shape, and the type of each input
    (``inputs`` in the argument order of :func:`sparse_decode`; NoneType for an absent optional
    one, so the key pins which are given); the metadata guard checks the rest."""
    return (plan or get_dispatcher(), fp8, sm_scale, inputs[0].shape, out is None,  # type: ignore[union-attr]
            tuple(map(type, inputs)))


def _outside_graph(q: torch.Tensor) -> bool:
    """Whether a dispatched call should take the policy's eager plans: the policy has some and no
    CUDA graph is being captured on this stream (a graph pays no host time per launch at replay).
    The capture check is a CUDA runtime call: it is skipped when the policy has no eager plans, and
    a replayed call asks it only for the kinds whose two plans differ
    (:data:`~dsv4_tune.kernels.replay_cache.BY_CAPTURE`)."""
    if not get_dispatcher().has_eager:
        return False
    return not (isinstance(q, torch.Tensor) and q.is_cuda and _capturing())


# Replays need compiled kernels; DSV4_TUNE_REPLAY=0 turns them off (every call takes the checked path).
_REPLAY = not interpreting() and os.environ.get("DSV4_TUNE_REPLAY", "1") != "0"


def _misaligned(ptrs: list[int]) -> bool:
    """Whether any address is not 16-byte aligned (replays are recorded for aligned tensors only)."""
    return bool(reduce(or_, ptrs, 0) & 15)


_data_ptr = torch.Tensor.data_ptr
# torch.cuda.is_current_stream_capturing without its Python wrapper (host time: see the module doc).
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", torch.cuda.is_current_stream_capturing)


def _outputs(
    out: tuple[torch.Tensor, torch.Tensor] | None, b: int, s_q: int, h_q: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Allocate ``(out, lse)`` or check the caller's: contiguous, right shape, dtype and device."""
    if out is None:
        return (
            torch.empty(b, s_q, h_q, HEAD_DIM, dtype=torch.bfloat16, device=device),
            torch.empty(b, h_q, s_q, dtype=torch.float32, device=device),
        )
    o, lse = out
    for name, t, shape, dtype in (("out[0]", o, (b, s_q, h_q, HEAD_DIM), torch.bfloat16),
                                  ("out[1]", lse, (b, h_q, s_q), torch.float32)):
        if tuple(t.shape) != shape or t.dtype != dtype or not t.is_contiguous():
            raise ValueError(
                f"{name}: expected a contiguous {dtype} tensor {list(shape)}, got {t.dtype} {list(t.shape)}"
            )
        check_device(name, t, device)
    return o, lse
