"""SiLU and the SwiGLU feed-forward sublayer (Shazeer 2020; Llama's MLP).

    silu(x) = x * sigmoid(x)
    swiglu(x) = (silu(x @ W_gate) * (x @ W_up)) @ W_down

Where GPT-2's MLP (mlp.py) bends one widened copy of x, SwiGLU makes two, a gate and a value,
and multiplies them: the gate decides, per hidden channel, how much of the value gets through.
With three matrices instead of two, Llama widens to about 8C/3 rather than 4C so that the
sublayer keeps the same parameter count; any hidden width F works here. Weights are stored
(in, out) as in linear.py; the biases are optional (Llama has none).
"""
from typing import NamedTuple

import numpy as np

from vintagelm.nn.activation import ActivationCache
from vintagelm.nn.linear import linear_backward, linear_forward


def sigmoid(x):
    """1 / (1 + exp(-x)), computed from exp(-|x|) so that nothing overflows for large |x| and
    the small tail values keep their relative precision."""
    e = np.exp(-np.abs(x))  # in [0, 1] (0 where it underflows: sigmoid is then exactly 0 or 1)
    return np.where(x >= 0, 1.0, e) / (1.0 + e)


def silu_forward(x):
    """x (...) -> y (...) = x * sigmoid(x) (also called swish)."""
    return x * sigmoid(x), ActivationCache(x)


def silu_backward(dy, cache):
    """dy (...) -> dx (...).

    y = x s with s = sigmoid(x) and ds/dx = s (1 - s), so dy/dx = s + x s (1 - s) = s (1 + x (1 - s)).
    s is recomputed from x rather than kept: one exp costs less than holding another array."""
    x = cache.x
    s = sigmoid(x)
    return dy * (s * (1.0 + x * (1.0 - s)))


class SwiGLUCache(NamedTuple):
    gate: tuple  # the gate projection's LinearCache (holds x)
    up: tuple  # the up projection's LinearCache (the same x, not a copy)
    act: ActivationCache  # silu's cache: the gate's pre-activation a = x @ W_gate + b_gate
    s: np.ndarray  # (..., F) silu(a), the gate
    u: np.ndarray  # (..., F) x @ W_up + b_up, the value
    down: tuple  # the down projection's LinearCache (holds s * u)


def swiglu_forward(x, w_gate, w_up, w_down, b_gate=None, b_up=None, b_down=None):
    """x (..., C), w_gate (C, F), w_up (C, F), w_down (F, C), b_gate (F,), b_up (F,), b_down (C,)
    or None -> y (..., C) = (silu(x @ w_gate + b_gate) * (x @ w_up + b_up)) @ w_down + b_down."""
    a, gate = linear_forward(x, w_gate, b_gate)  # (..., F)
    u, up = linear_forward(x, w_up, b_up)  # (..., F)
    s, act = silu_forward(a)  # (..., F)
    y, down = linear_forward(s * u, w_down, b_down)  # (..., C)
    return y, SwiGLUCache(gate, up, act, s, u, down)


def swiglu_backward(dy, cache, dw_gate, dw_up, dw_down, db_gate=None, db_up=None, db_down=None):
    """dy (..., C) -> dx (..., C); ADDS into the three weight slots and into the bias slots that
    are not None.

    Forward was h = s * u with s = silu(a), then y = h @ W_down. So dh = dy @ W_downᵀ (and the
    down projection's own gradients), ds = dh * u, du = dh * s, da = silu'(a) * ds. x fed both
    the gate and the up projection, so dx is the sum of what comes back through each."""
    dh = linear_backward(dy, cache.down, dw_down, db_down)  # (..., F)
    da = silu_backward(dh * cache.u, cache.act)  # (..., F)
    dx = linear_backward(da, cache.gate, dw_gate, db_gate)  # (..., C)
    dx += linear_backward(dh * cache.s, cache.up, dw_up, db_up)
    return dx
