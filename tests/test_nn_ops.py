"""Every op's hand-written backward against central finite differences, in float64.

Each test draws a random upstream gradient dy and compares op_backward(dy) with the
numerical derivative of sum(op_forward(x) * dy), on several shapes including B=1, T=1, H=1.
"""
import numpy as np
import pytest

from vintagelm.gradcheck import numerical_gradient, relative_error
from vintagelm.nn.activation import gelu_backward, gelu_forward, relu_backward, relu_forward
from vintagelm.nn.attention import attention_backward, attention_forward
from vintagelm.nn.dropout import dropout_backward, dropout_forward
from vintagelm.nn.embedding import (
    embedding_backward,
    embedding_forward,
    sinusoidal_table,
)
from vintagelm.nn.linear import linear_backward, linear_forward
from vintagelm.nn.loss import cross_entropy_backward, cross_entropy_forward, log_softmax
from vintagelm.nn.mlp import mlp_backward, mlp_forward
from vintagelm.nn.norm import layernorm_backward, layernorm_forward

TOL = 1e-6
SHAPES = [(1, 1, 4), (1, 5, 6), (3, 1, 8), (2, 7, 12), (4, 3, 5)]  # (B, T, C)


def rand(rng, *shape):
    return rng.standard_normal(shape)


def added(slot_shape, backward, *args, with_bias=True):
    """Run a backward that adds into its gradient slots, on slots that start at ones (so
    assigning instead of adding would fail) -> (its return value, dw, db or None)."""
    dw = np.ones(slot_shape[0])
    db = np.ones(slot_shape[1]) if with_bias else None
    out = backward(*args, dw, db)
    return out, dw - 1, None if db is None else db - 1


@pytest.mark.parametrize("B,T,C", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear(B, T, C, bias):
    rng = np.random.default_rng(B * 100 + T)
    x, w = rand(rng, B, T, C), rand(rng, C, 3 * C)
    b = rand(rng, 3 * C) if bias else None
    dy = rand(rng, B, T, 3 * C)
    _, cache = linear_forward(x, w, b)
    dx, dw, db = added((w.shape, w.shape[1]), linear_backward, dy, cache, with_bias=bias)
    assert relative_error(dx, numerical_gradient(lambda v: linear_forward(v, w, b)[0], x, dy)) < TOL
    assert relative_error(dw, numerical_gradient(lambda v: linear_forward(x, v, b)[0], w, dy)) < TOL
    if bias:
        assert relative_error(db, numerical_gradient(lambda v: linear_forward(x, w, v)[0], b, dy)) < TOL
    else:
        assert db is None


@pytest.mark.parametrize("B,T,C", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm(B, T, C, bias):
    rng = np.random.default_rng(C)
    x = rand(rng, B, T, C) * 3 + 1
    w, b = 1 + 0.3 * rand(rng, C), (rand(rng, C) if bias else None)
    dy = rand(rng, B, T, C)
    y, cache = layernorm_forward(x, w, b)
    # independent truth for the forward: the textbook formula, per position
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * w + (b if bias else 0)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    dx, dw, db = added((C, C), layernorm_backward, dy, cache, with_bias=bias)
    assert relative_error(dx, numerical_gradient(lambda v: layernorm_forward(v, w, b)[0], x, dy)) < TOL
    assert relative_error(dw, numerical_gradient(lambda v: layernorm_forward(x, v, b)[0], w, dy)) < TOL
    if bias:
        assert relative_error(db, numerical_gradient(lambda v: layernorm_forward(x, w, v)[0], b, dy)) < TOL


@pytest.mark.parametrize("B,T,C", SHAPES)
def test_gelu(B, T, C):
    rng = np.random.default_rng(7)
    x, dy = rand(rng, B, T, C) * 2, rand(rng, B, T, C)
    y, cache = gelu_forward(x)
    # the tanh approximation stays within 1e-3 of the exact erf GELU: an independent check
    from math import erf

    exact = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / np.sqrt(2))))(x)
    assert np.abs(y - exact).max() < 1e-3
    dx = gelu_backward(dy, cache)
    assert relative_error(dx, numerical_gradient(lambda v: gelu_forward(v)[0], x, dy)) < TOL


@pytest.mark.parametrize("B,T,C", SHAPES)
def test_relu(B, T, C):
    rng = np.random.default_rng(8)
    x = rand(rng, B, T, C)
    x[np.abs(x) < 1e-3] = 0.5  # keep finite differences away from the kink at 0
    dy = rand(rng, B, T, C)
    y, cache = relu_forward(x)
    assert np.array_equal(y, np.where(x > 0, x, 0))
    dx = relu_backward(dy, cache)
    assert relative_error(dx, numerical_gradient(lambda v: relu_forward(v)[0], x, dy)) < TOL


