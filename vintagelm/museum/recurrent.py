"""What the museum's recurrent models (rnn.py, lstm.py) share, so that each of those files
holds only its own layer and that layer's gradient.

    RecurrentConfig the fields rnn.py's and lstm.py's configs share (each is a named subclass)
    RecurrentLM     embedding -> recurrent layers -> linear head: the carried state of
                    truncated BPTT and the decoding state live here
    RecurrentState  the decoding "cache" of a recurrent model: just its state

The flat parameter and gradient buffers, train/eval and the idx check are every model's
(flat_model.FlatParamsModel).

Shapes: B batch, T time, C hidden size (n_embd), V vocabulary, L layers.
"""
from dataclasses import dataclass

import numpy as np

from vintagelm.checked_config import ConfigIO
from vintagelm.flat_model import FlatParamsModel
from vintagelm.nn.dropout import dropout_backward, dropout_forward
from vintagelm.nn.linear import linear_backward, linear_forward
from vintagelm.nn.loss import cross_entropy_backward, cross_entropy_forward


# ---------------------------------------------------------------- configs
@dataclass
class RecurrentConfig(ConfigIO):
    """The shape of an rnn or lstm model; RNNConfig and LSTMConfig name it per architecture
    (a checkpoint's config records which), and their fields are these."""
    vocab_size: int = 65  # number of token ids (V)
    block_size: int = 64  # the window the training loop cuts (the BPTT length); no positions
    n_embd: int = 256  # hidden size (C), also the embedding size; an LSTM's cell has it too
    n_layer: int = 1  # stacked recurrent layers (L)
    dropout: float = 0.0  # on the embedding output, between layers and before the head
    carry_state: bool = False  # training: start each window from the previous one's final state

    def __post_init__(self):
        self.check(positive=("vocab_size", "block_size", "n_embd", "n_layer"), booleans=("carry_state",))


# ---------------------------------------------------------------- recurrent models
class RecurrentState:
    """The decoding state of a recurrent model: what a KV cache is to a GPT, at constant size.

    state: one tuple per layer of (B, C) arrays, (h,) for an RNN and (h, c) for an LSTM.
    The model's cached forward starts from it, replaces it with the state after the new
    tokens and calls advance(T); pos counts the tokens consumed (the window's length, which
    generate.py compares with block_size)."""

    def __init__(self, n_layer, n_state, batch_size, hidden, dtype):
        self.shape, self.dtype = (n_layer, n_state, batch_size, hidden), dtype
        self.reset()

    def reset(self):
        """Back to the empty context: zero state, no tokens."""
        L, S, B, C = self.shape
        self.state = [tuple(np.zeros((B, C), self.dtype) for _ in range(S)) for _ in range(L)]
        self.pos = 0

    def advance(self, n):
        self.pos += n


