"""GPTConfig and GPT: the transformer, its parameters, forward pass and hand-written backward.

Parameters live in ONE flat buffer and `model.params` holds named views into it; gradients
likewise in one flat buffer with `model.grads` as views (flat_model.py builds both, for every
architecture). So the optimizer, gradient clipping and the MPI all-reduce (dist.py) work on a
single array.

One model with switches, from GPT-2 (2019; every default) to today's block (Llama's shape:
norm_type="rms", pos="rope", activation="swiglu", n_kv_head < n_head, qk_norm, no biases,
untied head), each piece on its own. Names and layouts follow Hugging Face GPT-2 (without the
`transformer.` prefix), and weights are stored (in, out) like GPT-2's Conv1D, so loading GPT-2
is a rename table (hf.py). D = n_embd / n_head, Hkv = n_kv_head (n_head when 0), F the MLP width:
    wte.weight (V, C)   wpe.weight (block_size, C) when pos="learned"   lm_head.weight (V, C) when untied
    h.{i}.ln_1.{weight,bias} (C)   (no bias with bias=False, nor in an RMSNorm)
    h.{i}.attn.c_attn.{weight (C, (H + 2 Hkv) D), bias}   q, k, v side by side along the outputs
    h.{i}.attn.q_norm.weight (D)   h.{i}.attn.k_norm.weight (D)   when qk_norm
    h.{i}.attn.c_proj.{weight (C, C), bias (C)}   h.{i}.ln_2.{weight,bias} (C)
    gelu/relu: h.{i}.mlp.c_fc.{weight (C, F), bias}   h.{i}.mlp.c_proj.{weight (F, C), bias (C)}
    swiglu:    h.{i}.mlp.c_gate (C, F), h.{i}.mlp.c_fc (C, F) (up), h.{i}.mlp.c_proj (F, C) (down)
    ln_f.{weight,bias} (C)  (pre-norm only)

Read in this order: GPTConfig and param_shapes (what there is), GPT.__init__ (what it adds to
FlatParamsModel's construction, and where each variant is chosen), forward and block_forward
(what it computes), backward and block_backward (the same read in reverse). Every op is called
through `self.ops`, the op table of the chosen backend (nn/ops.py: "reference" runs the nn/
pairs, "fast" faster versions of the same math); the attention heads between c_attn and c_proj
(QK-norm, RoPE, grouped KV heads) are attention_heads.py.

The gradient rule: every backward that has parameters ADDS into its slots of self.grads;
backward() zeroes them first (accumulate=True keeps them, for micro-batches).

Shapes: B batch, T time, C channels (n_embd), V vocabulary, L layers.
This file does not sample text or train; see generate.py and train.py.
"""
import math
from dataclasses import dataclass
from functools import partial

import numpy as np

from vintagelm.attention_heads import AttentionHeads
from vintagelm.backend import load_ops
from vintagelm.checked_config import ConfigIO
from vintagelm.flat_model import FlatParamsModel
from vintagelm.kv_cache import KVCache
from vintagelm.nn.activation import ACTIVATIONS
from vintagelm.nn.embedding import sinusoidal_table


