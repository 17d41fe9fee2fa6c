"""Lanes: big loops split over the BLAS threads, for the work that BLAS cannot split itself.

Attention multiplies one small matrix pair per (batch row, head): in `baby` that is 48
products of 64 x 64 x 256 per layer and pass. OpenBLAS cannot split products that small over
its threads usefully (measured on 2 cores: 46-49 GFLOP/s on one thread or two, where the
linear layers' big products reach ~150), and the elementwise kernels (kernels.py) run on one
thread, so the second core idles. Here the work is split instead: lane i runs the whole
attention on batch rows [b_i, b_i+1) with one BLAS thread (or an elementwise kernel on its
share of the rows), all lanes at once. Rows are independent, so each lane computes exactly
what the one call would have; only BLAS's summation order can differ (float32 rounding).

The lanes ARE OpenBLAS's threads: gotoblas_pthread, a routine OpenBLAS exports for running a
function on its thread pool, runs lane 0 on this thread and the others on OpenBLAS's workers.
Those workers busy-wait for ~0.1 s after each matrix product, so they start at once, and no
second pool of threads competes with them for the cores (a Python thread pool did: the
spinning OpenBLAS worker took its core). Where the routine is missing (another BLAS, or
OpenBLAS built with OpenMP) there is one lane and everything runs as one call, as before.
Set VINTAGELM_LANES=1 to turn lanes off (an escape hatch; backend="reference" never uses them).
"""
import ctypes
import functools
import importlib
import os
import threading

_LANE_FUNCTION = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void f(void *arg)


PTHREADS = 1  # what openblas_get_parallel returns for OpenBLAS built with its own pthreads pool


class _OpenBLAS:
    """The controls lanes need from NumPy's OpenBLAS (pthreads build), called directly: a lane
    call sets the thread count twice, and threadpoolctl's setter costs ~18 us a call.

    `lib` resolves symbols as NumPy's matmul does (see _numpy_blas): another OpenBLAS in the
    process (SciPy's wheels bring their own) has the same symbols, and controlling that one
    instead would leave NumPy's thread count where it was."""

    def __init__(self, lib):
        # NumPy's wheels rename OpenBLAS's symbols (scipy_openblas_get_num_threads64_)
        names = [f"{prefix}openblas_{{}}{suffix}" for prefix in ("", "scipy_") for suffix in ("", "64_", "_64")]
        affixed = next(name for name in names if hasattr(lib, name.format("get_num_threads")))
        self.threads = getattr(lib, affixed.format("get_num_threads"))
        self.threads.argtypes, self.threads.restype = [], ctypes.c_int
        self.set_threads = getattr(lib, affixed.format("set_num_threads"))
        self.set_threads.argtypes, self.set_threads.restype = [ctypes.c_int], None
        self.parallel = getattr(lib, affixed.format("get_parallel"))  # 0 sequential, 1 pthreads, 2 OpenMP
        self.parallel.argtypes, self.parallel.restype = [], ctypes.c_int
        # int gotoblas_pthread(int n, void *function, void *args, int stride): calls
        # function(args + i * stride) for i < n, i = 0 on the calling thread, and returns
        # when all n calls have returned
        self.pthread = lib.gotoblas_pthread
        # (the function typed as such, not cast to void *: ctypes.cast ties the callback and
        # the pointer into a reference cycle that kept each call's arrays alive until the
        # garbage collector ran, +300 MB peak memory in `baby`)
        self.pthread.argtypes = [ctypes.c_int, _LANE_FUNCTION, ctypes.c_void_p, ctypes.c_int]
        self.pthread.restype = ctypes.c_int


