"""The benchmarks' one timer: median wall time of callables, timed alternately."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def median_seconds(*fns: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Median seconds per call of each fn, after `warmup` untimed calls of each.

    With several fns the calls alternate (a, b, a, b, ...), so drift in the machine's speed (other
    load, clocks) hits each alike: use it for a figure and the baseline it is compared with.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
