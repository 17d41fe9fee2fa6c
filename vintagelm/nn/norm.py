"""Layer normalisation over the last axis (biased variance, as GPT-2 and PyTorch)."""
from typing import NamedTuple

import numpy as np

LN_EPS = 1e-5  # GPT-2's epsilon


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (..., C) the normalised input (x - mean) * rstd
    rstd: np.ndarray  # (..., 1) reciprocal standard deviation per position
    w: np.ndarray  # (C,) the gain, needed for dxhat


def layernorm_forward(x, w, b=None, eps=LN_EPS):
    """x (..., C), w (C,), b (C,) or None -> y (..., C) = (x - mean) / sqrt(var + eps) * w + b."""
    xhat = x - x.mean(axis=-1, keepdims=True)  # (..., C) centred
    var = (xhat * xhat).mean(axis=-1, keepdims=True)  # (..., 1) biased variance
    rstd = 1.0 / np.sqrt(var + eps)
    xhat *= rstd
    y = xhat * w
    if b is not None:
        y += b
    return y, LayerNormCache(xhat, rstd, w)


def layernorm_backward(dy, cache, dw, db=None):
    """dy (..., C) -> dx (..., C); ADDS the gain's gradient into dw (C,) and the bias's into
    db (C,) when there is one.

    Forward was y = xhat * w + b with xhat = (x - mean) * rstd. With g = dy * w (the gradient
    reaching xhat), differentiating through mean and rstd gives
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    where the means run over the last axis: the first term is direct, the second comes
    through the mean, the third through the variance.
    """
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dw += (dy * xhat).reshape(-1, C).sum(axis=0)
    if db is not None:
        db += dy.reshape(-1, C).sum(axis=0)
    g = dy * w  # (..., C)
    mean_g = g.mean(axis=-1, keepdims=True)  # (..., 1)
    mean_gx = (g * xhat).mean(axis=-1, keepdims=True)  # (..., 1)
    return rstd * (g - mean_g - xhat * mean_gx)
