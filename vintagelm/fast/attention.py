"""Causal self-attention for the fast backend: nn/attention.py's blocked loop, its batch split
over the lanes (lanes.py), with the compiled softmax kernels in float32.

Same arguments, results and caches as attention_forward / attention_backward in
nn/attention.py (tests/test_lanes.py holds them equal); what differs is only where the work
runs and where the results land:
  * the batch rows are split over the lanes, each lane running the loop on its rows with one
    BLAS thread (the per-head products are too small for BLAS to split usefully);
  * each head's output is written straight into its columns of the (B, T, C) result, and
    dq, dk, dv straight into their columns of dqkv (no merge, no concatenate);
  * backward takes the last query chunk first: it saw every key, so its dk, dv products are
    written, not added (no zeroing pass), and the earlier chunks add theirs.
"""
from typing import NamedTuple

import numpy as np

from vintagelm.fast import lanes
from vintagelm.nn import attention as reference
from vintagelm.nn.dropout import dropout_backward, dropout_forward


class LanesCache(NamedTuple):
    slices: list  # the batch rows of each lane
    caches: list  # the nn.attention.AttentionCache of each lane


def attention_forward(qkv, n_head, dropout_p=0.0, rng=None, chunk=None, kernels=reference):
    """qkv (B, T, 3C) -> y (B, T, C), cache; `kernels` supplies causal_softmax (the compiled
    module for float32, nn/attention.py otherwise). With dropout, each lane draws its masks
    from its own generator, seeded from `rng`, so a seed still fixes every mask."""
    B = qkv.shape[0]
    slices = lanes.row_slices(B, min(lanes.lane_count(), B))
    if dropout_p > 0.0 and rng is not None and len(slices) > 1:
        rngs = [np.random.default_rng(seed) for seed in rng.integers(0, 2**63, size=len(slices))]
    else:
        rngs = [rng] * len(slices)
    y = np.empty(qkv.shape[:2] + (qkv.shape[2] // 3,), dtype=qkv.dtype)  # (B, T, C), each lane its rows
    caches = lanes.run_lanes(
        [lambda s=s, r=r: _forward(qkv[s], n_head, dropout_p, r, chunk, kernels.causal_softmax, y[s])
         for s, r in zip(slices, rngs)]
    )
    return y, LanesCache(slices, caches)


def attention_backward(dy, cache, kernels=reference):
    """dy (B, T, C) -> dqkv (B, T, 3C); `kernels` supplies softmax_backward."""
    dqkv = np.empty(dy.shape[:2] + (3 * dy.shape[2],), dtype=dy.dtype)  # (B, T, 3C), each lane its rows
    lanes.run_lanes(
        [lambda s=s, c=c: _backward(dy[s], c, kernels.softmax_backward, dqkv[s])
         for s, c in zip(cache.slices, cache.caches)]
    )
    return dqkv


def _forward(qkv, n_head, dropout_p, rng, chunk, softmax, out):
    """One lane: nn.attention.attention_forward on qkv (b, T, 3C), into out (b, T, C)."""
    B, T, _ = qkv.shape
    q, k, v = reference.qkv_heads(qkv, n_head)  # (b, H, T, D) views
    D = q.shape[-1]
    y_heads = out.reshape(B, T, n_head, D).transpose(0, 2, 1, 3)  # (b, H, T, D) view of out
    chunks, atts, drops = reference.row_blocks(T, chunk or T), [], []
    for i0, i1 in chunks:
        att = q[:, :, i0:i1] @ k[:, :, :i1].transpose(0, 1, 3, 2)  # (b, H, Tc, i1)
        softmax(att, offset=i0, scale=1.0 / np.sqrt(D))
        att_dropped, drop = dropout_forward(att, dropout_p, rng)
        np.matmul(att_dropped, v[:, :, :i1], out=y_heads[:, :, i0:i1])
        atts.append(att)
        drops.append(drop)
    return reference.AttentionCache(q, k, v, atts, drops, chunks)


def _backward(dy, cache, softmax_grad, out):
    """One lane: nn.attention.attention_backward, into out (b, T, 3C), last chunk first."""
    q, k, v, atts, drops, chunks = cache
    B, H, T, D = q.shape
    dY = reference.split_heads(dy, H)  # (b, H, T, D)
    dq, dk, dv = out.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)  # each (b, H, T, D), views of out
    for (i0, i1), att, drop in reversed(list(zip(chunks, atts, drops))):
        dYc = dY[:, :, i0:i1]  # (b, H, Tc, D)
        att_dropped = att if drop.mask is None else att * drop.mask
        dP = dropout_backward(dYc @ v[:, :, :i1].transpose(0, 1, 3, 2), drop)  # (b, H, Tc, i1)
        dS = softmax_grad(dP, att, q.dtype.type(1.0 / np.sqrt(D)))
        np.matmul(dS, k[:, :, :i1], out=dq[:, :, i0:i1])
        if i1 == T:  # the last chunk saw every key: write
            np.matmul(dS.transpose(0, 1, 3, 2), q[:, :, i0:i1], out=dk)
            np.matmul(att_dropped.transpose(0, 1, 3, 2), dYc, out=dv)
        else:
            dk[:, :, :i1] += dS.transpose(0, 1, 3, 2) @ q[:, :, i0:i1]
            dv[:, :, :i1] += att_dropped.transpose(0, 1, 3, 2) @ dYc
    return out
