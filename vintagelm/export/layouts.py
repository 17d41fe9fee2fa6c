"""Which outside architecture a GPT config is, and what its parameters are called there.

A layout is data: the GGUF architecture name, the GGUF tensors of a model (each parameter, or a
part of one, under its GGUF name and in GGUF's orientation), and the hyperparameters llama.cpp
reads under the architecture's own key prefix (`gpt2.context_length`, `llama.rope.freq_base`,
...). The writers in gguf_file.py and hf_dir.py know nothing of any one architecture. The
Hugging Face names belong to hf.py, which owns them; a Llama-shaped model's GGUF tensors are
hf.py's Llama tensors renamed, so the split of our packed c_attn into q, k and v is written once.

Three shapes export, each the way llama.cpp and transformers compute it:
    gpt2   pre-norm LayerNorm with biases, learned positions, fused QKV, a GELU MLP
    llama  pre-norm RMSNorm, RoPE, SwiGLU, grouped KV heads; biases optional (all or none)
    qwen3  llama plus QK-norm, without biases
Anything else (a mix, such as LayerNorm with RoPE) is refused naming the switch.

Orientation: we store linear weights (in, out), as GPT-2's Conv1D does; GGUF wants PyTorch's
nn.Linear orientation (out, in) as a NumPy shape (the file lists dims reversed, gguf-py does
that), so every matrix that multiplies activations is transposed; embeddings are (V, C) in
both. Shapes: C channels, V vocabulary, L layers, D head size, H heads, Hkv key/value heads.

RoPE: ours pairs each head's channels (i, i + D/2), as HF's rotate_half and llama.cpp's NEOX
mode do. llama.cpp's `llama` architecture rotates in its NORMAL mode, pairs (2i, 2i + 1) (Meta's
original layout; src/llama-model.cpp, llama_model_rope_type), so the rows of attn_q and attn_k
(and their biases) are permuted into that order per head, as llama.cpp's own converter does
(convert_hf_to_gguf.py, LlamaModel.permute): scores, and so everything after them, are
unchanged. `qwen3` rotates in NEOX mode: its q and k are written as they are.
"""
import re
from dataclasses import dataclass
from typing import Callable

from vintagelm.common import UserError
from vintagelm.hf import hf_view, llama_moves
from vintagelm.nn.rope import half_split_to_interleaved


def keep(w):
    return w


def transpose(w):
    return w.T  # (in, out) -> (out, in)


@dataclass(frozen=True)
class Layout:
    gguf_arch: str  # general.architecture, and the prefix of its hyperparameter keys
    tensors: Callable  # model -> [(GGUF name, array in GGUF's orientation)]
    hparams: Callable  # config -> {key under gguf_arch: int | float}
    activation: str  # the MLP nonlinearity llama.cpp's graph of this architecture applies


# ---------------------------------------------------------------- gpt2

# our name -> (GGUF name, transform(w)); "{i}" stands for the block index
GPT2_TENSORS = (
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
)


def gpt2_name(name):
    """Our parameter name -> (GGUF tensor name, transform). A name the table lacks is a bug."""
    for ours, theirs, transform in GPT2_TENSORS:
        m = re.fullmatch(re.escape(ours).replace(r"\{i\}", r"(\d+)"), name)
        if m:
            return theirs.format(i=m.group(1)) if m.groups() else theirs, transform
    raise KeyError(f"gpt2 layout has no GGUF name for parameter {name!r}")


def gpt2_tensors(model):
    tensors = []
    for name, w in model.params.items():
        gguf_name, transform = gpt2_name(name)
        tensors.append((gguf_name, transform(w)))
    return tensors


def shared_hparams(config):
    """The keys every architecture of llama.cpp reads under its own prefix."""
    return {
        "context_length": config.block_size,
        "embedding_length": config.n_embd,
        "block_count": config.n_layer,
        "feed_forward_length": config.mlp_width,
        "attention.head_count": config.n_head,
    }


def gpt2_hparams(config):
    return {**shared_hparams(config), "attention.layer_norm_epsilon": config.norm_eps}


# llama.cpp's gpt2 graph (src/models/gpt2.cpp): learned positions, pre-norm LayerNorm with
# biases, fused QKV, GELU (tanh form) MLP; the head is output.weight or, when absent, the
# token embedding (a tied head)
GPT2 = Layout("gpt2", tensors=gpt2_tensors, hparams=gpt2_hparams, activation="gelu")


# ---------------------------------------------------------------- llama and qwen3

