"""The model interface (vintagelm/architectures.py): an architecture that is not a GPT plugs into
checkpoints, training steps and generation without any change to those loops. The one here is
a bigram table (next-token logits from the current token alone), written for this test. How a
model trains (by counting, or carrying its state) is told by its interface, not its name."""
from dataclasses import asdict, dataclass, fields

import numpy as np
import pytest

from vintagelm import architectures
from vintagelm.checkpoint import load_checkpoint, save_checkpoint
from vintagelm.generate import generate
from vintagelm.nn.loss import cross_entropy_backward, cross_entropy_forward
from vintagelm.optim import AdamW
from vintagelm.train import training_step


@dataclass
class BigramConfig:
    vocab_size: int = 7
    block_size: int = 8

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown BigramConfig field(s) {sorted(unknown)}")
        return cls(**d)


class Position:
    """The smallest decoding state: how many tokens it has seen (a bigram needs no more)."""

    def __init__(self):
        self.pos = 0

    def advance(self, n):
        self.pos += n

    def reset(self):
        self.pos = 0


class Bigram:
    architecture = "bigram"
    config_class = BigramConfig

    def __init__(self, config, seed=0, dtype=np.float32, backend="auto"):
        self.config, self.dtype, self.backend = config, np.dtype(dtype), "reference"
        V = config.vocab_size
        self.shapes = {"table.weight": (V, V)}
        self.flat_params, self.flat_grads = np.zeros(V * V, self.dtype), np.zeros(V * V, self.dtype)
        self.params = {"table.weight": self.flat_params.reshape(V, V)}
        self.grads = {"table.weight": self.flat_grads.reshape(V, V)}
        self.params["table.weight"][...] = np.random.default_rng([seed, 0]).standard_normal((V, V)) * 0.02
        self.training, self.dropout_rng, self._cache = True, np.random.default_rng([seed, 1]), None

    def forward(self, idx, targets=None, kv_cache=None):
        idx = np.asarray(idx)
        logits = self.params["table.weight"][idx]  # (B, T, V)
        if kv_cache is not None:
            kv_cache.advance(idx.shape[1])
        if targets is None:
            return logits, None
        loss, ce = cross_entropy_forward(logits, np.asarray(targets))
        self._cache = (idx, ce)
        return logits, loss

    def backward(self, accumulate=False):
        idx, ce = self._cache
        if not accumulate:
            self.flat_grads.fill(0.0)
        dlogits = cross_entropy_backward(1.0, ce)
        np.add.at(self.grads["table.weight"], idx.reshape(-1), dlogits.reshape(-1, self.config.vocab_size))
        return self.grads

    def train(self, mode=True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def num_params(self):
        return self.flat_params.size

    def flops_per_token(self):
        return 0

    def new_kv_cache(self, batch_size=1):
        return Position()


@pytest.fixture
def bigram_registered(monkeypatch):
    monkeypatch.setitem(architectures.ARCHITECTURES, "bigram", f"{__name__}:Bigram")


def test_a_second_architecture_trains_checkpoints_and_generates(bigram_registered, tmp_path):
    config = BigramConfig()
    model = architectures.model_for(config)(config, seed=0)
    assert isinstance(model, Bigram)
    optimizer = AdamW(model.params, lr=0.1, betas=(0.9, 0.99))
    text = np.array([0, 1, 2, 3, 4, 5, 6] * 20)
    x, y = text[None, :-1][:, :8], text[None, 1:][:, :8]
    first = training_step(model, optimizer, [(x, y)], lr=0.1, grad_clip=1.0)
    for _ in range(60):
        last = training_step(model, optimizer, [(x, y)], lr=0.1, grad_clip=1.0)
    assert last.stepped and last.loss < first.loss / 4  # it learned 0 -> 1 -> 2 ...

    path = save_checkpoint(tmp_path, 61, model, optimizer, {})
    ckpt = load_checkpoint(path)
    assert isinstance(ckpt.model, Bigram) and ckpt.state["architecture"] == "bigram"
    np.testing.assert_array_equal(ckpt.model.flat_params, model.flat_params)
    tokens = list(generate(ckpt.model, [3], 6, np.random.default_rng(0), temperature=0))
    assert tokens == [4, 5, 6, 0, 1, 2]


@pytest.mark.parametrize("arch", list(architectures.ARCHITECTURES))
def test_how_a_model_trains_is_told_by_its_interface(arch):
    """The training loop asks isinstance(model, CountedModel / RecurrentModel), never a name: the
    n-gram is counted, rnn and lstm can carry their state between windows, the others neither
    (nor does the bigram above, which has only the plain interface)."""
    cls = architectures.model_class(arch)
    model = cls(cls.config_class(vocab_size=5, block_size=8))
    assert isinstance(model, architectures.CountedModel) == (arch == "ngram")
    assert isinstance(model, architectures.RecurrentModel) == (arch in ("rnn", "lstm"))
    bigram = Bigram(BigramConfig())
    assert not isinstance(bigram, architectures.CountedModel | architectures.RecurrentModel)


def test_an_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'transformer-xl'; known: gpt, ngram, mlp, rnn, lstm"):
        architectures.model_class("transformer-xl")
    with pytest.raises(ValueError, match="no registered architecture takes a BigramConfig"):
        architectures.model_for(BigramConfig())
