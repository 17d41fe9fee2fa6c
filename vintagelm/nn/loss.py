"""Cross-entropy over logits, numerically stable, with ignored positions (target -1), and the
log-softmax that everything scoring text with a model's logits uses (evaluation, the era's
metrics, a reply's log-probabilities)."""
from typing import NamedTuple

import numpy as np

IGNORE_INDEX = -1  # a target of -1 contributes neither loss nor gradient (e.g. prompt tokens)


class CrossEntropyCache(NamedTuple):
    probs: np.ndarray  # (N, V) softmax of the logits
    targets: np.ndarray  # (N,) target ids, IGNORE_INDEX where ignored
    n_valid: int  # how many targets were not ignored (the mean's denominator)
    shape: tuple  # the logits' original shape


def cross_entropy_forward(logits, targets):
    """logits (..., V), targets (...) ints -> mean loss over the non-ignored positions (float).

    loss_i = logsumexp(logits_i) - logits_i[target_i]. Subtracting the row max before exp
    keeps exp from overflowing; it cancels in the difference.
    """
    V = logits.shape[-1]
    z = logits.reshape(-1, V)  # (N, V)
    t = targets.reshape(-1)  # (N,)
    valid = t != IGNORE_INDEX
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise ValueError("cross-entropy needs at least one target that is not ignored (-1)")
    if t.min() < IGNORE_INDEX or t.max() >= V:
        raise ValueError(f"targets must be in [0, {V}) or {IGNORE_INDEX}, got {t.min()}..{t.max()}")
    shifted = z - z.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    sumexp = exp.sum(axis=-1, keepdims=True)
    probs = exp / sumexp
    rows = np.nonzero(valid)[0]
    # log p(target) = shifted[target] - log(sum exp(shifted)), summed in float64 for the mean
    logp = shifted[rows, t[rows]] - np.log(sumexp[rows, 0])
    loss = -float(np.sum(logp, dtype=np.float64)) / n_valid
    return loss, CrossEntropyCache(probs, t, n_valid, logits.shape)


def log_softmax(logits):
    """(..., V) logits -> (..., V) log-probabilities, in float64: z - logsumexp(z), the row max
    taken out before exp so that it cannot overflow (cross_entropy_forward does the same in
    the logits' own dtype, and only at the targets)."""
    z = np.asarray(logits, dtype=np.float64)
    zmax = z.max(axis=-1, keepdims=True)
    return z - (np.log(np.exp(z - zmax).sum(axis=-1, keepdims=True)) + zmax)


def cross_entropy_backward(dloss, cache):
    """dloss (a scalar, 1.0 for the final loss) -> dlogits (..., V).

    d(loss)/d(logits_i) = (softmax(logits_i) - onehot(target_i)) / n_valid for a kept row,
    and zero for an ignored one.
    """
    probs, t, n_valid, shape = cache
    dlogits = probs.copy()
    rows = np.arange(t.shape[0])
    valid = t != IGNORE_INDEX
    dlogits[rows[valid], t[valid]] -= 1.0
    dlogits[~valid] = 0.0
    dlogits *= dloss / n_valid
    return dlogits.reshape(shape)
