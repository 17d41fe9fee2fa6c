"""Compiled kernels (numba) for the elementwise work of a training step: the fast backend's
replacements for nn/ ops, float32 only.

NumPy runs each ufunc as its own pass over memory, single-threaded; a GELU is nine passes.
Here each op is one or two passes per row, compiled by numba. These are the SAME mathematics
as the readable NumPy versions (nn/activation.py, nn/norm.py, nn/attention.py, optim.py),
which stay the reference: tests/test_fast_kernels.py checks both agree within float32 rounding.

Every kernel is a plain loop that releases the GIL (nogil): the wrappers split big arrays
by rows over the lanes of lanes.py, threads that run at the same time without a thread
pool of numba's own (numba's OpenMP threads busy-wait after each loop, on the core the next
matmul needs). error_model="numpy" lets a division by zero give inf instead of raising,
which is what lets the compiler vectorise loops that divide (measured: GELU 6x faster).

tanh: NumPy's float32 tanh is vectorised; a scalar tanh in a numba loop is a libm call and
slower than NumPy. `tanh32` is the rational approximation used by Eigen (and so PyTorch) for
float: pure arithmetic, which the compiler vectorises, accurate to a few float32 ulps.
"""
import numpy as np
from numba import njit

from vintagelm.fast import lanes
from vintagelm.nn.activation import GELU_C, GELU_K, ActivationCache
from vintagelm.nn.norm import LN_EPS, LayerNormCache

kernel = njit(fastmath=True, nogil=True, error_model="numpy", cache=True)

f32 = np.float32
K, C3, KC3 = f32(GELU_K), f32(GELU_C), f32(3.0 * GELU_C * GELU_K)
# tanh(x) ~ x * P(x^2) / Q(x^2) on [-9, 9] (beyond, tanh is +-1 in float32)
A1, A3, A5, A7, A9, A11, A13 = (f32(v) for v in (
    4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05, 5.12229709037114e-08,
    -8.60467152213735e-11, 2.00018790482477e-13, -2.76076847742355e-16))
B0, B2, B4, B6 = (f32(v) for v in (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04, 1.19825839466702e-06))


@njit(fastmath=True, inline="always", cache=True)
def tanh32(x):
    x = min(max(x, f32(-9.0)), f32(9.0))
    x2 = x * x
    p = x2 * (x2 * (x2 * (x2 * (x2 * (x2 * A13 + A11) + A9) + A7) + A5) + A3) + A1
    q = x2 * (x2 * (x2 * B6 + B4) + B2) + B0
    return x * p / q


@njit(fastmath=True, inline="always", cache=True)
def tanh_arg(v):
    """u = sqrt(2/pi) (v + 0.044715 v^3), the argument of GELU's tanh."""
    return K * (v + C3 * v * v * v)


@kernel
def _gelu_forward(x, y):
    for i in range(x.size):
        v = x[i]
        y[i] = f32(0.5) * v * (f32(1.0) + tanh32(tanh_arg(v)))


@kernel
def _bias_gelu_forward(x, b, y):
    """In place x <- x + b (the pre-activation, kept for backward), and y = gelu(x), per row."""
    N, F = x.shape
    for n in range(N):
        for f in range(F):
            v = x[n, f] + b[f]
            x[n, f] = v
            y[n, f] = f32(0.5) * v * (f32(1.0) + tanh32(tanh_arg(v)))


@kernel
def _gelu_backward(x, dy, dx):
    for i in range(x.size):
        v = x[i]
        t = tanh32(tanh_arg(v))
        # d/dx 0.5 x (1 + t) = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2)
        dx[i] = dy[i] * f32(0.5) * (f32(1.0) + t + v * (f32(1.0) - t * t) * (K + KC3 * v * v))


def gelu_forward(x):
    """Same contract as activation.gelu_forward."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])  # (N, F) rows
    lanes.over_rows(lambda rows: _gelu_forward(x2[rows].reshape(-1), y2[rows].reshape(-1)), len(x2), x.size)
    return y, ActivationCache(x)


def bias_gelu_forward(x, b):
    """gelu_forward(x + b), with the bias of the linear layer before added in the same pass.
    x must be a fresh C-contiguous array the caller hands over (a matmul's output): it
    becomes x + b in place, the cache's pre-activation."""
    y = np.empty_like(x)
    x2, y2 = x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1])  # (N, F) rows
    lanes.over_rows(lambda rows: _bias_gelu_forward(x2[rows], b, y2[rows]), len(x2), x.size)
    return y, ActivationCache(x)


