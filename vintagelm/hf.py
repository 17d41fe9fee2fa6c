"""Hugging Face GPT-2 interop: our parameter names are GPT-2's without the `transformer.`
prefix, and both store linear weights (in, out), so loading and saving is a rename plus a
check of every name and shape. Files are safetensors (never pickle) and config.json.

Only configurations GPT-2 can express are saved: pre-norm, learned positions, biases.
"""
import json
from pathlib import Path

import numpy as np

from vintagelm.common import UserError, atomic_file
from vintagelm.model import GPTConfig
from vintagelm.nn.norm import LN_EPS

# HF activation names -> ours. "gelu" in HF is the exact erf form, which we do not implement.
HF_ACTIVATIONS = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu", "relu": "relu"}
PREFIX = "transformer."
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")  # old HF causal-mask buffers, not weights


def config_from_hf(hf):
    """GPTConfig from a parsed HF GPT-2 config.json dict (UserError when we cannot match it)."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"model_type is {hf.get('model_type')!r}; only GPT-2 checkpoints are supported")
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
        raise UserError(f"activation_function {act!r} is not supported (use one of {', '.join(HF_ACTIVATIONS)})")
    if abs(hf.get("layer_norm_epsilon", LN_EPS) - LN_EPS) > 1e-12:
        raise UserError(f"layer_norm_epsilon {hf['layer_norm_epsilon']} differs from ours ({LN_EPS})")
    if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
        raise UserError("only GPT-2's standard 1/sqrt(head size) attention scaling is supported")
    if hf.get("n_inner") not in (None, 4 * hf["n_embd"]):
        raise UserError(f"n_inner {hf['n_inner']} is not 4 * n_embd, which our MLP assumes")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("n_positions", hf.get("n_ctx")),
            n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            dropout=0.0, bias=True, norm="pre", pos="learned",
            tie_weights=hf.get("tie_word_embeddings", True), activation=HF_ACTIVATIONS[act],
        )
    except (KeyError, ValueError) as e:
        raise UserError(f"config.json does not describe a valid GPT-2: {e}") from None


def load_hf(cls, path, dtype=np.float32, backend="auto"):
    """Build a `cls` (GPT) from a HF GPT-2 directory with config.json and model.safetensors."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    cfg_file, weights_file = path / "config.json", path / "model.safetensors"
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise UserError(f"{f} not found: a Hugging Face GPT-2 directory needs config.json and model.safetensors")
    try:
        hf_config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{cfg_file} is not valid JSON: {e}") from None
    config = config_from_hf(hf_config)
    try:
        tensors = load_file(weights_file)
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights_file} is not a readable safetensors file: {e}") from None
    tensors = {
        (k[len(PREFIX):] if k.startswith(PREFIX) else k): v
        for k, v in tensors.items()
        if not k.endswith(IGNORED_SUFFIXES)
    }
    if config.tie_weights:
        tensors.pop("lm_head.weight", None)  # a tied head is the embedding; HF may store a copy
    model = cls(config, dtype=dtype, backend=backend)
    missing = sorted(set(model.params) - set(tensors))
    unexpected = sorted(set(tensors) - set(model.params))
    if missing or unexpected:
        raise UserError(f"{weights_file} does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    for name, p in model.params.items():
        if tensors[name].shape != p.shape:
            raise UserError(f"{weights_file}: {name} has shape {tensors[name].shape}, config implies {p.shape}")
        p[...] = tensors[name]
    return model


def save_hf(model, path):
    """Write `model` into the folder `path` as Hugging Face GPT-2 (config.json and
    model.safetensors), as save_pretrained does: each file atomically, other files left alone."""
    from safetensors.numpy import save_file

    cfg = model.config
    if cfg.norm != "pre" or cfg.pos != "learned" or not cfg.bias:
        raise UserError(
            "GPT-2 (and so save_hf) needs norm='pre', pos='learned' and bias=True; "
            f"this model has norm={cfg.norm!r}, pos={cfg.pos!r}, bias={cfg.bias}"
        )
    hf_config = {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": None,
        "activation_function": "gelu_new" if cfg.activation == "gelu" else "relu",
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": LN_EPS,
        "tie_word_embeddings": cfg.tie_weights,
    }
    tensors = {("lm_head.weight" if k == "lm_head.weight" else PREFIX + k): np.ascontiguousarray(v, np.float32)
               for k, v in model.params.items()}
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is a file; save_hf writes a folder (config.json + model.safetensors)")
    with atomic_file(path / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    with atomic_file(path / "config.json") as tmp:
        tmp.write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
