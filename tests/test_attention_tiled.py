"""Tiled (online-softmax) attention: equal to the naive form, right gradients, and memory
that grows linearly with the sequence length."""
import tracemalloc

import numpy as np
import pytest

from vintagelm.gradcheck import numerical_gradient, relative_error
from vintagelm.nn.attention import attention_backward, attention_forward
from vintagelm.nn.attention_tiled import tiled_attention_backward, tiled_attention_forward


@pytest.mark.parametrize("T,tile,H", [(1, 4, 1), (7, 3, 2), (16, 4, 2), (9, 9, 3), (130, 32, 2)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_tiled_equals_naive(T, tile, H, dtype, tol):
    rng = np.random.default_rng(T + tile)
    B, C = 2, 6 * H
    qkv = (rng.standard_normal((B, T, 3 * C)) * 2).astype(dtype)
    dy = rng.standard_normal((B, T, C)).astype(dtype)
    y, cache = attention_forward(qkv, H)
    yt, cache_t = tiled_attention_forward(qkv, H, tile=tile)
    assert yt.dtype == dtype
    np.testing.assert_allclose(yt, y, rtol=tol, atol=tol)
    np.testing.assert_allclose(tiled_attention_backward(dy, cache_t), attention_backward(dy, cache), rtol=tol, atol=tol)


def test_tiled_gradient_with_dropout_matches_finite_differences():
    rng = np.random.default_rng(0)
    qkv, dy = rng.standard_normal((2, 7, 24)), rng.standard_normal((2, 7, 8))

    def f(v):
        return tiled_attention_forward(v, 2, 0.3, np.random.default_rng(1), tile=3)[0]

    y, cache = tiled_attention_forward(qkv, 2, 0.3, np.random.default_rng(1), tile=3)
    assert cache.seed is not None
    assert not np.allclose(y, tiled_attention_forward(qkv, 2)[0])  # dropout did something
    assert relative_error(tiled_attention_backward(dy, cache), numerical_gradient(f, qkv, dy)) < 1e-6


def peak_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("T", [512])
def test_tiled_memory_grows_linearly(T):
    """Doubling T doubles the tiled peak (linear) but quadruples the naive one (quadratic)."""
    rng = np.random.default_rng(0)
    H, C = 2, 32

    def run(kind, T):
        qkv = rng.standard_normal((1, T, 3 * C)).astype(np.float32)
        dy = rng.standard_normal((1, T, C)).astype(np.float32)
        if kind == "tiled":
            return peak_bytes(lambda: tiled_attention_backward(dy, tiled_attention_forward(qkv, H, tile=64)[1]))
        return peak_bytes(lambda: attention_backward(dy, attention_forward(qkv, H)[1]))

    tiled_growth = run("tiled", 2 * T) / run("tiled", T)
    naive_growth = run("naive", 2 * T) / run("naive", T)
    assert tiled_growth < 2.5, tiled_growth
    assert naive_growth > 3.5, naive_growth
