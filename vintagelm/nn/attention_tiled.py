"""Tiled causal self-attention with an online softmax: the idea behind FlashAttention, in NumPy.

The naive form (attention.py) materialises the (B, H, T, T) probabilities and keeps them for
backward: memory quadratic in T. Here queries and keys are processed in tiles of TILE rows;
for each query tile a running max m, running sum l and running output acc are updated key
tile by key tile:
    m' = max(m, rowmax(S)),  P = exp(S - m'),  l' = l e^(m - m') + rowsum(P),
    acc' = acc e^(m - m') + P V
so the softmax never needs a whole row at once. Forward keeps only the output O and the row
log-sum-exp L = m + log l, (B, H, T): backward recomputes each probability tile as
P = exp(S - L), which is exact. Extra memory is O(T · D), not O(T^2); the price is computing
the scores twice. Dropout masks are drawn per tile from a generator seeded by (seed, i, j),
so backward regenerates exactly the masks forward used.
"""
from typing import NamedTuple

import numpy as np

from vintagelm.nn.attention import causal_mask, merge_heads, row_blocks, split_heads, split_qkv

TILE = 128  # rows per query tile and per key tile


class TiledAttentionCache(NamedTuple):
    q: np.ndarray  # (B, H, T, D) queries, pre-multiplied by 1/sqrt(D)
    k: np.ndarray  # (B, H, T, D)
    v: np.ndarray  # (B, H, T, D)
    o: np.ndarray  # (B, H, T, D) the output
    lse: np.ndarray  # (B, H, T, 1) log-sum-exp of each score row
    dropout_p: float
    seed: int | None  # dropout seed of this call (None: no dropout)
    tile: int


def _scores(q, k, i0, i1, j0, j1):
    """(B, H, i1-i0, j1-j0) scores of a query tile against a key tile, future keys at -inf."""
    s = q[:, :, i0:i1] @ k[:, :, j0:j1].transpose(0, 1, 3, 2)
    if j1 - 1 > i0:  # some key in this tile is after some query: mask (diagonal tile)
        s += causal_mask(i1 - i0, j1 - j0, i0 - j0, s.dtype)
    return s


def _dropout_mask(shape, p, seed, i, j, dtype):
    """The inverted-dropout mask (0 or 1/(1-p)) of tile (i, j): a pure function of its seed."""
    keep = np.random.default_rng([seed, i, j]).random(shape, dtype=np.float32) >= p
    return keep.astype(dtype) * dtype.type(1.0 / (1.0 - p))


def tiled_attention_forward(qkv, n_head, dropout_p=0.0, rng=None, tile=TILE):
    """qkv (B, T, 3C) -> y (B, T, C), equal to attention_forward up to float rounding."""
    B, T, _ = qkv.shape
    D = qkv.shape[-1] // (3 * n_head)
    q, k, v = split_qkv(qkv, n_head, 1.0 / np.sqrt(D))  # (B, H, T, D)
    dtype = q.dtype
    seed = int(rng.integers(2**63)) if (rng is not None and dropout_p > 0) else None
    o = np.empty_like(q)
    lse = np.empty(q.shape[:3] + (1,), dtype=dtype)  # (B, H, T, 1)
    for i0, i1 in row_blocks(T, tile):
        m = np.full((B, n_head, i1 - i0, 1), -np.inf, dtype=dtype)  # running row max
        l = np.zeros_like(m)  # running row sum of exp(s - m)
        acc = np.zeros((B, n_head, i1 - i0, D), dtype=dtype)  # running sum of P V
        for j0, j1 in row_blocks(i1, tile):  # causal: key tiles that start before the query tile ends
            s = _scores(q, k, i0, i1, j0, j1)
            m_new = np.maximum(m, s.max(axis=-1, keepdims=True))
            s -= m_new
            p = np.exp(s, out=s)  # (B, H, Tq, Tk) unnormalised probabilities
            rescale = np.exp(m - m_new)  # shrinks what was summed under the old max
            l *= rescale
            l += p.sum(axis=-1, keepdims=True)
            if seed is not None:
                p *= _dropout_mask(p.shape, dropout_p, seed, i0, j0, dtype)
            acc *= rescale
            acc += p @ v[:, :, j0:j1]
            m = m_new
        np.divide(acc, l, out=o[:, :, i0:i1])
        lse[:, :, i0:i1] = m + np.log(l)
    cache = TiledAttentionCache(q, k, v, o, lse, dropout_p, seed, tile)
    return merge_heads(o), cache


def tiled_attention_backward(dy, cache):
    """dy (B, T, C) -> dqkv (B, T, 3C), tile by tile, recomputing P = exp(S - L).

    With dO the output gradient and Δ = rowsum(dO * O) (equal to rowsum(dP' * P') of the naive
    form), each tile contributes
      dv_j += P'ᵀ dO_i,  dP' = dO_i v_jᵀ,  dS = P * (mask * dP' - Δ_i),
      dq_i += dS k_j s,  dk_j += dSᵀ q'_i."""
    q, k, v, o, lse, dropout_p, seed, tile = cache
    B, H, T, D = q.shape
    dO = split_heads(dy, H)  # (B, H, T, D)
    delta = np.einsum("bhtd,bhtd->bht", dO, o)[..., None]  # (B, H, T, 1)
    dqkv = np.zeros((B, T, 3, H, D), dtype=q.dtype)
    dq, dk, dv = dqkv.transpose(2, 0, 3, 1, 4)  # each (B, H, T, D), views into dqkv
    scale = q.dtype.type(1.0 / np.sqrt(D))
    for i0, i1 in row_blocks(T, tile):
        dOi = dO[:, :, i0:i1]
        for j0, j1 in row_blocks(i1, tile):
            s = _scores(q, k, i0, i1, j0, j1)
            s -= lse[:, :, i0:i1]
            p = np.exp(s, out=s)  # (B, H, Tq, Tk) the exact softmax probabilities
            dp = dOi @ v[:, :, j0:j1].transpose(0, 1, 3, 2)  # gradient w.r.t. the dropped P'
            if seed is not None:
                mask = _dropout_mask(p.shape, dropout_p, seed, i0, j0, q.dtype)
                dv[:, :, j0:j1] += (p * mask).transpose(0, 1, 3, 2) @ dOi
                dp *= mask
            else:
                dv[:, :, j0:j1] += p.transpose(0, 1, 3, 2) @ dOi
            dp -= delta[:, :, i0:i1]
            dp *= p  # dS
            dq[:, :, i0:i1] += (dp @ k[:, :, j0:j1]) * scale
            dk[:, :, j0:j1] += dp.transpose(0, 1, 3, 2) @ q[:, :, i0:i1]
    return dqkv.reshape(B, T, 3 * H * D)
