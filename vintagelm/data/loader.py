"""Read a prepared dataset (made by `vintage prepare`) and cut it into training batches.

The token files are memory-mapped read-only, so a dataset larger than RAM costs only the
pages a batch touches. Batches are (x, y) int64 arrays of shape (B, T) with y = x shifted
one token left: y[b, t] is the token that follows x[b, t].
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vintagelm.common import UserError, read_json, restore_interrupted
from vintagelm.data.prepare import FORMAT, VERSION

_DTYPES = ("uint16", "uint32")
_HINT = "re-run `vintage prepare`"


class TokenSplits:
    """The batches of a dataset whose splits `train` and `val` are 1-D arrays of token ids (a
    prepared dataset, or text a lab experiment tokenizes itself); the training loop draws here."""

    def batch(self, split, batch_size, block_size, rng):
        """batch_size random windows of one split (get_batch) -> (x, y) int64 (B, T)."""
        return get_batch(getattr(self, split), batch_size, block_size, rng)

    def stream(self, batch_size, block_size, step):
        """Step `step` of consecutive windows of the train split (stream_batch)."""
        return stream_batch(self.train, batch_size, block_size, step)


@dataclass
class PreparedDataset(TokenSplits):
    path: Path
    meta: dict
    tokenizer: object  # a vintagelm.tokenizers tokenizer
    train: np.ndarray  # (N_train,) read-only memmap of token ids
    val: np.ndarray  # (N_val,) read-only memmap of token ids

    @property
    def location(self):
        """Where the dataset is, as a run records it (absolute, so another folder finds it)."""
        return str(Path(self.path).resolve())

    def check(self, block_size):
        """A UserError now, not at the first evaluation minutes in, if a split is too short."""
        for split in ("train", "val"):
            n = len(getattr(self, split))
            if n < block_size + 1:
                raise UserError(f"the {split} split of {self.path} has {n} tokens, fewer than block_size + 1 = "
                                f"{block_size + 1}; use a smaller block_size, more text or another val fraction")

    def describe(self):
        return f"{len(self.train):,} train / {len(self.val):,} val tokens"


def load_dataset(path):
    """Open the prepared dataset in folder `path`, checking that its files agree with meta.json."""
    from vintagelm.tokenizers import load_tokenizer

    path = Path(path)
    restore_interrupted(path)  # a replacement killed between its two renames: the old one back
    if not path.is_dir():
        raise UserError(f"no prepared dataset at {path}: folder not found; {_HINT}")
    meta = read_json(path / "meta.json", what="dataset meta")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path / 'meta.json'} is not a vintagelm dataset meta file; {_HINT}")
    if meta.get("version") != VERSION:
        raise UserError(f"{path / 'meta.json'} has format version {meta.get('version')}, this vintagelm reads {VERSION}; {_HINT}")
    if meta.get("dtype") not in _DTYPES:
        raise UserError(f"{path / 'meta.json'} has dtype {meta.get('dtype')!r}, expected one of {', '.join(_DTYPES)}; {_HINT}")
    dtype = np.dtype(meta["dtype"])

    tok_file = path / meta.get("tokenizer_file", "tokenizer.json")
    if not tok_file.is_file():
        raise UserError(f"{tok_file} is missing; {_HINT}")
    tokenizer = load_tokenizer(tok_file)
    if tokenizer.fingerprint() != meta.get("tokenizer_fingerprint"):
        raise UserError(f"{tok_file} is not the tokenizer {path / 'train.bin'} was encoded with; {_HINT}")
    if tokenizer.vocab_size != meta.get("vocab_size"):
        raise UserError(f"{tok_file} has vocab size {tokenizer.vocab_size}, meta.json says {meta.get('vocab_size')}; {_HINT}")

    counts = meta.get("tokens")
    if not isinstance(counts, dict) or not all(isinstance(counts.get(s), int) and counts[s] >= 0 for s in ("train", "val")):
        raise UserError(f"{path / 'meta.json'} lacks the token counts of the train and val splits; {_HINT}")
    splits = {split: _open_tokens(path / f"{split}.bin", dtype, counts[split]) for split in ("train", "val")}
    for split, tokens in splits.items():
        if len(tokens) and int(tokens.max()) >= tokenizer.vocab_size:  # one pass, ~1 ms per million tokens
            raise UserError(f"{path / (split + '.bin')} holds token id {int(tokens.max())}, beyond the vocabulary "
                            f"of {tokenizer.vocab_size}; the file is corrupt: {_HINT}")
    return PreparedDataset(path, meta, tokenizer, splits["train"], splits["val"])


def _open_tokens(file, dtype, n_tokens):
    if not file.is_file():
        raise UserError(f"{file} is missing; {_HINT}")
    size = file.stat().st_size
    if size != n_tokens * dtype.itemsize:
        raise UserError(
            f"{file} has {size} bytes but meta.json promises {n_tokens} {dtype.name} tokens "
            f"({n_tokens * dtype.itemsize} bytes); {_HINT}"
        )
    if n_tokens == 0:  # mmap cannot map an empty file
        empty = np.zeros(0, dtype=dtype)
        empty.flags.writeable = False
        return empty
    return np.memmap(file, dtype=dtype, mode="r")


def get_batch(data, batch_size, block_size, rng):
    """B random windows of T+1 tokens from `data` -> (x, y), both int64 (B, T).

    rng: an np.random.Generator; the offsets come only from it, so a seeded generator gives
    the same batches every run.
    """
    _check_long_enough(data, block_size)
    starts = rng.integers(0, len(data) - block_size, size=batch_size)  # (B,) window starts
    return _windows(data, starts, block_size)


def stream_batch(data, batch_size, block_size, step):
    """Step `step` of batch_size parallel streams through `data` -> (x, y) int64 (B, T), and
    whether the streams just started over. Stream b reads the b-th of B equal stretches of the
    split, window after window, so row b of one step continues row b of the step before: what a
    recurrent model that carries its state across windows (truncated BPTT) needs."""
    _check_long_enough(data, block_size)
    lane = (len(data) - 1) // batch_size  # tokens per stream
    windows = max(1, (lane - 1) // block_size)  # whole windows per stream
    k = step % windows
    starts = np.arange(batch_size) * lane + k * block_size  # (B,)
    if lane < block_size + 1:  # a split too short for B streams: every row from the start
        starts = np.zeros(batch_size, dtype=np.int64)
    x, y = _windows(data, starts, block_size)
    return x, y, k == 0


def sequential_batches(data, batch_size, block_size, max_batches=None):
    """Walk a whole split in order: yield (x, y) int64 (b, T) batches of consecutive,
    non-overlapping windows, b <= batch_size (the last batch may be smaller). Tokens after
    the last full window of T+1 are not visited. For evaluation: every token is predicted once.
    """
    _check_long_enough(data, block_size)
    n_windows = (len(data) - 1) // block_size
    for i, first in enumerate(range(0, n_windows, batch_size)):
        if max_batches is not None and i >= max_batches:
            return
        starts = np.arange(first, min(first + batch_size, n_windows)) * block_size  # (b,)
        yield _windows(data, starts, block_size)


def _windows(data, starts, block_size):
    """The T+1 tokens from each start, as int64 inputs x and next-token targets y, (b, T) each."""
    windows = np.stack([data[s : s + block_size + 1] for s in starts]).astype(np.int64)  # (b, T+1)
    return windows[:, :-1], windows[:, 1:]


def _check_long_enough(data, block_size):
    if len(data) < block_size + 1:
        raise UserError(
            f"this split has {len(data)} tokens, fewer than block size + 1 = {block_size + 1}; "
            "use a smaller block size or more data"
        )
