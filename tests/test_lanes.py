"""The fast backend's attention, its batch split over lanes (fast/lanes.py), against the
reference attention it must equal (nn/attention.py), finite differences with dropout, and the
BLAS thread bookkeeping around the lanes."""
import gc
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import threadpoolctl

from vintagelm import GPT, GPTConfig
from vintagelm.gradcheck import numerical_gradient, relative_error
from vintagelm.fast import attention as fast_attention
from vintagelm.fast import kernels, lanes
from vintagelm.nn import attention


@pytest.fixture
def blas_threads():
    """Run a test with NumPy's BLAS on n threads (so n lanes); restored afterwards."""
    limits = []

    def use(n):
        limits.append(threadpoolctl.threadpool_limits(n, user_api="blas"))
        assert lanes.lane_count() == n
        return n

    yield use
    for limit in reversed(limits):
        limit.restore_original_limits()


@pytest.mark.parametrize("B,threads,chunk", [(2, 2, None), (3, 2, 4), (5, 3, None), (4, 2, 3)])
def test_lanes_equal_one_call(blas_threads, B, threads, chunk):
    blas_threads(threads)
    rng = np.random.default_rng(B * 10 + threads)
    T, C, H = 9, 12, 3
    qkv, dy = rng.standard_normal((B, T, 3 * C)), rng.standard_normal((B, T, C))
    y, cache = fast_attention.attention_forward(qkv, H, chunk=chunk)
    assert isinstance(cache, fast_attention.LanesCache) and len(cache.slices) == threads
    y_ref, cache_ref = attention.attention_forward(qkv, H, chunk=chunk)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(
        fast_attention.attention_backward(dy, cache), attention.attention_backward(dy, cache_ref), rtol=1e-12, atol=1e-14
    )


def test_lanes_with_the_compiled_softmax_in_float32(blas_threads):
    blas_threads(2)
    rng = np.random.default_rng(7)
    B, T, C, H = 4, 64, 96, 3
    qkv = rng.standard_normal((B, T, 3 * C), dtype=np.float32)
    dy = rng.standard_normal((B, T, C), dtype=np.float32)
    y, cache = fast_attention.attention_forward(qkv, H, 0.0, None, 16, kernels=kernels)
    y_ref, cache_ref = attention.attention_forward(qkv, H, 0.0, None, 16)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    dqkv = fast_attention.attention_backward(dy, cache, kernels=kernels)
    np.testing.assert_allclose(dqkv, attention.attention_backward(dy, cache_ref), rtol=1e-4, atol=1e-5)


def test_one_lane_when_the_batch_is_one_row_or_lanes_are_off(blas_threads, monkeypatch):
    blas_threads(2)
    qkv = np.random.default_rng(0).standard_normal((1, 4, 12))
    _, cache = fast_attention.attention_forward(qkv, 2)
    assert len(cache.slices) == 1
    monkeypatch.setenv("VINTAGELM_LANES", "1")
    assert lanes.lane_count() == 1
    _, cache = fast_attention.attention_forward(np.concatenate([qkv, qkv]), 2)
    assert len(cache.slices) == 1


def test_dropout_in_lanes_is_seeded_and_differentiable(blas_threads):
    blas_threads(2)
    rng = np.random.default_rng(3)
    B, T, C, H = 4, 6, 8, 2
    qkv, dy = rng.standard_normal((B, T, 3 * C)), rng.standard_normal((B, T, C))

    def f(v):
        return fast_attention.attention_forward(v, H, 0.4, np.random.default_rng(5))[0]

    y, cache = fast_attention.attention_forward(qkv, H, 0.4, np.random.default_rng(5))
    np.testing.assert_array_equal(y, f(qkv))  # the same seed, the same masks
    masks = [c.drop[0].mask for c in cache.caches]
    assert all(m is not None for m in masks) and not np.array_equal(masks[0], masks[1])
    assert relative_error(fast_attention.attention_backward(dy, cache), numerical_gradient(f, qkv, dy)) < 1e-6


def test_run_lanes_runs_at_once_on_one_blas_thread_each_and_restores_the_count(blas_threads):
    blas_threads(2)
    barrier = threading.Barrier(2, timeout=10)  # only passes if both tasks run at the same time

    def task():
        barrier.wait()
        return threading.get_ident(), lanes._openblas().threads()

    (t0, n0), (t1, n1) = lanes.run_lanes([task, task])
    assert t0 == threading.get_ident() and t1 != t0
    assert n0 == n1 == 1
    assert lanes._openblas().threads() == 2


def test_lanes_count_and_set_numpys_blas_when_another_openblas_is_loaded(monkeypatch):
    """SciPy's wheels load an OpenBLAS of their own beside NumPy's, with its own thread count.
    The lanes must follow NumPy's (the one its matmul calls): once, the first OpenBLAS found
    was taken, which was SciPy's in some processes, and the benchmark reported 2 lanes after
    setting NumPy's BLAS to 1 thread."""
    pytest.importorskip("scipy.linalg")  # loads SciPy's OpenBLAS
    blas = threadpoolctl.ThreadpoolController().select(internal_api="openblas")
    ours = [c.filepath for c in blas.lib_controllers if Path(c.filepath).parent.name == "numpy.libs"]
    others = [c.filepath for c in blas.lib_controllers if c.filepath not in ours]
    if len(ours) != 1 or not others:
        pytest.skip("needs NumPy's wheel OpenBLAS (numpy.libs/) and another one loaded beside it")
    monkeypatch.delenv("VINTAGELM_LANES", raising=False)
    lanes._openblas.cache_clear()  # looked up afresh, now that both are loaded
    for numpy_threads, other_threads in ((1, 2), (2, 1)):
        with blas.select(filepath=ours[0]).limit(limits=numpy_threads), \
                blas.select(filepath=others[0]).limit(limits=other_threads):
            assert lanes.lane_count() == numpy_threads
            assert lanes.run_lanes([lambda: lanes._openblas().threads()] * 2) == [1, 1]
            assert [c.num_threads for c in threadpoolctl.ThreadpoolController().select(filepath=ours[0]).lib_controllers] \
                == [numpy_threads]


