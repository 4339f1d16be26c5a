"""The sweep: compile, check, time, store, select; resumable at every step.

Stages over the whole grid (coarse, refine, final; see :func:`run_sweep`).  Per workload and
stage: build realistic inputs and the reference; run every new candidate once on NaN-poisoned
outputs and workspace and compare with the reference (a mismatch or a failure is stored as such
and never timed); time the rest interleaved (CUDA graphs, cold L2); commit each row.  The final
stage re-times the best few side by side and :mod:`dsv4_tune.tuner.select` picks the winner.
On the interpreter the same pipeline runs on a tiny grid with wall-clock "timings", and
everything it stores is labelled as not a real measurement.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from dsv4_tune.cache.store import Store, stable_hash
from dsv4_tune.decode import sparse_decode
from dsv4_tune.kernels.compare import decode_mismatch, max_abs_error
from dsv4_tune.kernels.ops import op_arch_problems, op_plan_problems
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.kernels.variants import plan_problems
from dsv4_tune.kernels.workspace import Workspace
from dsv4_tune.policies.gpu import INTERPRETER_ID, GpuInfo
from dsv4_tune.tuner.grid import (
    LAUNCHES,
    REFINE_SEEDS,
    STAGE_COARSE,
    STAGE_FINAL,
    STAGE_REFINE,
    STAGES,
    Grid,
    GridClass,
    GridPoint,
    OpGridClass,
    coarse_candidates,
    refine_candidates,
    workload_key,
)
from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink
from dsv4_tune.tuner.measure import gpu_state, host_us_per_call, hygiene_flag, interleaved_times, summarize
from dsv4_tune.tuner.op_cases import OpCase, build_op_case
from dsv4_tune.tuner.select import select_eager, select_winner, toolchain
from dsv4_tune.workload import OpWorkload, Plan, Workload

FINALISTS = 3
NOISY_SPREAD = 1.3  # a timing batch with a plan's p80 / p20 above this is measured again
STAGE_HOST = "host"  # measurement rows of host time per eager call (final-stage plans)
HOST_CALLS = 400
# Host time is measured only where the graph winner takes less GPU time than this: above it, any
# plan's GPU time exceeds its host time (tens of microseconds) and the eager winner is the graph one.
EAGER_MAX_US = 150.0


@dataclass
class Case:
    """Inputs of one grid point and their reference result."""

    q: torch.Tensor
    main: object
    kw: dict
    ref: tuple[torch.Tensor, torch.Tensor]

    def run(self, plan: Plan, ws: Workspace, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        sparse_decode(self.q, self.main.kv_cache, self.main.indices, plan=plan, workspace=ws, out=out, **self.kw)


def build_case(
    cls: GridClass | OpGridClass, t: int, device: str, seed: int = 0, with_ref: bool = True
) -> Case | OpCase:
    """Inputs of one grid point (and its reference, unless ``with_ref`` is False: compiling only)."""
    if isinstance(cls, OpGridClass):
        return build_op_case(cls.workload(t), device, seed, with_ref)
    gen = torch.Generator().manual_seed(seed)
    w = cls.workload(t)
    length, x_length = ("random" if w.has_len_main else None), ("random" if w.has_len_extra else None)
    main = make_scope(t, 1, cls.topk_main, cls.page_main, fp8="e4m3fn", device=device, topk_length=length, gen=gen)
    extra = None
    if cls.topk_extra:
        extra = make_scope(t, 1, cls.topk_extra, cls.page_extra, fp8="e4m3fn", device=device, topk_length=x_length,
                           gen=gen)
    q = make_query(t, 1, cls.h_q, device=device, gen=gen)
    sink = make_sink(cls.h_q, kind="finite", device=device, gen=gen) if cls.has_sink else None
    kw = dict(topk_length=main.topk_length, extra_k_cache=extra.kv_cache if extra else None,
              extra_indices=extra.indices if extra else None, extra_topk_length=extra.topk_length if extra else None,
              attn_sink=sink, sm_scale=512**-0.5)
    if with_ref:
        ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8="e4m3fn", out_dtype=torch.float32, **kw)
    else:  # shapes only: timing and compiling need outputs of the right shape, not the values
        ref = (torch.empty(t, 1, cls.h_q, 512, device=device), torch.empty(t, cls.h_q, 1, device=device))
    return Case(q, main, kw, ref)


def _status_of(err: BaseException) -> str:
    name = type(err).__name__
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return "oom"
    if "Compilation" in name or "OutOfResources" in name:
        return "compile_error"
    return "launch_error"


def check(case: Case | OpCase, plan: Plan) -> tuple[str, str | None, float | None]:
    """Run ``plan`` once on poisoned outputs and workspace; (status, error or None, largest
    absolute error vs the reference or None when it did not run)."""
    if isinstance(case, OpCase):
        try:
            problem, max_err = case.check_fn(plan)
        except Exception as err:  # every failure is a stored row, never a crash of the sweep
            return _status_of(err), f"{type(err).__name__}: {err}"[:2000], None
        return ("ok", None, max_err) if problem is None else ("mismatch", problem[:2000], max_err)
    ws = Workspace()
    out = (torch.full(case.ref[0].shape, float("nan"), dtype=torch.bfloat16, device=case.q.device),
           torch.full(case.ref[1].shape, float("nan"), device=case.q.device))
    try:
        case.run(plan, ws, out)  # allocates the workspace
        ws.poison()
        out[0].fill_(float("nan"))
        out[1].fill_(float("nan"))
        case.run(plan, ws, out)
        problem = decode_mismatch(out[0], out[1], *case.ref)
        max_err = max_abs_error(out[0], case.ref[0])
    except Exception as err:  # every failure is a stored row, never a crash of the sweep
        return _status_of(err), f"{type(err).__name__}: {err}"[:2000], None
    return ("ok", None, max_err) if problem is None else ("mismatch", problem[:2000], max_err)


def _callable(case: Case | OpCase, plan: Plan) -> Callable[[], None]:
    if isinstance(case, OpCase):
        return case.callable(plan)
    ws = Workspace()
    out = (torch.empty(case.ref[0].shape, dtype=torch.bfloat16, device=case.q.device),
           torch.empty(case.ref[1].shape, device=case.q.device))
    return lambda: case.run(plan, ws, out)


def time_plans(
    case: Case | OpCase, plans: list[Plan], real: bool, rounds: int, reps: int
) -> tuple[list[list[float]], str | None]:
    """Samples (us) per plan and a hygiene flag; wall-clock samples on the interpreter."""
    fns = [_callable(case, p) for p in plans]
    if not real:
        samples = []
        for fn in fns:
            t0 = time.perf_counter()
            fn()
            samples.append([(time.perf_counter() - t0) * 1e6])
        return samples, "interpreter: not a real measurement"
    samples = interleaved_times(fns, rounds=rounds, reps=reps)
    flag = hygiene_flag(gpu_state())
    if flag:  # throttled or shared: measure once more before keeping it
        samples = interleaved_times(fns, rounds=rounds, reps=reps, seed=1)
        flag = hygiene_flag(gpu_state())
    if max(map(spread, samples)) > NOISY_SPREAD:
        # Bursts of interference (another tenant of the host or GPU) slow some rounds of some plans:
        # a median in the slow mode would misrank the plan (2026-11-26, H100: 167.6 us for a plan
        # whose p20 was 97.5 and which measured 97 in every other run).  Interference only adds
        # time, so each plan keeps the faster of its two measurements (by median; the two runs
        # follow each other, so plans taken from different runs were still timed minutes apart
        # at most, under the same clocks).
        again = interleaved_times(fns, rounds=rounds, reps=reps, seed=2)
        samples = [b if statistics.median(b) < statistics.median(a) else a for a, b in zip(samples, again, strict=True)]
        noisy = max(map(spread, samples)) > NOISY_SPREAD
        flag = "; ".join(x for x in (flag, "noisy: re-timed" + (", still noisy" if noisy else "")) if x)
    return samples, flag


def spread(samples_us: list[float]) -> float:
    """p80 / p20 of one plan's samples: about 1.0-1.1 on a quiet GPU."""
    s = summarize(samples_us)
    return s["p80_us"] / s["p20_us"] if s["p20_us"] > 0 else float("inf")


