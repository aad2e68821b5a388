"""Timing shared by the benchmarks (run as scripts: `python benchmarks/bench_x.py` puts this folder on the path)."""
from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable


def interleaved(functions: dict[str, Callable[[], object]], repeats: int, *, shuffle: bool = False) -> dict[str, float]:
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...) after one warm-up each,
    so that a change in the machine's load while the benchmark runs hits all of them alike.

    shuffle: a new (seeded) order every round, so no contender always runs right after the same one
    (whose threads may still be winding down).
    """
    for function in functions.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    order = list(functions.items())
    for round_ in range(repeats):
        if shuffle:
            random.Random(round_).shuffle(order)
        for name, function in order:
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}