def test_a_blas_worker_keeps_its_python_thread_state_between_lane_calls(blas_threads):
    # the worker's thread state is made once (lanes._lane); were it made per call, the
    # thread-local value set in the first call would be gone in the second
    blas_threads(2)
    seen = threading.local()

    def remember():
        first = getattr(seen, "value", None)
        seen.value = "set in an earlier call"
        return first

    calls = [lanes.run_lanes([lambda: None, remember])[1] for _ in range(3)]
    assert calls[1:] == ["set in an earlier call"] * 2


def test_an_error_in_a_lane_is_raised_after_every_lane_finished(blas_threads):
    blas_threads(2)
    finished = []

    def slow():
        threading.Event().wait(0.2)
        finished.append(True)

    def fail():
        raise ValueError("lane failed")

    with pytest.raises(ValueError, match="lane failed"):
        lanes.run_lanes([fail, slow])
    assert finished == [True]
    assert lanes._openblas().threads() == 2


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-11), (np.float32, 2e-5)])
def test_model_with_lanes_equals_model_without(blas_threads, monkeypatch, dtype, tol):
    blas_threads(2)
    cfg = GPTConfig(vocab_size=17, block_size=16, n_layer=2, n_head=2, n_embd=16, attention="blocked")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 17, (4, 16)), rng.integers(0, 17, (4, 16))
    results = []
    for lanes_env in ("", "1"):
        monkeypatch.setenv("VINTAGELM_LANES", lanes_env)
        model = GPT(cfg, seed=2, dtype=dtype, backend="fast")
        _, loss = model.forward(x, y)
        model.backward()
        results.append((loss, model.flat_grads.copy()))
    (loss_lanes, g_lanes), (loss_one, g_one) = results
    assert abs(loss_lanes - loss_one) <= tol * abs(loss_one)
    assert np.abs(g_lanes - g_one).max() <= tol * np.abs(g_one).max()


def test_lanes_from_a_second_thread_meanwhile_run_one_by_one_on_that_thread(blas_threads):
    blas_threads(2)
    started, release = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    holder = threading.Thread(target=lanes.run_lanes, args=([hold, lambda: None],))
    holder.start()
    try:
        assert started.wait(10)
        here = lanes.run_lanes([threading.get_ident, threading.get_ident])
        assert here == [threading.get_ident()] * 2
    finally:
        release.set()
        holder.join(10)
    assert lanes._openblas().threads() == 2


def test_lanes_leave_no_reference_cycle_behind(blas_threads):
    """Arrays a lane worked on are freed as soon as the caller drops them, not at the next
    garbage collection (a cycle through the ctypes callback once kept a whole step's arrays)."""
    blas_threads(2)
    gc.disable()
    try:

        def row_sums(a):  # the lanes' tasks hold `a` through this call's closure
            return lanes.over_rows(lambda rows: float(a[rows].sum()), len(a), a.size)

        x = np.ones((4, 1 << 15), dtype=np.float32)
        freed = weakref.ref(x)
        assert row_sums(x) == [2.0 * (1 << 15)] * 2
        del x
        assert freed() is None
    finally:
        gc.enable()


def test_elementwise_kernels_split_over_lanes_equal_one_lane(blas_threads, monkeypatch):
    """GELU and layer norm on rows split over 2 lanes: the rows are computed alike (equal), and
    layer norm's weight and bias gradients, summed per lane then added, agree within rounding."""
    blas_threads(2)
    calls = []
    real_run = lanes.run_lanes
    monkeypatch.setattr(lanes, "run_lanes", lambda tasks: calls.append(len(tasks)) or real_run(tasks))
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((4, 256, 96), dtype=np.float32), rng.standard_normal((4, 256, 96), dtype=np.float32)
    w, b = rng.standard_normal(96, dtype=np.float32), rng.standard_normal(96, dtype=np.float32)

    def everything():
        y_ln, c_ln = kernels.layernorm_forward(x, w, b)
        dw, db = np.zeros_like(w), np.zeros_like(b)
        dx_ln = kernels.layernorm_backward(dy, c_ln, dw, db)
        y_gelu, c_gelu = kernels.gelu_forward(x)
        return y_ln, dx_ln, dw, db, y_gelu, kernels.gelu_backward(dy, c_gelu)

    monkeypatch.setattr(lanes, "MIN_ELEMENTS_TO_SPLIT", 1)
    split = everything()
    assert calls == [2] * 4  # layer norm forward, backward, GELU forward, backward: two lanes each
    monkeypatch.setenv("VINTAGELM_LANES", "1")
    one = everything()
    for name, got, ref in zip(["ln y", "ln dx", "ln dw", "ln db", "gelu y", "gelu dx"], split, one):
        if name in ("ln dw", "ln db"):
            np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got, ref, err_msg=name)