# ------------------------------------------------------------------------ parallel compile
def _compile_worker(jobs: list[tuple[GridClass | OpGridClass, int, Plan]]) -> None:
    for cls, _t, plan in jobs:
        case = build_case(cls, 1, "cuda", with_ref=False)
        with contextlib.suppress(Exception):  # the sweep's own check stores the failure
            if isinstance(case, OpCase):
                case.run_fn(plan)
            else:
                case.run(plan, Workspace(), None)  # type: ignore[arg-type]
    torch.cuda.synchronize()


def compile_plans(pairs: list[tuple[GridClass | OpGridClass, Plan]], processes: int) -> tuple[int, float]:
    """Fill the Triton cache: one run of every distinct kernel among ``pairs``, in worker processes
    (plans that differ only in SPLIT_K share their kernels).  Returns (kernels, seconds)."""
    t0 = time.time()
    firsts: dict[tuple, tuple] = {}
    for cls, plan in pairs:
        if isinstance(cls, OpGridClass):
            firsts.setdefault((cls.op, cls.params, plan), (cls, 1, plan))
            continue
        cfg = {k: v for k, v in plan.as_dict().items() if k != "SPLIT_K"}
        split = plan.as_dict().get("SPLIT_K", 1) > 1
        key = (cls.topk_extra > 0, cls.with_length, plan.variant, tuple(sorted(cfg.items())), split)
        firsts.setdefault(key, (cls, 1, plan))
    todo = list(firsts.values())
    processes = max(1, min(processes, len(todo)))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_compile_worker, args=(todo[i::processes],)) for i in range(processes)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return len(todo), time.time() - t0


