"""Compiled kernels (numba) for today's block: RMSNorm, SwiGLU's gate, RoPE and the sum of the
grouped key/value heads' gradients. The fast backend's replacements for nn/rmsnorm.py,
nn/swiglu.py's elementwise part, nn/rope.py and nn/sdpa.py's repeat_kv_backward, held equal to
them by tests/test_fast_kernels.py.

Where kernels.py's kernels are float32 only (GELU and softmax approximate tanh and exp in
float32), these compile for float32 and float64 alike: numba makes one machine version per
dtype, and the arithmetic stays in the arrays' dtype. The one transcendental, the exp in
SiLU's sigmoid, is chosen by dtype when a kernel compiles (`exp_nonpositive`). Each kernel
is one pass over its rows (two for the norms: the row's statistic first), split over the
lanes by the wrappers, and writes every array it returns (np.empty, never a zeroing pass).

Shapes as in nn/: N rows (B T flattened), C channels, F the SwiGLU width, B H T D heads.
"""
from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from vintagelm.fast import lanes
from vintagelm.fast.kernels import E0, E1, E2, E3, E4, E5, LN2_HI, LN2_LO, LOG2E
from vintagelm.nn.rmsnorm import RMS_EPS, RMSNormCache
from vintagelm.nn.rope import RopeCache

kernel = njit(fastmath=True, nogil=True, error_model="numpy", cache=True)
f32 = np.float32


# ---------------------------------------------------------------- RMSNorm
# The row's mean square accumulates in float64, as layer norm's statistics do (kernels.py):
# a row then normalises to the same bits in any batch and alone through the KV cache.


@kernel
def _rmsnorm_forward(x, w, eps, y, xhat, rstd):
    """x (N, C) -> xhat = x * rstd, y = xhat * w, rstd (N,) = 1 / sqrt(mean(x^2) + eps)."""
    N, C = x.shape
    for n in range(N):
        sq = 0.0
        for c in range(C):
            v = np.float64(x[n, c])
            sq += v * v
        rstd[n] = 1.0 / np.sqrt(sq / C + eps)
        r = rstd[n]  # in x's dtype, so the products below stay in it
        for c in range(C):
            h = x[n, c] * r
            xhat[n, c] = h
            y[n, c] = h * w[c]


@kernel
def _rmsnorm_backward(dy, xhat, rstd, w, dx, dw):
    """Per row, with p = dy * xhat: dw += p (dw: float64, this lane's share), and
    dx = rstd (dy w - xhat mean(p w)): nn/rmsnorm.py's formula, where g = dy w and g xhat = p w."""
    N, C = dy.shape
    for n in range(N):
        total = 0.0
        for c in range(C):
            p = dy[n, c] * xhat[n, c]
            dw[c] += p
            total += np.float64(p * w[c])
        m, r = dy.dtype.type(total / C), rstd[n]
        for c in range(C):
            dx[n, c] = r * (dy[n, c] * w[c] - xhat[n, c] * m)


