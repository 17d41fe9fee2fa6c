"""A nanoGPT-style GPT in PyTorch, written for these benchmarks: the model a user who trains a
small GPT in torch would write, and so the torch speed a user would compare with.

Unlike the team's reference (tests/torch_gpt.py, attention written out so that it reads next
to vintagelm's), it takes torch's fast paths: F.scaled_dot_product_attention with
is_causal=True, nn.LayerNorm, nn.Linear, GELU in its tanh form, the head tied to the token
embedding. It holds the same parameters under the same names as vintagelm's GPT, and
`from_numpy` loads vintagelm's weights (transposing the linear layers: vintagelm stores
them (in, out), nn.Linear (out, in)), so both start from the same point and their losses
can be compared.

Only the GPT-2 shape of GPTConfig is built (pre-norm, learned positions, GELU, tied head, no
dropout): the benchmark models. A config outside it is a ValueError naming the fields.
This module imports torch; the benchmark helpers load it only when a torch participant runs.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -1  # vintagelm's "no target here"
SUPPORTED = dict(norm="pre", pos="learned", activation="gelu", tie_weights=True, dropout=0.0)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.c_attn = nn.Linear(C, 3 * C, bias=config.bias)
        self.c_proj = nn.Linear(C, C, bias=config.bias)

    def forward(self, x):  # (B, T, C) -> (B, T, C)
        B, T, C = x.shape
        # q, k, v side by side along the channels, each split into heads: as vintagelm's c_attn
        q, k, v = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.c_fc = nn.Linear(C, 4 * C, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * C, C, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPTStyle(nn.Module):
    def __init__(self, config):
        super().__init__()
        wrong = {k: getattr(config, k) for k, v in SUPPORTED.items() if getattr(config, k) != v}
        if wrong:
            raise ValueError(f"the nanoGPT-style model builds only {SUPPORTED}; this config has {wrong}")
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)

    @classmethod
    def from_numpy(cls, config, params):
        """A float32 model holding a copy of vintagelm's `params` (name -> array)."""
        model = cls(config)
        model.load_numpy(params)
        return model

    @torch.no_grad()
    def load_numpy(self, params):
        ours = dict(self.named_parameters())
        if set(ours) != set(params):
            raise KeyError(f"parameter names differ: {sorted(set(ours) ^ set(params))}")
        linear_weights = {f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Linear)}
        for name, p in ours.items():
            value = torch.from_numpy(np.ascontiguousarray(params[name], dtype=np.float32))
            p.copy_(value.T if name in linear_weights else value)

    def forward(self, idx, targets=None):
        """idx (B, T) -> (logits (B, T, V), mean cross-entropy over targets != -1, or None)."""
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head: (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
