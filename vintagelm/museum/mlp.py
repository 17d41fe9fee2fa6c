"""MLPConfig and MLPLM: the neural probabilistic language model of Bengio et al. (2003).

    x_t = [wte[tok_{t-n+1}], ..., wte[tok_t]]           n = context embeddings, oldest first, (B, n E)
    h_t = tanh(x_t W_h + b_h)                           (B, H)
    logits_t = h_t W_out + b_out (+ x_t W_direct)       (B, V)

The step it took over the n-gram counts: a context is a point in a continuous space, so what
is learned about "the cat sat" carries over to "a dog sat". The window stays fixed: nothing
older than n tokens can matter (rnn.py drops the window). `direct` adds the paper's direct
connections from the embeddings to the output (its W), a linear shortcut next to the tanh
layer.

Before the start of a window there are no tokens: those slots of x_t hold ZERO vectors, so
the first n-1 positions of a window see fewer real tokens. A zero vector (rather than a pad
token) needs no reserved id in the vocabulary, adds nothing to the sum x_t W_h, and gets no
gradient; the model learns "start of window" from the zeros themselves.

Parameters (weights (in, out), applied as x @ W):
    wte.weight (V, E)
    hidden.weight (n E, H)   hidden.bias (H)
    lm_head.weight (H, V)    lm_head.bias (V)
    direct.weight (n E, V)   (direct only; it shares lm_head.bias)

Shapes: B batch, T time, n context, E n_embd, H hidden, V vocabulary.
"""
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from vintagelm.checked_config import ConfigIO
from vintagelm.flat_model import FlatParamsModel
from vintagelm.nn.dropout import dropout_backward, dropout_forward
from vintagelm.nn.linear import linear_backward, linear_forward
from vintagelm.nn.loss import cross_entropy_backward, cross_entropy_forward

NO_TOKEN = -1  # in a context: before the window's start (an all-zero embedding)


@dataclass
class MLPConfig(ConfigIO):
    vocab_size: int = 65  # number of token ids (V)
    block_size: int = 64  # the window the training loop cuts; positions play no part
    context: int = 5  # n: the previous tokens the prediction sees, the current one included
    n_embd: int = 64  # embedding size (E)
    hidden: int = 256  # tanh units (H)
    direct: bool = False  # Bengio's direct connections from the embeddings to the output
    dropout: float = 0.0  # on the tanh layer's output

    def __post_init__(self):
        self.check(positive=("vocab_size", "block_size", "context", "n_embd", "hidden"), booleans=("direct",))


# ---------------------------------------------------------------- the context, forward and backward
class ContextCache(NamedTuple):
    ids: np.ndarray  # (B, n-1+T) the history then the window's tokens, NO_TOKEN for none
    n: int  # context length


def context_forward(ids, wte, n):
    """ids (B, n-1+T) (the n-1 tokens before the window, NO_TOKEN where there are none, then
    the window's T tokens), wte (V, E) -> x (B, T, n E): at each t the embeddings of
    ids[:, t .. t+n-1], concatenated oldest first."""
    real = ids != NO_TOKEN  # (B, n-1+T)
    e = wte[np.where(real, ids, 0)] * real[..., None]  # (B, n-1+T, E) zero vectors where no token
    T = ids.shape[1] - (n - 1)
    x = np.concatenate([e[:, j : j + T] for j in range(n)], axis=-1)  # (B, T, n E)
    return x, ContextCache(ids, n)


def context_backward(dx, cache, dwte):
    """dx (B, T, n E): ADDS into dwte (V, E).

    Forward put embedding e[:, t+j] in slot j of position t, so each embedding gathers the
    gradients of the n slots it was copied into; then each row of wte gathers those of every
    occurrence of its id (a scatter-add, ids repeat). Missing tokens were constants: nothing."""
    ids, n = cache
    B, T, nE = dx.shape
    E = nE // n
    de = np.zeros((B, ids.shape[1], E), dtype=dx.dtype)  # (B, n-1+T, E)
    for j in range(n):
        de[:, j : j + T] += dx[..., j * E : (j + 1) * E]
    real = ids != NO_TOKEN
    np.add.at(dwte, ids[real], de[real])


class TokenHistory:
    """The MLP's decoding state: the last n-1 tokens it was fed (NO_TOKEN before the first),
    all the next prediction needs besides the new token. Constant size, constant cost."""

    def __init__(self, context, batch_size):
        self.history = np.full((batch_size, context - 1), NO_TOKEN, dtype=np.int64)  # (B, n-1)
        self.pos = 0  # tokens consumed

    def reset(self):
        self.history[...] = NO_TOKEN
        self.pos = 0

    def advance(self, n):
        self.pos += n


