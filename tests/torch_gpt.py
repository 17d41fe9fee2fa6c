"""The team's reference GPT in PyTorch: the oracle the NumPy engine is checked against.

It implements the same model as vintagelm.model.GPT, parameter for parameter, so that the
parity tests can copy our NumPy weights in, run torch autograd, and compare logits, loss and
every gradient by name. Benchmarks reuse it as the "same model in a real framework" baseline:

    sys.path.insert(0, "tests")
    from torch_gpt import TorchGPT
    ref = TorchGPT.from_numpy(config, model.params, dtype=torch.float64)
    logits, loss = ref(torch.as_tensor(idx), torch.as_tensor(targets))
    loss.backward()
    grads = ref.numpy_grads()          # name -> np.ndarray, same keys as model.params

What it deliberately is not: fast, or part of the package. Attention is written out by hand
(no fused kernels) so that every step is readable next to vintagelm/nn/attention.py, and torch
is never imported by `vintagelm` itself.

Parameter names and layouts follow GPT-2 / Hugging Face without the `transformer.` prefix, and
weights are stored (in, out) and applied as x @ W + b, exactly like HF's Conv1D:
    wte.weight (V, C), wpe.weight (block_size, C)       [pos == "learned" only]
    h.{i}.ln_1.weight/.bias (C)                          [norm != "none"; bias only if bias and a LayerNorm]
    h.{i}.attn.c_attn.weight (C, (H + 2 Hkv) D) .bias    q, k, v in that order along the last axis
    h.{i}.attn.q_norm.weight, .k_norm.weight (D)         [qk_norm only]
    h.{i}.attn.c_proj.weight (C, C) .bias (C)
    h.{i}.ln_2.weight/.bias (C)
    h.{i}.mlp.c_fc.weight (C, F) .bias (F), h.{i}.mlp.c_proj.weight (F, C) .bias (C)
    h.{i}.mlp.c_gate.weight (C, F) .bias (F)            [activation == "swiglu" only; c_fc is then "up"]
    ln_f.weight/.bias (C)                                [norm == "pre" only]
    lm_head.weight (V, C)                                [tie_weights False only; no bias]

The modern switches are written here from their papers and HF's Llama, not from vintagelm:
RMSNorm (norm_type "rms"), RoPE in HF's rotate_half form (pos "rope"; "none" adds no
positions), SwiGLU (activation "swiglu", hidden width mlp_hidden or 2/3 of 4C rounded up to a
multiple of 8), grouped kv heads (n_kv_head, each repeated over its n_head / n_kv_head query
heads) and QK-norm (an RMSNorm over D of each head's queries and keys, before RoPE).

Shape legend: B batch, T time, C n_embd, H heads, Hkv kv heads, D = C // H head size, F the
MLP width, V vocab size.
"""
import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

LN_EPS = 1e-5  # GPT-2's layer-norm epsilon; the variance is the biased one
IGNORE_INDEX = -1  # targets equal to this contribute neither loss nor gradient

# the config fields the reference reads, with the defaults of vintagelm.model.GPTConfig
_DEFAULTS = dict(dropout=0.0, bias=True, norm="pre", pos="learned", tie_weights=True, activation="gelu",
                 norm_type="layer", norm_eps=LN_EPS, rope_theta=10000.0, mlp_hidden=0, n_kv_head=0, qk_norm=False)


def _read_config(config):
    """GPTConfig, any object with the same attributes, or a dict -> a plain dict of the fields we use."""
    if dataclasses.is_dataclass(config):
        config = dataclasses.asdict(config)
    elif not isinstance(config, dict):
        config = vars(config)
    cfg = {**_DEFAULTS, **config}
    for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        if key not in cfg:
            raise ValueError(f"config is missing {key!r}")
    if cfg["norm"] not in ("pre", "post", "none"):
        raise ValueError(f"norm must be 'pre', 'post' or 'none', got {cfg['norm']!r}")
    if cfg["pos"] not in ("learned", "sinusoidal", "rope", "none"):
        raise ValueError(f"pos must be 'learned', 'sinusoidal', 'rope' or 'none', got {cfg['pos']!r}")
    if cfg["activation"] not in ("gelu", "relu", "swiglu"):
        raise ValueError(f"activation must be 'gelu', 'relu' or 'swiglu', got {cfg['activation']!r}")
    if cfg["norm_type"] not in ("layer", "rms"):
        raise ValueError(f"norm_type must be 'layer' or 'rms', got {cfg['norm_type']!r}")
    if cfg["n_embd"] % cfg["n_head"]:
        raise ValueError(f"n_embd={cfg['n_embd']} is not divisible by n_head={cfg['n_head']}")
    cfg["n_kv_head"] = cfg["n_kv_head"] or cfg["n_head"]
    if cfg["n_head"] % cfg["n_kv_head"]:
        raise ValueError(f"n_kv_head={cfg['n_kv_head']} does not divide n_head={cfg['n_head']}")
    if not cfg["mlp_hidden"]:  # SwiGLU's three matrices: 2/3 of 4C keeps about the parameters of two
        C = cfg["n_embd"]
        cfg["mlp_hidden"] = 8 * math.ceil(2 * 4 * C / 3 / 8) if cfg["activation"] == "swiglu" else 4 * C
    return cfg