@dataclass
class GPTConfig(ConfigIO):
    vocab_size: int = 65  # number of token ids (V)
    block_size: int = 64  # longest context the model sees (T max)
    n_layer: int = 4  # transformer blocks (L)
    n_head: int = 4  # attention heads per block (H)
    n_kv_head: int = 0  # key/value heads (Hkv), dividing n_head: 1 = multi-query; 0 = n_head (GPT-2)
    n_embd: int = 128  # channels (C); must be divisible by n_head
    dropout: float = 0.0  # dropout probability on embeddings, attention and residual branches
    bias: bool = True  # biases in linear layers and layer norms (GPT-2: True)
    norm: str = "pre"  # placement: "pre" (GPT-2), "post" (the 2017 paper) or "none"
    norm_type: str = "layer"  # "layer" (LayerNorm, GPT-2) or "rms" (RMSNorm: a gain, no mean, no bias)
    norm_eps: float = 1e-5  # epsilon of either norm and of QK-norm (GPT-2's 1e-5; HF Llama's rms_norm_eps)
    pos: str = "learned"  # position encoding: "learned" (GPT-2), "sinusoidal" (2017 paper), "rope"
    #   (queries and keys rotated by position, nn/rope.py) or "none" (only the causal mask tells order)
    rope_theta: float = 10000.0  # RoPE's base: pair i turns by theta^(-2i/D) radians per position
    tie_weights: bool = True  # output head shares the token embedding matrix (GPT-2: True)
    activation: str = "gelu"  # MLP: "gelu" (tanh form, GPT-2), "relu" or "swiglu" (gated, 3 matrices)
    mlp_hidden: int = 0  # the MLP's hidden width F; 0: 4C for gelu/relu, and for swiglu 2/3 of 4C
    #   rounded up to a multiple of 8, 8 * ceil(C / 3) (about the parameters of 4C with 2 matrices)
    qk_norm: bool = False  # RMSNorm (gain (D,)) of each head's queries and keys before RoPE and the scores
    init: str = "gpt2"  # "gpt2": N(0, 0.02), residual projections / sqrt(2 L); "normal": N(0, 1)
    attention: str = "blocked"  # "naive": full (T, T) scores; "blocked": causal query blocks of
    #   64 rows (nn/ops.py) that skip the masked key blocks (same result, less work); "tiled":
    #   online softmax over tiles, memory linear in T (nn/attention_tiled.py)

    # fields added after checkpoints were first written: their defaults ARE what every older
    # checkpoint computed (LayerNorm at eps 1e-5, full heads, the 4C MLP), so a saved config that
    # lacks them loads as the model it was; any other missing field is refused (checkpoint.py)
    ADDED_WITH_DEFAULTS = ("norm_type", "norm_eps", "rope_theta", "mlp_hidden", "n_kv_head", "qk_norm")

    CHOICES = {
        "norm": ("pre", "post", "none"),
        "norm_type": ("layer", "rms"),
        "pos": ("learned", "sinusoidal", "rope", "none"),
        "activation": (*ACTIVATIONS, "swiglu"),
        "init": ("gpt2", "normal"),
        "attention": ("naive", "blocked", "tiled"),
    }

    def __post_init__(self):
        self.check(positive=("vocab_size", "block_size", "n_layer", "n_head", "n_embd"),
                   non_negative=("n_kv_head", "mlp_hidden"), positive_numbers=("norm_eps", "rope_theta"),
                   booleans=("bias", "tie_weights", "qk_norm"))
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_head % self.kv_heads:
            raise ValueError(f"GPTConfig.n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head}); set "
                             f"n_kv_head to a divisor of n_head, or 0 for one per query head")
        for name, allowed in self.CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"GPTConfig.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}"
                )
        if self.pos == "rope" and self.head_dim % 2:
            raise ValueError(f"GPTConfig.pos 'rope' needs an even head size n_embd / n_head, got {self.head_dim}")

    @property
    def head_dim(self):
        """D, the size of every head (queries, keys and values alike)."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self):
        """Hkv, the key/value heads: n_kv_head, or n_head when it is 0."""
        return self.n_kv_head or self.n_head

    @property
    def mlp_width(self):
        """F, the MLP's hidden width (mlp_hidden, or the default the field's comment states)."""
        if self.mlp_hidden:
            return self.mlp_hidden
        return 8 * -(-self.n_embd // 3) if self.activation == "swiglu" else 4 * self.n_embd


def param_shapes(config):
    """Ordered {name: shape} of every parameter the config asks for (tied head: no lm_head)."""
    V, C, L, F = config.vocab_size, config.n_embd, config.n_layer, config.mlp_width
    D, H, Hkv = config.head_dim, config.n_head, config.kv_heads
    shapes = {"wte.weight": (V, C)}
    if config.pos == "learned":
        shapes["wpe.weight"] = (config.block_size, C)

    def add(name, w_shape, has_bias=config.bias):
        shapes[name + ".weight"] = w_shape
        if has_bias:
            shapes[name + ".bias"] = (w_shape[-1],)

    norm_bias = config.bias and config.norm_type == "layer"
    for i in range(L):
        p = f"h.{i}."
        if config.norm != "none":
            add(p + "ln_1", (C,), norm_bias)
        add(p + "attn.c_attn", (C, (H + 2 * Hkv) * D))
        if config.qk_norm:
            add(p + "attn.q_norm", (D,), False)
            add(p + "attn.k_norm", (D,), False)
        add(p + "attn.c_proj", (C, C))
        if config.norm != "none":
            add(p + "ln_2", (C,), norm_bias)
        if config.activation == "swiglu":
            add(p + "mlp.c_gate", (C, F))
        add(p + "mlp.c_fc", (C, F))
        add(p + "mlp.c_proj", (F, C))
    if config.norm == "pre":
        add("ln_f", (C,), norm_bias)
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


class GPT(FlatParamsModel):
    """A GPT language model in NumPy. See the module docstring for parameter names."""

    architecture = "gpt"  # the name checkpoints record (architectures.py)
    config_class = GPTConfig
    param_shapes = staticmethod(param_shapes)
    has_positions = True  # positions below block_size: the learned and sinusoidal tables, RoPE's too

    def __init__(self, config, seed=0, dtype=np.float32, backend="auto"):
        super().__init__(config, seed, dtype, backend)
        self.ops = load_ops(self.backend, self.dtype)
        self.head_name = "wte.weight" if config.tie_weights else "lm_head.weight"  # (V, C)
        self.pos_table = None  # (block_size, C) added to the embeddings; None: RoPE (attention_heads.py) or none
        if config.pos == "learned":
            self.pos_table = self.params["wpe.weight"]
        elif config.pos == "sinusoidal":
            self.pos_table = sinusoidal_table(config.block_size, config.n_embd, self.dtype)
        self._choose_variants(config)

    def _choose_variants(self, config):
        """The one place each variant is chosen, for both directions: the norm, the MLP (and
        the layers it takes) and the attention heads (attention variant, QK-norm, RoPE, grouped KV)."""
        ops = self.ops
        norm_forward, self.norm_backward = ops.norm(config.norm_type)
        self.norm_forward = partial(norm_forward, eps=config.norm_eps)
        if config.activation == "swiglu":
            self.mlp_forward, self.mlp_backward = ops.swiglu_forward, ops.swiglu_backward
            self.mlp_layers = ("mlp.c_gate", "mlp.c_fc", "mlp.c_proj")  # gate, up, down
        else:
            self.mlp_forward, self.mlp_backward = partial(ops.mlp_forward, activation=config.activation), ops.mlp_backward
            self.mlp_layers = ("mlp.c_fc", "mlp.c_proj")
        self.heads = AttentionHeads(config, ops, self.dtype)

    # ---------------------------------------------------------------- parameters
    def _init_weights(self, rng):
        """GPT-2 init: N(0, 0.02) for matrices and embeddings, residual projections (the two
        c_proj per block, which add into the residual stream; SwiGLU's down projection is its
        MLP's c_proj) scaled by 1/sqrt(2 L) so the
        stream's variance does not grow with depth; biases 0, norm gains 1.
        "normal" draws every matrix from N(0, 1): the careless init that experiments compare.
        Draws are float64 then cast, so a seed gives the same weights in either dtype."""
        cfg = self.config
        for name, p in self.params.items():
            if name.endswith("bias"):
                p[...] = 0.0
            elif p.ndim == 1:  # the norms' gains (ln_*, q_norm, k_norm): the only 1-D weights
                p[...] = 1.0
            else:
                std = 0.02 if cfg.init == "gpt2" else 1.0
                if cfg.init == "gpt2" and name.endswith("c_proj.weight"):
                    std /= math.sqrt(2 * cfg.n_layer)
                p[...] = rng.standard_normal(p.shape) * std

    def layer(self, name):
        """(weight, bias or None) of layer `name`, e.g. "h.0.attn.c_attn"."""
        return self.params[name + ".weight"], self.params.get(name + ".bias")

    def layer_grads(self, name):
        """(weight, bias or None) gradient slots of layer `name`."""
        return self.grads[name + ".weight"], self.grads.get(name + ".bias")

    def mlp_params(self, prefix, of):
        """weight, bias, weight, bias, ... of the block's MLP layers (self.mlp_layers), from
        `of` = self.params or self.grads (bias None where there is none)."""
        return tuple(x for name in self.mlp_layers for x in (of[prefix + name + ".weight"], of.get(prefix + name + ".bias")))

    @staticmethod
    def qk_gains(prefix, of):
        """(q_norm, k_norm) gains of the block, from self.params or self.grads; (None, None) without QK-norm."""
        return of.get(prefix + "attn.q_norm.weight"), of.get(prefix + "attn.k_norm.weight")

    def flops_per_token(self):
        """Forward + backward FLOPs per token: 6 N for the matmuls with the weights (2 per
        multiply-add forward, 4 backward), plus 12 L C T for the attention scores and the
        weighted sum at full context T = block_size (H query heads of D: H D = C, however few
        kv heads they share). N counts every matrix as it is shaped (c_attn's (H + 2 Hkv) D
        outputs, SwiGLU's three C x F matrices) and leaves out position embeddings, which are
        added, not multiplied."""
        cfg = self.config
        n = self.num_params() - (self.params["wpe.weight"].size if cfg.pos == "learned" else 0)
        return 6 * n + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def new_kv_cache(self, batch_size=1):
        """An empty KVCache (kv_cache.py) for decoding with this model."""
        return KVCache.for_model(self, batch_size)

    # ---------------------------------------------------------------- forward
    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) ints -> (logits (B, T, V), loss float or None).

        With targets (B, T) (-1 = ignore) the mean cross-entropy is returned and everything
        backward() needs is kept until the next forward.
        With a kv_cache (kv_cache.KVCache) idx holds only the NEW tokens, at positions
        kv_cache.pos onwards; their keys and values are appended to the cache, dropout is
        off and nothing is kept for backward (inference)."""
        cfg, ops = self.config, self.ops
        start = 0 if kv_cache is None else kv_cache.pos
        idx = self._check_idx(idx, start)
        rng = self.dropout_rng if self.training and kv_cache is None else None  # None: no dropout
        x, emb = ops.embedding_forward(idx, self.params["wte.weight"], self.pos_table, start)  # (B, T, C)
        x, drop = ops.dropout_forward(x, cfg.dropout, rng)
        blocks = []
        for i in range(cfg.n_layer):
            kv = None if kv_cache is None else (*kv_cache.layer(i), start)
            x, cache = self.block_forward(x, i, rng, kv)
            blocks.append(cache)
        ln_f = None
        if cfg.norm == "pre":
            x, ln_f = self.norm_forward(x, *self.layer("ln_f"))
        # the head is a linear layer whose weight is the (C, V) transpose of a (V, C) matrix
        logits, head = ops.linear_forward(x, self.params[self.head_name].T)  # (B, T, V)
        self._cache = None
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
            return logits, None
        if targets is None:
            return logits, None
        loss, ce = ops.cross_entropy_forward(logits, np.asarray(targets))
        self._cache = dict(emb=emb, drop=drop, blocks=blocks, ln_f=ln_f, head=head, ce=ce)
        return logits, loss

    def block_forward(self, x, i, rng, kv=None):
        """Block i on x (B, T, C) -> (B, T, C) and what its backward needs.
            pre (GPT-2):   x = x + attn(ln_1(x));    x = x + mlp(ln_2(x))
            post (2017):   x = ln_1(x + attn(x));    x = ln_2(x + mlp(x))
            none:          x = x + attn(x);          x = x + mlp(x)
        (ln is the chosen norm, LayerNorm or RMSNorm.) rng None means no dropout;
        kv = (k_buf, v_buf, pos) decodes against a KV cache."""
        cfg, ops, p, c = self.config, self.ops, f"h.{i}.", {}
        # attention sublayer
        h = x
        if cfg.norm == "pre":
            h, c["ln_1"] = self.norm_forward(x, *self.layer(p + "ln_1"))
        qkv, c["c_attn"] = ops.linear_forward(h, *self.layer(p + "attn.c_attn"))  # (B, T, (H + 2 Hkv) D)
        a, c["attn"] = self.heads.forward(qkv, self.qk_gains(p, self.params), rng, kv)  # (B, T, C)
        a, c["attn_proj"] = ops.linear_forward(a, *self.layer(p + "attn.c_proj"))
        a, c["attn_drop"] = ops.dropout_forward(a, cfg.dropout, rng)
        x = ops.residual_add(x, a)
        if cfg.norm == "post":
            x, c["ln_1"] = self.norm_forward(x, *self.layer(p + "ln_1"))
        # MLP sublayer
        h = x
        if cfg.norm == "pre":
            h, c["ln_2"] = self.norm_forward(x, *self.layer(p + "ln_2"))
        # widen to F, bend (or gate), project back to C (nn/mlp.py, nn/swiglu.py)
        m, c["mlp"] = self.mlp_forward(h, *self.mlp_params(p, self.params))
        m, c["mlp_drop"] = ops.dropout_forward(m, cfg.dropout, rng)
        x = ops.residual_add(x, m)
        if cfg.norm == "post":
            x, c["ln_2"] = self.norm_forward(x, *self.layer(p + "ln_2"))
        return x, c

    # ---------------------------------------------------------------- backward
    def backward(self, accumulate=False):
        """Back-propagate the loss of the last forward(idx, targets) -> self.grads.

        The returned dict holds views into one flat buffer that the next backward overwrites
        (or adds to, with accumulate=True, for gradient accumulation over micro-batches)."""
        c = self._backward_cache(zero_grads=False)  # ops.gradients zeroes (the fast backend lazily)
        cfg, ops, G = self.config, self.ops, self.grads
        with ops.gradients(G, zero=not accumulate):
            dlogits = ops.cross_entropy_backward(1.0, c["ce"])  # (B, T, V)
            dx = ops.linear_backward(dlogits, c["head"], G[self.head_name].T)  # (B, T, C)
            if cfg.norm == "pre":
                dx = self.norm_backward(dx, c["ln_f"], *self.layer_grads("ln_f"))
            for i in reversed(range(cfg.n_layer)):
                dx = self.block_backward(dx, i, c["blocks"][i])
            dx = ops.dropout_backward(dx, c["drop"])
            ops.embedding_backward(dx, c["emb"], G["wte.weight"], G.get("wpe.weight"))
        return G

    def block_backward(self, dx, i, c):
        """block_forward read in reverse: dx (B, T, C), the gradient of the block's output
        -> the gradient of its input. A residual x + f(x) sends its gradient both straight
        through and through f, and the two add up."""
        cfg, ops, p = self.config, self.ops, f"h.{i}."
        # MLP sublayer
        if cfg.norm == "post":
            dx = self.norm_backward(dx, c["ln_2"], *self.layer_grads(p + "ln_2"))
        dm = ops.dropout_backward(dx, c["mlp_drop"])
        dh = self.mlp_backward(dm, c["mlp"], *self.mlp_params(p, self.grads))
        if cfg.norm == "pre":
            dh = self.norm_backward(dh, c["ln_2"], *self.layer_grads(p + "ln_2"))
        dx = ops.residual_add(dx, dh)
        # attention sublayer
        if cfg.norm == "post":
            dx = self.norm_backward(dx, c["ln_1"], *self.layer_grads(p + "ln_1"))
        da = ops.dropout_backward(dx, c["attn_drop"])
        da = ops.linear_backward(da, c["attn_proj"], *self.layer_grads(p + "attn.c_proj"))
        dqkv = self.heads.backward(da, c["attn"], self.qk_gains(p, self.grads))  # (B, T, (H + 2 Hkv) D)
        dh = ops.linear_backward(dqkv, c["c_attn"], *self.layer_grads(p + "attn.c_attn"))  # (B, T, C)
        if cfg.norm == "pre":
            dh = self.norm_backward(dh, c["ln_1"], *self.layer_grads(p + "ln_1"))
        return ops.residual_add(dx, dh)

    # ---------------------------------------------------------------- Hugging Face
    @classmethod
    def from_hf(cls, path, dtype=np.float32, backend="auto"):
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors)."""
        from vintagelm.hf import load_hf

        return load_hf(cls, path, dtype, backend)

    def save_hf(self, path):
        """Write config.json + model.safetensors that transformers' GPT2LMHeadModel loads."""
        from vintagelm.hf import save_hf

        save_hf(self, path)
