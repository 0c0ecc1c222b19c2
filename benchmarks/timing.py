"""Timing helper shared by the benchmark scripts (run from the repository root or benchmarks/)."""

from __future__ import annotations

import statistics
import time


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired_ratio(fn, baseline, repeats: int) -> tuple[float, float, float]:
    """(median seconds of fn, median seconds of baseline, median of the per-repeat speed-ups
    baseline_time / fn_time). Each repeat times the two back to back, alternating which goes
    first, so a slow phase of a shared machine hits both sides of a ratio alike."""
    fn()
    baseline()
    fn_times, base_times, ratios = [], [], []
    for i in range(repeats):
        order = (fn, baseline) if i % 2 == 0 else (baseline, fn)
        seconds = {}
        for f in order:
            t0 = time.perf_counter()
            f()
            seconds[id(f)] = time.perf_counter() - t0
        fn_times.append(seconds[id(fn)])
        base_times.append(seconds[id(baseline)])
        ratios.append(seconds[id(baseline)] / seconds[id(fn)])
    return statistics.median(fn_times), statistics.median(base_times), statistics.median(ratios)
