"""Token embeddings and the two kinds of position encoding (learned, sinusoidal)."""
import numpy as np


def embedding_forward(idx, wte):
    """idx (B, T) integer ids, wte (V, C) -> x (B, T, C): row lookup."""
    return wte[idx]


def embedding_backward(dx, idx, vocab_size):
    """dx (B, T, C) -> dwte (V, C).

    Forward copied row idx[b, t] of wte to position (b, t), so each row's gradient is the sum
    of dx over every position where that id appeared. Ids repeat, so this is a scatter-add;
    sorting positions by id turns it into contiguous segment sums (np.add.reduceat), much
    faster than the element-by-element np.add.at.
    """
    C = dx.shape[-1]
    ids = idx.reshape(-1)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])  # first row of each id
    dwte = np.zeros((vocab_size, C), dtype=dx.dtype)
    dwte[sorted_ids[starts]] = np.add.reduceat(dx.reshape(-1, C)[order], starts, axis=0)
    return dwte


def learned_position_forward(x, wpe):
    """x (B, T, C), wpe (block_size, C) -> x + wpe[:T] broadcast over the batch."""
    T = x.shape[1]
    return x + wpe[:T]


def learned_position_backward(dy, block_size):
    """dy (B, T, C) -> dwpe (block_size, C); rows past T got no gradient."""
    B, T, C = dy.shape
    dwpe = np.zeros((block_size, C), dtype=dy.dtype)
    dwpe[:T] = dy.sum(axis=0)
    return dwpe


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
