"""Lanes: attention's batch split over threads, each calling single-threaded BLAS.

Attention multiplies one small matrix pair per (batch row, head): in `baby` that is 48
products of 64 x 64 x 256 per layer and pass. OpenBLAS cannot split products that small over
its threads usefully (measured on 2 cores: 46-49 GFLOP/s on one thread or two, where the
linear layers' big products reach ~150), so the second core idles. Here the batch is split
instead: lane i runs the whole attention on batch rows [b_i, b_i+1) with one BLAS thread, all
lanes at once. Batch rows are independent, so each lane computes exactly what the one call
would have; only BLAS's summation order can differ (float32 rounding).

OpenBLAS's worker threads busy-wait for ~0.1 s after every threaded call, which would take a
core from the lanes. So before the lanes run the workers are stopped with
blas_thread_shutdown_, the routine OpenBLAS itself runs before a fork; the next threaded call
starts them again (~30 us, measured). Where that routine is missing (another BLAS, or
OpenBLAS built with OpenMP) there is one lane, and attention runs as one call, as before.
Set VINTAGELM_LANES=1 to turn lanes off (e.g. when other threads of a program use BLAS at
the same time as a training step: the workers must not be stopped under them).
"""
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple

import numpy as np

from vintagelm.nn import attention

_lock = threading.Lock()
_state = {}  # "blas": the OpenBLAS controller, or None; "pool": the lanes' worker threads


class _OpenBLAS:
    """The thread controls lanes need from OpenBLAS (pthreads build), via threadpoolctl."""

    def __init__(self, controller, shutdown):
        self.controller, self.shutdown = controller, shutdown

    def threads(self):
        return self.controller.get_num_threads()

    def set_threads(self, n):
        self.controller.set_num_threads(n)


def _openblas():
    """NumPy's OpenBLAS, when its idle workers can be stopped; else None. Looked up once."""
    with _lock:
        if "blas" not in _state:
            _state["blas"] = None
            try:
                import threadpoolctl

                for c in threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers:
                    if c.internal_api == "openblas" and c.threading_layer == "pthreads":
                        shutdown = ctypes.CDLL(c.filepath).blas_thread_shutdown_
                        shutdown.restype = ctypes.c_int
                        _state["blas"] = _OpenBLAS(c, shutdown)
                        break
            except (ImportError, OSError, AttributeError):  # no threadpoolctl / library / symbol
                pass
        return _state["blas"]


def lane_count():
    """How many lanes attention uses now: NumPy's BLAS thread count (the user's --threads),
    or 1 when lanes are off or unavailable."""
    if os.environ.get("VINTAGELM_LANES", "") == "1":
        return 1
    blas = _openblas()
    return blas.threads() if blas is not None else 1


def _pool(workers):
    """The lanes' worker threads (at least `workers` of them), kept for the next call."""
    with _lock:
        pool, size = _state.get("pool", (None, 0))
        if size < workers:
            if pool is not None:
                pool.shutdown(wait=True)
            pool, size = ThreadPoolExecutor(workers, thread_name_prefix="vintagelm-lane"), workers
            _state["pool"] = (pool, size)
        return pool


def run_lanes(tasks):
    """Run the callables `tasks` at the same time, the first on this thread, with BLAS on one
    thread each and OpenBLAS's idle workers stopped -> their results, in order. Every task
    has finished when this returns or raises (the first error is raised), and BLAS's thread
    count is back to what it was."""
    blas = _openblas()
    threads = blas.threads()
    blas.set_threads(1)
    blas.shutdown()  # the workers stop spinning; the next threaded BLAS call restarts them
    try:
        futures = [_pool(len(tasks) - 1).submit(task) for task in tasks[1:]]
        try:
            first = tasks[0]()
        finally:
            wait(futures)
        return [first] + [f.result() for f in futures]
    finally:
        blas.set_threads(threads)


def batch_slices(B, n):
    """Split batch rows 0..B-1 into n contiguous, near-equal slices."""
    bounds = np.linspace(0, B, n + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


class LanesCache(NamedTuple):
    slices: list  # the batch rows of each lane
    caches: list  # the AttentionCache of each lane


def attention_forward(qkv, n_head, dropout_p=0.0, rng=None, chunk=None, softmax=attention.causal_softmax):
    """attention.attention_forward (same arguments, qkv (B, T, 3C) -> y (B, T, C)), its batch
    split over lane_count() lanes. With dropout, each lane draws its masks from its own
    generator, seeded from `rng` (so a seed still fixes every mask)."""
    B = qkv.shape[0]
    n = min(lane_count(), B)
    if n <= 1:
        return attention.attention_forward(qkv, n_head, dropout_p, rng, chunk, softmax)
    slices = batch_slices(B, n)
    if dropout_p > 0.0 and rng is not None:
        rngs = [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, size=n)]
    else:
        rngs = [rng] * n
    results = run_lanes(
        [lambda s=s, r=r: attention.attention_forward(qkv[s], n_head, dropout_p, r, chunk, softmax)
         for s, r in zip(slices, rngs)]
    )
    y = np.concatenate([y for y, _ in results])  # (B, T, C)
    return y, LanesCache(slices, [cache for _, cache in results])


def attention_backward(dy, cache, softmax_grad=attention.softmax_backward):
    """attention.attention_backward for a cache from either forward: dy (B, T, C) -> dqkv (B, T, 3C)."""
    if not isinstance(cache, LanesCache):
        return attention.attention_backward(dy, cache, softmax_grad)
    results = run_lanes(
        [lambda s=s, c=c: attention.attention_backward(dy[s], c, softmax_grad) for s, c in zip(cache.slices, cache.caches)]
    )
    return np.concatenate(results)  # (B, T, 3C)
