"""What the loops need of a model (the interface), and the architectures that provide it.

train.py, generate.py, checkpoint.py, evaluate.py and the commands use a model only through
`LanguageModel`; none of them names GPT. A new architecture is a class with these members,
registered in ARCHITECTURES under the name its checkpoints record; `vintage train`,
`sample`, `eval` and checkpoints then work for it unchanged.
"""
import importlib
from typing import Any, Protocol

import numpy as np

# architecture name (as saved in checkpoints) -> "module:Class"
ARCHITECTURES = {
    "gpt": "vintagelm.model:GPT",
    # the museum (vintagelm/museum/): the language models before the transformer
    "ngram": "vintagelm.museum.ngram:NgramLM",
    "mlp": "vintagelm.museum.mlp:MLPLM",
    "rnn": "vintagelm.museum.rnn:RNNLM",
    "lstm": "vintagelm.museum.lstm:LSTMLM",
}


class LanguageModel(Protocol):
    architecture: str  # class attribute: the name in ARCHITECTURES and in checkpoints
    config_class: type  # its config: a dataclass with to_dict(), from_dict(d), vocab_size, block_size
    config: Any
    dtype: np.dtype  # float32 or float64
    backend: str  # "reference" or "fast" (backend.py)
    shapes: dict  # name -> shape of every parameter, in flat-buffer order
    flat_params: np.ndarray  # (N,) every parameter in one buffer
    flat_grads: np.ndarray  # (N,) every gradient in one buffer
    params: dict  # name -> view into flat_params
    grads: dict  # name -> view into flat_grads, same keys
    training: bool  # dropout (or any training-only behaviour) on
    dropout_rng: np.random.Generator  # the model's own randomness; checkpoints save its state

    def __init__(self, config, seed=0, dtype=np.float32, backend="auto"): ...

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) -> (logits (B, T, V), mean loss or None). With a kv_cache (from
        new_kv_cache) idx holds only the new tokens, and the cache advances past them."""

    def backward(self, accumulate=False):
        """The gradient of the last forward's loss -> grads (added to them if accumulate)."""

    def train(self, mode=True): ...

    def eval(self): ...

    def num_params(self) -> int: ...

    def flops_per_token(self) -> int: ...

    def new_kv_cache(self, batch_size=1):
        """Empty incremental-decoding state: `.pos` (tokens held), `.reset()`."""


def model_class(architecture):
    """The class registered under `architecture` -> a LanguageModel class; ValueError if none."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    module, name = ARCHITECTURES[architecture].split(":")
    return getattr(importlib.import_module(module), name)


def model_for(config):
    """The registered class whose config_class is type(config) -> a LanguageModel class."""
    for architecture in ARCHITECTURES:
        cls = model_class(architecture)
        if type(config) is cls.config_class:
            return cls
    raise ValueError(f"no registered architecture takes a {type(config).__name__}")
