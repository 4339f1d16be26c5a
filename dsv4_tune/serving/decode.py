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
tensors' metadata and replay it with the new addresses (:class:`~dsv4_tune.runtime.recording.Replay`),
which skips the checks (they depend on metadata only, which the lookup key pins) and Triton's
argument handling.
"""

from __future__ import annotations

import warnings
from functools import reduce
from operator import or_

import torch

from dsv4_tune.env import REPLAY
from dsv4_tune.errors import DSV4TuneWarning
from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher
from dsv4_tune.registry.layout import Fp8Flavour, Fp8Pair, fp8_pair
from dsv4_tune.registry.variants import default_plan, get_variant, plan_problems
from dsv4_tune.registry.workload import Plan, Workload
from dsv4_tune.runtime.jit import hooks_active
from dsv4_tune.runtime.recording import Recording, Replay
from dsv4_tune.runtime.replay_index import BY_CAPTURE
from dsv4_tune.runtime.target import device_flavour
from dsv4_tune.runtime.workspace import DEFAULT_WORKSPACE, Workspace
from dsv4_tune.serving.arguments import DecodeInputs, check_decode, check_decode_values, decode_outputs
from dsv4_tune.serving.variants import LAUNCHERS, Launch, variant_problem

# Replays need compiled kernels; DSV4_TUNE_REPLAY=0 turns them off (every call takes the checked
# path).  A module variable so that a benchmark can compare both paths in one process.
_REPLAY = REPLAY


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
    fp8: Fp8Flavour | Fp8Pair | None = None,
    validate: bool = False,
    workspace: Workspace | None = None,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
    dispatcher: Dispatcher | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse FP8 decode attention over the main scope and an optional extra scope, one softmax.

    ``q [b, s_q, h_q, 512]`` bf16; ``k_cache`` / ``extra_k_cache`` pool views ``[pages, P, 1, 584]``
    uint8; ``indices [b, s_q, topk]`` int32 slot ids (outside the pool = invalid);
    ``topk_length [b]`` int32; ``attn_sink [h_q]`` fp32.  Returns ``(out [b, s_q, h_q, 512] bf16,
    lse [b, h_q, s_q] fp32)``; the sink scales ``out`` and is not part of ``lse``; a row with no
    valid candidate gets ``out = 0``, ``lse = +inf``.  ``fp8`` is the pools' FP8 flavour, one for both
    or a (main, extra) pair (each scope is decoded in its own); None: the GPU arch's for both
    (``e4m3fnuz`` on gfx942, else ``e4m3fn``).  ``out`` optionally gives the two output
    tensors to write.  ``dispatcher`` answers a call without ``plan`` (default: the enclosing
    ``policy_scope``'s, else the process's: :func:`~dsv4_tune.policies.dispatcher.get_dispatcher`).
    """
    inputs = [q, k_cache, indices, topk_length, extra_k_cache, extra_indices, extra_topk_length, attn_sink]
    ws = workspace or DEFAULT_WORKSPACE
    sm_scale = float(sm_scale)
    dispatcher = (dispatcher or get_dispatcher()) if plan is None else None  # asked once per call
    kind = eager = None  # the key to record this call's launches under; whether outside a graph capture
    tensors: list[torch.Tensor] = []  # the given tensors, then out and lse (set where kind may be)
    if _REPLAY and not validate:
        # The replay lookup, in one place (inline: it is the whole host cost of a replayed call).
        # The replay's address slots index the given tensors, then out and lse: the cheap key pins
        # which optional tensors are given, so the positions are the recorded ones.
        tensors = [t for t in inputs if t is not None]
        if out is not None:
            tensors += out
        try:
            kind = replay_kind(plan or dispatcher, fp8, sm_scale, inputs, out)
            known, replay = ws.replays.find(kind, tensors)
            if replay is BY_CAPTURE:  # a dispatched kind whose eager and graph plans differ
                eager = _outside_graph(q)
                kind = (*kind, eager)
                known, replay = ws.replays.find(kind, tensors)
        except (TypeError, AttributeError):  # an unhashable plan, a non-tensor: the checked path says which
            known, replay, kind = True, None, None
        if replay is not None:
            o, lse = out or decode_outputs(None, q.shape[0], q.shape[1], q.shape[2], q.device)
            ptrs = list(map(_data_ptr, tensors))
            if out is None:
                ptrs += (o.data_ptr(), lse.data_ptr())
            if not _misaligned(ptrs) and not hooks_active() and replay.fits(ptrs):  # type: ignore[attr-defined]
                replay(ptrs)  # type: ignore[operator]
                return o, lse
        if known:
            kind = None  # replayed above, known not replayable, or an odd call: remember nothing
    # The flavours are resolved here, off the replay path: the replay key holds fp8 as given (None: the
    # device's), and the guard pins the device.
    x = check_decode(q, k_cache, indices, topk_length, extra_k_cache, extra_indices, extra_topk_length, attn_sink,
                     sm_scale, fp8_pair(fp8, device_flavour(q)))
    b, s_q, h_q, _ = q.shape
    w = workload_of(q, indices, topk_length, extra_indices, extra_topk_length, attn_sink)
    graph_plan = None  # a dispatched eager call: the plan a CUDA graph capture of this call would take
    if dispatcher is not None:
        plan = runnable(dispatcher.lookup(w), w, q.device, x.fp8)
        eager_plan = runnable(dispatcher.lookup(w, True), w, q.device, x.fp8) if dispatcher.has_eager else plan
        if eager_plan != plan:  # which one depends on whether a graph is being captured
            if eager is None:
                eager = _outside_graph(q)
                if kind is not None:  # first call of this kind: replays are kept per capture state
                    ws.replays.remember(kind, tensors, BY_CAPTURE)
                    kind = (*kind, eager)
            if eager:
                plan, graph_plan = eager_plan, plan
    elif not _plan_checked(plan, w):  # an explicit plan, once per class
        _check_plan(plan, w)
        _CHECKED_PLANS.add((plan, w.key))  # type: ignore[arg-type]
    if validate:
        check_decode_values(x)
    o, lse = decode_outputs(out, b, s_q, h_q, q.device)
    if b * s_q == 0:
        return o, lse
    launch = _launcher(plan.variant)  # type: ignore[union-attr]
    if graph_plan is not None and graph_plan != plan and (graph_plan, w, q.device) not in ws.warmed:
        # Run the graph plan once too: the usual "run once, then capture" must not compile kernels
        # or allocate workspace while capturing, and eagerly it ran the eager plan.
        ws.warmed.add((graph_plan, w, q.device))
        _launcher(graph_plan.variant)(x, graph_plan.as_dict(), o, lse, ws)
    _run(launch, x, plan.as_dict(), o, lse, ws, kind, inputs, tensors, out)  # type: ignore[union-attr]
    return o, lse


