"""Dispatcher lookup cost on the CPU: p50 / p99 over a realistic mix of decode workloads.

Each call is timed alone with ``perf_counter_ns`` (the cost of the timer itself, measured the same
way around an empty call, is subtracted), and batches of 1,000 calls give the mean without timer
noise.  Targets: p50 <= 0.3 us, p99 < 1 us.  Runs anywhere (no GPU work):

    python benchmarks/bench_lookup.py [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, save_results

from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.dispatcher import Dispatcher
from dsv4_tune.registry.workload import Workload


def workload_mix(n: int, seed: int = 0) -> list[Workload]:
    """DSV4 decode calls: h_q 64/128, SWA-only / C128 / C4 layers (one class the policy lacks), T 1..512."""
    rng = random.Random(seed)
    extras = (0, 0, 64, 256, 512, 1024, 896)
    return [Workload(rng.choice((1, 2, 4, 8, 16, 32, 64, 100, 128, 256, 300, 512)), rng.choice((64, 128)), 128,
                     rng.choice(extras)) for _ in range(n)]


def percentiles(ns: list[float]) -> dict[str, float]:
    ns = sorted(ns)
    return {"p50_us": ns[len(ns) // 2] / 1e3, "p99_us": ns[int(len(ns) * 0.99)] / 1e3, "max_us": ns[-1] / 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--calls", type=int, default=200_000)
    args = ap.parse_args()
    d = Dispatcher.from_file(BASELINE_FILE)
    mix = workload_mix(args.calls)
    for w in mix[:1000]:  # resolve nearest classes and warm caches, as a serving process would
        d.lookup(w)
    clock = time.perf_counter_ns
    lookup = d.lookup
    empty, single = [], []
    for w in mix:
        t0 = clock()
        t1 = clock()
        lookup(w)
        t2 = clock()
        empty.append(t1 - t0)
        single.append(t2 - t1)
    timer = statistics.median(empty)
    single = [max(0.0, s - timer) for s in single]
    batch = []
    for i in range(0, len(mix) - 1000, 1000):
        part = mix[i : i + 1000]
        t0 = clock()
        for w in part:
            lookup(w)
        batch.append((clock() - t0) / 1000)
    rows = [
        {"measure": "single call (timer subtracted)", **percentiles(single)},
        {"measure": "mean of 1,000-call batches", **percentiles(batch)},
    ]
    title = f"Dispatcher.lookup, {len(mix)} calls, timer {timer:.0f} ns"
    print_table(rows, ["measure", "p50_us", "p99_us", "max_us"], title)
    payload = {"machine": platform.processor() or platform.machine(), "python": platform.python_version(),
               "policy": BASELINE_FILE.name, "calls": len(mix), "timer_ns": timer, "rows": rows,
               "command": "python " + " ".join(sys.argv),
               "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    save_results("bench_lookup-cpu", payload, args.out)


if __name__ == "__main__":
    main()
