"""GPTConfig and GPT: the transformer, its parameters, forward pass and hand-written backward.

Parameters live in ONE flat buffer and `model.params` holds named views into it (llm.c's
layout); gradients likewise live in one flat buffer with `model.grads` as views. So the
optimizer, gradient clipping and (later) MPI all-reduce work on a single array.

Names and layouts follow Hugging Face GPT-2 (without the `transformer.` prefix), and weights
are stored (in, out) like GPT-2's Conv1D, so loading GPT-2 is a rename table (hf.py):
    wte.weight (V, C)   wpe.weight (block_size, C)   lm_head.weight (V, C) when untied
    h.{i}.ln_1.{weight,bias} (C)   h.{i}.attn.c_attn.{weight (C, 3C), bias (3C)}
    h.{i}.attn.c_proj.{weight (C, C), bias (C)}   h.{i}.ln_2.{weight,bias} (C)
    h.{i}.mlp.c_fc.{weight (C, 4C), bias (4C)}   h.{i}.mlp.c_proj.{weight (4C, C), bias (C)}
    ln_f.{weight,bias} (C)  (pre-norm only)
This file does not sample text or train; see generate.py and train.py.
"""
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from vintagelm.heap import reuse_freed_memory
from vintagelm.nn.activation import ACTIVATIONS
from vintagelm.nn.kernels import get_kernels
from vintagelm.nn import lanes
from vintagelm.nn.attention import attention_forward_cached
from vintagelm.nn.attention_tiled import TiledAttentionCache, tiled_attention_backward, tiled_attention_forward
from vintagelm.nn.dropout import dropout_backward, dropout_forward
from vintagelm.nn.embedding import embedding_backward, sinusoidal_table
from vintagelm.nn.linear import linear_backward, linear_forward
from vintagelm.nn.loss import cross_entropy_backward, cross_entropy_forward

LN_EPS = 1e-5  # layer-norm epsilon, as GPT-2
ATTENTION_BLOCK = 64  # query rows per block of "blocked" attention: big enough to keep BLAS efficient


@dataclass
class GPTConfig:
    vocab_size: int = 65  # number of token ids (V)
    block_size: int = 64  # longest context the model sees (T max)
    n_layer: int = 4  # transformer blocks (L)
    n_head: int = 4  # attention heads per block (H)
    n_embd: int = 128  # channels (C); must be divisible by n_head
    dropout: float = 0.0  # dropout probability on embeddings, attention and residual branches
    bias: bool = True  # biases in linear layers and layer norms (GPT-2: True)
    norm: str = "pre"  # "pre" (GPT-2), "post" (the 2017 paper) or "none"
    pos: str = "learned"  # position encoding: "learned" (GPT-2) or "sinusoidal" (2017 paper)
    tie_weights: bool = True  # output head shares the token embedding matrix (GPT-2: True)
    activation: str = "gelu"  # MLP nonlinearity: "gelu" (tanh form, GPT-2) or "relu"
    init: str = "gpt2"  # "gpt2": N(0, 0.02), residual projections / sqrt(2 L); "normal": N(0, 1)
    attention: str = "blocked"  # "naive": full (T, T) scores; "blocked": causal query blocks of
    #   ATTENTION_BLOCK rows that skip the masked key blocks (same result, less work); "tiled":
    #   online softmax over tiles, memory linear in T (nn/attention_tiled.py)

    CHOICES = {
        "norm": ("pre", "post", "none"),
        "pos": ("learned", "sinusoidal"),
        "activation": tuple(ACTIVATIONS),
        "init": ("gpt2", "normal"),
        "attention": ("naive", "blocked", "tiled"),
    }

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name in ("bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"GPTConfig.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**d)


