"""Hugging Face interop: GPT-2, Llama and Qwen3 folders in (`GPT.from_hf`) and out (`save_hf`).

A folder is config.json plus safetensors weights (never pickle). config.json says which
architecture it holds (`model_type`, or else `architectures`); each has its own config
translation and its own name table:

    GPT2LMHeadModel   our names with a `transformer.` prefix; both store linear weights
                      (in, out) (GPT-2's Conv1D), so a tensor moves unchanged.
    LlamaForCausalLM  RMSNorm, RoPE, SwiGLU, grouped KV heads, no biases (or all of them).
                      HF's nn.Linear stores (out, in): every block matrix is transposed, and
                      our packed c_attn [q | k | v] is HF's q_proj, k_proj and v_proj. Our
                      RoPE pairs channels as HF's rotate_half does, so q and k move unpermuted.
    Qwen3ForCausalLM  Llama plus QK-norm (q_norm, k_norm: an RMSNorm gain of the head size,
                      before RoPE, as ours), and no MLP biases.

Both directions run through one list of moves (`Move`) per architecture, so loading,
saving and the check of every name and shape cannot disagree.

Weights load into the model's dtype: a float16 or bfloat16 checkpoint is widened exactly
(to float32 or float64), a float64 one rounded to float32 unless dtype=np.float64. Saved
weights are float32, as save_pretrained writes by default.
"""
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from vintagelm.common import UserError, atomic_file, read_json
from vintagelm.model import GPTConfig
from vintagelm.nn.rope import ROPE_THETA

ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
# HF activation names -> ours. "gelu" in HF is the exact erf form, which we do not implement.
HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu"}
GPT2_PREFIX = "transformer."
# buffers older transformers saved beside the weights: GPT-2's causal masks, Llama's RoPE frequencies
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq")
WEIGHTS, INDEX = "model.safetensors", "model.safetensors.index.json"

# Llama's names: our top-level parameters, and our layer in block i -> HF's in model.layers.i
# (the .weight / .bias suffix is the same on both sides)
LLAMA_TOP = {"wte.weight": "model.embed_tokens.weight", "ln_f.weight": "model.norm.weight",
             "lm_head.weight": "lm_head.weight"}
LLAMA_BLOCK = {
    "ln_1": "input_layernorm", "ln_2": "post_attention_layernorm",
    "attn.q_norm": "self_attn.q_norm", "attn.k_norm": "self_attn.k_norm",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.c_gate": "mlp.gate_proj", "mlp.c_fc": "mlp.up_proj", "mlp.c_proj": "mlp.down_proj",
}
LLAMA_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")  # the three parts of our attn.c_attn


class Move(NamedTuple):
    """One HF tensor: our parameter `ours`, its output `columns` (all but for the packed c_attn),
    transposed when HF stores the matrix (out, in)."""
    hf: str
    ours: str
    columns: slice = slice(None)
    transposed: bool = False


# ---------------------------------------------------------------- which architecture
def model_type_of(hf):
    """config.json's model_type, or the one its `architectures` names; GPT-2 when it says neither
    (early GPT-2 configs did not)."""
    if not isinstance(hf, dict):
        raise UserError("config.json is not a JSON object, so it describes no model")
    kind = hf.get("model_type")
    if kind is None:
        architectures = hf.get("architectures") or [ARCHITECTURES["gpt2"]]
        first = str(architectures[0] if isinstance(architectures, list) else architectures)
        kind = {cls: name for name, cls in ARCHITECTURES.items()}.get(first, first)
    if not isinstance(kind, str) or kind not in ARCHITECTURES:
        raise UserError(f"config.json describes {kind!r}; supported: {', '.join(ARCHITECTURES.values())}")
    return kind


def config_from_hf(hf):
    """GPTConfig from a parsed HF config.json dict (UserError when we cannot match it exactly)."""
    kind = model_type_of(hf)
    try:
        return gpt2_config(hf) if kind == "gpt2" else llama_config(hf, kind)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"config.json does not describe a valid {ARCHITECTURES[kind]}: {e}") from None