@pytest.mark.parametrize("activation", ["gelu", "relu"])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp(activation, bias):
    rng = np.random.default_rng(12)
    C = 6
    x, dy = rand(rng, 2, 3, C), rand(rng, 2, 3, C)
    w_fc, w_proj = rand(rng, C, 4 * C), rand(rng, 4 * C, C)
    b_fc, b_proj = (rand(rng, 4 * C), rand(rng, C)) if bias else (None, None)
    weights = [w_fc, b_fc, w_proj, b_proj]

    def f(i):  # the output as a function of input i (0: x, 1..4: the weights)
        def g(v):
            args = [x, *weights]
            args[i] = v
            return mlp_forward(*args, activation)[0]
        return g

    y, cache = mlp_forward(x, *weights, activation)
    act = {"gelu": gelu_forward, "relu": relu_forward}[activation]
    ref = act(x @ w_fc + (b_fc if bias else 0))[0] @ w_proj + (b_proj if bias else 0)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    slots = [np.ones_like(w) if w is not None else None for w in weights]
    dx = mlp_backward(dy, cache, *slots)
    assert relative_error(dx, numerical_gradient(f(0), x, dy)) < TOL
    for i, (w, slot) in enumerate(zip(weights, slots), start=1):
        if w is not None:
            assert relative_error(slot - 1, numerical_gradient(f(i), w, dy)) < TOL


@pytest.mark.parametrize("B,T,C", SHAPES)
def test_dropout(B, T, C):
    rng = np.random.default_rng(9)
    x, dy = rand(rng, B, T, C), rand(rng, B, T, C)
    p = 0.3

    def f(v):
        return dropout_forward(v, p, np.random.default_rng(42))[0]  # same mask every call

    y, cache = dropout_forward(x, p, np.random.default_rng(42))
    kept = cache.mask != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p))
    assert np.all(y[~kept] == 0)
    dx = dropout_backward(dy, cache)
    assert relative_error(dx, numerical_gradient(f, x, dy)) < TOL
    # p = 0 and eval mode (rng None) are the identity
    assert dropout_forward(x, 0.0, np.random.default_rng(1))[0] is x
    assert dropout_forward(x, p, None)[0] is x


def test_dropout_keeps_expectation():
    x = np.ones((200, 500))
    y, _ = dropout_forward(x, 0.25, np.random.default_rng(0))
    assert abs(y.mean() - 1.0) < 0.01
    assert abs((y == 0).mean() - 0.25) < 0.01


@pytest.mark.parametrize("B,T,C,n_head", [(1, 1, 4, 1), (1, 5, 6, 2), (3, 1, 8, 2), (2, 7, 12, 3), (4, 3, 5, 1), (2, 6, 8, 4)])
def test_attention(B, T, C, n_head):
    rng = np.random.default_rng(B + T + C)
    qkv, dy = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    y, cache = attention_forward(qkv, n_head)
    # independent forward: a per-(b, h, t) loop over the positions t may attend to
    D = C // n_head
    ref = np.zeros((B, T, C))
    for b in range(B):
        for h in range(n_head):
            q = qkv[b, :, h * D : (h + 1) * D]
            k = qkv[b, :, C + h * D : C + (h + 1) * D]
            v = qkv[b, :, 2 * C + h * D : 2 * C + (h + 1) * D]
            for t in range(T):
                s = k[: t + 1] @ q[t] / np.sqrt(D)
                p = np.exp(s - s.max())
                ref[b, t, h * D : (h + 1) * D] = (p / p.sum()) @ v[: t + 1]
    np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-12)
    dqkv = attention_backward(dy, cache)
    assert relative_error(dqkv, numerical_gradient(lambda v: attention_forward(v, n_head)[0], qkv, dy)) < TOL


