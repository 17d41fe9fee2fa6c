"""RMS normalisation over the last axis (Zhang & Sennrich 2019; Llama's norm): a gain, no bias.

    y = x / sqrt(mean(x^2) + eps) * w

Unlike layer norm (norm.py) the mean is not subtracted: only the scale of each position is
normalised, which saves a reduction and, in practice, trains as well.

Precision: this op computes in the input's dtype. Hugging Face's LlamaRMSNorm casts the input
to float32 whatever its dtype, normalises, casts back, then multiplies by the gain: the same
computation for float32 inputs, and float32-accurate (not float64) for float64 ones.
"""
from typing import NamedTuple

import numpy as np

RMS_EPS = 1e-6  # LlamaRMSNorm's default; Llama 2's checkpoints say 1e-5 in their config


class RMSNormCache(NamedTuple):
    xhat: np.ndarray  # (..., C) the normalised input x * rstd
    rstd: np.ndarray  # (..., 1) 1 / sqrt(mean(x^2) + eps) per position
    w: np.ndarray | None  # (C,) the gain, or None for a norm without one


def rmsnorm_forward(x, w, eps=RMS_EPS):
    """x (..., C), w (C,) or None (no gain, as nanochat's QK-norm) -> y (..., C)."""
    ms = np.einsum("...c,...c->...", x, x)[..., None] / x.shape[-1]  # (..., 1) mean square
    rstd = 1.0 / np.sqrt(ms + eps)
    xhat = x * rstd  # (..., C)
    y = xhat if w is None else xhat * w
    return y, RMSNormCache(xhat, rstd, w)


def rmsnorm_backward(dy, cache, dw=None):
    """dy (..., C) -> dx (..., C); ADDS the gain's gradient into dw (C,) when the norm has a gain.

    Forward was y = w * xhat with xhat_j = x_j r and r = (mean(x^2) + eps)^(-1/2). Since
    dr/dx_j = -r^3 x_j / C, with g = dy * w (the gradient reaching xhat)
        dx_j = g_j r + sum_i g_i x_i (-r^3 x_j / C) = r (g_j - xhat_j mean(g * xhat))
    (layer norm's formula without the term that came through the mean), and dw = sum dy * xhat
    over every leading position.
    """
    xhat, rstd, w = cache
    C = xhat.shape[-1]
    if w is None:
        g = dy
    else:
        dw += np.einsum("nc,nc->c", dy.reshape(-1, C), xhat.reshape(-1, C))
        g = dy * w  # (..., C)
    mean_gx = np.einsum("...c,...c->...", g, xhat)[..., None] / C  # (..., 1)
    return rstd * (g - xhat * mean_gx)