# ---------------------------------------------------------------------------------- sweep
def sweep_meta(gpu: GpuInfo, grid: Grid) -> dict:
    driver = torch.version.cuda or torch.version.hip or "none"
    return {"gpu_id": gpu.id, "arch": gpu.arch if gpu.is_real else INTERPRETER_ID, "device_name": gpu.name,
            "driver": str(driver),
            **toolchain(), "interpreter": int(not gpu.is_real), "grid_hash": stable_hash(grid.to_json()),
            "grid": json.dumps(grid.to_json(), sort_keys=True)}


def run_sweep(
    store: Store,
    grid: Grid,
    gpu: GpuInfo,
    *,
    fresh: bool = False,
    jobs: int = 1,
    rounds: int = 3,
    reps: int = 10,
    refine_rounds: int = 1,
    on_point: Callable[[int, int, str], None] | None = None,
) -> str:
    """Measure ``grid`` on ``gpu`` into ``store``; returns the sweep id.  Resumes unless ``fresh``.

    Three stages over the whole grid, each resumable from the store: coarse (every variant at good
    configs), refine (the neighbourhoods of each workload's best plans so far, re-timed beside
    them; ``refine_rounds`` rounds, each from the best plans the rounds before found: a round whose
    seeds did not move times nothing) and final (the best few re-timed side by side, the winner stored).
    Before a stage times anything, the kernels it needs are compiled in ``jobs`` worker processes.
    A later call with more rounds deepens a finished sweep and re-opens its final stage where the
    search found new plans.
    """
    if refine_rounds < 1:
        raise ValueError(f"refine_rounds: expected >= 1, got {refine_rounds}")
    device = "cuda" if gpu.is_real else "cpu"
    sweep_id, _ = store.open_sweep(sweep_meta(gpu, grid), fresh=fresh)
    arch = gpu.arch if gpu.is_real else None
    unfit = store.unfit_kernels(arch) if arch else {}
    points = grid.points()
    progress = _Progress(len(points) * (len(STAGES) + refine_rounds - 1), on_point)

    def valid(w: Workload | OpWorkload, plans: list[Plan]) -> list[Plan]:
        if isinstance(w, OpWorkload):
            return [p for p in plans
                    if not op_plan_problems(w, p) and not (arch and op_arch_problems(w, p, arch, unfit))]
        return [p for p in plans if not plan_problems(w, p, arch, unfit)]

    limit = None if gpu.is_real else 2  # the interpreter's sweep proves the stages, it measures nothing
    changed = _stage(store, sweep_id, STAGE_COARSE, points, device, gpu, jobs, rounds, reps, progress,
                     lambda n, w: valid(w, coarse_candidates(w, arch, limit)))

    def refine(round_: int, w: Workload | OpWorkload) -> list[Plan]:
        """Round 1: neighbours of the best coarse plans; later rounds: of the best plans so far (a
        resumed sweep recomputes each round's list from the store and times only what is new)."""
        key = workload_key(w)
        stages = (STAGE_COARSE,) if round_ == 0 else (STAGE_COARSE, STAGE_REFINE)
        rows = [r for r in store.measurements(sweep_id, workload=key) if r["stage"] in stages]
        seeds = _ranked(rows, key)[:REFINE_SEEDS]
        return valid(w, refine_candidates(w, seeds, arch, limit)) if seeds else []

    for round_ in range(refine_rounds):  # the stage skips what it measured: a round times only new plans
        changed |= _stage(store, sweep_id, STAGE_REFINE, points, device, gpu, jobs, rounds, reps, progress,
                          lambda n, w, round_=round_: refine(round_, w))
    for n, (cls, t) in enumerate(points):
        key = workload_key(cls.workload(t))
        progress(f"{STAGE_FINAL} {key}")
        if key in changed or not store.has_winner(sweep_id, key):  # new candidates re-open the final
            _final(store, sweep_id, key, lambda cls=cls, t=t, n=n: build_case(cls, t, device, seed=n),
                   gpu.is_real, rounds, reps)
    store.finish_sweep(sweep_id)
    return sweep_id


