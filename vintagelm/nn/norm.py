"""Layer normalisation over the last axis (biased variance, as GPT-2 and PyTorch)."""
from typing import NamedTuple

import numpy as np


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (..., C) the normalised input (x - mean) * rstd
    rstd: np.ndarray  # (..., 1) reciprocal standard deviation per position
    w: np.ndarray  # (C,) the gain, needed for dxhat


def layernorm_forward(x, w, b=None, eps=1e-5):
    """x (..., C), w (C,), b (C,) or None -> y (..., C) = (x - mean) / sqrt(var + eps) * w + b."""
    mean = x.mean(axis=-1, keepdims=True)
    xc = x - mean
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat = xc * rstd
    y = xhat * w
    if b is not None:
        y += b
    return y, LayerNormCache(xhat, rstd, w)


def layernorm_backward(dy, cache, has_bias=True):
    """dy (..., C) -> dx (..., C), dw (C,), db (C,) or None.

    Forward was y = xhat * w + b with xhat = (x - mean) * rstd. With g = dy * w (the gradient
    reaching xhat), differentiating through mean and rstd gives
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    where the means run over the last axis: the first term is direct, the second comes
    through the mean, the third through the variance.
    """
    xhat, rstd, w = cache
    lead = tuple(range(dy.ndim - 1))
    dw = np.sum(dy * xhat, axis=lead)
    db = dy.sum(axis=lead) if has_bias else None
    g = dy * w
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= xhat * np.mean(g * xhat, axis=-1, keepdims=True)
    dx *= rstd
    return dx, dw, db
