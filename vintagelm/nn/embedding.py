"""The embedding layer: token embeddings plus position encodings (learned or sinusoidal)."""
from typing import NamedTuple

import numpy as np


class EmbeddingCache(NamedTuple):
    idx: np.ndarray  # (B, T) the token ids
    start: int  # the position of idx[:, 0]


def embedding_forward(idx, wte, wpe, start=0):
    """idx (B, T) ids, wte (V, C), wpe (block_size, C) or None -> x (B, T, C) = wte[idx] + wpe[start:start+T].

    wpe is the learned position table or the fixed sinusoidal one, or None where positions
    enter elsewhere (RoPE rotates queries and keys) or not at all; `start` is the position
    of the first token (0 in training, the KV cache's length when decoding)."""
    T = idx.shape[1]
    x = wte[idx]  # (B, T, C), a copy
    if wpe is not None:
        x += wpe[start : start + T]
    return x, EmbeddingCache(idx, start)


def embedding_backward(dx, cache, dwte, dwpe=None):
    """dx (B, T, C): ADDS into dwte (V, C) and, for a learned table, into dwpe (block_size, C).

    Forward copied row idx[b, t] of wte to position (b, t), so a row's gradient is the sum of
    dx over every position where that id appears; ids repeat, so this is a scatter-add
    (np.add.at adds repeated indices one by one instead of keeping the last write). Position
    start + t was added at every batch row, so its gradient is dx summed over the batch."""
    idx, start = cache
    C = dx.shape[-1]
    np.add.at(dwte, idx.reshape(-1), dx.reshape(-1, C))
    if dwpe is not None:
        dwpe[start : start + idx.shape[1]] += dx.sum(axis=0)


def sinusoidal_table(block_size, n_embd, dtype=np.float32):
    """The fixed position encoding of "Attention Is All You Need" (2017), (block_size, C):
    P[t, 2i] = sin(t / 10000^(2i/C)), P[t, 2i+1] = cos(t / 10000^(2i/C)).
    Each pair of channels is a rotation at its own frequency, so a fixed offset between two
    positions is a linear map of their encodings. No parameters, so no gradient.
    """
    t = np.arange(block_size, dtype=np.float64)[:, None]  # (T, 1)
    two_i = np.arange(0, n_embd, 2, dtype=np.float64)[None, :]  # (1, ceil(C/2))
    angle = t / np.power(10000.0, two_i / n_embd)  # (T, ceil(C/2))
    table = np.zeros((block_size, n_embd), dtype=np.float64)
    table[:, 0::2] = np.sin(angle)
    table[:, 1::2] = np.cos(angle[:, : n_embd // 2])  # odd C: the last sine has no cosine
    return table.astype(dtype)