def sinusoidal_positions(block_size, n_embd, dtype=torch.float64):
    """(block_size, C) table of "Attention Is All You Need": channel j = 2i (+1) holds
    sin (cos) of t / 10000^(2i / C). Built channel by channel, so an odd C simply ends on a sine."""
    t = torch.arange(block_size, dtype=torch.float64)  # (T,)
    columns = []
    for j in range(n_embd):
        angle = t / 10000.0 ** ((j - j % 2) / n_embd)  # 2i = j rounded down to even
        columns.append(torch.sin(angle) if j % 2 == 0 else torch.cos(angle))
    return torch.stack(columns, dim=1).to(dtype)  # (T, C)


class Linear(nn.Module):
    """HF Conv1D layout: weight (in, out), y = x @ W + b."""

    def __init__(self, n_in, n_out, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.empty(n_out)) if bias else None

    def forward(self, x):  # (..., in) -> (..., out)
        y = x @ self.weight
        return y if self.bias is None else y + self.bias


class LayerNorm(nn.Module):
    """Layer norm over the last axis with an optional bias (bias=False drops it entirely)."""

    def __init__(self, n, bias=True, eps=LN_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.bias = nn.Parameter(torch.zeros(n)) if bias else None
        self.eps = eps

    def forward(self, x):  # (..., C) -> (..., C)
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight over the last axis (Zhang & Sennrich 2019): no mean, no bias."""

    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):  # (..., n) -> (..., n)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def make_norm(cfg, n):
    if cfg["norm_type"] == "rms":
        return RMSNorm(n, cfg["norm_eps"])
    return LayerNorm(n, cfg["bias"], cfg["norm_eps"])


def rotate_half(x):
    """(..., D) -> (-x2, x1) for the halves x1, x2 of the last axis (HF Llama's rotate_half)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope_cos_sin(T, D, theta, dtype):
    """(T, D) cos and sin of position t times theta^(-2i/D), each angle written twice (i and i + D/2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)  # (D/2,)
    angles = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos().to(dtype), angles.sin().to(dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg["n_embd"]
        self.n_head, self.n_kv_head, self.head_dim = cfg["n_head"], cfg["n_kv_head"], C // cfg["n_head"]
        self.rope_theta = cfg["rope_theta"] if cfg["pos"] == "rope" else None
        self.c_attn = Linear(C, (self.n_head + 2 * self.n_kv_head) * self.head_dim, cfg["bias"])
        if cfg["qk_norm"]:
            self.q_norm = RMSNorm(self.head_dim, cfg["norm_eps"])
            self.k_norm = RMSNorm(self.head_dim, cfg["norm_eps"])
        self.c_proj = Linear(C, C, cfg["bias"])
        self.attn_dropout = nn.Dropout(cfg["dropout"])
        self.resid_dropout = nn.Dropout(cfg["dropout"])

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        H, Hkv, D = self.n_head, self.n_kv_head, self.head_dim
        q, k, v = self.c_attn(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k, v = (t.view(B, T, Hkv, D).transpose(1, 2) for t in (k, v))  # (B, Hkv, T, D)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope_theta is not None:
            cos, sin = rope_cos_sin(T, D, self.rope_theta, x.dtype)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # (B, H, T, D)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, T)
        future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(diagonal=1)
        att = att.masked_fill(future, float("-inf")).softmax(dim=-1)
        y = self.attn_dropout(att) @ v  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)  # heads back side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C, F_hidden = cfg["n_embd"], cfg["mlp_hidden"]
        self.activation = cfg["activation"]
        if self.activation == "swiglu":
            self.c_gate = Linear(C, F_hidden, cfg["bias"])
        self.c_fc = Linear(C, F_hidden, cfg["bias"])
        self.c_proj = Linear(F_hidden, C, cfg["bias"])
        self.dropout = nn.Dropout(cfg["dropout"])

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        h = self.c_fc(x)  # (B, T, F)
        if self.activation == "swiglu":
            h = F.silu(self.c_gate(x)) * h
        elif self.activation == "gelu":
            h = F.gelu(h, approximate="tanh")
        else:
            h = F.relu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.norm = cfg["norm"]
        if self.norm != "none":
            self.ln_1 = make_norm(cfg, cfg["n_embd"])
            self.ln_2 = make_norm(cfg, cfg["n_embd"])
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        if self.norm == "pre":
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlp(self.ln_2(x))
        elif self.norm == "post":
            x = self.ln_1(x + self.attn(x))
            x = self.ln_2(x + self.mlp(x))
        else:
            x = x + self.attn(x)
            x = x + self.mlp(x)
        return x


class TorchGPT(nn.Module):
    """The reference model. `named_parameters()` yields exactly the names of vintagelm's `params`."""

    def __init__(self, config):
        super().__init__()
        cfg = _read_config(config)
        self.cfg = cfg
        V, C = cfg["vocab_size"], cfg["n_embd"]
        self.wte = nn.Embedding(V, C)
        if cfg["pos"] == "learned":
            self.wpe = nn.Embedding(cfg["block_size"], C)
        elif cfg["pos"] == "sinusoidal":
            # fixed, so a buffer; not persistent, so state_dict() keys stay equal to the params
            self.register_buffer("pos_table", sinusoidal_positions(cfg["block_size"], C), persistent=False)
        self.drop = nn.Dropout(cfg["dropout"])
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layer"]))
        if cfg["norm"] == "pre":
            self.ln_f = make_norm(cfg, C)
        if not cfg["tie_weights"]:
            self.lm_head = nn.Linear(C, V, bias=False)  # weight (V, C): logits = x @ Wᵀ
        self.reset_parameters()

    def reset_parameters(self, std=0.02, seed=None):
        """GPT-2-style init (normal(0, std) matrices, zero biases, unit norm gains), so the model is
        usable on its own, e.g. by benchmarks. Parity tests overwrite it with `load_numpy`."""
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith(".bias"):
                    p.zero_()
                elif p.ndim == 1:
                    p.fill_(1.0)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * std)

    @classmethod
    def from_numpy(cls, config, params, dtype=torch.float64):
        """A reference model holding a copy of `params` (name -> np.ndarray), cast to `dtype`.

        Every reference parameter must be in `params` with the same shape and vice versa, so a
        renamed or missing tensor on either side fails here, by name."""
        model = cls(config).to(dtype)
        model.load_numpy(params)
        return model

    def load_numpy(self, params):
        ours = dict(self.named_parameters())
        missing, extra = sorted(set(ours) - set(params)), sorted(set(params) - set(ours))
        if missing or extra:
            raise KeyError(f"parameter names differ: missing from params {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, p in ours.items():
                value = torch.as_tensor(np.asarray(params[name]))
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(value.shape)}, reference wants {tuple(p.shape)}")
                p.copy_(value.to(p.dtype))

    def numpy_params(self):
        """name -> a float copy of each parameter, as np.ndarray."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self.named_parameters()}

    def numpy_grads(self):
        """name -> the .grad of each parameter after loss.backward() (zeros where none arrived)."""
        return {
            name: (torch.zeros_like(p) if p.grad is None else p.grad).detach().cpu().numpy().copy()
            for name, p in self.named_parameters()
        }

    def positions(self, T):
        """(T, C) position encodings added to the token embeddings (zeros with RoPE or none)."""
        if self.cfg["pos"] == "learned":
            return self.wpe.weight[:T]
        if self.cfg["pos"] == "sinusoidal":
            return self.pos_table[:T].to(self.wte.weight.dtype)
        return torch.zeros(T, self.cfg["n_embd"], dtype=self.wte.weight.dtype)

    def forward(self, idx, targets=None):
        """idx (B, T) int64 -> logits (B, T, V), loss (mean cross-entropy over targets != -1) or None."""
        B, T = idx.shape
        if T > self.cfg["block_size"]:
            raise ValueError(f"sequence length {T} exceeds block_size {self.cfg['block_size']}")
        x = self.drop(self.wte(idx) + self.positions(T))  # (B, T, C)
        for block in self.h:
            x = block(x)
        if self.cfg["norm"] == "pre":
            x = self.ln_f(x)
        head = self.wte.weight if self.cfg["tie_weights"] else self.lm_head.weight  # (V, C)
        logits = x @ head.T  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.reshape(B * T, -1), targets.reshape(B * T), ignore_index=IGNORE_INDEX
            )
        return logits, loss
