"""Will a training step fit in this machine's memory? A rough count, made before anything is
allocated, so an impossible size is a one-line error instead of a MemoryError minutes in, or
the kernel's OOM killer picking a process.

Every architecture has its own count (architectures.TRAINING_BYTES); the GPT's and the n-gram's are
here, the museum's neural models' next to their parameters (museum/mlp.py, museum/common.py).

A GPT step holds four copies of the parameters (weights, gradients, AdamW's m and v) and,
per layer, what backward needs: about 9 (B, T, C) arrays (the inputs of c_attn, c_proj and
c_fc, two norms, q/k/v as attention sees them: with grouped KV heads copied out to all H),
the MLP's (B, T, F) arrays (GELU/ReLU: its input and output, 2; SwiGLU: the gate before and
after SiLU, the up projection and their product, 4), with QK-norm the normalised queries and
keys ((H + Hkv) D), and the (B, H, T, T) attention probabilities (the naive and blocked forms
keep them; tiled keeps none). GPT-2's 4C-wide MLP makes that 17 (B, T, C) arrays.
"""
import os

from vintagelm.architectures import training_bytes
from vintagelm.common import UserError
from vintagelm.model import GPT

ACTIVATIONS_PER_LAYER = 9  # (B, T, C) arrays kept per layer for backward, besides the MLP's (see above)
MLP_ACTIVATIONS = {"gelu": 2, "relu": 2, "swiglu": 4}  # (B, T, F) arrays kept per layer by the MLP
USABLE = 0.8  # of physical memory: the OS and the rest of the process need some


def gpt_training_bytes(config, batch_size, itemsize, train_tokens=0):
    """Estimated peak bytes of one training step of a GPT of `config` at `batch_size` (the
    size of the text plays no part)."""
    B, T, C, L, H, V = (batch_size, config.block_size, config.n_embd, config.n_layer, config.n_head,
                        config.vocab_size)
    attention = 0 if config.attention == "tiled" else B * H * T * T
    qk_norm = (H + config.kv_heads) * config.head_dim if config.qk_norm else 0
    per_token = ACTIVATIONS_PER_LAYER * C + MLP_ACTIVATIONS[config.activation] * config.mlp_width + qk_norm
    per_layer = B * T * per_token + attention
    return itemsize * (4 * GPT.param_count(config) + L * per_layer + 2 * B * T * V)  # + logits and their gradient


def ngram_training_bytes(config, batch_size, itemsize, train_tokens):
    """A bound on the peak bytes of counting an n-gram model on `train_tokens` tokens (its tables
    are float64 whatever `itemsize` says). Level k holds at most min(N, V^k) distinct k-grams
    (a key and a count each) and min(N, V^(k-1)) contexts (a key, a total and a gamma each);
    the tables exist four times (weights, the zero gradients, AdamW's m and v), counting keeps
    a few int64 copies of the n-grams' keys and counts, and an evaluation batch holds the
    (B T, V) probabilities and their logarithm."""
    n, V, N = config.order, config.vocab_size, train_tokens
    tables = sum(2 * min(N, V**k) + 3 * min(N, V ** (k - 1)) + 3 for k in range(1, n + 1))
    counting = 6 * min(N, V**n)
    evaluation = 3 * batch_size * config.block_size * V
    return 8 * (4 * tables + counting + evaluation)


def physical_memory():
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits(config, batch_size, itemsize, what="this training run", train_tokens=0):
    """UserError when `what` (a model of `config`, any architecture, at `batch_size` sequences per
    micro-batch, on `train_tokens` tokens of text) needs more memory than the machine has."""
    need, have = training_bytes(config, batch_size, itemsize, train_tokens), physical_memory()
    if have is not None and need > USABLE * have:
        tiled = ", or attention=tiled for long blocks" if getattr(config, "attention", "tiled") != "tiled" else ""
        raise UserError(f"{what} needs about {need / 2**30:.1f} GiB of memory, more than this machine's "
                        f"{have / 2**30:.1f} GiB; make the model ({largest_sizes(config)}) or the batch ({batch_size} "
                        f"per micro-batch) smaller (grad_accum splits a batch){tiled}")


def largest_sizes(config, count=3):
    """'context=100000, hidden=256, n_embd=64': the config's largest integer settings, the ones
    to make smaller (vocab_size is the tokenizer's, not a setting)."""
    sizes = [(v, k) for k, v in config.to_dict().items()
             if isinstance(v, int) and not isinstance(v, bool) and k != "vocab_size"]
    return ", ".join(f"{k}={v}" for v, k in sorted(sizes, reverse=True)[:count])
