"""Linear layer: y = x @ W + b, with W stored (in, out) like GPT-2's Conv1D, so no transposes."""
from typing import NamedTuple

import numpy as np


class LinearCache(NamedTuple):
    x: np.ndarray  # (..., IN) the input, needed for dW


def linear_forward(x, w, b=None):
    """x (..., IN), w (IN, OUT), b (OUT,) or None -> y (..., OUT).

    The leading dimensions are flattened first, so BLAS sees one (N, IN) @ (IN, OUT) product
    instead of one per batch row."""
    y = x.reshape(-1, x.shape[-1]) @ w  # (N, OUT)
    if b is not None:
        y += b  # in place: y is a fresh array from the matmul
    return y.reshape(x.shape[:-1] + (w.shape[1],)), LinearCache(x)


def linear_backward(dy, cache, w, has_bias=True, out=None):
    """dy (..., OUT) -> dx (..., IN), dw (IN, OUT), db (OUT,) or None.

    Forward was y = x @ w + b, so dx = dy @ wᵀ, dw = xᵀ @ dy summed over every leading
    position, and db = dy summed over every leading position.
    out = (dw, db) writes the weight and bias gradients into those arrays (a model's gradient
    slots) instead of new ones; db may be None there when has_bias is False.
    """
    x = cache.x
    x2 = x.reshape(-1, x.shape[-1])  # (N, IN) with N = product of leading dims
    dy2 = dy.reshape(-1, dy.shape[-1])  # (N, OUT)
    dw_out, db_out = out if out is not None else (None, None)
    dx = (dy2 @ w.T).reshape(x.shape)
    dw = np.matmul(x2.T, dy2, out=dw_out)
    db = None
    if has_bias:
        # the column sums as a matrix-vector product: BLAS streams dy once, on every thread
        db = np.matmul(np.ones(dy2.shape[0], dtype=dy2.dtype), dy2, out=db_out)
    return dx, dw, db
