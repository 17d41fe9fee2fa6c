"""Linear layer: y = x @ W + b, with W stored (in, out) like GPT-2's Conv1D, so no transposes."""
from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., IN) the input, needed for dW
    w: np.ndarray  # (IN, OUT) the weight, needed for dx


def linear_forward(x, w, b=None):
    """x (..., IN), w (IN, OUT), b (OUT,) or None -> y (..., OUT).

    The leading dimensions are flattened first, so BLAS sees one (N, IN) @ (IN, OUT) product
    instead of one per batch row."""
    y = x.reshape(-1, x.shape[-1]) @ w  # (N, OUT)
    if b is not None:
        y += b
    return y.reshape(x.shape[:-1] + (w.shape[1],)), LinearCache(x, w)


def linear_backward(dy, cache, dw, db=None):
    """dy (..., OUT) -> dx (..., IN); ADDS the weight gradient into dw (IN, OUT) and, when
    the layer has a bias, the bias gradient into db (OUT,).

    Forward was y = x @ w + b, so dx = dy @ wᵀ, dw = xᵀ @ dy summed over every leading
    position, and db = dy summed over every leading position. Adding (not assigning) is the
    model's one gradient rule: a weight used twice (a tied embedding) gets both
    contributions, and the model zeroes its gradients before each backward."""
    x, w = cache
    x2 = x.reshape(-1, x.shape[-1])  # (N, IN) with N = product of leading dims
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, OUT)
    dw += x2.T @ dy2
    if db is not None:
        db += dy2.sum(axis=0)
    return (dy2 @ w.T).reshape(x.shape)
