"""Elementwise activations: GELU (tanh approximation, as GPT-2) and ReLU."""
from typing import NamedTuple

import numpy as np

GELU_K = np.sqrt(2.0 / np.pi)  # sqrt(2/pi), the tanh approximation's scale
GELU_C = 0.044715  # the cubic coefficient of the tanh approximation


class ActivationCache(NamedTuple):
    x: np.ndarray  # the pre-activation input, bias included (backward recomputes the rest from it)


def gelu_forward(x, b=None):
    """x (..., F), b (F,) or None -> y (...) = 0.5 * u * (1 + tanh(sqrt(2/pi) * (u + 0.044715 u^3)))
    with u = x + b: the bias of the linear layer before, added here (the fused kernel does it
    in the same pass).

    Written as a chain of in-place updates on two buffers: each NumPy ufunc is one pass
    over memory, and a fresh temporary per sub-expression would double the traffic.
    x*x*x, not x**3: the power ufunc on float32 is hundreds of times slower."""
    if b is not None:
        x = x + b
    t = x * x
    t *= x
    t *= GELU_C
    t += x
    t *= GELU_K
    np.tanh(t, out=t)  # t = tanh(u)
    t += 1.0
    t *= x
    t *= 0.5  # y = 0.5 x (1 + tanh(u))
    return t, ActivationCache(x)


def gelu_backward(dy, cache):
    """dy (...) -> dx (...).

    y = 0.5 x (1 + t) with t = tanh(u), u = k (x + c x^3), so
    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
    t is recomputed here rather than kept from forward: one tanh costs less than holding
    another (B, T, 4C) array per layer until backward."""
    x = cache.x
    x2 = x * x
    t = x2 * GELU_C
    t += 1.0
    t *= x
    t *= GELU_K
    np.tanh(t, out=t)  # t = tanh(u), u = k x (1 + c x^2)
    x2 *= 3.0 * GELU_C * GELU_K
    x2 += GELU_K  # k (1 + 3 c x^2)
    dx = t * t
    np.subtract(1.0, dx, out=dx)  # 1 - t^2
    dx *= x2
    dx *= x
    dx += t
    dx += 1.0
    dx *= 0.5
    dx *= dy
    return dx


def relu_forward(x, b=None):
    """x (..., F), b (F,) or None -> y (...) = max(x + b, 0)."""
    if b is not None:
        x = x + b
    return np.maximum(x, 0), ActivationCache(x)


def relu_backward(dy, cache):
    """dy (...) -> dx (...): the gradient passes where the input was positive."""
    return dy * (cache.x > 0)


ACTIVATIONS = {
    "gelu": (gelu_forward, gelu_backward),
    "relu": (relu_forward, relu_backward),
}
