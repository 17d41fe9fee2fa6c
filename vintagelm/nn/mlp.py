"""The transformer's feed-forward sublayer: y = act(x @ W_fc + b_fc) @ W_proj + b_proj.

Two linear layers with the activation between them, as one forward/backward pair composed of
the pairs in linear.py and activation.py: the first widens each position to 4C channels, the
activation bends it, the second projects back to C. Every position is transformed alone
(attention is where positions talk to each other).
"""
from typing import NamedTuple

from vintagelm.nn.activation import ACTIVATIONS
from vintagelm.nn.linear import linear_backward, linear_forward


class MLPCache(NamedTuple):
    fc: tuple  # the first linear layer's cache
    act: tuple  # the activation's cache
    proj: tuple  # the second linear layer's cache
    activation: str  # "gelu" or "relu"


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj, activation="gelu"):
    """x (..., C), w_fc (C, 4C), b_fc (4C,) or None, w_proj (4C, C), b_proj (C,) or None -> y (..., C)."""
    act_forward, _ = ACTIVATIONS[activation]
    h, fc = linear_forward(x, w_fc, b_fc)  # (..., 4C)
    g, act = act_forward(h)
    y, proj = linear_forward(g, w_proj, b_proj)  # (..., C)
    return y, MLPCache(fc, act, proj, activation)


def mlp_backward(dy, cache, dw_fc, db_fc, dw_proj, db_proj):
    """dy (..., C) -> dx (..., C): the forward read in reverse; ADDS into the four slots (the
    bias slots may be None: no bias)."""
    _, act_backward = ACTIVATIONS[cache.activation]
    dg = linear_backward(dy, cache.proj, dw_proj, db_proj)  # (..., 4C)
    dh = act_backward(dg, cache.act)
    return linear_backward(dh, cache.fc, dw_fc, db_fc)  # (..., C)
