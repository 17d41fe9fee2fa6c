"""Rotary position embedding (RoPE; Su et al. 2021): each head's queries and keys are rotated
by their position before the scores, so q·k depends on where two tokens are only through the
distance between them.

The D channels of a head form D/2 pairs; pair i is turned in its plane by the angle
pos * theta^(-2i/D): the first pair by one radian per position, the last slower and slower.
Nothing is learned and nothing is added to the residual stream.

Pairing convention. Ours is "half-split": pair i is channels (i, i + D/2), as in GPT-NeoX and
Hugging Face's Llama (`rotate_half`), so HF Llama weights load without any permutation. The
RoPE paper and Meta's original Llama checkpoints pair neighbours (2i, 2i + 1) ("interleaved").
The two differ only by a permutation of each head's channels, applied to queries and keys
alike, which leaves every q·k unchanged; a checkpoint in the interleaved convention is converted
by permuting the output columns of its q and k projections (`interleaved_to_half_split`; HF's
conversion script does the same to the rows of its (out, in) weights).

Precision: the angles are computed in float64 and only then cast to the tables' dtype. HF
computes them in float32, so at position p its angles differ from ours by up to about p * 6e-8.
"""
from typing import NamedTuple

import numpy as np

ROPE_THETA = 10000.0  # the paper's and Llama 1/2's base; Llama 3 uses 500000


class RopeCache(NamedTuple):
    cos: np.ndarray  # (T, D/2) or (B, 1, T, D/2): the tables the forward used
    sin: np.ndarray  # same shape as cos


def rope_tables(T, D, theta=ROPE_THETA, offset=0, dtype=np.float64):
    """-> cos, sin for positions offset .. offset + T - 1 of a head of size D (even): each (T, D/2).

    `offset` is where the sequence starts: a KV cache holding `pos` tokens decodes the next
    ones with offset=pos. It may also be an integer array (B,), one start per batch row (rows
    decoding at different lengths); the tables are then (B, 1, T, D/2), shared by the heads."""
    if D % 2:
        raise ValueError(f"rotary embedding needs an even head size, got {D}")
    inv_freq = theta ** (-np.arange(0, D, 2) / D)  # (D/2,) radians per position of each pair
    positions = np.asarray(offset)[..., None] + np.arange(T)  # (T,) or (B, T)
    angles = positions[..., None] * inv_freq  # (T, D/2) or (B, T, D/2)
    if angles.ndim == 3:
        angles = angles[:, None]  # (B, 1, T, D/2)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rotate(x, cos, sin):
    """x (..., T, D) -> each half-split pair (x_i, x_{i+D/2}) turned by the angle whose cosine
    and sine are given (broadcasting against (..., T, D/2))."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = np.empty_like(x)
    y[..., :half] = x1 * cos - x2 * sin
    y[..., half:] = x2 * cos + x1 * sin
    return y


def rope_forward(x, cos, sin):
    """x (B, H, T, D) queries or keys, cos and sin from rope_tables -> y (B, H, T, D):
        y_i = x_i cos_i - x_{i+D/2} sin_i,   y_{i+D/2} = x_{i+D/2} cos_i + x_i sin_i
    (HF's q * cos + rotate_half(q) * sin, whose tables hold each angle twice)."""
    return rotate(x, cos, sin), RopeCache(cos, sin)


def rope_backward(dy, cache):
    """dy (B, H, T, D) -> dx (B, H, T, D).

    Forward was y = R x, with R a rotation of each pair by its angle: a linear map with no
    parameters. So dx = Rᵀ dy, and the transpose of a rotation is the rotation by minus the
    angle: the same formula with sin negated."""
    return rotate(dy, cache.cos, -cache.sin)


def half_split_order(D):
    """(D,) for each half-split channel j, the interleaved channel it takes: [0, 2, 4, ..., 1, 3, 5, ...]
    (pair i = (2i, 2i + 1) becomes pair i = (i, i + D/2))."""
    return np.concatenate([np.arange(0, D, 2), np.arange(1, D, 2)])


def permute_head_channels(w, n_head, order_of):
    """w (..., n_head * D) -> the same array with each head's D channels (the last axis) taken
    in the order order_of(D)."""
    D = w.shape[-1] // n_head
    return w.reshape(w.shape[:-1] + (n_head, D))[..., order_of(D)].reshape(w.shape)


def interleaved_to_half_split(w, n_head):
    """A q or k projection for interleaved pairs -> the same projection for our half-split pairs.

    w is the weight (C, n_head * D), stored (in, out) as every linear layer here, or its bias
    (n_head * D,); for keys with grouped heads, n_head is the number of KV heads. For HF's
    (out, in) layout pass the transpose. Rotating x @ result in our convention gives the
    interleaved rotation of x @ w with each head's channels in half-split order, so every score
    q·k is unchanged."""
    return permute_head_channels(w, n_head, half_split_order)


def half_split_to_interleaved(w, n_head):
    """The inverse of interleaved_to_half_split: our q or k projection -> Meta's pairing."""
    return permute_head_channels(w, n_head, lambda D: np.argsort(half_split_order(D)))
