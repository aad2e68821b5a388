"""Timing shared by the benchmarks (run as scripts: `python benchmarks/bench_x.py` puts this folder on the path)."""
from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable

# LMKIT_BENCH_CLOCK=cpu times by the process's CPU time instead of the wall clock: on a machine shared
# with other work, a contender preempted mid-run is then not charged for the time it waited. It is the
# right measure only with one thread per contender (--threads 1): with more, threads that spin while
# waiting for each other are charged too.
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}[os.environ.get("LMKIT_BENCH_CLOCK", "wall")]


def warn_if_busy() -> None:
    """Say on stderr, before anything is timed, when other processes keep the machine busy (lmkit.benchmark's
    load-average check): their work slows every contender, unevenly, whatever the turns."""
    from lmkit.benchmark import busy_machine

    busy = busy_machine()
    if busy is not None:
        print(f"warning: {busy}", file=sys.stderr, flush=True)


def session_options(threads: int):
    """onnxruntime SessionOptions with `threads` intra-op threads and one inter-op thread, otherwise its defaults
    (its idle threads spin, as in serving; interleaved() pauses between turns so they do not slow the next)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return options


PAUSE_S = 0.1  # after each turn, for the idle threads of the one timed to stop spinning (lmkit.benchmark.PAUSE_S)


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
            start = CLOCK()
            function()
            times[name].append(CLOCK() - start)
            time.sleep(PAUSE_S)
    return {name: statistics.median(values) for name, values in times.items()}


def bandwidth_bytes_per_s(megabytes: int = 1024, repeats: int = 5) -> float:
    """Memory read bandwidth in bytes per second: the median time of a sum over `megabytes` of float32.

    The tensor is larger than the last-level cache (300 MB on the 2-core machines these notes measure on, shared
    with the host), so the sum streams from memory, as a decoding step's weights do. The floor of a step
    that reads W bytes of weights is W over this.
    """
    import torch

    big = torch.ones(megabytes * 2**20 // 4)
    big.sum()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        big.sum()
        seconds.append(time.perf_counter() - start)
    return big.numel() * 4 / statistics.median(seconds)


def record(benchmark: str, measure: str, ratio: float, against: str = "transformers", **figures) -> None:
    """Add one ratio (above 1: lmkit is faster) to the file run_all.py gathers its summary table from.

    The file is $LMKIT_BENCH_RECORD, one JSON object per line; without it (a benchmark run on its
    own) nothing is written and the benchmark's printed table is the record.
    """
    path = os.environ.get("LMKIT_BENCH_RECORD")
    if not path:
        return
    with open(path, "a") as handle:
        handle.write(json.dumps({"benchmark": benchmark, "measure": measure, "against": against,
                                 "ratio": round(float(ratio), 3), **figures}) + "\n")
