"""Causal multi-head self-attention, written out in full (the naive, O(T^2)-memory form).

The Q, K, V projection (c_attn) and the output projection (c_proj) are ordinary linear
layers applied by the model; this op is everything between them:
    split qkv into heads -> scores q kᵀ / sqrt(D) -> causal mask -> softmax -> (dropout) -> @ v
"""
from typing import NamedTuple

import numpy as np

from vintagelm.nn.dropout import DropoutCache, dropout_backward, dropout_forward


class AttentionCache(NamedTuple):
    q: np.ndarray  # (B, H, T, D)
    k: np.ndarray  # (B, H, T, D)
    v: np.ndarray  # (B, H, T, D)
    att: np.ndarray  # (B, H, T, T) softmax probabilities (before dropout)
    drop: DropoutCache  # the mask applied to att (None when dropout is off)


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, C), the inverse of split_heads."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def causal_softmax(scores, offset=0):
    """scores (..., Tq, Tk) -> probabilities where query row i (at absolute position
    offset + i) only attends to key columns j <= offset + i.

    Masked entries are set to -inf so exp gives exactly 0; the row max is subtracted first
    so exp cannot overflow (each query's own position is never masked, so every row has a
    finite max). Works in place on `scores` and returns it.
    """
    Tq, Tk = scores.shape[-2:]
    future = np.triu(np.ones((Tq, Tk), dtype=bool), k=offset + 1)  # (Tq, Tk) True where j > offset + i
    scores[..., future] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores


def attention_forward(qkv, n_head, dropout_p=0.0, rng=None):
    """qkv (B, T, 3C) -> y (B, T, C): causal self-attention over H heads of size D = C / H."""
    C = qkv.shape[-1] // 3
    q, k, v = (split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))  # (B, H, T, D)
    scale = 1.0 / np.sqrt(q.shape[-1])
    scores = (q @ k.transpose(0, 1, 3, 2)) * q.dtype.type(scale)  # (B, H, T, T)
    att = causal_softmax(scores)
    att_dropped, drop = dropout_forward(att, dropout_p, rng)
    y = merge_heads(att_dropped @ v)  # (B, H, T, D) -> (B, T, C)
    return y, AttentionCache(q, k, v, att, drop)


def attention_backward(dy, cache):
    """dy (B, T, C) -> dqkv (B, T, 3C).

    Forward: S = q kᵀ * s, P = softmax(S) (causal), P' = dropout(P), Y = P' v. Then
      dv = P'ᵀ dY, dP' = dY vᵀ, dP = dropout_backward(dP'),
      dS = P * (dP - rowsum(dP * P))   (the softmax Jacobian; masked entries have P = 0),
      dq = dS k * s, dk = dSᵀ q * s.
    """
    q, k, v, att, drop = cache
    H = q.shape[1]
    dY = split_heads(dy, H)  # (B, H, T, D)
    att_dropped = att if drop.mask is None else att * drop.mask
    dv = att_dropped.transpose(0, 1, 3, 2) @ dY  # (B, H, T, D)
    datt = dropout_backward(dY @ v.transpose(0, 1, 3, 2), drop)  # (B, H, T, T)
    dS = att * (datt - np.sum(datt * att, axis=-1, keepdims=True))
    dS *= q.dtype.type(1.0 / np.sqrt(q.shape[-1]))
    dq = dS @ k  # (B, H, T, D)
    dk = dS.transpose(0, 1, 3, 2) @ q  # (B, H, T, D)
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)


def attention_forward_cached(qkv, n_head, k_cache, v_cache, pos):
    """Attention for Tn new tokens at positions pos .. pos+Tn-1, reusing cached keys/values.

    qkv (B, Tn, 3C); k_cache, v_cache (B, H, T_max, D) hold the keys and values of positions
    < pos; this writes the new ones in place and attends over positions < pos + Tn.
    -> y (B, Tn, C). Inference only: nothing is kept for a backward pass.
    """
    C = qkv.shape[-1] // 3
    Tn = qkv.shape[1]
    q, k, v = (split_heads(qkv[..., i * C : (i + 1) * C], n_head) for i in range(3))  # (B, H, Tn, D)
    k_cache[:, :, pos : pos + Tn] = k
    v_cache[:, :, pos : pos + Tn] = v
    keys, values = k_cache[:, :, : pos + Tn], v_cache[:, :, : pos + Tn]  # (B, H, pos+Tn, D)
    scores = (q @ keys.transpose(0, 1, 3, 2)) * q.dtype.type(1.0 / np.sqrt(q.shape[-1]))  # (B, H, Tn, pos+Tn)
    att = causal_softmax(scores, offset=pos)
    return merge_heads(att @ values)