def param_shapes(config):
    """Ordered {name: shape} of every parameter the config asks for (tied head: no lm_head)."""
    V, C, L = config.vocab_size, config.n_embd, config.n_layer
    shapes = {"wte.weight": (V, C)}
    if config.pos == "learned":
        shapes["wpe.weight"] = (config.block_size, C)

    def add(name, w_shape, has_bias):
        shapes[name + ".weight"] = w_shape
        if has_bias:
            shapes[name + ".bias"] = (w_shape[-1],)

    for i in range(L):
        p = f"h.{i}."
        if config.norm != "none":
            add(p + "ln_1", (C,), config.bias)
        add(p + "attn.c_attn", (C, 3 * C), config.bias)
        add(p + "attn.c_proj", (C, C), config.bias)
        if config.norm != "none":
            add(p + "ln_2", (C,), config.bias)
        add(p + "mlp.c_fc", (C, 4 * C), config.bias)
        add(p + "mlp.c_proj", (4 * C, C), config.bias)
    if config.norm == "pre":
        add("ln_f", (C,), config.bias)
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


# the layers whose backward writes its weight and bias gradients into their slots outright
# (GPT._linear_backward); every other gradient is added into its slot, which starts at zero
LINEAR_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def flat_views(flat, shapes):
    """Carve a flat 1-D buffer into named views with the given shapes (no copies)."""
    views, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        views[name] = flat[offset : offset + n].reshape(shape)
        offset += n
    return views


