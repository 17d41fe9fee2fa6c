"""A Llama-shaped transformer in PyTorch, written for these benchmarks: the model a user who
trains a small modern model in torch would write, and so the torch speed a vintagelm model of
this shape is compared with.

It is Hugging Face's LlamaForCausalLM block built from torch's own fast pieces: torch.nn.RMSNorm,
rotary position embeddings in HF's half-split convention (`rotate_half`), a SwiGLU feed-forward
(down(silu(gate(x)) * up(x))), grouped-query attention through F.scaled_dot_product_attention
(is_causal=True; enable_gqa=True where this torch has it, else the key/value heads repeated),
no biases, an untied head. Its parameters carry HF's names and shapes, one for one, so it
loads an HF state dict as it is (`from_hf_tensors`), and vintagelm's Llama-shaped GPT through
vintagelm's own HF name table (`from_vintagelm`), for a comparison that starts from the same
weights.

The rotary tables are computed as LlamaRotaryEmbedding computes them (float32 angles, then cast
to the model's dtype), so a float64 copy of this model and of an HF one see the same tables.

The config is read by vintagelm's GPTConfig field names (n_layer, n_head, n_kv_head, n_embd,
mlp_hidden, norm_eps, rope_theta, ...), with n_kv_head and mlp_hidden given (not GPTConfig's 0
for "the default"); a config asking for anything but the Llama shape is a ValueError naming
the fields. This module imports torch; the benchmark loads it only when a torch
participant runs.
"""
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.torch_version import TorchVersion

IGNORE_INDEX = -1  # vintagelm's "no target here"
SUPPORTED = dict(norm_type="rms", pos="rope", activation="swiglu", qk_norm=False, bias=False, tie_weights=False,
                 dropout=0.0)
GQA_IN_SDPA = TorchVersion(torch.__version__) >= (2, 5)  # scaled_dot_product_attention(enable_gqa=) appeared in 2.5


def rope_tables(T, D, theta):
    """cos, sin (T, D) for positions 0 .. T-1 of a head of size D, each pair's angle twice
    (half-split: channel i and i + D/2 share it), computed in float32 as HF computes them."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float) / D))  # (D/2,) radians per position
    angles = torch.arange(T, dtype=torch.float)[:, None] * inv_freq  # (T, D/2)
    angles = torch.cat((angles, angles), dim=-1)  # (T, D)
    return angles.cos(), angles.sin()


def rotate_half(x):
    """(..., D): each half-split pair (a, b) -> (-b, a), the quarter turn RoPE mixes in by sin."""
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, self.n_head, self.n_kv_head = config.n_embd, config.n_head, config.n_kv_head
        self.head_dim = C // self.n_head
        self.q_proj = nn.Linear(C, self.n_head * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.n_kv_head * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.n_kv_head * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, C, bias=False)

    def forward(self, x, cos, sin):  # x (B, T, C), cos and sin (T, D) -> (B, T, C)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        if GQA_IN_SDPA:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:  # each key/value head serves n_head / n_kv_head neighbouring query heads, as HF's repeat_kv
            group = self.n_head // self.n_kv_head
            y = F.scaled_dot_product_attention(q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1),
                                               is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class SwiGLU(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, hidden = config.n_embd, config.mlp_hidden
        self.gate_proj = nn.Linear(C, hidden, bias=False)
        self.up_proj = nn.Linear(C, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, C, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        # eps named: torch's default is the dtype's machine epsilon, not the model's
        self.input_layernorm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """HF's LlamaModel: what sits under `model.` in the parameter names."""

    def __init__(self, config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.n_embd)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.RMSNorm(config.n_embd, eps=config.norm_eps)
        cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head, config.rope_theta)
        self.register_buffer("cos", cos, persistent=False)  # (block_size, D): not parameters, not saved
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, idx):  # (B, T) -> (B, T, C)
        T = idx.shape[1]
        x = self.embed_tokens(idx)
        for layer in self.layers:
            x = layer(x, self.cos[:T], self.sin[:T])
        return self.norm(x)


class LlamaStyle(nn.Module):
    def __init__(self, config):
        super().__init__()
        wrong = {k: getattr(config, k) for k, v in SUPPORTED.items() if getattr(config, k) != v}
        if wrong:
            raise ValueError(f"the Llama-style model builds only {SUPPORTED}; this config has {wrong}")
        if config.n_head % config.n_kv_head:
            raise ValueError(f"n_kv_head ({config.n_kv_head}) must divide n_head ({config.n_head})")
        self.config = config
        self.model = Body(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    @classmethod
    def from_hf_tensors(cls, config, tensors, dtype=torch.float32):
        """A model in `dtype` holding a copy of `tensors` (HF Llama name -> tensor or array, as HF
        lays it out: nn.Linear's (out, in))."""
        model = cls(config).to(dtype)
        ours = dict(model.named_parameters())
        if set(ours) != set(tensors):
            raise KeyError(f"parameter names differ: {sorted(set(ours) ^ set(tensors))}")
        with torch.no_grad():
            for name, p in ours.items():
                value = torch.as_tensor(tensors[name])
                if value.shape != p.shape:
                    raise ValueError(f"{name}: shape {tuple(value.shape)}, the model's {tuple(p.shape)}")
                p.copy_(value)
        return model

    def flops_per_token(self):
        """Forward + backward FLOPs per token, counted as vintagelm's GPT counts them: 6 per
        parameter, plus 12 L C T for the attention scores and the weighted sum at full context
        T = block_size."""
        cfg = self.config
        return 6 * sum(p.numel() for p in self.parameters()) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    def forward(self, idx, targets=None):
        """idx (B, T) -> (logits (B, T, V), mean cross-entropy over targets != -1, or None)."""
        logits = self.lm_head(self.model(idx))  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)


def from_vintagelm(model):
    """A LlamaStyle starting from the weights of vintagelm's Llama-shaped GPT `model`, in its
    dtype: each HF tensor as vintagelm's save_hf would write it (hf.llama_moves, hf_view)."""
    from vintagelm.hf import hf_view, llama_moves

    config = replace(model.config, n_kv_head=model.config.kv_heads, mlp_hidden=model.config.mlp_width)
    tensors = {move.hf: hf_view(model, move) for move in llama_moves(model)}
    dtype = torch.from_numpy(next(iter(model.params.values()))).dtype
    return LlamaStyle.from_hf_tensors(config, tensors, dtype)