def gelu_backward(dy, cache):
    x = cache.x
    dx = np.empty_like(x)
    F = x.shape[-1]
    x2, dy2, dx2 = x.reshape(-1, F), np.ascontiguousarray(dy).reshape(-1, F), dx.reshape(-1, F)
    lanes.over_rows(
        lambda rows: _gelu_backward(x2[rows].reshape(-1), dy2[rows].reshape(-1), dx2[rows].reshape(-1)), len(x2), x.size
    )
    return dx


# exp(x) for x <= 0 as 2^n * e^r with n = round(x / ln 2), |r| <= ln(2) / 2 (Cody-Waite split
# of ln 2, Cephes's degree-7 polynomial for e^r). 2^n is built from its bits: the float whose
# exponent field is n + 127 and mantissa 0. Both are plain arithmetic, so the loops vectorise
# (NumPy's float32 exp is scalar on a CPU without AVX-512; a table lookup for 2^n was a gather,
# half as fast).
LOG2E, LN2_HI, LN2_LO = f32(1.4426950408889634), f32(0.693359375), f32(-2.12194440e-4)
E0, E1, E2, E3, E4, E5 = (f32(v) for v in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                           4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1))


@njit(fastmath=True, inline="always", cache=True)
def _row_max(row, n):
    """max(row[:n]), n >= 1, over eight running maxima: the compiler does not vectorise a
    max reduction, and one running max waits on the previous comparison at every entry
    (measured: a (24, 64, 256) max pass 0.18 ms with one, 0.08 ms with eight)."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = row[0]
    j = 0
    while j + 8 <= n:
        a0, a1, a2, a3 = max(a0, row[j]), max(a1, row[j + 1]), max(a2, row[j + 2]), max(a3, row[j + 3])
        a4, a5, a6, a7 = max(a4, row[j + 4]), max(a5, row[j + 5]), max(a6, row[j + 6]), max(a7, row[j + 7])
        j += 8
    while j < n:
        a0 = max(a0, row[j])
        j += 1
    return max(max(max(a0, a1), max(a2, a3)), max(max(a4, a5), max(a6, a7)))


# The two softmax kernels are called from inside attention's lanes (lanes.py), one per
# lane at the same time, on each lane's share of the batch.
@kernel
def _causal_softmax_rows(s, offset, scale):
    """In place, per row i of s (R, Tq, Tk): softmax over the allowed keys j <= offset + i of
    scale * s, zero for the future keys. Passes over a row: the max; e^r and n per entry;
    2^n * e^r and the sum; normalise."""
    R, Tq, Tk = s.shape
    for r in range(R):
        pow2_bits = np.empty(Tk, dtype=np.int32)  # per row: the bits of 2^n for each entry
        pow2 = pow2_bits.view(np.float32)
        for i in range(Tq):
            last = min(offset + i + 1, Tk)
            m = _row_max(s[r, i], last)
            for j in range(last):
                x = max((s[r, i, j] - m) * scale, f32(-87.0))  # below -87 exp underflows anyway
                n = np.floor(x * LOG2E + f32(0.5))  # -126 <= n <= 0: 2^n is a normal float
                x = x - n * LN2_HI - n * LN2_LO
                s[r, i, j] = (((((E0 * x + E1) * x + E2) * x + E3) * x + E4) * x + E5) * x * x + x + f32(1.0)
                pow2_bits[j] = (np.int32(n) + np.int32(127)) << 23
            total = f32(0.0)
            for j in range(last):
                e = s[r, i, j] * pow2[j]
                s[r, i, j] = e
                total += e
            inv = f32(1.0) / total
            for j in range(last):
                s[r, i, j] *= inv
            for j in range(last, Tk):
                s[r, i, j] = f32(0.0)


def causal_softmax(scores, offset=0, scale=1.0):
    """In-place causal softmax of scale * scores, same contract as attention.causal_softmax."""
    Tq, Tk = scores.shape[-2:]
    _causal_softmax_rows(scores.reshape(-1, Tq, Tk), offset, scores.dtype.type(scale))
    return scores


@kernel
def _softmax_backward(dp, p, scale):
    R, Tq, Tk = p.shape
    for r in range(R):
        for i in range(Tq):
            dot = f32(0.0)
            for j in range(Tk):
                dot += dp[r, i, j] * p[r, i, j]
            for j in range(Tk):
                dp[r, i, j] = scale * p[r, i, j] * (dp[r, i, j] - dot)


def softmax_backward(dp, p, scale=1.0):
    """In place: dp <- scale * p * (dp - rowsum(dp * p)), same contract as
    attention.softmax_backward."""
    Tq, Tk = p.shape[-2:]
    _softmax_backward(dp.reshape(-1, Tq, Tk), p.reshape(-1, Tq, Tk), dp.dtype.type(scale))
    return dp


@kernel
def adamw_update(p, g, m, v, decay, b1, b2, step_size, rsqrt_bc2, eps, grad_scale):
    """One AdamW step over flat float32 arrays with the gradient g * grad_scale, in one pass
    (see optim.AdamW for the math).
    Not split over lanes: it streams 7 arrays through memory and a second core made it no
    faster (measured, baby: 12.3-13.9 ms per step either way)."""
    for i in range(p.size):
        gi = g[i] * grad_scale
        mi = b1 * m[i] + (f32(1.0) - b1) * gi
        vi = b2 * v[i] + (f32(1.0) - b2) * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] * decay - step_size * mi / (np.sqrt(vi) * rsqrt_bc2 + eps)


# ---------------------------------------------------------------- layer norm
# Row statistics accumulate in float64: a row's result then does not depend on how the
# compiler splits the sum, so every row of a batch, and the same row fed alone through the
# KV cache, normalises identically (a float32 sum drifted ~1e-7 per row, which a model with
# N(0, 1) weights amplified to 2e-5 between the cached and full forwards).


@kernel
def _layernorm_forward(x, w, b, eps, y, xhat, rstd):
    """x (N, C) -> y = xhat * w + b, xhat = (x - mean) * rstd, rstd (N,) = 1 / sqrt(var + eps)."""
    N, C = x.shape
    for n in range(N):
        total = 0.0
        for c in range(C):
            total += np.float64(x[n, c])
        mean = total / C
        sq = 0.0
        for c in range(C):
            d = np.float64(x[n, c]) - mean
            sq += d * d
        r = 1.0 / np.sqrt(sq / C + eps)
        rstd[n] = r
        m32, r32 = f32(mean), f32(r)
        for c in range(C):
            h = (x[n, c] - m32) * r32
            xhat[n, c] = h
            y[n, c] = h * w[c] + b[c]


@kernel
def _layernorm_backward_dx(dy, xhat, rstd, w, dx):
    """dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) per row, g = dy * w."""
    N, C = dy.shape
    for n in range(N):
        sg, sgx = 0.0, 0.0
        for c in range(C):
            g = np.float64(dy[n, c] * w[c])
            sg += g
            sgx += g * np.float64(xhat[n, c])
        mg, mgx, r = f32(sg / C), f32(sgx / C), f32(rstd[n])
        for c in range(C):
            dx[n, c] = r * (dy[n, c] * w[c] - mg - xhat[n, c] * mgx)


@kernel
def _layernorm_backward_params(dy, xhat, dw, db):
    """dw = sum over rows of dy * xhat, db = sum over rows of dy (float64 accumulators)."""
    N, C = dy.shape
    for n in range(N):
        for c in range(C):
            dw[c] += dy[n, c] * xhat[n, c]
            db[c] += dy[n, c]


def layernorm_forward(x, w, b=None, eps=LN_EPS):
    """Same contract as norm.layernorm_forward."""
    C = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, C)
    y, xhat = np.empty_like(x2), np.empty_like(x2)
    rstd = np.empty(x2.shape[0], dtype=x2.dtype)
    b = np.zeros_like(w) if b is None else b
    lanes.over_rows(lambda n: _layernorm_forward(x2[n], w, b, eps, y[n], xhat[n], rstd[n]), len(x2), x2.size)
    shape = x.shape
    return y.reshape(shape), LayerNormCache(xhat.reshape(shape), rstd.reshape(shape[:-1] + (1,)), w)


def layernorm_backward(dy, cache, dw, db=None):
    """Same contract as norm.layernorm_backward: -> dx; adds into dw and db."""
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dy2, xhat2 = np.ascontiguousarray(dy).reshape(-1, C), xhat.reshape(-1, C)
    dx, rstd = np.empty_like(dy2), rstd.reshape(-1)

    def rows_backward(n):  # -> this slice's share of dw, db
        _layernorm_backward_dx(dy2[n], xhat2[n], rstd[n], w, dx[n])
        share_w, share_b = np.zeros(C), np.zeros(C)
        _layernorm_backward_params(dy2[n], xhat2[n], share_w, share_b)
        return share_w, share_b

    shares = lanes.over_rows(rows_backward, len(dy2), dy2.size)
    dw += sum(share[0] for share in shares).astype(dw.dtype)
    if db is not None:
        db += sum(share[1] for share in shares).astype(db.dtype)
    return dx.reshape(xhat.shape)
