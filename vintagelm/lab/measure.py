"""What the lab's experiments measure with: wall time, peak memory, power-law fits, the
entropy of a text's token frequencies, a line describing the machine, and a progress bar.

PLATEAU_MARGIN and LEARNED_MARGIN are the lab's one rule for a run that learned letter
frequencies and nothing more (gradients and lr-batch label their runs by it).
"""
import math
import time
import tracemalloc

import numpy as np

PLATEAU_MARGIN = 0.05  # nats either side of the unigram entropy: learned letter frequencies and no more
LEARNED_MARGIN = 0.25  # nats below it that the best run must reach before "plateau" means anything


def machine():
    """'AMD EPYC ..., 2 cores, OpenBLAS 0.3.31 (Haswell), 2 threads': what a timing depends on."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        info = next((i for i in threadpool_info() if i.get("user_api") == "blas"), None)
        if info:
            blas = f", {info.get('internal_api')} {info.get('version')} ({info.get('architecture')}), " \
                   f"{info.get('num_threads')} threads"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{blas}"


def median_seconds(fn, repeats=3):
    """The median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_bytes(fn):
    """The most memory NumPy (and Python) held above the starting point while fn() ran
    (tracemalloc sees NumPy's array buffers)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def power_fit(x, y):
    """Least squares of log y = a log x + b -> (a, e^b): y ~ c x^a."""
    a, b = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(a), float(math.exp(b))


def unigram_entropy(tokens, vocab_size):
    """Entropy in nats of the token frequencies: the loss of a model that ignores all context."""
    counts = np.bincount(tokens, minlength=vocab_size)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def bar(total, desc, progress=True, unit="step"):
    """A progress bar on a terminal (none in a log file, none when progress is False)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None if progress else True,
                dynamic_ncols=True)
