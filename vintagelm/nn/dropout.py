"""Inverted dropout with an explicit, seeded mask."""
from typing import NamedTuple

import numpy as np


class DropoutCache(NamedTuple):
    mask: np.ndarray | None  # (...) 0 or 1/(1-p) per element; None when dropout was off


def dropout_forward(x, p, rng):
    """x (...) -> y (...). Each element is zeroed with probability p, survivors are scaled
    by 1/(1-p) so the expected value is unchanged and evaluation needs no rescaling.
    `rng` is an np.random.Generator; p == 0 (or rng None, i.e. eval mode) is the identity.
    """
    if p == 0.0 or rng is None:
        return x, DropoutCache(None)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    keep = rng.random(x.shape, dtype=np.float32) >= p
    mask = keep.astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, DropoutCache(mask)


def dropout_backward(dy, cache):
    """dy (...) -> dx (...): the same mask scales the gradient."""
    return dy if cache.mask is None else dy * cache.mask
