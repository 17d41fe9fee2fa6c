"""LSTMConfig and LSTMLM: long short-term memory (1997) with a forget gate (2000), BPTT by hand.

    a_t = x_t W_xh + h_{t-1} W_hh + b                   (B, 4C): four pre-activations
    i, f, o = sigmoid(a_t[:, :3C])                      input, forget and output gates
    g = tanh(a_t[:, 3C:])                               the candidate to write
    c_t = f * c_{t-1} + i * g                           the cell: a sum, not a squashing
    h_t = o * tanh(c_t)                                 what the layer above and the next step see

Why it fixes the Elman network (rnn.py): the cell's gradient through time is
dc_{t-1} = dc_t * f, elementwise, with no weight matrix and no tanh' in between, so while the
forget gate stays near 1 the gradient survives many steps. The forget-gate bias starts at 1
(Gers et al.; Jozefowicz et al. 2015) so that memory is kept until the model learns to drop it.

Gate order in the 4C columns is i, f, o, g (torch.nn.LSTM uses i, f, g, o): the three sigmoid
gates side by side take one sigmoid call and one slice.

Parameters (weights (in, out), applied as x @ W):
    wte.weight (V, C)
    lstm.{i}.weight_xh (C, 4C)   lstm.{i}.weight_hh (C, 4C)   lstm.{i}.bias (4C)
    lm_head.weight (C, V)        lm_head.bias (V)

The embedding, head, dropout, carried state (carry_state) and decoding state (h and c) are
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
class LSTMConfig(RecurrentConfig):
    """The shape of an LSTM (the carried state is (h, c)): RecurrentConfig's fields (museum/recurrent.py)."""


def sigmoid(a):
    """1 / (1 + e^-a) written as (1 + tanh(a/2)) / 2: the same function, and no exp overflow
    for large |a|."""
    return 0.5 * (1.0 + np.tanh(0.5 * a))


# ---------------------------------------------------------------- the layer, forward and backward
class LSTMCache(NamedTuple):
    x: np.ndarray  # (B, T, C) the layer's input, for dW_xh
    h0: np.ndarray  # (B, C) initial hidden state, for the first step's dW_hh
    c0: np.ndarray  # (B, C) initial cell, for the first step's forget-gate gradient
    gates: np.ndarray  # (B, T, 4C) i, f, o (after sigmoid) and g (after tanh)
    cs: np.ndarray  # (B, T, C) every c_t
    tcs: np.ndarray  # (B, T, C) every tanh(c_t), kept rather than recomputed
    hs: np.ndarray  # (B, T, C) every h_t
    w_xh: np.ndarray  # (C, 4C)
    w_hh: np.ndarray  # (C, 4C)


def lstm_forward(x, h0, c0, w_xh, w_hh, b):
    """x (B, T, C), h0 and c0 (B, C) -> hs (B, T, C) (see the module docstring); the final
    cell is cache.cs[:, -1]. The input products of all T steps are one matmul before the loop."""
    B, T, C = x.shape
    xw, _ = linear_forward(x, w_xh, b)  # (B, T, 4C)
    gates = np.empty((B, T, 4 * C), dtype=x.dtype)
    cs, tcs, hs = (np.empty((B, T, C), dtype=x.dtype) for _ in range(3))
    h, c = h0, c0
    for t in range(T):
        a = xw[:, t] + h @ w_hh  # (B, 4C)
        gates[:, t, : 3 * C] = sigmoid(a[:, : 3 * C])  # i, f, o
        gates[:, t, 3 * C :] = np.tanh(a[:, 3 * C :])  # g
        i, f, o, g = np.split(gates[:, t], 4, axis=-1)  # each (B, C)
        c = f * c + i * g
        cs[:, t] = c
        tcs[:, t] = np.tanh(c)
        h = o * tcs[:, t]
        hs[:, t] = h
    return hs, LSTMCache(x, h0, c0, gates, cs, tcs, hs, w_xh, w_hh)


