"""Scaled dot-product attention as the textbook op, with grouped key/value heads and QK-norm.

    y = softmax(q kᵀ * scale, masked) v,   scale = 1 / sqrt(D) unless given

q, k and v are separate and of any lengths: q (B, H, Tq, D), k and v (B, Hkv, Tk, D); an
optional boolean mask (True = may attend) broadcasts against the (B, H, Tq, Tk) scores. The
model's causal self-attention (attention.py) is this op specialised to one packed qkv, Tq = Tk
and a causal mask; tests/test_nn_modern.py checks the two equal, forward and backward.

Grouped-query attention (Ainslie et al. 2023): Hkv key/value heads with Hkv dividing H, each
shared by a group of H / Hkv consecutive query heads (query head h reads kv head h // (H / Hkv),
as HF's repeat_kv). Hkv = H is ordinary multi-head attention, Hkv = 1 multi-query attention.
The KV cache shrinks by H / Hkv. Here k and v are copied out to H heads (repeat_kv), as HF's
eager path does: one (B, H, Tk, D) copy each, in exchange for the plain multi-head code.

QK-norm: RMSNorm of each head's queries and keys over D before the scores, which keeps the
logits q·k from growing with the weights. Without a gain it commutes with RoPE (a rotation
keeps each head's norm), so whether it comes first (Qwen3, Gemma 3) or second (nanochat) only
matters when there is a gain.

Not here: dropout on the probabilities, and the chunked and cached variants (attention.py).
"""
from typing import NamedTuple

import numpy as np

from vintagelm.nn.attention import softmax_backward
from vintagelm.nn.rmsnorm import RMS_EPS, rmsnorm_backward, rmsnorm_forward


class RepeatKVCache(NamedTuple):
    n_rep: int  # query heads per kv head, H / Hkv


def repeat_kv_forward(x, n_rep):
    """x (B, Hkv, T, D) -> (B, Hkv * n_rep, T, D): kv head j copied to heads j * n_rep ..
    (j + 1) * n_rep - 1 (HF's repeat_kv; with n_rep = 1, x itself)."""
    y = x if n_rep == 1 else np.repeat(x, n_rep, axis=1)
    return y, RepeatKVCache(n_rep)


