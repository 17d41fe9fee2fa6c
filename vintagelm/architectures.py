"""What the loops need of a model (the interface), and the architectures that provide it.

train.py, generate.py, checkpoint.py, evaluate.py and the commands use a model only through
`LanguageModel`; none of them names GPT. A new architecture is a class with these members,
registered in ARCHITECTURES under the name its checkpoints record, with its memory estimate
in TRAINING_BYTES; `vintage train`, `sample`, `eval` and checkpoints then work for it unchanged.
A model that trains otherwise than by gradient steps on random windows says so by also having
the members of CountedModel or RecurrentModel; the training loop asks isinstance, never a name.
"""
import importlib
from typing import Any, Protocol, runtime_checkable

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

# architecture -> "module:function" estimating the peak bytes of training it from its config,
# before anything is allocated: function(config, batch_size, itemsize, train_tokens); see
# training_bytes. A new architecture registers one here too (memory.check_fits needs it).
TRAINING_BYTES = {
    "gpt": "vintagelm.memory:gpt_training_bytes",
    "ngram": "vintagelm.memory:ngram_training_bytes",
    "mlp": "vintagelm.museum.mlp:MLPLM.training_bytes",
    "rnn": "vintagelm.museum.rnn:RNNLM.training_bytes",
    "lstm": "vintagelm.museum.lstm:LSTMLM.training_bytes",
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


@runtime_checkable
class CountedModel(Protocol):
    """A LanguageModel trained by counting its text once, not by gradient steps (the museum's
    n-gram): training is one fit of the whole train split."""

    def fit(self, tokens):
        """Count the (N,) token ids into new parameter tables (new params and grads) -> self."""

    def num_ngrams(self) -> int: ...


@runtime_checkable
class RecurrentModel(Protocol):
    """A LanguageModel that can carry its final state into the next training window (truncated
    BPTT: the museum's rnn and lstm). It does when config.carry_state is on; training then reads
    each row's text in order, and a checkpoint keeps the state."""

    config: Any  # has carry_state: bool
    state: Any  # per layer a tuple of (B, C) arrays: where the next training forward starts; None: zeros

    def reset_state(self):
        """Forget the carried state: the next training forward starts from zeros."""


def model_class(architecture):
    """The class registered under `architecture` -> a LanguageModel class; ValueError if none."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    return imported(ARCHITECTURES[architecture])


def imported(ref):
    """"module:name" or "module:Class.attribute" -> that object, its module imported."""
    module, path = ref.split(":")
    found = importlib.import_module(module)
    for name in path.split("."):
        found = getattr(found, name)
    return found


def model_for(config):
    """The registered class whose config_class is type(config) -> a LanguageModel class."""
    for architecture in ARCHITECTURES:
        cls = model_class(architecture)
        if type(config) is cls.config_class:
            return cls
    raise ValueError(f"no registered architecture takes a {type(config).__name__}")


def training_bytes(config, batch_size, itemsize, train_tokens=0):
    """Estimated peak memory, in bytes, of training a model of `config` (any registered
    architecture) with `batch_size` sequences per micro-batch, `itemsize` bytes per number, on
    `train_tokens` tokens of text (a count model's tables grow with it), made from the config
    alone, without building the model (TRAINING_BYTES)."""
    estimate = imported(TRAINING_BYTES[model_for(config).architecture])
    return estimate(config, batch_size, itemsize, train_tokens)