def rmsnorm_forward(x, w, eps=RMS_EPS):
    """Same contract as rmsnorm.rmsnorm_forward, for a norm with a gain w (C,)."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(len(x2), dtype=x2.dtype)
    lanes.over_rows(lambda n: _rmsnorm_forward(x2[n], w, eps, y[n], xhat[n], rstd[n]), len(x2), x2.size)
    shape = x.shape
    return y.reshape(shape), RMSNormCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), w)


def rmsnorm_backward(dy, cache):
    """dy (..., C) -> dx (..., C) and the gain's gradient (C,), float64 (the caller adds it
    into its slot, or writes it there)."""
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dy2, xhat2 = np.ascontiguousarray(dy).reshape(-1, C), xhat.reshape(-1, C)
    dx, rstd = np.empty_like(dy2), rstd.reshape(-1)

    def rows_backward(n):  # -> this slice's share of dw
        share = np.zeros(C)
        _rmsnorm_backward(dy2[n], xhat2[n], rstd[n], w, dx[n], share)
        return share

    return dx.reshape(xhat.shape), sum(lanes.over_rows(rows_backward, len(dy2), dy2.size))


# ---------------------------------------------------------------- SwiGLU's gate
class SwiGLUCache(NamedTuple):
    """What the fast SwiGLU's backward needs: less than nn/swiglu.py's (no silu(a), which is
    recomputed from a), and a and u side by side, so that their gradients take their place."""

    x: np.ndarray  # (..., C) the input of the gate and up projections
    au: np.ndarray  # (..., 2F) [a | u]: the gate's pre-activation and the up projection
    w_gate: np.ndarray  # (C, F)
    w_up: np.ndarray  # (C, F)
    down: tuple  # the down projection's LinearCache (holds h = silu(a) * u)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose bits are the int32 `bits` (a bit cast, which the compiler vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@njit(fastmath=True, inline="always", cache=True)
def exp32(x):
    """e^x for float32 x <= 0, as the softmax kernel computes it (kernels.py): 2^n e^r, the
    polynomial for e^r and 2^n built from its bits, here by a bit cast instead of an array.
    Within ~3 float32 ulps; below -87 it gives e^-87 (~1.6e-38) where float32 underflows."""
    x = max(x, f32(-87.0))
    n = np.floor(x * LOG2E + f32(0.5))
    r = x - n * LN2_HI - n * LN2_LO
    e_r = (((((E0 * r + E1) * r + E2) * r + E3) * r + E4) * r + E5) * r * r + r + f32(1.0)
    return e_r * _float32_from_bits((np.int32(n) + np.int32(127)) << 23)


def exp_nonpositive(x):
    """e^x for x <= 0. Inside a kernel the overload below picks the formula by dtype."""
    return np.exp(x)


@overload(exp_nonpositive, inline="always")
def _exp_by_dtype(x):
    """float32: exp32, pure arithmetic that the compiler vectorises (NumPy's and numba's
    float32 exp are a scalar libm call a value: measured, SiLU over 2M values 15 ms that way,
    0.7 ms with exp32). float64: np.exp."""
    if x == types.float32:
        return lambda x: exp32(x)
    return lambda x: np.exp(x)


@njit(fastmath=True, inline="always", cache=True)
def sigmoid_pair(x, one):
    """(sigmoid(x), sigmoid(-x) = 1 - sigmoid(x)), each to its own relative precision (1 -
    sigmoid(x) by subtraction would lose it for large x): with t = e^-|x| <= 1, sigmoid(|x|)
    = 1 / (1 + t) and sigmoid(-|x|) = t / (1 + t), as nn/swiglu.py's sigmoid. `one` is 1 in
    x's dtype (a literal 1.0 would make float32 arithmetic float64)."""
    t = exp_nonpositive(-abs(x))
    inv = one / (one + t)
    if x >= 0:
        return inv, t * inv
    return t * inv, inv


@kernel
def _swiglu_gate(au, h):
    """au (N, 2F) = [a | u], the gate's and the up projection's outputs side by side
    -> h (N, F) = silu(a) * u = a sigmoid(a) u."""
    N, F = h.shape
    one = au.dtype.type(1.0)
    for n in range(N):
        for f in range(F):
            a = au[n, f]
            h[n, f] = a * sigmoid_pair(a, one)[0] * au[n, F + f]


@kernel
def _swiglu_gate_backward(dh, au):
    """In place, au [a | u] -> [da | du] for h = silu(a) u and its gradient dh (N, F):
    du = dh silu(a) = dh a s and da = dh u silu'(a) = dh u s (1 + a (1 - s)), s = sigmoid(a)
    (nn/swiglu.py derives both), with 1 - s = sigmoid(-a) taken from sigmoid_pair."""
    N, F = dh.shape
    one = au.dtype.type(1.0)
    for n in range(N):
        for f in range(F):
            a, u, g = au[n, f], au[n, F + f], dh[n, f]
            s, not_s = sigmoid_pair(a, one)
            au[n, f] = g * u * s * (one + a * not_s)
            au[n, F + f] = g * a * s