def repeat_kv_backward(dy, cache):
    """dy (B, H, T, D) -> dx (B, Hkv, T, D).

    Forward copied each kv head to n_rep heads, so its gradient is the sum of theirs: the
    heads of a group sit next to each other, and summing that axis puts them back together."""
    if cache.n_rep == 1:
        return dy
    B, H, T, D = dy.shape
    return dy.reshape(B, H // cache.n_rep, cache.n_rep, T, D).sum(axis=2)


def causal_attend_mask(Tq, Tk):
    """(Tq, Tk) bool for causal attention where the queries are the LAST Tq of Tk positions (as
    when decoding after Tk - Tq cached tokens; Tq = Tk is ordinary causal self-attention):
    query i sits at position Tk - Tq + i and may attend key j when j <= Tk - Tq + i."""
    if Tq > Tk:
        raise ValueError(f"{Tq} queries cannot be the last positions of {Tk} keys")
    return np.tri(Tq, Tk, k=Tk - Tq, dtype=bool)


def masked_softmax(scores, mask, scale):
    """In place: scores (B, H, Tq, Tk) <- softmax over the keys of scale * scores, where the
    entries with mask False become exactly 0. The row max is subtracted first, so exp cannot
    overflow; every row keeps at least one key, so every max is finite."""
    scores *= scores.dtype.type(scale)
    if mask is not None:
        np.copyto(scores, -np.inf, where=~mask)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores *= 1.0 / scores.sum(axis=-1, keepdims=True)
    return scores


class SDPACache(NamedTuple):
    q: np.ndarray  # (B, H, Tq, D)
    k: np.ndarray  # (B, H, Tk, D) the keys, repeated out to H heads
    v: np.ndarray  # (B, H, Tk, D) the values, repeated out to H heads
    att: np.ndarray  # (B, H, Tq, Tk) the softmax probabilities (0 where masked)
    scale: float  # what the scores were multiplied by
    kv: RepeatKVCache  # how k and v were repeated


def sdpa_forward(q, k, v, mask=None, scale=None):
    """q (B, H, Tq, D), k and v (B, Hkv, Tk, D) with Hkv dividing H, mask None or bool
    broadcastable to (B, H, Tq, Tk) (True = may attend; causal_attend_mask builds the causal
    one), scale None (1 / sqrt(D)) or a number -> y (B, H, Tq, D)."""
    H, Hkv = q.shape[1], k.shape[1]
    if H % Hkv:
        raise ValueError(f"{Hkv} key/value heads do not divide {H} query heads")
    if mask is not None:
        if mask.dtype != bool:  # an additive float mask (HF's form) would be misread as bool
            raise TypeError(f"the mask must be boolean (True = may attend), got {mask.dtype}")
        if not mask.any(axis=-1).all():  # that row's softmax would be 0 / 0
            raise ValueError("every query must be allowed at least one key: a row of the mask is all False")
    scale = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
    k, kv = repeat_kv_forward(k, H // Hkv)  # (B, H, Tk, D)
    v, _ = repeat_kv_forward(v, H // Hkv)  # (B, H, Tk, D)
    att = masked_softmax(q @ k.transpose(0, 1, 3, 2), mask, scale)  # (B, H, Tq, Tk)
    return att @ v, SDPACache(q, k, v, att, scale, kv)


def sdpa_backward(dy, cache):
    """dy (B, H, Tq, D) -> dq (B, H, Tq, D), dk (B, Hkv, Tk, D), dv (B, Hkv, Tk, D).

    Forward was S = s q kᵀ, P = softmax(S) (masked entries 0), Y = P v. Then
        dv = Pᵀ dY,   dP = dY vᵀ,   dS = s P * (dP - rowsum(dP * P)),   dq = dS k,   dk = dSᵀ q
    (a masked entry has P = 0, hence dS = 0: no gradient flows through it), and the
    repeated heads' dk and dv are summed back into their kv heads."""
    q, k, v, att, scale, kv = cache
    dv = att.transpose(0, 1, 3, 2) @ dy  # (B, H, Tk, D)
    dS = softmax_backward(dy @ v.transpose(0, 1, 3, 2), att, scale)  # (B, H, Tq, Tk)
    dq = dS @ k  # (B, H, Tq, D)
    dk = dS.transpose(0, 1, 3, 2) @ q  # (B, H, Tk, D)
    return dq, repeat_kv_backward(dk, kv), repeat_kv_backward(dv, kv)


class QKNormCache(NamedTuple):
    q: tuple  # the queries' RMSNormCache
    k: tuple  # the keys' RMSNormCache


def qk_norm_forward(q, k, w_q=None, w_k=None, eps=RMS_EPS):
    """q (B, H, Tq, D), k (B, Hkv, Tk, D), gains w_q and w_k (D,) shared by all heads, or None
    -> (q, k) each RMS-normalised over D, same shapes."""
    q_normed, q_cache = rmsnorm_forward(q, w_q, eps)
    k_normed, k_cache = rmsnorm_forward(k, w_k, eps)
    return (q_normed, k_normed), QKNormCache(q_cache, k_cache)


def qk_norm_backward(dq, dk, cache, dw_q=None, dw_k=None):
    """dq (B, H, Tq, D), dk (B, Hkv, Tk, D) -> the gradients of the un-normalised q and k; ADDS
    into the gain slots when there are gains. Two independent RMSNorms: rmsnorm.py derives each."""
    return rmsnorm_backward(dq, cache.q, dw_q), rmsnorm_backward(dk, cache.k, dw_k)
