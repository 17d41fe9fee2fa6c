"""RNNConfig and RNNLM: the Elman network (1990), with backpropagation through time by hand.

    x_t = wte[token_t]                                  embedding, (B, C)
    h_t = tanh(x_t W_xh + h_{t-1} W_hh + b)             for each of n_layer layers
    logits_t = h_t W_out + b_out                        the head, (B, V)

One hidden vector carries everything the model remembers of the past: no window, no
positions. Its weakness is the point of the museum: the gradient reaching step t from step
t + k has been multiplied by k Jacobians diag(1 - h^2) W_hhᵀ, so it shrinks (or blows up)
geometrically with k; lstm.py is the fix.

Parameters (weights (in, out), applied as x @ W, like the rest of the project):
    wte.weight (V, C)
    rnn.{i}.weight_xh (C, C)   rnn.{i}.weight_hh (C, C)   rnn.{i}.bias (C)
    lm_head.weight (C, V)      lm_head.bias (V)
torch.nn.RNN keeps two biases (b_ih + b_hh); one is the same function with fewer parameters.

The embedding, head, dropout, carried state (carry_state) and decoding state are
recurrent.RecurrentLM's; this file holds the layer and its gradient.
Shapes: B batch, T time, C hidden size (n_embd), V vocabulary, L layers.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vintagelm.museum.recurrent import RecurrentConfig, RecurrentLM
from vintagelm.nn.linear import LinearCache, linear_backward, linear_forward


@dataclass
class RNNConfig(RecurrentConfig):
    """The shape of an Elman network: RecurrentConfig's fields (museum/recurrent.py)."""


# ---------------------------------------------------------------- the layer, forward and backward
class ElmanCache(NamedTuple):
    x: np.ndarray  # (B, T, C) the layer's input, for dW_xh
    h0: np.ndarray  # (B, C) the initial state, for the first step's dW_hh
    hs: np.ndarray  # (B, T, C) every h_t: tanh's output is all its derivative needs
    w_xh: np.ndarray  # (C, C)
    w_hh: np.ndarray  # (C, C)


def elman_forward(x, h0, w_xh, w_hh, b):
    """x (B, T, C), h0 (B, C) -> hs (B, T, C) with h_t = tanh(x_t W_xh + h_{t-1} W_hh + b).

    Only the h_{t-1} W_hh product is sequential; the input products of all T steps are one
    matmul done before the loop."""
    B, T, C = x.shape
    xw, _ = linear_forward(x, w_xh, b)  # (B, T, C) x_t W_xh + b for every t at once
    hs = np.empty((B, T, C), dtype=x.dtype)
    h = h0
    for t in range(T):
        h = np.tanh(xw[:, t] + h @ w_hh)  # (B, C)
        hs[:, t] = h
    return hs, ElmanCache(x, h0, hs, w_xh, w_hh)


def elman_backward(dhs, cache, dw_xh, dw_hh, db):
    """dhs (B, T, C), the loss's gradient at every h_t from above -> dx (B, T, C); ADDS the
    gradients of W_xh, W_hh and b.

    Backpropagation through time: h_t feeds the layer above (dhs[:, t]) AND the next step,
    so going backwards from t = T-1 its total gradient is dh = dhs[:, t] + dh_next. Forward
    was h_t = tanh(a_t), a_t = x_t W_xh + h_{t-1} W_hh + b, so
        da_t = dh * (1 - h_t^2)        tanh' written with tanh's output
        dh_next = da_t W_hhᵀ           what h_{t-1} receives through the recurrence
    and once every da_t is known the weight gradients are sums over time, each one matmul:
        dW_hh = Σ_t h_{t-1}ᵀ da_t      dW_xh = Σ_t x_tᵀ da_t      db = Σ_t da_t
    The dh_next left after t = 0 is the initial state's gradient, which is dropped."""
    x, h0, hs, w_xh, w_hh = cache
    B, T, C = hs.shape
    da = np.empty_like(hs)  # (B, T, C)
    dh_next = np.zeros((B, C), dtype=hs.dtype)
    for t in reversed(range(T)):
        dh = dhs[:, t] + dh_next  # (B, C)
        da[:, t] = dh * (1.0 - hs[:, t] ** 2)
        dh_next = da[:, t] @ w_hh.T  # (B, C)
    h_prev = np.concatenate([h0[:, None], hs[:, :-1]], axis=1)  # (B, T, C) h_{t-1} for every t
    linear_backward(da, LinearCache(h_prev, w_hh), dw_hh)  # dW_hh += Σ h_{t-1}ᵀ da_t
    return linear_backward(da, LinearCache(x, w_xh), dw_xh, db)  # (B, T, C)


# ---------------------------------------------------------------- the model
class RNNLM(RecurrentLM):
    """An Elman RNN language model. See the module docstring for the parameters."""

    architecture = "rnn"  # the name checkpoints record (architectures.py)
    config_class = RNNConfig
    n_state = 1  # (h,)

    @staticmethod
    def param_shapes(config):
        """Ordered {name: shape} of every parameter."""
        V, C = config.vocab_size, config.n_embd
        shapes = {"wte.weight": (V, C)}
        for i in range(config.n_layer):
            shapes[f"rnn.{i}.weight_xh"] = (C, C)
            shapes[f"rnn.{i}.weight_hh"] = (C, C)
            shapes[f"rnn.{i}.bias"] = (C,)
        shapes["lm_head.weight"] = (C, V)
        shapes["lm_head.bias"] = (V,)
        return shapes

    def _init_weights(self, rng):
        """torch's defaults: embeddings N(0, 1), every recurrent weight and bias U(±1/sqrt(C)),
        the head U(±1/sqrt(C)) with a zero bias. With C inputs of unit variance a
        pre-activation then has variance about 1/3: tanh starts in its linear range, and W_hh's
        spectral radius is about 1/sqrt(3) < 1, so the state neither explodes nor saturates
        (the gradient still fades over many steps: that is the Elman network's nature)."""
        bound = 1.0 / math.sqrt(self.config.n_embd)
        for name, p in self.params.items():
            if name == "wte.weight":
                p[...] = rng.standard_normal(p.shape)
            elif name == "lm_head.bias":
                p[...] = 0.0
            else:
                p[...] = rng.uniform(-bound, bound, p.shape)

    def layer_forward(self, x, state, i):
        P, p = self.params, f"rnn.{i}."
        (h0,) = state
        hs, cache = elman_forward(x, h0, P[p + "weight_xh"], P[p + "weight_hh"], P[p + "bias"])
        return hs, cache, (hs[:, -1],)

    def layer_backward(self, dhs, cache, i):
        G, p = self.grads, f"rnn.{i}."
        return elman_backward(dhs, cache, G[p + "weight_xh"], G[p + "weight_hh"], G[p + "bias"])

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per multiply-add with a weight (2 forward,
        4 backward), with C² + C² multiply-adds per layer (W_xh, W_hh) and C V for the head.
        The embedding is a lookup, the biases and tanh are O(C): not counted."""
        C, V = self.config.n_embd, self.config.vocab_size
        return 6 * (self.config.n_layer * 2 * C * C + C * V)
