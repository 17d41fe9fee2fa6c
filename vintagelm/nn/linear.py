"""Linear layer: y = x @ W + b, with W stored (in, out) like GPT-2's Conv1D, so no transposes."""
from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., IN) the input, needed for dW


def linear_forward(x, w, b=None):
    """x (..., IN), w (IN, OUT), b (OUT,) or None -> y (..., OUT)."""
    y = x @ w
    if b is not None:
        y += b  # in place: y is a fresh array from the matmul
    return y, LinearCache(x)


def linear_backward(dy, cache, w, has_bias=True):
    """dy (..., OUT) -> dx (..., IN), dw (IN, OUT), db (OUT,) or None.

    Forward was y = x @ w + b, so dx = dy @ wᵀ, dw = xᵀ @ dy summed over every leading
    position, and db = dy summed over every leading position.
    """
    x = cache.x
    x2 = x.reshape(-1, x.shape[-1])  # (N, IN) with N = product of leading dims
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, OUT)
    dx = dy @ w.T
    dw = x2.T @ dy2
    db = dy2.sum(axis=0) if has_bias else None
    return dx, dw, db
