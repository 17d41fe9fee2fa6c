"""The fast backend's compiled (numba) kernels equal the readable NumPy ops of nn/ within
float32 rounding (and, for today's block's kernels, float64 rounding too)."""
import numpy as np
import pytest

from vintagelm.fast import kernels, modern  # needs numba: part of the [test] extra
from vintagelm.fast.ops import FastOps
from vintagelm.nn import activation, attention, norm, rmsnorm, rope, sdpa, swiglu
from vintagelm.nn.attention import grouped_heads
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


# ---------------------------------------------------------------- today's block (fast/modern.py)
# These kernels compile for float32 and float64: each is held to the reference within float32
# rounding (1e-6 of the tensor's largest magnitude) and float64 rounding (1e-12).
DTYPES = pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)], ids=["f32", "f64"])


def randn(rng, dtype, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def grouped_views(rng, dtype, B=2, T=7, H=6, Hkv=2, D=16):
    """q (B, H, T, D), k, v (B, Hkv, T, D): strided views of one c_attn output, as the
    attention heads hand them to the ops (attention_heads.py)."""
    return grouped_heads(randn(rng, dtype, B, T, (H + 2 * Hkv) * D), H, Hkv)


@DTYPES
@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 7, 64), (2, 9, 384)])
def test_rmsnorm(dtype, tol, shape):
    rng = np.random.default_rng(10)
    x, dy = randn(rng, dtype, *shape, scale=3) + 1, randn(rng, dtype, *shape)
    w = randn(rng, dtype, shape[-1]) + 1
    y, cache = modern.rmsnorm_forward(x, w, 1e-5)
    y_ref, cache_ref = rmsnorm.rmsnorm_forward(x, w, 1e-5)
    assert y.dtype == dtype
    close(y, y_ref, tol)
    dx, dw = modern.rmsnorm_backward(dy, cache)
    dw_ref = np.zeros_like(w)
    close(dx, rmsnorm.rmsnorm_backward(dy, cache_ref, dw_ref), tol)
    close(dw, dw_ref, tol)


def test_rmsnorm_rows_are_independent_of_the_batch():
    # the KV cache normalises one new position at a time; it must match the row in a batch exactly
    rng = np.random.default_rng(11)
    x, w = randn(rng, np.float32, 4, 33, 96), randn(rng, np.float32, 96)
    y = modern.rmsnorm_forward(x, w)[0]
    for i in (0, 17, 32):
        assert np.array_equal(modern.rmsnorm_forward(x[1:2, i : i + 1], w)[0][0, 0], y[1, i])


@DTYPES
def test_rope_on_the_heads_views(dtype, tol):
    rng = np.random.default_rng(12)
    q, k, _ = grouped_views(rng, dtype)
    cos, sin = rope.rope_tables(7, 16, theta=500.0, offset=3, dtype=dtype)
    for x in (q, k):
        y, cache = modern.rope_forward(x, cos, sin)
        y_ref, cache_ref = rope.rope_forward(x, cos, sin)
        close(y, y_ref, tol)
        dy = randn(rng, dtype, *x.shape)
        close(modern.rope_backward(dy, cache), rope.rope_backward(dy, cache_ref), tol)


@DTYPES
@pytest.mark.parametrize("n_rep", [1, 3, 6])
def test_repeat_kv_backward_sums_each_group(dtype, tol, n_rep):
    rng = np.random.default_rng(13)
    dq, _, _ = grouped_views(rng, dtype)  # a strided (B, 6, T, D) view, as attention's dqkv gives
    cache = sdpa.RepeatKVCache(n_rep)
    close(modern.repeat_kv_backward(dq, cache), sdpa.repeat_kv_backward(dq, cache), tol)


@DTYPES
def test_swiglu_gate_and_its_backward(dtype, tol):
    """h = silu(a) * u and, in a and u's place, their gradients, against nn/swiglu.py's silu
    pair; a spans [-24, 24], SiLU's tails included."""
    rng = np.random.default_rng(14)
    F = 40
    au, dh = randn(rng, dtype, 3, 5, 2 * F, scale=8), randn(rng, dtype, 3, 5, F)
    a, u = au[..., :F].copy(), au[..., F:].copy()
    s, act = swiglu.silu_forward(a)
    close(modern.swiglu_gate(au), s * u, tol)
    dau = modern.swiglu_gate_backward(dh, au)
    assert dau is au  # written in place of a and u
    close(dau[..., :F], swiglu.silu_backward(dh * u, act), tol)
    close(dau[..., F:], dh * s, tol)