# hf.py's Llama / Qwen3 names -> GGUF's: the top-level tensors, and the layers of block i
LLAMA_TOP = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output"}
LLAMA_BLOCK = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def llama_gguf_name(hf_name):
    """An HF Llama / Qwen3 tensor name -> its GGUF name (model.layers.3.mlp.up_proj.weight ->
    blk.3.ffn_up.weight)."""
    layer, suffix = hf_name.rsplit(".", 1)
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", layer)
    if m:
        return f"blk.{m.group(1)}.{LLAMA_BLOCK[m.group(2)]}.{suffix}"
    return f"{LLAMA_TOP[layer]}.{suffix}"


def interleaved_rows(a, n_head):
    """A q or k weight (H D, C) or bias (H D,) in GGUF's orientation, each head's rows moved from
    our half-split RoPE pairs to the interleaved pairs of llama.cpp's NORMAL mode."""
    return half_split_to_interleaved(a.T, n_head).T  # the permutation acts on the last axis


def llama_family_tensors(model, interleave):
    """hf.py's Llama tensors (already (out, in), c_attn split into q, k, v) under GGUF's names;
    with `interleave`, q and k rows reordered for llama.cpp's NORMAL RoPE."""
    heads = {"attn_q": model.config.n_head, "attn_k": model.config.kv_heads}
    tensors = []
    for move in llama_moves(model):
        name, array = llama_gguf_name(move.hf), hf_view(model, move)
        layer = name.split(".")[-2]  # blk.0.attn_q.weight -> attn_q
        if interleave and layer in heads:
            array = interleaved_rows(array, heads[layer])
        tensors.append((name, array))
    return tensors


def llama_hparams(config):
    return {
        **shared_hparams(config),
        "attention.head_count_kv": config.kv_heads,
        "attention.layer_norm_rms_epsilon": config.norm_eps,
        "rope.freq_base": float(config.rope_theta),
        "rope.dimension_count": config.head_dim,
        "vocab_size": config.vocab_size,
    }


# llama.cpp's llama graph (src/models/llama.cpp): RMSNorm, q/k/v/o with optional biases, RoPE
# in NORMAL mode, grouped KV heads, SwiGLU with optional biases; output.weight or a tied head
LLAMA = Layout("llama", tensors=lambda model: llama_family_tensors(model, interleave=True),
               hparams=llama_hparams, activation="swiglu")
# llama.cpp's qwen3 graph (src/models/qwen3.cpp): llama's, with RMSNorm of each head's q and k
# (attn_q_norm, attn_k_norm) before RoPE in NEOX mode, and no biases
QWEN3 = Layout("qwen3", tensors=lambda model: llama_family_tensors(model, interleave=False),
               hparams=llama_hparams, activation="swiglu")


# ---------------------------------------------------------------- which one

# GPTConfig switches -> the values each shape allows (the first is the one a refusal names)
GPT2_SHAPE = {"norm": ("pre",), "norm_type": ("layer",), "pos": ("learned",), "bias": (True,),
              "qk_norm": (False,), "activation": ("gelu", "relu")}
LLAMA_SHAPE = {"norm": ("pre",), "norm_type": ("rms",), "pos": ("rope",), "activation": ("swiglu",)}
SHAPES_SAID = ("GPT-2-shaped (pre-norm LayerNorm with biases, learned positions, a key/value head per head, "
               "no QK-norm, a GELU or ReLU MLP) or Llama-shaped (pre-norm RMSNorm, RoPE, a SwiGLU MLP; "
               "QK-norm only without biases)")


def differences(config, shape):
    """[(switch, its value, the value the shape wants)] for each switch `config` has outside `shape`."""
    return [(k, getattr(config, k), allowed[0]) for k, allowed in shape.items() if getattr(config, k) not in allowed]


def layout_of(config):
    """The outside architecture a GPTConfig is -> Layout; a one-line UserError naming the switch
    that no architecture of llama.cpp or transformers computes the way we do."""
    gpt2 = differences(config, GPT2_SHAPE)
    if config.kv_heads != config.n_head:
        gpt2.append(("n_kv_head", config.n_kv_head, config.n_head))
    llama = differences(config, LLAMA_SHAPE)
    if not gpt2:
        return GPT2
    if not llama and not config.qk_norm:
        return LLAMA
    if not llama and not config.bias:
        return QWEN3
    if not llama:
        raise UserError("this model has qk_norm=True and bias=True; the architecture with QK-norm (Qwen3, in "
                        "llama.cpp and transformers) has no biases, so neither runs it as ours (train with "
                        "bias=False)")
    nearest, kind = (gpt2, "GPT-2-shaped") if len(gpt2) < len(llama) else (llama, "Llama-shaped")
    said = ", ".join(f"{k}={value!r} (a {kind} model has {wanted!r})" for k, value, wanted in nearest)
    raise UserError(f"this model has {said}; exports are {SHAPES_SAID}, which llama.cpp and transformers run "
                    "as our model computes")
