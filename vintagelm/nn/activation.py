"""Elementwise activations: GELU (tanh approximation, as GPT-2) and ReLU."""
from typing import NamedTuple

import numpy as np

GELU_K = float(np.sqrt(2.0 / np.pi))  # sqrt(2/pi); a Python float, so float32 stays float32
GELU_C = 0.044715  # the cubic coefficient of the tanh approximation


class ActivationCache(NamedTuple):
    x: np.ndarray  # the input (backward recomputes everything else from it)


def gelu_forward(x):
    """x (...) -> y (...) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    x*x*x, not x**3: the power ufunc on float32 is hundreds of times slower."""
    u = GELU_K * (x + GELU_C * (x * x * x))
    return 0.5 * x * (1.0 + np.tanh(u)), ActivationCache(x)


def gelu_backward(dy, cache):
    """dy (...) -> dx (...).

    y = 0.5 x (1 + t) with t = tanh(u), u = k (x + c x^3), so
    dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2).
    t is recomputed here rather than kept from forward: one tanh costs less than holding
    another (B, T, 4C) array per layer until backward."""
    x = cache.x
    t = np.tanh(GELU_K * (x + GELU_C * (x * x * x)))
    du_dx = GELU_K * (1.0 + 3.0 * GELU_C * (x * x))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def relu_forward(x):
    """x (...) -> y (...) = max(x, 0)."""
    return np.maximum(x, 0), ActivationCache(x)


def relu_backward(dy, cache):
    """dy (...) -> dx (...): the gradient passes where the input was positive."""
    return dy * (cache.x > 0)


ACTIVATIONS = {
    "gelu": (gelu_forward, gelu_backward),
    "relu": (relu_forward, relu_backward),
}
