"""Causal multi-head self-attention, written out in full (the naive, O(T^2)-memory form).

The Q, K, V projection (c_attn) and the output projection (c_proj) are ordinary linear
layers applied by the model; this op is everything between them:
    split qkv into heads -> scores q kᵀ / sqrt(D) -> causal mask -> softmax -> (dropout) -> @ v
"""
from typing import NamedTuple

import numpy as np

from vintagelm.nn.dropout import dropout_backward, dropout_forward


class AttentionCache(NamedTuple):
    q: np.ndarray  # (B, H, T, D) queries (a strided view into qkv)
    k: np.ndarray  # (B, H, T, D) keys (view)
    v: np.ndarray  # (B, H, T, D) values (view)
    att: list  # per query chunk [i0, i1): (B, H, i1 - i0, i1) softmax probabilities
    drop: list  # per query chunk: the DropoutCache applied to its probabilities
    chunks: list  # [(i0, i1), ...] query row ranges


def qkv_heads(qkv, n_head):
    """qkv (B, T, 3C) -> q, k, v as (B, H, T, D) strided views, no copy. Each (T, D) slice has
    unit column stride and row stride 3C, which BLAS takes as is, so matmuls need no copy."""
    B, T, C3 = qkv.shape
    return qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D)


def grouped_heads(qkv, n_head, n_kv_head):
    """qkv (B, T, (H + 2 Hkv) D), c_attn's output: q, k, v laid side by side along the channels
    -> q (B, H, T, D), k and v (B, Hkv, T, D), strided views (no copy). With Hkv = H these are
    qkv_heads' views."""
    B, T, width = qkv.shape
    heads = qkv.reshape(B, T, n_head + 2 * n_kv_head, width // (n_head + 2 * n_kv_head)).transpose(0, 2, 1, 3)
    return heads[:, :n_head], heads[:, n_head : n_head + n_kv_head], heads[:, n_head + n_kv_head :]


def pack_heads(q, k, v):
    """q (B, H, T, D), k and v (B, Hkv, T, D) -> (B, T, (H + 2 Hkv) D): the inverse of
    grouped_heads, in one new array."""
    B, H, T, D = q.shape
    Hkv = k.shape[1]
    out = np.empty((B, T, H + 2 * Hkv, D), dtype=q.dtype)
    out[:, :, :H] = q.transpose(0, 2, 1, 3)
    out[:, :, H : H + Hkv] = k.transpose(0, 2, 1, 3)
    out[:, :, H + Hkv :] = v.transpose(0, 2, 1, 3)
    return out.reshape(B, T, (H + 2 * Hkv) * D)


def split_qkv(qkv, n_head, scale=1.0):
    """qkv (B, T, 3C) -> q, k, v, each a contiguous (B, H, T, D) array; q is multiplied by
    `scale` in the same pass as its copy. Contiguous heads keep every batched matmul on BLAS."""
    B, T, C3 = qkv.shape
    heads = qkv.reshape(B, T, 3, n_head, C3 // (3 * n_head)).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D) view
    q = np.multiply(heads[0], qkv.dtype.type(scale))
    return q, np.ascontiguousarray(heads[1]), np.ascontiguousarray(heads[2])


def merge_heads(x):
    """(B, H, T, D) -> (B, T, C) with C = H * D."""
    B, H, T, D = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, H * D)


def split_heads(x, n_head):
    """(B, T, C) -> (B, H, T, D), the inverse of merge_heads (a view)."""
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


_MASKS = {}  # (Tq, Tk, offset, dtype) -> additive mask, 0 where allowed and -inf in the future


def causal_mask(Tq, Tk, offset, dtype):
    """(Tq, Tk) additive mask: query i (at absolute position offset + i) sees keys j <= offset + i."""
    key = (Tq, Tk, offset, np.dtype(dtype))
    if key not in _MASKS:
        future = np.triu(np.ones((Tq, Tk), dtype=bool), k=offset + 1)
        _MASKS[key] = np.where(future, -np.inf, 0.0).astype(dtype)
    return _MASKS[key]


def causal_softmax(scores, offset=0, scale=1.0):
    """scores (..., Tq, Tk) -> softmax(scale * scores) where query row i (at absolute
    position offset + i) only attends to key columns j <= offset + i.

    Masked entries become -inf so exp gives exactly 0; the row max is subtracted first so
    exp cannot overflow (each query's own position is never masked, so every row has a
    finite max). Works in place on `scores` (one pass per step, no temporaries) and returns it.
    """
    Tq, Tk = scores.shape[-2:]
    if scale != 1.0:
        scores *= scores.dtype.type(scale)
    if Tk > offset + 1:  # only columns past the first query's position can be in the future
        scores[..., offset + 1 :] += causal_mask(Tq, Tk, offset, scores.dtype)[:, offset + 1 :]
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1.0 / scores.sum(axis=-1, keepdims=True)
    return scores


def softmax_backward(dp, p, scale=1.0):
    """In place: dp <- scale * p * (dp - rowsum(dp * p)), the softmax Jacobian applied to
    dp (..., T), times the scale the scores were multiplied by before the softmax."""
    row = np.einsum("...j,...j->...", dp, p)[..., None]
    dp -= row
    dp *= p
    if scale != 1.0:
        dp *= dp.dtype.type(scale)
    return dp


def row_blocks(n, size):
    """Split rows 0..n-1 into [(i0, i1), ...] blocks of at most `size` rows."""
    return [(i0, min(i0 + size, n)) for i0 in range(0, n, size)]


def attention_forward(qkv, n_head, dropout_p=0.0, rng=None, chunk=None):
    """qkv (B, T, 3C) -> y (B, T, C): causal self-attention over H heads of size D = C / H.

    With chunk=None this is the textbook form: the full (T, T) score matrix, half of it
    masked. With a chunk size the query rows are processed in blocks [i0, i1) that only
    score keys 0..i1-1, skipping the masked key blocks above the diagonal: about half the
    work and memory for long sequences, identical results.
    """
    B, T, _ = qkv.shape
    q, k, v = qkv_heads(qkv, n_head)  # (B, H, T, D) views
    scale = 1.0 / np.sqrt(q.shape[-1])
    y = np.empty(q.shape, dtype=q.dtype)  # (B, H, T, D)
    chunks, atts, drops = row_blocks(T, chunk or T), [], []
    for i0, i1 in chunks:
        att = q[:, :, i0:i1] @ k[:, :, :i1].transpose(0, 1, 3, 2)  # (B, H, Tc, i1) scores q kᵀ
        causal_softmax(att, offset=i0, scale=scale)  # softmax(q kᵀ / sqrt(D)), causal
        att_dropped, drop = dropout_forward(att, dropout_p, rng)
        y[:, :, i0:i1] = att_dropped @ v[:, :, :i1]  # (B, H, Tc, D)
        atts.append(att)
        drops.append(drop)
    return merge_heads(y), AttentionCache(q, k, v, atts, drops, chunks)


def attention_backward(dy, cache):
    """dy (B, T, C) -> dqkv (B, T, 3C).

    Forward, per query chunk: S = s q kᵀ (s = 1/sqrt(D)), P = softmax(S) (causal),
    P' = dropout(P), Y = P' v. Then
      dv += P'ᵀ dY,   dP' = dY vᵀ,   dP = dropout_backward(dP'),
      dS = s P * (dP - rowsum(dP * P))   (the softmax Jacobian; masked entries have P = 0),
      dq = dS k,   dk += dSᵀ q
    where += gathers the contributions of every query chunk to the keys and values it saw.
    """
    q, k, v, atts, drops, chunks = cache
    B, H, T, D = q.shape
    scale = 1.0 / np.sqrt(D)
    dY = split_heads(dy, H)  # (B, H, T, D)
    dq, dk, dv = np.zeros_like(q), np.zeros_like(k), np.zeros_like(v)  # (B, H, T, D) each
    for (i0, i1), att, drop in zip(chunks, atts, drops):
        dYc = dY[:, :, i0:i1]  # (B, H, Tc, D)
        att_dropped = att if drop.mask is None else att * drop.mask
        dv[:, :, :i1] += att_dropped.transpose(0, 1, 3, 2) @ dYc
        dP = dropout_backward(dYc @ v[:, :, :i1].transpose(0, 1, 3, 2), drop)  # (B, H, Tc, i1)
        dS = softmax_backward(dP, att, scale)
        dq[:, :, i0:i1] = dS @ k[:, :, :i1]
        dk[:, :, :i1] += dS.transpose(0, 1, 3, 2) @ q[:, :, i0:i1]
    return np.concatenate([merge_heads(dq), merge_heads(dk), merge_heads(dv)], axis=-1)  # (B, T, 3C)


def attention_decode(qkv, n_head, k_cache, v_cache, pos):
    """Attention for Tn new tokens at positions pos .. pos+Tn-1, reusing cached keys/values.

    qkv (B, Tn, (H + 2 Hkv) D); k_cache, v_cache (B, Hkv, T_max, D) hold the keys and values of
    positions < pos (Hkv = H but for grouped-query attention); this writes the new ones in
    place and attends over positions < pos + Tn. -> y (B, Tn, H D). Inference only: nothing
    is kept for a backward pass.
    """
    return attention_decode_heads(*grouped_heads(qkv, n_head, k_cache.shape[1]), k_cache, v_cache, pos)


def attention_decode_heads(q, k, v, k_cache, v_cache, pos):
    """attention_decode on heads already split: q (B, H, Tn, D), k and v (B, Hkv, Tn, D), the
    caches (B, Hkv, T_max, D), Hkv dividing H -> y (B, Tn, H D).

    With grouped heads the cache holds Hkv heads only and is never copied out to H: the
    H / Hkv query heads of a group (consecutive heads, as nn/sdpa.py's repeat_kv) share its
    keys, so their queries are stacked as the rows of one product with those keys. The causal
    mask then applies to each head's (Tn, pos + Tn) block of rows."""
    B, H, Tn, D = q.shape
    Hkv = k.shape[1]
    k_cache[:, :, pos : pos + Tn] = k
    v_cache[:, :, pos : pos + Tn] = v
    keys, values = k_cache[:, :, : pos + Tn], v_cache[:, :, : pos + Tn]  # (B, Hkv, pos+Tn, D)
    q_groups = q.reshape(B, Hkv, (H // Hkv) * Tn, D)  # a view when Hkv = H
    scores = q_groups @ keys.transpose(0, 1, 3, 2)  # (B, Hkv, H/Hkv * Tn, pos+Tn)
    att = causal_softmax(scores.reshape(B, Hkv, H // Hkv, Tn, pos + Tn), offset=pos, scale=1.0 / np.sqrt(D))
    y = att.reshape(scores.shape) @ values  # (B, Hkv, H/Hkv * Tn, D)
    return merge_heads(y.reshape(B, H, Tn, D))
