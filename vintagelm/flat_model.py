"""What every model here is built on: parameters in ONE flat buffer, and the eval-mode context.

Parameters live in one flat buffer and `model.params` holds named views into it (llm.c's
layout); gradients likewise live in one flat buffer with `model.grads` as views. So the
optimizer, gradient clipping, checkpoints and the MPI all-reduce work on a single array,
whatever the architecture.

    flat_slices(shapes)       where each named parameter sits in a flat buffer (the one walk
                              of offsets: anything that lays state out like the parameters uses it)
    flat_views(flat, shapes)  named views into a flat buffer (no copies)
    FlatParamsModel           the construction the GPT (model.py) and the museum's models share
    evaluating(model)         a with-block in which dropout is off; the mode comes back after
"""
import math
from contextlib import contextmanager

import numpy as np

from vintagelm.backend import resolve_backend


def flat_slices(shapes):
    """Ordered {name: shape} -> {name: slice of the flat buffer}, one after another in order."""
    slices, offset = {}, 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        slices[name] = slice(offset, offset + n)
        offset += n
    return slices


def flat_size(shapes):
    """How many numbers a flat buffer of `shapes` holds."""
    return sum(math.prod(shape) for shape in shapes.values())


def flat_views(flat, shapes):
    """Carve a flat 1-D buffer into named views with the given shapes (no copies)."""
    return {name: flat[where].reshape(shapes[name]) for name, where in flat_slices(shapes).items()}


class FlatParamsModel:
    """The parts of the LanguageModel interface (architectures.py) that do not depend on the
    architecture: the config and dtype checks, the backend's name, the flat buffers, the
    training flag, the dropout generator and the idx check.

    A subclass sets `architecture` and `config_class` and defines param_shapes(config) (a
    static method: the ordered {name: shape} of every parameter), _init_weights(rng), forward,
    backward, flops_per_token and new_kv_cache. _init_weights draws in float64 and assigns into
    the views, so a seed gives the same weights in either dtype.
    Its forward keeps what backward needs in self._cache (None when there is nothing to
    differentiate), and its backward starts with _backward_cache."""

    architecture = None  # the name checkpoints record (architectures.py)
    config_class = None
    has_positions = False  # True: a position has an embedding only below config.block_size

    def __init__(self, config, seed=0, dtype=np.float32, backend="auto"):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__}(config) needs a {self.config_class.__name__}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        self.config, self.dtype = config, dtype
        self.backend = resolve_backend(backend)  # the museum's models have one implementation: recorded only
        self._allocate(self.param_shapes(config))
        self.training = True
        # one seed, two independent streams: weights now, dropout masks during training
        self.dropout_rng = np.random.default_rng([seed, 1])
        self._init_weights(np.random.default_rng([seed, 0]))
        self._cache = None  # what backward() needs, kept by forward(idx, targets)

    @staticmethod
    def param_shapes(config):
        raise NotImplementedError

    @classmethod
    def param_count(cls, config):
        """Parameters a model of `config` has, counted from its shapes (nothing allocated)."""
        return flat_size(cls.param_shapes(config))

    def _allocate(self, shapes):
        """Zeroed flat parameter and gradient buffers laid out as `shapes`, and their views."""
        self.shapes = shapes
        self.flat_params = np.zeros(flat_size(shapes), dtype=self.dtype)
        self.flat_grads = np.zeros(flat_size(shapes), dtype=self.dtype)
        self.params = flat_views(self.flat_params, shapes)
        self.grads = flat_views(self.flat_grads, shapes)

    def num_params(self):
        """Numbers in the parameter buffer (a tied matrix is one entry there: counted once)."""
        return int(self.flat_params.size)

    def train(self, mode=True):
        """Dropout (and any other training-only behaviour) on, or off. Returns self."""
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    def _check_idx(self, idx, start=0):
        """idx -> a (B, T) integer array of valid ids, to be placed at positions start.. .
        Without positions (has_positions False) any length goes: block_size is then only the
        window the training loop cuts."""
        idx = np.asarray(idx)
        if idx.ndim != 2 or not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"idx must be a 2-D integer array (B, T), got {idx.dtype} {idx.shape}")
        if self.has_positions and start + idx.shape[1] > self.config.block_size:
            raise ValueError(f"{start} cached + {idx.shape[1]} new positions exceed block_size {self.config.block_size}")
        if idx.size and (idx.min() < 0 or idx.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.config.vocab_size}), got {idx.min()}..{idx.max()}")
        return idx

    def _backward_cache(self, zero_grads):
        """What the last forward(idx, targets) kept for backward, handed over once (so the
        activations are freed as soon as backward is done with them); zero_grads clears the
        gradient buffer first. RuntimeError when there is none."""
        if self._cache is None:
            raise RuntimeError("backward() needs a forward(idx, targets) with targets first")
        cache, self._cache = self._cache, None
        if zero_grads:
            self.flat_grads.fill(0.0)
        return cache


@contextmanager
def evaluating(model):
    """with evaluating(model): dropout (any training-only behaviour) is off inside the block,
    and the model's mode before it is restored after, error or not, so evaluating or sampling
    in the middle of training changes nothing. Works for any LanguageModel."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