class _Progress:
    """Counts steps (one per workload and stage) for the caller's progress bar."""

    def __init__(self, total: int, on_point: Callable[[int, int, str], None] | None) -> None:
        self.total, self.done, self.on_point = total, 0, on_point

    def __call__(self, label: str) -> None:
        if self.on_point:
            self.on_point(self.done, self.total, label)
        self.done += 1


def _stage(
    store: Store, sweep_id: str, stage: str, points: list[GridPoint], device: str, gpu: GpuInfo,
    jobs: int, rounds: int, reps: int, progress: _Progress,
    candidates: Callable[[int, Workload | OpWorkload], list[Plan]],
) -> set[str]:
    """One search stage over the grid: compile what it needs, then check and time, workload by
    workload, skipping what the store already holds.  A plan that passed its check on the same
    inputs in an earlier stage is not checked again.  Returns the workloads that got new rows."""
    done = store.measured(sweep_id, stage)
    todo = []
    for n, (cls, t) in enumerate(points):
        w = cls.workload(t)
        key = workload_key(w)
        plans = [p for p in candidates(n, w) if (key, str(p)) not in done]
        todo.append((n, cls, t, key, plans))
    if gpu.is_real and jobs > 1:
        compile_plans([(cls, p) for _, cls, _, _, plans in todo for p in plans], jobs)
    changed = set()
    for n, cls, t, key, plans in todo:
        progress(f"{stage} {key}")
        if not plans:
            continue
        changed.add(key)
        case = build_case(cls, t, device, seed=n)
        passed_before = {r["plan"]: r["max_error"] for r in store.measurements(sweep_id, workload=key)
                         if r["status"] == "ok" and r["stage"] != stage and r["max_error"] is not None}
        passing, errors = [], {}
        for plan in plans:
            if str(plan) in passed_before:
                status, error, errors[plan] = "ok", None, passed_before[str(plan)]
            else:
                status, error, errors[plan] = check(case, plan)
            if status != "ok":
                store.add_measurement({**_row(sweep_id, key, stage, plan, status, error), "max_error": errors[plan]})
            else:
                passing.append(plan)
        if passing:
            samples, flag = time_plans(case, passing, gpu.is_real, rounds, reps)
            for plan, s in zip(passing, samples, strict=True):
                store.add_measurement({**_row(sweep_id, key, stage, plan, "ok", None), **summarize(s),
                                       "rounds": rounds, "flagged": flag, "max_error": errors[plan]})
        del case
    return changed


