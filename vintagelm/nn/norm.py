"""Layer normalisation over the last axis (biased variance, as GPT-2 and PyTorch)."""
from typing import NamedTuple

import numpy as np


class LayerNormCache(NamedTuple):
    xhat: np.ndarray  # (..., C) the normalised input (x - mean) * rstd
    rstd: np.ndarray  # (..., 1) reciprocal standard deviation per position
    w: np.ndarray  # (C,) the gain, needed for dxhat


def layernorm_forward(x, w, b=None, eps=1e-5):
    """x (..., C), w (C,), b (C,) or None -> y (..., C) = (x - mean) / sqrt(var + eps) * w + b."""
    C = x.shape[-1]
    xhat = x - x.mean(axis=-1, keepdims=True)  # (..., C) centred
    # the variance as a row-wise dot product: no (..., C) temporary for the squares
    var = np.einsum("...c,...c->...", xhat, xhat)[..., None] / C  # (..., 1)
    rstd = 1.0 / np.sqrt(var + eps)
    xhat *= rstd
    y = xhat * w
    if b is not None:
        y += b
    return y, LayerNormCache(xhat, rstd, w)


def layernorm_backward(dy, cache, has_bias=True, skip=None):
    """dy (..., C) -> dx (..., C), dw (C,), db (C,) or None; skip (..., C), when given, is
    added to dx (the gradient of a residual path that went around the norm).

    Forward was y = xhat * w + b with xhat = (x - mean) * rstd. With g = dy * w (the gradient
    reaching xhat), differentiating through mean and rstd gives
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    where the means run over the last axis: the first term is direct, the second comes
    through the mean, the third through the variance.
    """
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    dy2, xhat2 = dy.reshape(-1, C), xhat.reshape(-1, C)  # (N, C)
    dw = np.einsum("nc,nc->c", dy2, xhat2)
    db = dy2.sum(axis=0) if has_bias else None
    g = dy * w
    mean_g = g.mean(axis=-1, keepdims=True)  # (..., 1)
    mean_gx = np.einsum("...c,...c->...", g, xhat)[..., None] / C  # (..., 1)
    g -= mean_g
    dx = xhat * mean_gx
    np.subtract(g, dx, out=dx)
    dx *= rstd
    if skip is not None:
        dx += skip
    return dx, dw, db