def test_float32_silu_and_its_derivative_over_the_whole_range():
    """The float32 kernels' sigmoid comes from their own exp (modern.exp32): against float64
    over [-100, 100], silu(x) and silu'(x) within 1e-6 of their scale, and in the negative tail
    (x < -4, where both are tiny) within 1e-6 of each value float32 holds with full precision."""
    x = np.linspace(-100, 100, 400001).astype(np.float32)
    au = np.concatenate([x, np.ones_like(x)])[None]  # u = 1: h = silu(x)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    for got, exact in ((modern.swiglu_gate(au)[0], x * s),
                       (modern.swiglu_gate_backward(np.ones((1, x.size), np.float32), au.copy())[0, : x.size],
                        s * (1 + x * (1 - s)))):
        assert np.abs(got - exact).max() <= 1e-6 * np.abs(exact).max()
        tail = (x < -4) & (np.abs(exact) > 1e-30)
        assert np.all(np.abs(got - exact)[tail] <= 1e-6 * np.abs(exact)[tail])


@DTYPES
@pytest.mark.parametrize("bias", [False, True])
def test_fast_swiglu_op_equals_the_reference(dtype, tol, bias):
    """FastOps' SwiGLU (gate and up as one product, the gating kernel, the weight gradients
    through the gradient slots) against nn/swiglu.py; every gradient is ADDED into its slot.
    float32 within 1e-5: the products sum in another order."""
    rng = np.random.default_rng(15)
    C, F = 24, 40
    x, dy = randn(rng, dtype, 2, 7, C), randn(rng, dtype, 2, 7, C)
    weights = [randn(rng, dtype, *shape, scale=0.3) for shape in ((C, F), (C, F), (F, C))]
    biases = [randn(rng, dtype, n) if bias else None for n in (F, F, C)]
    ops = FastOps(dtype)
    y, cache = ops.swiglu_forward(x, *(p for pair in zip(weights, biases) for p in pair))
    y_ref, cache_ref = swiglu.swiglu_forward(x, *weights, *biases)
    tol = max(tol, 1e-5)
    close(y, y_ref, tol)
    slots, slots_ref = ([np.ones_like(p) for p in (*weights, *biases) if p is not None] for _ in range(2))
    dx = ops.swiglu_backward(dy, cache, *interleave(slots, bias))
    dx_ref = swiglu.swiglu_backward(dy, cache_ref, *slots_ref[:3], *(slots_ref[3:] if bias else [None] * 3))
    close(dx, dx_ref, tol)
    for got, ref in zip(slots, slots_ref):
        close(got - 1, ref - 1, tol)


@DTYPES
def test_fast_qk_norm_op_equals_the_reference(dtype, tol):
    """FastOps' QK-norm (the RMSNorm kernel over each head's D) on the heads' strided views,
    against nn/sdpa.py's; the gains' gradients are ADDED into their slots."""
    rng = np.random.default_rng(16)
    q, k, _ = grouped_views(rng, dtype)
    w_q, w_k = randn(rng, dtype, q.shape[-1]) + 1, randn(rng, dtype, k.shape[-1]) + 1
    dq, dk = randn(rng, dtype, *q.shape), randn(rng, dtype, *k.shape)
    ops = FastOps(dtype)
    (qn, kn), cache = ops.qk_norm_forward(q, k, w_q, w_k, eps=1e-6)
    (qn_ref, kn_ref), cache_ref = sdpa.qk_norm_forward(q, k, w_q, w_k, eps=1e-6)
    close(qn, qn_ref, tol)
    close(kn, kn_ref, tol)
    slots, slots_ref = ([np.ones_like(w_q), np.ones_like(w_k)] for _ in range(2))
    dq_in, dk_in = ops.qk_norm_backward(dq, dk, cache, *slots)
    dq_ref, dk_ref = sdpa.qk_norm_backward(dq, dk, cache_ref, *slots_ref)
    close(dq_in, dq_ref, tol)
    close(dk_in, dk_ref, tol)
    for got, ref in zip(slots, slots_ref):
        close(got - 1, ref - 1, tol)


def interleave(slots, bias):
    """[dw_gate, dw_up, dw_down, (db_gate, db_up, db_down)] -> FastOps' order: each weight's
    slot beside its bias's (None without biases)."""
    dws, dbs = slots[:3], slots[3:] if bias else [None] * 3
    return [s for pair in zip(dws, dbs) for s in pair]