def _ranked(rows: list[dict], key: str) -> list[Plan]:
    """The workload's timed plans, fastest first; a plan timed in several stages counts with its
    latest stage's median (it was re-timed beside stronger company)."""
    latest: dict[str, dict] = {}
    for r in rows:
        if r["workload"] == key and r["status"] == "ok" and r["median_us"] is not None:
            latest[r["plan"]] = r  # rows come in id order: later stages overwrite earlier ones
    ordered = sorted(latest.values(), key=lambda r: r["median_us"])
    return [Plan.make(r["variant"], json.loads(r["config"])) for r in ordered]


def _final(
    store: Store, sweep_id: str, key: str, make_case: Callable[[], Case | OpCase], real: bool, rounds: int, reps: int
) -> None:
    """Re-time the best few side by side (with the best one-launch plan of a decode workload among
    them), time their host cost per eager call, and store the winner and the eager winner."""
    rows = [r for r in store.measurements(sweep_id, workload=key) if r["stage"] in (STAGE_COARSE, STAGE_REFINE)]
    ranked = _ranked(rows, key)
    plans = ranked[:FINALISTS]
    if not plans:
        return
    case = make_case()
    one_launch = next((p for p in ranked if LAUNCHES.get(p.variant) == 1), None)
    if isinstance(case, Case) and one_launch is not None and one_launch not in plans:
        plans.append(one_launch)
    samples, flag = time_plans(case, plans, real, rounds * 2, reps)
    by_plan = dict(zip(plans, samples, strict=True))
    for plan, s in by_plan.items():
        store.add_measurement({**_row(sweep_id, key, STAGE_FINAL, plan, "ok", None), **summarize(s),
                               "rounds": rounds * 2, "flagged": flag})
    win = select_winner(by_plan)
    plan = win["plan"]
    host = host_times(case, plans) if real and isinstance(case, Case) and win["median_us"] < EAGER_MAX_US else {}
    for p, us in host.items():
        store.add_measurement({**_row(sweep_id, key, STAGE_HOST, p, "ok", None), "median_us": us,
                               "samples": HOST_CALLS})
    eager = select_eager(by_plan, host, plan)
    store.set_winners(sweep_id, [{
        "workload": key, "plan": str(plan), "variant": plan.variant, "config": json.dumps(plan.as_dict()),
        "median_us": win["median_us"], "runner_up": str(win["runner_up"]) if win["runner_up"] else None,
        "margin": win["margin"], "reason": win["reason"] + (f" [{flag}]" if flag else ""),
        "eager_variant": eager["plan"].variant if eager else None,
        "eager_config": json.dumps(eager["plan"].as_dict()) if eager else None,
        "eager_us": eager["median_us"] if eager else None, "eager_reason": eager["reason"] if eager else None,
    }])


def host_times(case: Case, plans: list[Plan]) -> dict[Plan, float]:
    """Median host microseconds of one eager call of each plan (replayed launches, as serving)."""
    return {p: host_us_per_call(_callable(case, p), calls=HOST_CALLS, burst=50)[0] for p in plans}


def _row(sweep_id: str, key: str, stage: str, plan: Plan, status: str, error: str | None) -> dict:
    return {"sweep_id": sweep_id, "workload": key, "stage": stage, "plan": str(plan), "variant": plan.variant,
            "config": json.dumps(plan.as_dict(), sort_keys=True), "status": status, "error": error}