class GPT:
    """A GPT language model in NumPy. See the module docstring for parameter names."""

    def __init__(self, config, seed=0, dtype=np.float32, kernels="auto"):
        if not isinstance(config, GPTConfig):
            raise TypeError("GPT(config) needs a GPTConfig")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.config, self.dtype = config, dtype
        reuse_freed_memory()  # every step frees and reallocates the same arrays (heap.py)
        # the elementwise ops: readable NumPy, or compiled numba (nn/kernels.py); same math
        self.kernels = get_kernels(kernels, dtype)
        self.shapes = param_shapes(config)
        n = sum(math.prod(s) for s in self.shapes.values())
        self.flat_params = np.zeros(n, dtype=dtype)
        self.flat_grads = np.zeros(n, dtype=dtype)
        self.params = flat_views(self.flat_params, self.shapes)
        self.grads = flat_views(self.flat_grads, self.shapes)
        # zeroed before each backward: the slots nothing overwrites (5% of the parameters in
        # `baby`; zeroing all of them was 4 ms a step)
        self._summed_grads = [g for k, g in self.grads.items() if not k.rsplit(".", 1)[0].endswith(LINEAR_LAYERS)]
        self.pos_table = (
            sinusoidal_table(config.block_size, config.n_embd, dtype) if config.pos == "sinusoidal" else None
        )
        self.training = True
        # one seed, two independent streams: weights now, dropout masks during training
        self.dropout_rng = np.random.default_rng([seed, 1])
        self._init_weights(np.random.default_rng([seed, 0]))
        self._cache = None
        self._accumulate = False  # backward adds into the gradients instead of overwriting

    # ---------------------------------------------------------------- parameters
    def _init_weights(self, rng):
        """GPT-2 init: N(0, 0.02) for matrices and embeddings, residual projections (the two
        c_proj per block, which add into the residual stream) scaled by 1/sqrt(2 L) so the
        stream's variance does not grow with depth; biases 0, norm gains 1.
        "normal" draws every matrix from N(0, 1): the careless init that experiments compare.
        Draws are float64 then cast, so a seed gives the same weights in either dtype."""
        cfg = self.config
        for name, p in self.params.items():
            if ".ln_" in name or name.startswith("ln_"):
                p[...] = 1.0 if name.endswith("weight") else 0.0
            elif name.endswith("bias"):
                p[...] = 0.0
            else:
                std = 0.02 if cfg.init == "gpt2" else 1.0
                if cfg.init == "gpt2" and name.endswith("c_proj.weight"):
                    std /= math.sqrt(2 * cfg.n_layer)
                p[...] = rng.standard_normal(p.shape) * std

    def num_params(self):
        """Number of parameters (a tied head is counted once, the sinusoidal table not at all)."""
        return int(self.flat_params.size)

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 N for the matmuls with the weights (2 per
        multiply-add forward, 4 backward), plus 12 L C T for the attention scores and the
        weighted sum at full context T = block_size. N leaves out position embeddings,
        which are added, not multiplied."""
        cfg = self.config
        n = self.num_params() - (self.params["wpe.weight"].size if cfg.pos == "learned" else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def head_weight(self):
        """(V, C) matrix of the output head: the token embedding when tied."""
        return self.params["wte.weight" if self.config.tie_weights else "lm_head.weight"]

    def train(self, mode=True):
        """Dropout on (training) or off (evaluation, sampling). Returns self."""
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    # ---------------------------------------------------------------- forward
    def _check_idx(self, idx):
        idx = np.asarray(idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx must be a 2-D integer array (B, T), got {idx.dtype} {idx.shape}")
        if idx.shape[1] > self.config.block_size:
            raise ValueError(f"sequence length {idx.shape[1]} exceeds block_size {self.config.block_size}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got {idx.min()}..{idx.max()}")
        return idx

    def _dropout(self, x):
        rng = self.dropout_rng if self.training else None
        return dropout_forward(x, self.config.dropout, rng)

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) ints -> (logits (B, T, V), loss float or None).

        With targets (B, T) (-1 = ignore) the mean cross-entropy is returned and everything
        backward() needs is kept until the next forward.
        With a kv_cache (see generate.KVCache) idx holds only the NEW tokens, at positions
        kv_cache.pos onwards; their keys and values are appended to the cache (inference)."""
        if kv_cache is not None:
            return self._forward_cached(idx, kv_cache), None
        cfg, P = self.config, self.params
        idx = self._check_idx(idx)
        T = idx.shape[1]
        x = P["wte.weight"][idx]  # (B, T, C) token embeddings
        x = x + self._positions(0, T)
        x, drop_emb = self._dropout(x)
        blocks = []
        for i in range(cfg.n_layer):
            x, cache = self._block_forward(x, i)
            blocks.append(cache)
        ln_f = None
        if cfg.norm == "pre":
            x, ln_f = self.kernels.layernorm_forward(x, P["ln_f.weight"], P.get("ln_f.bias"), LN_EPS)
        logits = x @ self.head_weight().T  # (B, T, C) @ (C, V) -> (B, T, V)
        loss, ce = None, None
        if targets is not None:
            loss, ce = cross_entropy_forward(logits, np.asarray(targets))
        self._cache = dict(idx=idx, drop_emb=drop_emb, blocks=blocks, ln_f=ln_f, x_final=x, ce=ce)
        return logits, loss

    def _positions(self, start, stop):
        """(stop - start, C) position encodings for positions start .. stop-1."""
        table = self.params["wpe.weight"] if self.config.pos == "learned" else self.pos_table
        return table[start:stop]

    def _forward_cached(self, idx, kv_cache):
        """Inference forward of new tokens idx (B, Tn) after kv_cache.pos cached ones.
        Dropout is off and nothing is kept for backward. -> logits (B, Tn, V)."""
        cfg, P = self.config, self.params
        idx = np.asarray(idx)
        pos, Tn = kv_cache.pos, idx.shape[1]
        if pos + Tn > cfg.block_size:
            raise ValueError(f"KV cache holds {pos} tokens; {Tn} more exceed block_size {cfg.block_size}")
        self._check_idx(idx)
        self._cache = None
        x = P["wte.weight"][idx] + self._positions(pos, pos + Tn)  # (B, Tn, C)
        was_training, self.training = self.training, False  # dropout off; restored below
        try:
            for i in range(cfg.n_layer):
                p, kv = f"h.{i}.", (*kv_cache.layer(i), pos)
                x, _ = self._residual_forward(x, p + "ln_1", lambda h: self._attn_forward(h, p, {}, kv))
                x, _ = self._residual_forward(x, p + "ln_2", lambda h: self._mlp_forward(h, p, {}))
        finally:
            self.training = was_training
        if cfg.norm == "pre":
            x, _ = self.kernels.layernorm_forward(x, P["ln_f.weight"], P.get("ln_f.bias"), LN_EPS)
        kv_cache.advance(Tn)
        return x @ self.head_weight().T  # (B, Tn, V)

    def _block_forward(self, x, i):
        """One transformer block on x (B, T, C); norm placement follows config.norm."""
        p = f"h.{i}."
        cache = {}
        x, cache["attn_res"] = self._residual_forward(x, p + "ln_1", lambda h: self._attn_forward(h, p, cache))
        x, cache["mlp_res"] = self._residual_forward(x, p + "ln_2", lambda h: self._mlp_forward(h, p, cache))
        return x, cache

    def _residual_forward(self, x, ln_name, sublayer):
        """pre:  x + f(ln(x))    post: ln(x + f(x))    none: x + f(x)."""
        # the sublayer's output is a fresh array (a matmul's), so the residual is added into it
        norm, P = self.config.norm, self.params
        if norm == "pre":
            h, ln = self.kernels.layernorm_forward(x, P[ln_name + ".weight"], P.get(ln_name + ".bias"), LN_EPS)
            out = sublayer(h)
            out += x
            return out, ln
        out = sublayer(x)
        out += x
        if norm == "post":
            return self.kernels.layernorm_forward(out, P[ln_name + ".weight"], P.get(ln_name + ".bias"), LN_EPS)
        return out, None

    def _attn_forward(self, h, p, cache, kv=None):
        """Attention sublayer; kv = (k_buf, v_buf, pos) decodes against a KV cache instead."""
        P = self.params
        qkv, cache["c_attn"] = linear_forward(h, P[p + "attn.c_attn.weight"], P.get(p + "attn.c_attn.bias"))
        drop_p = self.config.dropout if self.training else 0.0
        kind = self.config.attention
        if kv is not None:
            y = attention_forward_cached(qkv, self.config.n_head, *kv, self.kernels.causal_softmax)
        elif kind == "tiled":
            y, cache["attn"] = tiled_attention_forward(qkv, self.config.n_head, drop_p, self.dropout_rng)
        else:
            chunk = ATTENTION_BLOCK if kind == "blocked" else None
            # the batch split over threads, each with one BLAS thread (nn/lanes.py)
            y, cache["attn"] = lanes.attention_forward(
                qkv, self.config.n_head, drop_p, self.dropout_rng, chunk, self.kernels.causal_softmax
            )
        y, cache["c_proj"] = linear_forward(y, P[p + "attn.c_proj.weight"], P.get(p + "attn.c_proj.bias"))
        y, cache["attn_drop"] = self._dropout(y)
        return y

    def _mlp_forward(self, h, p, cache):
        P = self.params
        act_forward, _ = self.kernels.activations[self.config.activation]
        # c_fc's bias is added by the activation, in the same pass over the (B, T, 4C) array
        f, cache["c_fc"] = linear_forward(h, P[p + "mlp.c_fc.weight"])
        g, cache["act"] = act_forward(f, P.get(p + "mlp.c_fc.bias"))
        y, cache["mlp_proj"] = linear_forward(g, P[p + "mlp.c_proj.weight"], P.get(p + "mlp.c_proj.bias"))
        y, cache["mlp_drop"] = self._dropout(y)
        return y

    # ---------------------------------------------------------------- backward
    def backward(self, accumulate=False):
        """Back-propagate the loss of the last forward(idx, targets); returns self.grads.

        The returned dict holds views into one flat buffer that the next backward overwrites
        (or adds to, with accumulate=True, for gradient accumulation over micro-batches)."""
        if self._cache is None or self._cache["ce"] is None:
            raise RuntimeError("backward() needs a forward(idx, targets) with targets first")
        cfg, G, c = self.config, self.grads, self._cache
        self._cache = None  # free the activations as soon as we are done with them
        self._accumulate = accumulate
        if not accumulate:
            for g in self._summed_grads:
                g.fill(0.0)
        dlogits = cross_entropy_backward(1.0, c["ce"])  # (B, T, V)
        # forward: logits = x @ Wᵀ with W (V, C)
        W = self.head_weight()
        G["wte.weight" if cfg.tie_weights else "lm_head.weight"] += (
            dlogits.reshape(-1, dlogits.shape[-1]).T @ c["x_final"].reshape(-1, W.shape[1])
        )
        dx = dlogits @ W  # (B, T, C)
        if cfg.norm == "pre":
            dx, dw, db = self.kernels.layernorm_backward(dx, c["ln_f"], cfg.bias)
            self._add_grad("ln_f", dw, db)
        for i in reversed(range(cfg.n_layer)):
            dx = self._block_backward(dx, i, c["blocks"][i])
        dx = dropout_backward(dx, c["drop_emb"])
        if cfg.pos == "learned":
            G["wpe.weight"][: dx.shape[1]] += dx.sum(axis=0)
        G["wte.weight"] += embedding_backward(dx, c["idx"], cfg.vocab_size)
        return self.grads

    def _add_grad(self, name, dw, db):
        self.grads[name + ".weight"] += dw
        if db is not None:
            self.grads[name + ".bias"] += db

    def _block_backward(self, dx, i, cache):
        p = f"h.{i}."
        dx = self._residual_backward(dx, p + "ln_2", cache["mlp_res"], lambda d: self._mlp_backward(d, p, cache))
        return self._residual_backward(dx, p + "ln_1", cache["attn_res"], lambda d: self._attn_backward(d, p, cache))

    def _residual_backward(self, dout, ln_name, ln_cache, sublayer_backward):
        """The residual wrappers read in reverse:
        pre:  out = x + f(ln(x))  ->  dx = dout + ln_back(f_back(dout))
        post: out = ln(x + f(x))  ->  dz = ln_back(dout); dx = dz + f_back(dz)
        none: out = x + f(x)      ->  dx = dout + f_back(dout)"""
        norm, bias = self.config.norm, self.config.bias
        if norm == "pre":  # the skip path's dout is added in the norm's own pass
            dx, dw, db = self.kernels.layernorm_backward(sublayer_backward(dout), ln_cache, bias, skip=dout)
            self._add_grad(ln_name, dw, db)
            return dx
        if norm == "post":
            dout, dw, db = self.kernels.layernorm_backward(dout, ln_cache, bias)
            self._add_grad(ln_name, dw, db)
        dx = sublayer_backward(dout)
        dx += dout  # dx is fresh (a matmul's output): add the skip path into it
        return dx

    def _linear_backward(self, dy, cache, name):
        """linear_backward of layer `name` -> dx. Its weight and bias gradients are written
        straight into their slots of the gradient buffer, or added there when accumulating."""
        w, bias = self.params[name + ".weight"], self.config.bias
        if self._accumulate:
            dx, dw, db = linear_backward(dy, cache, w, bias)
            self._add_grad(name, dw, db)
            return dx
        slots = (self.grads[name + ".weight"], self.grads.get(name + ".bias"))
        return linear_backward(dy, cache, w, bias, out=slots)[0]

    def _attn_backward(self, dy, p, cache):
        dy = dropout_backward(dy, cache["attn_drop"])
        dy = self._linear_backward(dy, cache["c_proj"], p + "attn.c_proj")
        if isinstance(cache["attn"], TiledAttentionCache):
            dqkv = tiled_attention_backward(dy, cache["attn"])
        else:
            dqkv = lanes.attention_backward(dy, cache["attn"], self.kernels.softmax_backward)
        return self._linear_backward(dqkv, cache["c_attn"], p + "attn.c_attn")

    def _mlp_backward(self, dy, p, cache):
        _, act_backward = self.kernels.activations[self.config.activation]
        dy = dropout_backward(dy, cache["mlp_drop"])
        dg = self._linear_backward(dy, cache["mlp_proj"], p + "mlp.c_proj")
        df = act_backward(dg, cache["act"])
        # c_fc's bias went in through the activation; its gradient is still the sum of df
        return self._linear_backward(df, cache["c_fc"], p + "mlp.c_fc")

    # ---------------------------------------------------------------- Hugging Face
    @classmethod
    def from_hf(cls, path, dtype=np.float32):
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors)."""
        from vintagelm.hf import load_hf

        return load_hf(cls, path, dtype)

    def save_hf(self, path):
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads."""
        from vintagelm.hf import save_hf

        save_hf(self, path)