def lstm_backward(dhs, cache, dw_xh, dw_hh, db):
    """dhs (B, T, C), the loss's gradient at every h_t from above -> dx (B, T, C); ADDS the
    gradients of W_xh, W_hh and b.

    Going backwards from t = T-1, h_t gets dhs[:, t] from above plus dh_next from step t+1,
    and c_t gets dc_next from step t+1. Forward was h = o * tanh(c), c = f * c_prev + i * g:
        do = dh * tanh(c)
        dc = dc_next + dh * o * (1 - tanh(c)^2)       the cell has two consumers
        di = dc * g     dg = dc * i     df = dc * c_prev
        dc_next = dc * f                              the gated path of long memory
    then through the nonlinearities, written with their outputs:
        da_{i,f,o} = d{i,f,o} * s (1 - s)             sigmoid' = s (1 - s)
        da_g = dg * (1 - g^2)                         tanh' = 1 - tanh^2
        dh_next = da W_hhᵀ
    and the weight gradients are sums over time, one matmul each, once every da is known.
    The gradients left for h0 and c0 are dropped (truncation)."""
    x, h0, c0, gates, cs, tcs, hs, w_xh, w_hh = cache
    B, T, C = hs.shape
    da = np.empty_like(gates)  # (B, T, 4C)
    dh_next = np.zeros((B, C), dtype=hs.dtype)
    dc_next = np.zeros((B, C), dtype=hs.dtype)
    for t in reversed(range(T)):
        i, f, o, g = np.split(gates[:, t], 4, axis=-1)  # each (B, C)
        c_prev = cs[:, t - 1] if t > 0 else c0
        dh = dhs[:, t] + dh_next
        do = dh * tcs[:, t]
        dc = dc_next + dh * o * (1.0 - tcs[:, t] ** 2)
        di, dg, df = dc * g, dc * i, dc * c_prev
        dc_next = dc * f
        da[:, t, :C] = di * i * (1.0 - i)
        da[:, t, C : 2 * C] = df * f * (1.0 - f)
        da[:, t, 2 * C : 3 * C] = do * o * (1.0 - o)
        da[:, t, 3 * C :] = dg * (1.0 - g**2)
        dh_next = da[:, t] @ w_hh.T  # (B, C)
    h_prev = np.concatenate([h0[:, None], hs[:, :-1]], axis=1)  # (B, T, C) h_{t-1} for every t
    linear_backward(da, LinearCache(h_prev, w_hh), dw_hh)  # dW_hh += Σ h_{t-1}ᵀ da_t
    return linear_backward(da, LinearCache(x, w_xh), dw_xh, db)  # (B, T, C)


# ---------------------------------------------------------------- the model
class LSTMLM(RecurrentLM):
    """An LSTM language model. See the module docstring for the parameters."""

    architecture = "lstm"  # the name checkpoints record (architectures.py)
    config_class = LSTMConfig
    n_state = 2  # (h, c)
    n_gates = 4  # i, f, o, g

    @staticmethod
    def param_shapes(config):
        """Ordered {name: shape} of every parameter."""
        V, C = config.vocab_size, config.n_embd
        shapes = {"wte.weight": (V, C)}
        for i in range(config.n_layer):
            shapes[f"lstm.{i}.weight_xh"] = (C, 4 * C)
            shapes[f"lstm.{i}.weight_hh"] = (C, 4 * C)
            shapes[f"lstm.{i}.bias"] = (4 * C,)
        shapes["lm_head.weight"] = (C, V)
        shapes["lm_head.bias"] = (V,)
        return shapes

    def _init_weights(self, rng):
        """torch's defaults (embeddings N(0, 1), gate weights and biases U(±1/sqrt(C)), head
        U(±1/sqrt(C)) with a zero bias), except the forget gate's bias: 1, so f ≈ sigmoid(1)
        ≈ 0.73 at the start and the cell remembers over several steps from the first update."""
        C = self.config.n_embd
        bound = 1.0 / math.sqrt(C)
        for name, p in self.params.items():
            if name == "wte.weight":
                p[...] = rng.standard_normal(p.shape)
            elif name == "lm_head.bias":
                p[...] = 0.0
            else:
                p[...] = rng.uniform(-bound, bound, p.shape)
            if name.endswith(".bias") and name.startswith("lstm."):
                p[C : 2 * C] = 1.0  # the forget gate

    def layer_forward(self, x, state, i):
        P, p = self.params, f"lstm.{i}."
        h0, c0 = state
        hs, cache = lstm_forward(x, h0, c0, P[p + "weight_xh"], P[p + "weight_hh"], P[p + "bias"])
        return hs, cache, (hs[:, -1], cache.cs[:, -1])

    def layer_backward(self, dhs, cache, i):
        G, p = self.grads, f"lstm.{i}."
        return lstm_backward(dhs, cache, G[p + "weight_xh"], G[p + "weight_hh"], G[p + "bias"])

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per multiply-add with a weight (2 forward,
        4 backward), with 4 C² + 4 C² multiply-adds per layer (W_xh, W_hh) and C V for the
        head. The embedding is a lookup; biases, gates and the cell are O(C): not counted."""
        C, V = self.config.n_embd, self.config.vocab_size
        return 6 * (self.config.n_layer * 8 * C * C + C * V)