def hf_format(config):
    """The HF architecture that computes exactly what `config` does, else a UserError saying what
    each needs and what this model has."""
    c = config
    gpt2 = (c.norm_type == "layer" and c.pos == "learned" and c.bias and c.activation in ("gelu", "relu")
            and c.mlp_width == 4 * c.n_embd and c.kv_heads == c.n_head and not c.qk_norm)
    llama = c.norm_type == "rms" and c.pos == "rope" and c.activation == "swiglu"
    if c.norm == "pre" and gpt2:
        return "gpt2"
    if c.norm == "pre" and llama and not c.qk_norm:
        return "llama"
    if c.norm == "pre" and llama and not c.bias:
        return "qwen3"
    raise UserError(
        "save_hf writes GPT-2 (norm='pre', norm_type='layer', pos='learned', bias=True, gelu or relu, 4C MLP, "
        "all KV heads, no qk_norm) or Llama (norm='pre', norm_type='rms', pos='rope', swiglu; with qk_norm, "
        f"Qwen3, which has no biases); this model has norm={c.norm!r}, norm_type={c.norm_type!r}, pos={c.pos!r}, "
        f"activation={c.activation!r}, bias={c.bias}, qk_norm={c.qk_norm}, mlp_hidden={c.mlp_hidden}, "
        f"n_kv_head={c.n_kv_head}")


# ---------------------------------------------------------------- GPT-2
def gpt2_config(hf):
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise UserError(f"activation_function {act!r} is not supported (use one of {', '.join(HF_ACTIVATIONS)})")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise UserError("only GPT-2's standard 1/sqrt(head size) attention scaling is supported")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise UserError(f"n_inner {hf['n_inner']} is not 4 * n_embd, which GPT-2's MLP has")
    return GPTConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx")),
        n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
        dropout=0.0, bias=True, norm="pre", norm_type="layer", norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        pos="learned", tie_weights=hf.get("tie_word_embeddings", True), activation=HF_ACTIVATIONS[act],
    )


def gpt2_config_json(model):
    cfg = model.config
    return {
        "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "n_inner": None, "activation_function": "gelu_new" if cfg.activation == "gelu" else "relu",
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": cfg.norm_eps,
    }


def gpt2_moves(model):
    """GPT-2 keeps our names under `transformer.` (the head outside it) and our orientation."""
    return [Move(name if name == "lm_head.weight" else GPT2_PREFIX + name, name) for name in model.params]


def gpt2_file_names(tensors):
    """Early GPT-2 files (the hub's own gpt2) name tensors without the `transformer.` prefix."""
    return {(k if k.startswith(GPT2_PREFIX) or k == "lm_head.weight" else GPT2_PREFIX + k): v
            for k, v in tensors.items()}


# ---------------------------------------------------------------- Llama and Qwen3
def rope_theta_of(hf):
    """RoPE's base from either spelling: transformers 5 writes rope_parameters {rope_type,
    rope_theta}; 4.x wrote rope_theta at the top level and rope_scaling (null for plain RoPE).
    Scaled variants (linear, dynamic, yarn, longrope, llama3) change the angles; ours is plain."""
    for field in ("rope_parameters", "rope_scaling"):
        params = hf.get(field)
        if params is None:
            continue
        if not isinstance(params, dict):
            raise UserError(f"config.json's {field} is {params!r}, not an object")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default":
            raise UserError(f"config.json's {field} asks for scaled RoPE ({kind!r}); only plain RoPE "
                            "(rope_type 'default') is supported")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise UserError(f"config.json's {field} rotates part of each head (partial_rotary_factor "
                            f"{params['partial_rotary_factor']}); ours rotates all of it")
    return float((hf.get("rope_parameters") or {}).get("rope_theta", hf.get("rope_theta", ROPE_THETA)))