def swiglu_gate(au):
    """au (..., 2F) -> h (..., F) = silu(a) * u, a new array."""
    F = au.shape[-1] // 2
    au2 = au.reshape(-1, 2 * F)
    h = np.empty((len(au2), F), dtype=au.dtype)
    lanes.over_rows(lambda n: _swiglu_gate(au2[n], h[n]), len(au2), h.size)
    return h.reshape(au.shape[:-1] + (F,))


def swiglu_gate_backward(dh, au):
    """dh (..., F), au (..., 2F) [a | u] -> au itself, now [da | du] (the cache's au is spent:
    a backward runs once per forward)."""
    F = dh.shape[-1]
    dh2, au2 = np.ascontiguousarray(dh).reshape(-1, F), au.reshape(-1, 2 * F)
    lanes.over_rows(lambda n: _swiglu_gate_backward(dh2[n], au2[n]), len(dh2), dh2.size)
    return au


# ---------------------------------------------------------------- RoPE
@kernel
def _rotate(x, cos, sin, sign, y):
    """y (b, H, T, D) = x with each half-split pair (i, i + D/2) of position t turned by the
    angle whose cosine and sine are cos[t, i] and sign * sin[t, i] (sign -1: turned back).
    x may be a strided view (the heads of c_attn's output): read in place, no copy first."""
    B, H, T, D = x.shape
    half = D // 2
    for b in range(B):
        for h in range(H):
            for t in range(T):
                for i in range(half):
                    c, s = cos[t, i], sign * sin[t, i]
                    x1, x2 = x[b, h, t, i], x[b, h, t, half + i]
                    y[b, h, t, i] = x1 * c - x2 * s
                    y[b, h, t, half + i] = x2 * c + x1 * s


def rotate(x, cos, sin, sign):
    """x (B, H, T, D), tables (T, D/2) -> a new (B, H, T, D): see _rotate."""
    y = np.empty(x.shape, dtype=x.dtype)
    lanes.over_rows(lambda b: _rotate(x[b], cos, sin, x.dtype.type(sign), y[b]), len(x), x.size)
    return y


def rope_forward(x, cos, sin):
    """Same contract as rope.rope_forward, for tables (T, D/2) (one start for every row)."""
    return rotate(x, cos, sin, 1), RopeCache(cos, sin)


def rope_backward(dy, cache):
    """Same contract as rope.rope_backward: the rotation back."""
    return rotate(dy, cache.cos, cache.sin, -1)


# ---------------------------------------------------------------- grouped key/value heads
@kernel
def _sum_groups(dy, n_rep, dx):
    """dx[b, j] = sum over r < n_rep of dy[b, j n_rep + r]: each kv head's gradient from the
    query heads of its group. dy may be a strided view (the heads of attention's dqkv)."""
    B, Hkv, T, D = dx.shape
    for b in range(B):
        for j in range(Hkv):
            for t in range(T):
                for d in range(D):
                    total = dy[b, j * n_rep, t, d]
                    for r in range(1, n_rep):
                        total += dy[b, j * n_rep + r, t, d]
                    dx[b, j, t, d] = total


def repeat_kv_backward(dy, cache):
    """Same contract as sdpa.repeat_kv_backward: one pass, where the reference reshapes the
    strided view (a copy) and then sums."""
    if cache.n_rep == 1:
        return dy
    B, H, T, D = dy.shape
    dx = np.empty((B, H // cache.n_rep, T, D), dtype=dy.dtype)
    lanes.over_rows(lambda b: _sum_groups(dy[b], cache.n_rep, dx[b]), B, dy.size)
    return dx