# ---------------------------------------------------------------- the model
class MLPLM(FlatParamsModel):
    """Bengio's MLP language model. See the module docstring for the parameters."""

    architecture = "mlp"  # the name checkpoints record (architectures.py)
    config_class = MLPConfig

    @staticmethod
    def param_shapes(config):
        """Ordered {name: shape} of every parameter the config asks for."""
        V, nE, H = config.vocab_size, config.context * config.n_embd, config.hidden
        shapes = {
            "wte.weight": (V, config.n_embd),
            "hidden.weight": (nE, H),
            "hidden.bias": (H,),
            "lm_head.weight": (H, V),
            "lm_head.bias": (V,),
        }
        if config.direct:
            shapes["direct.weight"] = (nE, V)
        return shapes

    @classmethod
    def training_bytes(cls, config, batch_size, itemsize, train_tokens=0):
        """Estimated peak bytes of one training step, from the config alone (memory.check_fits,
        architectures.TRAINING_BYTES): four copies of the parameters (weights, gradients, AdamW's m
        and v) and, at every position of the batch, the n E-wide context, its gradient and the
        embeddings' copy; the tanh layer's pre-activation, output, dropout and their gradients
        (H each); the logits, probabilities and their gradient (V each, one more with direct
        connections). The length of the text (train_tokens) plays no part."""
        nE, H, V = config.context * config.n_embd, config.hidden, config.vocab_size
        per_position = 3 * nE + 6 * H + (4 if config.direct else 3) * V
        return itemsize * (4 * cls.param_count(config) + batch_size * config.block_size * per_position)

    def _init_weights(self, rng):
        """Embeddings N(0, 1); every matrix U(±1/sqrt(fan_in)) (torch's Linear default), so a
        tanh pre-activation starts with variance about 1/3 (its linear range); biases 0."""
        for name, p in self.params.items():
            if name == "wte.weight":
                p[...] = rng.standard_normal(p.shape)
            elif name.endswith(".bias"):
                p[...] = 0.0
            else:
                bound = 1.0 / math.sqrt(p.shape[0])
                p[...] = rng.uniform(-bound, bound, p.shape)

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 per multiply-add with a weight (2 forward,
        4 backward): n E H for the tanh layer, H V for the head, n E V for direct connections.
        The embeddings are lookups; biases and tanh are O(H + V): not counted."""
        cfg = self.config
        nE = cfg.context * cfg.n_embd
        return 6 * (nE * cfg.hidden + cfg.hidden * cfg.vocab_size + (nE * cfg.vocab_size if cfg.direct else 0))

    def new_kv_cache(self, batch_size=1):
        return TokenHistory(self.config.context, batch_size)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) ints -> (logits (B, T, V), mean loss over targets != -1, or None).

        Without a cache position t sees idx[:, t-n+1 .. t], zero vectors before the window.
        With a kv_cache (new_kv_cache) idx holds only the new tokens and the cache supplies
        the n-1 before them; afterwards it holds the last n-1 tokens."""
        cfg, P = self.config, self.params
        idx = self._check_idx(idx)
        B, T = idx.shape
        n = cfg.context
        if kv_cache is None:
            history = np.full((B, n - 1), NO_TOKEN, dtype=np.int64)  # (B, n-1) nothing before the window
        elif kv_cache.history.shape[0] != B:
            raise ValueError(f"the cache holds {kv_cache.history.shape[0]} rows, idx has {B}")
        else:
            history = kv_cache.history
        ids = np.concatenate([history, idx], axis=1)  # (B, n-1+T)
        rng = self.dropout_rng if self.training and kv_cache is None else None  # None: no dropout
        x, ctx = context_forward(ids, P["wte.weight"], n)  # (B, T, n E)
        a, hidden = linear_forward(x, P["hidden.weight"], P["hidden.bias"])  # (B, T, H)
        h = np.tanh(a)
        hd, drop = dropout_forward(h, cfg.dropout, rng)
        logits, head = linear_forward(hd, P["lm_head.weight"], P["lm_head.bias"])  # (B, T, V)
        direct = None
        if cfg.direct:
            d, direct = linear_forward(x, P["direct.weight"])  # (B, T, V)
            logits += d
        self._cache = None
        if kv_cache is not None:
            kv_cache.history = ids[:, ids.shape[1] - (n - 1) :].copy()  # the last n-1 ids
            kv_cache.advance(T)
            return logits, None
        if targets is None:
            return logits, None
        loss, ce = cross_entropy_forward(logits, np.asarray(targets))
        self._cache = dict(ctx=ctx, hidden=hidden, h=h, drop=drop, head=head, direct=direct, ce=ce)
        return logits, loss

    def backward(self, accumulate=False):
        """forward read in reverse -> self.grads (zeroed first unless accumulate)."""
        c = self._backward_cache(zero_grads=not accumulate)
        G = self.grads
        dlogits = cross_entropy_backward(1.0, c["ce"])  # (B, T, V)
        dh = linear_backward(dlogits, c["head"], G["lm_head.weight"], G["lm_head.bias"])  # (B, T, H)
        dh = dropout_backward(dh, c["drop"])
        da = dh * (1.0 - c["h"] ** 2)  # h = tanh(a): tanh' = 1 - h^2
        dx = linear_backward(da, c["hidden"], G["hidden.weight"], G["hidden.bias"])  # (B, T, n E)
        if c["direct"] is not None:
            # x fed the output twice (through the tanh layer and directly): the gradients add
            dx += linear_backward(dlogits, c["direct"], G["direct.weight"])
        context_backward(dx, c["ctx"], G["wte.weight"])
        return G