def llama_config(hf, kind):
    """GPTConfig of a Llama (kind "llama") or Qwen3 (kind "qwen3") config.json."""
    C, H = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"hidden_act {hf['hidden_act']!r} is not supported; our SwiGLU gates with 'silu'")
    if C % H or hf.get("head_dim") not in (None, C // H):
        raise UserError(f"head_dim {hf.get('head_dim')} is not hidden_size / num_attention_heads ({C} / {H}); "
                        "our head size is always that")
    attention_bias = hf.get("attention_bias", False)
    mlp_bias = False if kind == "qwen3" else hf.get("mlp_bias", False)  # Qwen3's MLP never has biases
    if attention_bias != mlp_bias:
        raise UserError(f"attention_bias={attention_bias} but the MLP's biases are {mlp_bias}; "
                        "our bias switch sets both")
    if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
        raise UserError("sliding-window attention (use_sliding_window / layer_types) is not supported; "
                        "every layer must attend to the whole context")
    return GPTConfig(
        vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_layer=hf["num_hidden_layers"],
        n_head=H, n_embd=C, n_kv_head=hf.get("num_key_value_heads") or H, mlp_hidden=hf["intermediate_size"],
        dropout=0.0, bias=bool(attention_bias), norm="pre", norm_type="rms", norm_eps=hf.get("rms_norm_eps", 1e-6),
        pos="rope", rope_theta=rope_theta_of(hf), activation="swiglu", tie_weights=hf.get("tie_word_embeddings", False),
        qk_norm=kind == "qwen3",
    )


def llama_config_json(model, kind):
    cfg = model.config
    theta = cfg.rope_theta
    fields = {
        "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_width,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
        "hidden_act": "silu", "max_position_embeddings": cfg.block_size, "rms_norm_eps": cfg.norm_eps,
        # both spellings of plain RoPE: transformers 4.x reads the first two, 5.x the last
        "rope_theta": theta, "rope_scaling": None, "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": cfg.bias, "attention_dropout": 0.0,  # Llama has no dropout where ours has
    }
    if kind == "llama":
        fields["mlp_bias"] = cfg.bias
    else:
        fields.update(use_sliding_window=False, sliding_window=None)
    return fields


def llama_moves(model):
    """Every HF Llama / Qwen3 tensor as a Move; c_attn's columns [q (H D) | k (Hkv D) | v (Hkv D)]
    are three HF tensors. Block matrices are transposed; the embedding and head are (V, C) in both."""
    cfg = model.config
    q, kv = cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    qkv_columns = (slice(0, q), slice(q, q + kv), slice(q + kv, q + 2 * kv))
    moves = []
    for name, p in model.params.items():
        if name in LLAMA_TOP:
            moves.append(Move(LLAMA_TOP[name], name))
            continue
        _, i, rest = name.split(".", 2)  # "h", block index, e.g. "attn.c_proj.weight"
        layer, suffix = rest.rsplit(".", 1)  # suffix: "weight" or "bias"
        hf_layers = LLAMA_QKV if layer == "attn.c_attn" else (LLAMA_BLOCK[layer],)
        columns = qkv_columns if layer == "attn.c_attn" else (slice(None),)
        moves += [Move(f"model.layers.{i}.{hf_layer}.{suffix}", name, cols, p.ndim == 2)
                  for hf_layer, cols in zip(hf_layers, columns)]
    return moves


FORMATS = {  # kind -> (the model's moves, file names -> the moves' names, model -> config.json fields)
    "gpt2": (gpt2_moves, gpt2_file_names, gpt2_config_json),
    "llama": (llama_moves, dict, lambda model: llama_config_json(model, "llama")),
    "qwen3": (llama_moves, dict, lambda model: llama_config_json(model, "qwen3")),
}


# ---------------------------------------------------------------- moving tensors
def hf_view(model, move):
    """Our parameter's part that `move` names, shaped as HF stores it (a view: writable)."""
    w = model.params[move.ours][..., move.columns]
    return w.T if move.transposed else w


def read_safetensors(file):
    """{name: array} of one safetensors file. bfloat16, which NumPy lacks, is float32's top
    16 bits, so it widens exactly by appending 16 zero bits."""
    from safetensors import SafetensorError, deserialize

    dtypes = {"F64": "<f8", "F32": "<f4", "F16": "<f2"}
    try:
        entries = deserialize(Path(file).read_bytes())
    except (SafetensorError, OSError) as e:
        raise UserError(f"{file} is not a readable safetensors file: {e}") from None
    tensors = {}
    for name, t in entries:
        if t["dtype"] == "BF16":
            a = (np.frombuffer(t["data"], "<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] in dtypes:
            a = np.frombuffer(t["data"], dtypes[t["dtype"]])
        else:
            raise UserError(f"{file}: tensor {name} is {t['dtype']}; only float weights (F64, F32, F16, BF16) load")
        tensors[name] = a.reshape(t["shape"])
    return tensors


def weight_files(path):
    """model.safetensors, or the shards a model.safetensors.index.json lists (save_pretrained
    splits a large model so)."""
    if (path / WEIGHTS).is_file():
        return [path / WEIGHTS]
    if not (path / INDEX).is_file():
        raise UserError(f"{path / WEIGHTS} not found: a Hugging Face folder needs config.json and {WEIGHTS} "
                        f"(or {INDEX} and its shards; PyTorch .bin files are not read, they can run code)")
    index = read_json(path / INDEX, "safetensors index")
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) and Path(f).name == f
                                                   for f in weight_map.values()):
        raise UserError(f"{path / INDEX} has no weight_map of shard file names in this folder")
    return [path / f for f in sorted(set(weight_map.values()))]


def load_tensors(model, tensors, moves, where):
    """Copy `tensors` into the model along `moves`, after checking that every name is there with
    HF's shape and nothing else is (UserError naming the first few that are not)."""
    expected = {m.hf: hf_view(model, m).shape for m in moves}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise UserError(f"{where} does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, shape in expected.items():
        if tensors[name].shape != shape:
            raise UserError(f"{where}: {name} has shape {tensors[name].shape}, config implies {shape}")
    for m in moves:
        hf_view(model, m)[...] = tensors[m.hf]


def load_hf(cls, path, dtype=np.float32, backend="auto"):
    """Build a `cls` (GPT) from a HF GPT-2, Llama or Qwen3 folder (config.json and safetensors)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{cfg_file} not found: a Hugging Face folder needs config.json and {WEIGHTS}")
    hf_config = read_json(cfg_file, "config.json")
    kind = model_type_of(hf_config)
    config = config_from_hf(hf_config)
    files = weight_files(path)
    moves, file_names, _ = FORMATS[kind]
    tensors = {}
    for file in files:
        tensors.update(read_safetensors(file))
    tensors = {k: v for k, v in file_names(tensors).items() if not k.endswith(IGNORED_SUFFIXES)}
    if config.tie_weights:
        tensors.pop("lm_head.weight", None)  # a tied head is the embedding; HF may store a copy
    model = cls(config, dtype=dtype, backend=backend)
    load_tensors(model, tensors, moves(model), files[0] if len(files) == 1 else path / INDEX)
    return model


def save_hf(model, path):
    """Write `model` into the folder `path` as the HF architecture it matches (hf_format):
    config.json and model.safetensors (float32), as save_pretrained does: each file atomically,
    other files left alone."""
    from safetensors.numpy import save_file

    cfg = model.config
    kind = hf_format(cfg)
    moves, _, config_json = FORMATS[kind]
    hf_config = {
        "architectures": [ARCHITECTURES[kind]], "model_type": kind, "vocab_size": cfg.vocab_size,
        **config_json(model), "tie_word_embeddings": cfg.tie_weights,
    }
    tensors = {m.hf: np.ascontiguousarray(hf_view(model, m), np.float32) for m in moves(model)}
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; save_hf writes a folder (config.json + {WEIGHTS})")
    with atomic_file(path / WEIGHTS) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_file(path / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