def _numpy_blas():
    """A handle on NumPy's compiled core, through which a symbol resolves to the library that
    NumPy's matmul calls: dlsym on a handle searches that object's own dependencies, whatever
    else the process has loaded (os.RTLD_NOLOAD: the module is loaded already; nothing loads)."""
    for name in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):  # NumPy 2, NumPy 1
        try:
            core = importlib.import_module(name)
        except ImportError:
            continue
        return ctypes.CDLL(core.__file__, mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    raise OSError("NumPy's compiled core was not found")


@functools.cache
def _openblas():
    """NumPy's OpenBLAS, when it can run our lanes on its threads; else None. Looked up once."""
    try:
        blas = _OpenBLAS(_numpy_blas())
    except (OSError, AttributeError, StopIteration):  # another BLAS, or no such symbol
        return None
    return blas if blas.parallel() == PTHREADS else None


def lane_count():
    """How many lanes there are now: NumPy's BLAS thread count (the user's --threads), or 1
    when lanes are off or unavailable."""
    if os.environ.get("VINTAGELM_LANES", "") == "1":
        return 1
    blas = _openblas()
    return blas.threads() if blas is not None else 1


_inside = threading.local()  # .active: this thread is running a lane's task
_running = threading.Lock()  # held while lanes run: one set at a time per process
_batch = {}  # while _running is held: "tasks", and per lane its "results" and "errors"


def run_lanes(tasks):
    """Run the callables `tasks` at the same time, the first on this thread, the others on
    OpenBLAS's threads, with BLAS on one thread inside each -> their results, in order.
    Every task has finished when this returns or raises (the first error is raised), and
    BLAS's thread count is back to what it was. Inside a lane, or while another thread of
    the program runs lanes (they share OpenBLAS's threads and its thread count), the tasks
    run one by one on this thread."""
    if len(tasks) == 1 or getattr(_inside, "active", False) or not _running.acquire(blocking=False):
        return [task() for task in tasks]
    try:
        return _run_on_blas_threads(tasks)
    finally:
        _batch.clear()  # the tasks' arrays are not kept alive until the next call
        _running.release()


def _run_on_blas_threads(tasks):
    _batch.update(tasks=tasks, results=[None] * len(tasks), errors=[None] * len(tasks))
    blas = _openblas()
    threads = blas.threads()
    blas.set_threads(1)  # BLAS called inside a lane stays on that lane's thread
    try:
        blas.pthread(len(tasks), _lane_function, None, 1)
    finally:
        blas.set_threads(threads)
    for e in _batch["errors"]:
        if e is not None:
            raise e
    return _batch["results"]


_gil_state_ensure = ctypes.pythonapi.PyGILState_Ensure
_gil_state_ensure.argtypes, _gil_state_ensure.restype = [], ctypes.c_int


def _lane(index):
    """The task of lane `index` (gotoblas_pthread's `args + i * stride`, with args 0 and
    stride 1; ctypes passes 0 as None), run on the thread OpenBLAS gives that lane."""
    i = index or 0
    if i > 0 and not getattr(_inside, "kept", False):
        # An OpenBLAS worker is a thread Python did not start: ctypes makes it a Python thread
        # state on entry and deletes it on return, ~40 us a call. One extra PyGILState_Ensure,
        # never released, keeps the count above zero, so the state is made once per worker.
        _gil_state_ensure()
        _inside.kept = True
    _inside.active = True
    try:
        _batch["results"][i] = _batch["tasks"][i]()
    except BaseException as e:  # noqa: B036 (re-raised by _run_on_blas_threads, on the caller's thread)
        _batch["errors"][i] = e
    finally:
        _inside.active = False


_lane_function = _LANE_FUNCTION(_lane)  # made once: a ctypes callback costs ~19 us to make


# Below this many elements an elementwise op stays on one lane: a second costs 10-30 us to
# start, as much as layer norm takes for ~50,000 elements (measured: tiny's (768, 128) layer
# norm, 98,304 elements, 76 us forward on one lane, 96 on two; its GELU, 393,216, 286 on one,
# 224 on two). Decoding one token with the KV cache is all small ops.
MIN_ELEMENTS_TO_SPLIT = 1 << 17


def over_rows(fn, n_rows, n_elements):
    """fn(rows) for slices `rows` that split 0..n_rows-1 over the lanes (one slice, all rows,
    when n_elements is small) -> the list of fn's results, one per slice."""
    n = min(lane_count(), n_rows) if n_elements >= MIN_ELEMENTS_TO_SPLIT else 1
    return run_lanes([lambda rows=rows: fn(rows) for rows in row_slices(n_rows, n)])


def row_slices(B, n):
    """Split rows 0..B-1 into n contiguous slices whose sizes differ by at most one."""
    return [slice(B * i // n, B * (i + 1) // n) for i in range(n)]
