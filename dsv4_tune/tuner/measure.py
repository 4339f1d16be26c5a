"""Timing as serving sees it: CUDA-graph replay on a cold L2, event-timed, medians and spread.

Decode runs from a captured graph on a cache that the rest of the layer has just evicted, so each
replay here follows a 256 MiB buffer being zeroed.  Shared by the tuner and the benchmark scripts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dsv4_tune.env import interpreting


def timing_available() -> bool:
    """Whether real GPU timings can be taken (a GPU and no interpreter)."""
    return torch.cuda.is_available() and not interpreting()


def _summary(times_ms: list[float], graph: bool) -> dict[str, Any]:
    us = np.asarray(times_ms, dtype=np.float64) * 1e3
    return {
        "median_us": float(np.median(us)),
        "p20_us": float(np.percentile(us, 20)),
        "p80_us": float(np.percentile(us, 80)),
        "reps": len(times_ms),
        "graph": graph,
    }


def _timed_replays(launch: Callable[[], object], flush_bytes: int, reps: int, clean: bool = False) -> list[float]:
    """Event-timed runs of ``launch``, each after an L2 flush (zeroing the buffer: L2 left dirty,
    as after the rest of a layer; ``clean``: reading it); one synchronize at the end."""
    flush = torch.empty(flush_bytes, dtype=torch.uint8, device="cuda") if flush_bytes else None
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for start, end in zip(starts, ends, strict=True):
        if flush is not None and clean:
            flush.max()
        elif flush is not None:
            flush.zero_()
        start.record()
        launch()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends, strict=True)]


def _warm_up(fns: list[Callable[[], object]], times: int) -> None:
    """Run each of ``fns`` ``times`` times on a side stream (PyTorch's recipe before a capture), then wait."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for fn in fns:
            for _ in range(times):
                fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()


def time_eager(
    fn: Callable[[], object], *, flush_bytes: int = 256 * 2**20, reps: int = 50, warmup: int = 5,
    clean_flush: bool = False,
) -> dict[str, Any]:
    """Time eager calls of ``fn`` like :func:`time_graph` (fallback, and for code that allocates)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    return _summary(_timed_replays(fn, flush_bytes, reps, clean_flush), graph=False)


def time_graph(
    fn: Callable[[], object], *, flush_bytes: int = 256 * 2**20, reps: int = 50, warmup: int = 5,
    clean_flush: bool = False,
) -> dict[str, Any]:
    """Median / p20 / p80 µs of ``fn`` replayed from a CUDA graph on a cold L2, as serving runs it.

    ``clean_flush`` evicts L2 by reading the flush buffer instead of zeroing it (no dirty lines
    for ``fn`` to write back: ``benchmarks/bench_l2_flush.py``).  Falls back to eager timing
    (``"graph": False``) when capture fails, so one odd launcher does not lose the whole row.
    """
    _warm_up([fn], warmup)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            fn()
    except Exception as exc:  # any capture failure means: time it eagerly
        print(f"warning: CUDA graph capture failed ({type(exc).__name__}: {exc}); timing eager calls")
        torch.cuda.synchronize()
        return time_eager(fn, flush_bytes=flush_bytes, reps=reps, warmup=1, clean_flush=clean_flush)
    torch.cuda.synchronize()
    result = _summary(_timed_replays(graph.replay, flush_bytes, reps, clean_flush), graph=True)
    del graph
    return result


def time_in_graph(
    fn: Callable[[], object], *, calls: int = 20, replays: int = 15, flush_bytes: int = 256 * 2**20,
    warmup: int = 5,
) -> dict[str, Any] | None:
    """Median / p20 / p80 µs that ``fn`` adds to a graph holding more work, as in a serving step.

    :func:`time_graph` replays a graph of one call, so each sample pays the graph's own launch
    (~2.6-3 µs on Hopper: ``bench_latency_floor``'s ``graph_launch_us``), which a serving step pays
    once for all its layers.  Here two graphs hold ``calls`` rounds each, one of (L2 flush, ``fn``)
    and one of the flushes alone, replayed in turn; a sample is one pair's difference over
    ``calls``: what ``fn`` adds between the kernels around it.  (Event nodes around each call in
    one graph would say more per call, but they cost what they measure: an empty kernel read 3.0 µs
    between two of them on an H200, 1.0 as one of 20 back to back.)  ``replays`` samples; ``None``
    when a graph cannot be captured (the caller keeps :func:`time_graph`'s number).
    """
    samples = in_graph_samples(fn, calls=calls, replays=replays, flush_bytes=flush_bytes, warmup=warmup)
    return None if samples is None else _summary([s / 1e3 for s in samples], graph=True)


def in_graph_samples(
    fn: Callable[[], object], *, calls: int = 20, replays: int = 15, flush_bytes: int = 256 * 2**20,
    warmup: int = 5,
) -> list[float] | None:
    """The µs samples of :func:`time_in_graph` (one a pair of replays), ``None`` without a graph."""
    _warm_up([fn], warmup)
    flush = torch.empty(flush_bytes, dtype=torch.uint8, device="cuda") if flush_bytes else None
    graphs = []
    try:
        for with_fn in (True, False):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                for _ in range(calls):
                    if flush is not None:
                        flush.zero_()
                    if with_fn:
                        fn()
            graphs.append(graph)
    except Exception as exc:  # no in-graph number, the rest of the run goes on
        print(f"warning: in-graph timing not captured ({type(exc).__name__}: {exc})")
        torch.cuda.synchronize()
        return None
    for graph in graphs:  # each graph's first replay uploads it
        graph.replay()
    torch.cuda.synchronize()
    events = [[torch.cuda.Event(enable_timing=True) for _ in range(4)] for _ in range(replays)]
    for ev in events:
        for i, graph in enumerate(graphs):
            ev[2 * i].record()
            graph.replay()
            ev[2 * i + 1].record()
    torch.cuda.synchronize()
    samples = [(ev[0].elapsed_time(ev[1]) - ev[2].elapsed_time(ev[3])) / calls * 1e3 for ev in events]
    del graphs
    return samples


def interleaved_times(
    fns: list[Callable[[], object]], *, rounds: int = 3, reps: int = 10, flush_bytes: int = 256 * 2**20, seed: int = 0
) -> list[list[float]]:
    """Per-replay microseconds of each of ``fns``, measured in ``rounds`` rounds with the candidates
    in a fresh random order each round, so that clock or thermal drift hits all of them alike.

    Each function is captured once in a CUDA graph (eagerly timed if capture fails) after a warm-up
    on a side stream; every replay follows an L2 flush.
    """
    _warm_up(fns, 1)
    runners: list[Callable[[], object]] = []
    graphs = []
    for fn in fns:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                fn()
            graphs.append(graph)
            runners.append(graph.replay)
        except Exception:  # capture failed: time it eagerly
            torch.cuda.synchronize()
            runners.append(fn)
    samples = _in_rounds(len(fns), rounds, seed,
                         lambda i: [t * 1e3 for t in _timed_replays(runners[i], flush_bytes, reps)])
    del graphs
    return samples


def interleaved_in_graph(
    fns: list[Callable[[], object]], *, rounds: int = 3, replays: int = 10, seed: int = 0
) -> list[list[float]]:
    """What each of ``fns`` adds to a graph holding more work (:func:`in_graph_samples`), measured
    in ``rounds`` rounds in a fresh random order each, as :func:`interleaved_times` does for
    single-call replays; a function whose graph cannot be captured gets no samples."""
    return _in_rounds(len(fns), rounds, seed, lambda i: in_graph_samples(fns[i], replays=replays, warmup=1) or [])


def _in_rounds(n: int, rounds: int, seed: int, sample: Callable[[int], list[float]]) -> list[list[float]]:
    """``sample(i)`` for i < ``n`` in ``rounds`` rounds, a fresh random order each, gathered per i."""
    import random

    samples: list[list[float]] = [[] for _ in range(n)]
    order = list(range(n))
    rng = random.Random(seed)
    for _ in range(rounds):
        rng.shuffle(order)
        for i in order:
            samples[i].extend(sample(i))
    return samples


def host_us_per_call(fn: Callable[[], object], calls: int = 2000, burst: int = 100) -> tuple[float, float]:
    """(median, min) host time per call of ``fn`` over bursts of ``burst`` calls, each burst started
    on an idle GPU and timed without waiting for it: a burst enqueues far fewer kernels than the
    launch queue holds, so the host never waits and the time is the host's alone."""
    for _ in range(min(20, calls)):
        fn()
    samples = []
    for _ in range(max(1, calls // burst)):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(burst):
            fn()
        samples.append((time.perf_counter() - t0) / burst * 1e6)
    torch.cuda.synchronize()
    samples.sort()
    return round(samples[len(samples) // 2], 2), round(samples[0], 2)


def summarize(samples_us: list[float]) -> dict[str, float]:
    us = np.asarray(samples_us, dtype=np.float64)
    return {"median_us": float(np.median(us)), "p20_us": float(np.percentile(us, 20)),
            "p80_us": float(np.percentile(us, 80)), "samples": len(samples_us)}


def gpu_state() -> dict[str, Any] | None:
    """SM clock, its maximum, temperature and other processes on GPU 0 through NVML (None where
    NVML is missing); the sweep flags timings taken while throttled or shared."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h)
        return {
            "sm_clock": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
            "sm_clock_max": pynvml.nvmlDeviceGetMaxClockInfo(h, pynvml.NVML_CLOCK_SM),
            "temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
            "other_processes": sum(1 for p in procs if p.pid != os.getpid()),
        }
    except Exception:  # NVML present but not usable here (containers): no hygiene data
        return None


def hygiene_flag(state: dict[str, Any] | None) -> str | None:
    """Why timings taken in ``state`` are suspect (throttled clock, other processes), or None."""
    if not state:
        return None
    reasons = []
    if state["sm_clock"] < 0.85 * state["sm_clock_max"]:
        reasons.append(f"SM clock {state['sm_clock']} of {state['sm_clock_max']} MHz")
    if state["other_processes"]:
        reasons.append(f"{state['other_processes']} other processes on the GPU")
    return "; ".join(reasons) or None