def _run(launch: Launch, x: DecodeInputs, cfg: dict[str, int], o: torch.Tensor, lse: torch.Tensor, ws: Workspace,
         kind: tuple | None, inputs: list, tensors: list[torch.Tensor],
         out: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Launch, recording the launches as the replay of ``kind`` where this call may be replayed
    (``tensors``: the call's tensors in the replay's slot order, as the lookup built them)."""
    if kind is None or hooks_active() or _misaligned([t.data_ptr() for t in (*inputs, o, lse) if t is not None]):
        launch(x, cfg, o, lse, ws)
        return
    with Recording() as rec:
        launch(x, cfg, o, lse, ws)
    if rec.complete:  # every kernel was compiled before this call: the launches are final
        slots = tensors if out is not None else [*tensors, o, lse]
        ws.replays.remember(kind, tensors, Replay.build(rec, slots, ws.buffers()))


def replay_kind(
    chooser: Plan | Dispatcher | None, fp8: str | Fp8Pair | None, sm_scale: float, inputs: list[torch.Tensor | None],
    out: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple:
    """The cheap key of a call in the replay index: the plan (or the dispatcher that picks it), the
    scalars, q's shape, and the type of each input (``inputs`` in the argument order of
    :func:`sparse_decode`; NoneType for an absent optional one, so the key pins which are given);
    the metadata guard checks the rest."""
    return (chooser, fp8, sm_scale, inputs[0].shape, out is None,  # type: ignore[union-attr]
            tuple(map(type, inputs)))


# (plan, workload class) pairs whose explicit plan passed the registry's rules (they do not depend
# on T): the check runs on the first checked call of each; replays skip it with the other checks.
_CHECKED_PLANS: set[tuple[Plan, tuple]] = set()


def _plan_checked(plan: object, w: Workload) -> bool:
    try:
        return plan.__class__ is Plan and (plan, w.key) in _CHECKED_PLANS
    except TypeError:  # a hand-built Plan with unhashable values: _check_plan says what is wrong
        return False


def _check_plan(plan: object, w: Workload) -> None:
    """A ValueError naming what is wrong with an explicit plan for ``w`` (not a Plan, unknown variant,
    missing or unknown keys, values outside the registry's choices)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"plan: expected a dsv4_tune.Plan or None, got {type(plan).__name__}")
    bad = [f"{k}={v!r}" for k, v in plan.config if not isinstance(v, int) or isinstance(v, bool)]
    if bad or not isinstance(plan.variant, str):
        raise ValueError(f"plan: config values must be ints (build plans with Plan.make), got {', '.join(bad)}")
    get_variant(plan.variant)  # an unknown variant: the registry's error naming the variants
    if problems := plan_problems(w, plan):
        raise ValueError(f"plan: {plan} cannot run {w}: {'; '.join(problems)}")


_FELL_BACK: set[str] = set()  # the variants a dispatched call had to replace (each warned once)


def runnable(plan: Plan, w: Workload, device: torch.device, fp8: Fp8Pair) -> Plan:
    """A dispatched plan, or the built-in default where its variant cannot launch here (a policy
    that picks ws_sm90 served by a Triton without its Gluon API, off sm90, or for e4m3fnuz pools):
    one warning per variant, never an exception at serving time.  Checked path only (replays skip it)."""
    problem = variant_problem(plan.variant, device, fp8)
    if problem is None:
        return plan
    if plan.variant not in _FELL_BACK:
        _FELL_BACK.add(plan.variant)
        warnings.warn(f"{plan.variant} cannot run here ({problem}); using the built-in default plan for it",
                      DSV4TuneWarning, stacklevel=3)
    return default_plan(w)


def _launcher(variant: str) -> Launch:
    launch = LAUNCHERS.get(variant)
    if launch is None:
        get_variant(variant)  # raises the registry's error naming the variants
        raise ValueError(f"variant: {variant!r} has no launcher")
    return launch


def _outside_graph(q: torch.Tensor) -> bool:
    """Whether a dispatched call whose policy gives eager calls another plan should take it: no CUDA
    graph is being captured on this stream (a graph pays no host time per launch at replay).  The
    capture check is a CUDA runtime call, asked only for the kinds whose two plans differ
    (:data:`~dsv4_tune.runtime.replay_index.BY_CAPTURE`)."""
    return not (isinstance(q, torch.Tensor) and q.is_cuda and _capturing())


def _misaligned(ptrs: list[int]) -> bool:
    """Whether any address is not 16-byte aligned (replays are recorded for aligned tensors only)."""
    return bool(reduce(or_, ptrs, 0) & 15)


_data_ptr = torch.Tensor.data_ptr
# torch.cuda.is_current_stream_capturing without its Python wrapper (host time: see the module doc).
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", torch.cuda.is_current_stream_capturing)
