"""The fast backend's compiled (numba) kernels equal the readable NumPy ops of nn/ within
float32 rounding."""
import numpy as np
import pytest

from vintagelm.fast import kernels  # needs numba: part of the [test] extra
from vintagelm.nn import activation, attention, norm
from vintagelm.optim import AdamW


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def close(a, b, tol):
    """max|a - b| <= tol * max|b|: float32 rounding relative to the tensor's scale."""
    assert np.abs(a - b).max() <= tol * np.abs(b).max(), np.abs(a - b).max() / np.abs(b).max()


def test_tanh32_accuracy():
    x = np.linspace(-12, 12, 200001, dtype=np.float32)
    y = np.empty_like(x)
    kernels._gelu_forward(x, y)  # exercises tanh32 through GELU
    exact = 0.5 * x.astype(np.float64) * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x.astype(np.float64) ** 3)))
    assert np.abs(y - exact).max() < 1e-5 * np.abs(exact).max()


@pytest.mark.parametrize("shape", [(1, 1, 7), (3, 5, 64), (2, 17, 200)])
def test_gelu(shape):
    rng = np.random.default_rng(0)
    x, dy = rand(rng, *shape, scale=3), rand(rng, *shape)
    y, c = kernels.gelu_forward(x)
    y_ref, c_ref = activation.gelu_forward(x)
    close(y, y_ref, 1e-6)
    close(kernels.gelu_backward(dy, c), activation.gelu_backward(dy, c_ref), 1e-5)


def test_gelu_with_the_bias_before_it():
    # the fast MLP hands c_fc's bias to the GELU kernel: u = x + b, kept for backward, y = gelu(u)
    rng = np.random.default_rng(1)
    x, b, dy = rand(rng, 2, 9, 48, scale=3), rand(rng, 48), rand(rng, 2, 9, 48)
    y_ref, c_ref = activation.gelu_forward(x + b)
    y, c = kernels.bias_gelu_forward(x.copy(), b)
    close(c.x, x + b, 1e-7)
    close(y, y_ref, 1e-6)
    close(kernels.gelu_backward(dy, c), activation.gelu_backward(dy, c_ref), 1e-5)


@pytest.mark.parametrize("Tq,Tk,offset", [(8, 8, 0), (4, 12, 8), (1, 30, 29), (5, 5, 0), (64, 256, 192)])
def test_causal_softmax_and_backward(Tq, Tk, offset):
    rng = np.random.default_rng(2)
    s = rand(rng, 2, 3, Tq, Tk, scale=4)
    p = kernels.causal_softmax(s.copy(), offset)
    p_ref = attention.causal_softmax(s.copy(), offset)
    close(p, p_ref, 1e-6)
    dp = rand(rng, 2, 3, Tq, Tk)
    close(kernels.softmax_backward(dp.copy(), p_ref), attention.softmax_backward(dp.copy(), p_ref), 1e-5)
    scaled = attention.softmax_backward(dp.copy(), p_ref, 0.125)
    close(scaled, 0.125 * attention.softmax_backward(dp.copy(), p_ref), 1e-7)
    close(kernels.softmax_backward(dp.copy(), p_ref, 0.125), scaled, 1e-5)


def test_row_max_finds_the_maximum_wherever_it_is():
    # softmax gives the same result for any subtracted constant (until exp overflows), so the
    # softmax tests above cannot see a wrong row max; check it against NumPy directly, for
    # lengths around the eight-way unrolling and the maximum at every position
    rng = np.random.default_rng(8)
    for n in (1, 2, 7, 8, 9, 15, 16, 17, 40):
        for at in range(n):
            row = rand(rng, n + 5)
            row[n:] = 100.0  # past n: never part of the maximum
            row[at] = 10.0
            assert kernels._row_max(row, n) == np.float32(10.0) == row[:n].max()


@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 7, 64), (2, 9, 384)])
@pytest.mark.parametrize("has_bias", [True, False])
def test_layernorm(shape, has_bias):
    rng = np.random.default_rng(5)
    x, dy = rand(rng, *shape, scale=3) + 2.0, rand(rng, *shape)
    w, b = rand(rng, shape[-1]) + 1.0, rand(rng, shape[-1]) if has_bias else None
    y, c = kernels.layernorm_forward(x, w, b)
    y_ref, c_ref = norm.layernorm_forward(x, w, b)
    close(y, y_ref, 1e-6)
    got, ref = layernorm_grads(kernels.layernorm_backward, dy, c, has_bias), layernorm_grads(
        norm.layernorm_backward, dy, c_ref, has_bias)
    for g, r in zip(got, ref):
        if r is None:
            assert g is None
        else:
            assert g.shape == r.shape and g.dtype == r.dtype
            close(g, r, 1e-5)


def layernorm_grads(backward, dy, cache, has_bias):
    """-> dx, dw, db (None without a bias); dw and db start at ones, so adding is checked too."""
    C = dy.shape[-1]
    dw, db = np.ones(C, np.float32), np.ones(C, np.float32) if has_bias else None
    dx = backward(dy, cache, dw, db)
    return dx, dw - 1, None if db is None else db - 1


def test_layernorm_rows_are_independent_of_the_batch():
    # the KV cache normalises one new position at a time; it must match the row in a batch exactly
    rng = np.random.default_rng(6)
    x, w, b = rand(rng, 4, 33, 96), rand(rng, 96), rand(rng, 96)
    y = kernels.layernorm_forward(x, w, b)[0]
    for i in (0, 17, 32):
        assert np.array_equal(kernels.layernorm_forward(x[1:2, i : i + 1], w, b)[0][0, 0], y[1, i])


def test_causal_softmax_exp_over_the_whole_float32_range():
    # scores spread over [-120, 0] after the max: exp's 2^n spans every normal exponent and
    # underflows to 0 where float32 does; compare with a float64 softmax
    rng = np.random.default_rng(7)
    s = np.sort(rng.uniform(-120, 0, (3, 1, 500)), axis=-1).astype(np.float32)
    s[..., -1] = 0.0
    p = kernels.causal_softmax(s.copy(), offset=499)
    e = np.exp(s.astype(np.float64))
    exact = e / e.sum(axis=-1, keepdims=True)
    assert np.abs(p - exact).max() <= 2e-7 * exact.max()
    tiny = exact > 1e-30  # where float32 holds the value with full precision
    assert np.all(np.abs(p[tiny] - exact[tiny]) <= 1e-5 * exact[tiny])


def test_fused_adamw_equals_numpy():
    rng = np.random.default_rng(4)
    params = {"w": rand(rng, 30, 20), "b": rand(rng, 20)}
    twins = {k: {n: p.copy() for n, p in params.items()} for k in ("reference", "fast")}
    opts = {k: AdamW(twins[k], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1, backend=k) for k in twins}
    assert opts["fast"].fused and not opts["reference"].fused
    for step in range(10):
        grads = {"w": rand(rng, 30, 20), "b": rand(rng, 20)}
        for k, opt in opts.items():
            opt.step(grads, lr=1e-2 * (step + 1) / 10)
    for n in params:
        close(twins["fast"][n], twins["reference"][n], 1e-5)
