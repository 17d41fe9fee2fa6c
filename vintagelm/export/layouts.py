"""Which outside architecture a GPT config is, and what its parameters are called there.

A layout is data: the GGUF architecture name, a table that renames each of our parameters to
its GGUF tensor (with how its array is laid out there), and the hyperparameters llama.cpp reads
under the architecture's own key prefix (`gpt2.context_length`, ...). The writers in
gguf_file.py and hf_dir.py know nothing of any one architecture; adding one (the Llama-shaped
GPT: `llama`, RMSNorm, RoPE, SwiGLU, grouped KV heads) is a new table, its hyperparameters and
a line in `layout_of`. The Hugging Face names belong to hf.py (save_hf), which owns them.

Orientation: we store linear weights (in, out), as GPT-2's Conv1D does; GGUF wants PyTorch's
nn.Linear orientation (out, in) as a NumPy shape (the file lists dims reversed, gguf-py does
that), so every matrix that multiplies activations is transposed; embeddings are (V, C) in
both. Shapes: C channels, V vocabulary, L layers.
"""
import re
from dataclasses import dataclass
from typing import Callable

from vintagelm.common import UserError
from vintagelm.nn.norm import LN_EPS


def keep(w, config):
    return w


def transpose(w, config):
    return w.T  # (in, out) -> (out, in)


@dataclass(frozen=True)
class Layout:
    gguf_arch: str  # general.architecture, and the prefix of its hyperparameter keys
    tensors: tuple  # (our name, GGUF name, transform(w, config)); "{i}" stands for the block index
    hparams: Callable  # config -> {key under gguf_arch: int | float}
    activation: str  # the MLP nonlinearity llama.cpp's graph of this architecture applies

    def gguf_name(self, name):
        """Our parameter name -> (GGUF tensor name, transform). A name the table lacks is a bug."""
        for ours, theirs, transform in self.tensors:
            m = re.fullmatch(re.escape(ours).replace(r"\{i\}", r"(\d+)"), name)
            if m:
                return theirs.format(i=m.group(1)) if m.groups() else theirs, transform
        raise KeyError(f"{self.gguf_arch} layout has no GGUF name for parameter {name!r}")


def gpt2_hparams(config):
    return {
        "context_length": config.block_size,
        "embedding_length": config.n_embd,
        "block_count": config.n_layer,
        "feed_forward_length": getattr(config, "mlp_width", 4 * config.n_embd),
        "attention.head_count": config.n_head,
        "attention.layer_norm_epsilon": getattr(config, "norm_eps", LN_EPS),
    }


# llama.cpp's gpt2 graph (src/models/gpt2.cpp): learned positions, pre-norm LayerNorm with
# biases, fused QKV, GELU (tanh form) MLP; the head is output.weight or, when absent, the
# token embedding (a tied head)
GPT2 = Layout("gpt2", tensors=(
    ("wte.weight", "token_embd.weight", keep),  # (V, C)
    ("wpe.weight", "position_embd.weight", keep),  # (block_size, C)
    ("h.{i}.ln_1.weight", "blk.{i}.attn_norm.weight", keep),
    ("h.{i}.ln_1.bias", "blk.{i}.attn_norm.bias", keep),
    ("h.{i}.attn.c_attn.weight", "blk.{i}.attn_qkv.weight", transpose),  # (C, 3C) -> (3C, C): q, k, v rows
    ("h.{i}.attn.c_attn.bias", "blk.{i}.attn_qkv.bias", keep),
    ("h.{i}.attn.c_proj.weight", "blk.{i}.attn_output.weight", transpose),
    ("h.{i}.attn.c_proj.bias", "blk.{i}.attn_output.bias", keep),
    ("h.{i}.ln_2.weight", "blk.{i}.ffn_norm.weight", keep),
    ("h.{i}.ln_2.bias", "blk.{i}.ffn_norm.bias", keep),
    ("h.{i}.mlp.c_fc.weight", "blk.{i}.ffn_up.weight", transpose),  # (C, 4C) -> (4C, C)
    ("h.{i}.mlp.c_fc.bias", "blk.{i}.ffn_up.bias", keep),
    ("h.{i}.mlp.c_proj.weight", "blk.{i}.ffn_down.weight", transpose),  # (4C, C) -> (C, 4C)
    ("h.{i}.mlp.c_proj.bias", "blk.{i}.ffn_down.bias", keep),
    ("ln_f.weight", "output_norm.weight", keep),
    ("ln_f.bias", "output_norm.bias", keep),
    ("lm_head.weight", "output.weight", keep),  # (V, C), an untied head only
), hparams=gpt2_hparams, activation="gelu")


# GPTConfig switches -> the values a GPT-2 may have (a switch a config lacks is at GPT-2's value)
GPT2_SHAPE = {"norm": ("pre",), "norm_type": ("layer",), "pos": ("learned",), "bias": (True,),
              "qk_norm": (False,), "activation": ("gelu", "relu")}


def layout_of(config):
    """The outside architecture a GPTConfig is -> Layout; a UserError naming what no
    architecture of llama.cpp or transformers computes the way we do."""
    differences = [f"{k}={getattr(config, k)!r}" for k, allowed in GPT2_SHAPE.items()
                   if getattr(config, k, allowed[0]) not in allowed]
    if getattr(config, "kv_heads", config.n_head) != config.n_head:
        differences.append(f"n_kv_head={config.n_kv_head}")
    if differences:
        raise UserError(f"this model has {', '.join(differences)}; exports are GPT-2-shaped for now (pre-norm "
                        "LayerNorm with biases, learned positions, a key/value head per head, no QK-norm, a GELU "
                        "or ReLU MLP), which llama.cpp and transformers run as our model computes")
    return GPT2