@pytest.mark.parametrize("T,chunk", [(7, 3), (8, 4), (9, 1), (5, 16)])
def test_chunked_attention_equals_full(T, chunk):
    rng = np.random.default_rng(T * chunk)
    B, C, H = 2, 12, 3
    qkv, dy = rand(rng, B, T, 3 * C), rand(rng, B, T, C)
    y_full, cache_full = attention_forward(qkv, H)
    y, cache = attention_forward(qkv, H, chunk=chunk)
    assert len(cache.chunks) == -(-T // chunk)
    np.testing.assert_allclose(y, y_full, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(attention_backward(dy, cache), attention_backward(dy, cache_full), rtol=1e-11, atol=1e-13)
    f = lambda v: attention_forward(v, H, chunk=chunk)[0]  # noqa: E731
    assert relative_error(attention_backward(dy, cache), numerical_gradient(f, qkv, dy)) < TOL


def test_attention_with_dropout():
    rng = np.random.default_rng(3)
    B, T, C, H = 2, 6, 8, 2
    qkv, dy = rand(rng, B, T, 3 * C), rand(rng, B, T, C)

    def f(v):
        return attention_forward(v, H, 0.4, np.random.default_rng(5))[0]

    _, cache = attention_forward(qkv, H, 0.4, np.random.default_rng(5))
    assert cache.drop[0].mask is not None
    assert relative_error(attention_backward(dy, cache), numerical_gradient(f, qkv, dy)) < TOL


@pytest.mark.parametrize("B,T,C", SHAPES)
@pytest.mark.parametrize("start", [0, 2])
def test_embedding(B, T, C, start):
    rng = np.random.default_rng(11)
    V = 5  # small vocabulary so ids repeat and the scatter-add is exercised
    idx = rng.integers(0, V, (B, T))
    wte, wpe = rand(rng, V, C), rand(rng, T + 3, C)
    dy = rand(rng, B, T, C)
    x, cache = embedding_forward(idx, wte, wpe, start)
    assert all(np.array_equal(x[b, t], wte[idx[b, t]] + wpe[start + t]) for b in range(B) for t in range(T))
    _, dwte, dwpe = added((wte.shape, wpe.shape), embedding_backward, dy, cache)
    assert relative_error(dwte, numerical_gradient(lambda v: embedding_forward(idx, v, wpe, start)[0], wte, dy)) < TOL
    assert relative_error(dwpe, numerical_gradient(lambda v: embedding_forward(idx, wte, v, start)[0], wpe, dy)) < TOL
    assert np.all(dwpe[:start] == 0) and np.all(dwpe[start + T :] == 0)
    _, dwte_fixed, _ = added((wte.shape, None), embedding_backward, dy, cache, with_bias=False)  # a fixed table
    np.testing.assert_array_equal(dwte_fixed, dwte)


def test_sinusoidal_table_properties():
    P = sinusoidal_table(50, 16, np.float64)
    assert P.shape == (50, 16)
    np.testing.assert_allclose(P[0, 0::2], 0.0)  # sin(0)
    np.testing.assert_allclose(P[0, 1::2], 1.0)  # cos(0)
    np.testing.assert_allclose(P[:, 0::2] ** 2 + P[:, 1::2] ** 2, 1.0)  # each pair lies on the unit circle
    # channel pair i has wavelength 2*pi*10000^(2i/C): pair 0 at position 1 is sin(1)
    assert P[1, 0] == pytest.approx(np.sin(1.0))
    assert P[3, 2] == pytest.approx(np.sin(3 / 10000 ** (2 / 16)))
    assert sinusoidal_table(10, 7).shape == (10, 7)  # odd width works


@pytest.mark.parametrize("N,V", [(1, 3), (6, 10), (20, 7)])
def test_cross_entropy(N, V):
    rng = np.random.default_rng(N)
    logits = rand(rng, N, V) * 3
    targets = rng.integers(0, V, N)
    if N > 1:
        targets[0] = -1  # an ignored position
    loss, cache = cross_entropy_forward(logits, targets)
    valid = targets != -1
    ref = np.mean(
        [np.log(np.exp(logits[i]).sum()) - logits[i, targets[i]] for i in range(N) if valid[i]]
    )
    assert loss == pytest.approx(ref, rel=1e-12)
    dlogits = cross_entropy_backward(1.0, cache)
    num = numerical_gradient(lambda v: cross_entropy_forward(v, targets)[0], logits, 1.0)
    assert relative_error(dlogits, num) < TOL
    assert np.all(dlogits[~valid] == 0)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    loss, _ = cross_entropy_forward(logits, np.array([0]))
    assert loss == pytest.approx(0.0, abs=1e-12)
    loss, _ = cross_entropy_forward(logits, np.array([2]))
    assert loss == pytest.approx(2000.0)


def test_cross_entropy_rejects_bad_targets():
    with pytest.raises(ValueError, match="not ignored"):
        cross_entropy_forward(np.zeros((2, 3)), np.array([-1, -1]))
    with pytest.raises(ValueError, match="targets must be"):
        cross_entropy_forward(np.zeros((2, 3)), np.array([0, 3]))


def test_log_softmax_is_the_definition_in_float64():
    z = rand(np.random.default_rng(5), 3, 4, 9) * 3
    definition = np.log(np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True))  # safe at this scale
    np.testing.assert_allclose(log_softmax(z), definition, rtol=1e-12, atol=1e-14)
    low = log_softmax(z.astype(np.float32))
    assert low.dtype == np.float64 and low.shape == z.shape
    np.testing.assert_allclose(low, log_softmax(z.astype(np.float32).astype(np.float64)), rtol=0, atol=0)


def test_log_softmax_is_stable_far_from_zero():
    # exp(1000) overflows: only the shifted form gives these; a constant added to a row changes nothing
    np.testing.assert_allclose(log_softmax(np.array([1000.0, 0.0, -1000.0])), [0.0, -1000.0, -2000.0], atol=1e-12)
    z = rand(np.random.default_rng(6), 5, 7)
    np.testing.assert_allclose(log_softmax(z + 1e4), log_softmax(z), atol=1e-9)


def test_gelu_keeps_float32():
    """A float32 input stays float32 through GELU's forward and backward (a NumPy float64
    scalar constant used to promote the whole (B, T, 4C) array, and the model's logits, to
    float64 on the reference backend)."""
    from vintagelm.nn.activation import gelu_backward, gelu_forward

    x = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    y, cache = gelu_forward(x)
    assert y.dtype == np.float32 and gelu_backward(np.ones_like(x), cache).dtype == np.float32