class RecurrentLM(FlatParamsModel):
    """embedding -> n_layer recurrent layers -> linear head, for rnn.py and lstm.py.

    A subclass gives `n_state` (1: h, 2: h and c) and the layer pair
        layer_forward(x (B, T, C), state, i) -> (hs (B, T, C), cache, final state)
        layer_backward(dhs (B, T, C), cache, i) -> dx (B, T, C), adding into self.grads
    Dropout (p = config.dropout) sits on the non-recurrent connections only: the embedding
    output, between layers and before the head (Zaremba et al. 2014); the recurrence itself is
    never masked, so the state is not damaged step after step.

    Initial state of a forward:
        kv_cache given                     the cache's state (decoding; nothing kept for backward)
        training and config.carry_state    the final state of the previous training forward, if
                                           it had the same batch size (truncated BPTT: the next
                                           window continues each row's text); else zeros
        otherwise (eval, or no carrying)   zeros
    The carried state is a copy, so no gradient flows back into the window it came from: that
    is the truncation. It is a public attribute, `self.state` (a list of per-layer tuples of
    (B, C) arrays or None), which a loop may save, swap or set; reset_state() clears it.
    """

    n_state = 1
    n_gates = 1  # pre-activations per hidden unit: 1 (Elman: tanh), 4 (LSTM: i, f, o, g)

    def __init__(self, config, seed=0, dtype=np.float32, backend="auto"):
        super().__init__(config, seed, dtype, backend)
        self.state = None  # the carried state (training with carry_state only)

    @classmethod
    def training_bytes(cls, config, batch_size, itemsize, train_tokens=0):
        """Estimated peak bytes of one training step, from the config alone (memory.check_fits,
        architectures.TRAINING_BYTES): four copies of the parameters (weights, gradients, AdamW's m
        and v) and, at every position of the batch, what forward keeps for backward and
        backward makes: per layer the input products, gate values and their gradients
        (n_gates C numbers each) and about six C-wide arrays (states, cells, dropout, the
        input's gradient), then the head's logits, probabilities and their gradient (V each).
        The length of the text (train_tokens) plays no part."""
        C, L, V = config.n_embd, config.n_layer, config.vocab_size
        per_position = L * (3 * cls.n_gates * C + 6 * C) + 3 * V
        return itemsize * (4 * cls.param_count(config) + batch_size * config.block_size * per_position)

    def reset_state(self):
        """Forget the carried state: the next training forward starts from zeros."""
        self.state = None

    def new_kv_cache(self, batch_size=1):
        return RecurrentState(self.config.n_layer, self.n_state, batch_size, self.config.n_embd, self.dtype)

    def _zero_state(self, B):
        C = self.config.n_embd
        return [tuple(np.zeros((B, C), self.dtype) for _ in range(self.n_state)) for _ in range(self.config.n_layer)]

    def _initial_state(self, B, kv_cache):
        if kv_cache is not None:
            if kv_cache.shape[2] != B:
                raise ValueError(f"the cache holds {kv_cache.shape[2]} rows, idx has {B}")
            return kv_cache.state
        carried = self.state
        if self.training and self.config.carry_state and carried is not None and carried[0][0].shape[0] == B:
            return carried
        return self._zero_state(B)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) ints -> (logits (B, T, V), mean loss over targets != -1, or None).

        With a kv_cache (new_kv_cache) idx holds only the new tokens: each costs one step of
        the recurrence, however long the context (constant cost per token)."""
        cfg, P = self.config, self.params
        idx = self._check_idx(idx)
        B, T = idx.shape
        state = self._initial_state(B, kv_cache)
        rng = self.dropout_rng if self.training and kv_cache is None else None  # None: no dropout
        # embedding: row idx[b, t] of wte, for every position
        x = P["wte.weight"][idx]  # (B, T, C)
        x, drop = dropout_forward(x, cfg.dropout, rng)
        drops, layers, final = [drop], [], []
        for i in range(cfg.n_layer):
            x, cache, last = self.layer_forward(x, state[i], i)  # (B, T, C)
            x, drop = dropout_forward(x, cfg.dropout, rng)
            layers.append(cache)
            drops.append(drop)
            final.append(last)
        logits, head = linear_forward(x, P["lm_head.weight"], P["lm_head.bias"])  # (B, T, V)
        self._cache = None
        if kv_cache is not None:
            kv_cache.state = final
            kv_cache.advance(T)
            return logits, None
        if self.training and cfg.carry_state:
            # a copy: the next window starts here but its gradient stops here (truncated BPTT)
            self.state = [tuple(s.copy() for s in last) for last in final]
        if targets is None:
            return logits, None
        loss, ce = cross_entropy_forward(logits, np.asarray(targets))
        self._cache = dict(idx=idx, drops=drops, layers=layers, head=head, ce=ce)
        return logits, loss

    def backward(self, accumulate=False):
        """forward read in reverse -> self.grads (zeroed first unless accumulate).

        The gradient with respect to the initial state is dropped: it belongs to the previous
        window (carried state) or to nothing (zeros)."""
        c = self._backward_cache(zero_grads=not accumulate)
        G = self.grads
        dlogits = cross_entropy_backward(1.0, c["ce"])  # (B, T, V)
        dx = linear_backward(dlogits, c["head"], G["lm_head.weight"], G["lm_head.bias"])  # (B, T, C)
        for i in reversed(range(self.config.n_layer)):
            dx = dropout_backward(dx, c["drops"][i + 1])
            dx = self.layer_backward(dx, c["layers"][i], i)
        dx = dropout_backward(dx, c["drops"][0])
        # the embedding copied rows of wte, so each row gathers the gradient of every position
        # holding its id; ids repeat, hence the scatter-add
        np.add.at(G["wte.weight"], c["idx"].reshape(-1), dx.reshape(-1, dx.shape[-1]))
        return G
