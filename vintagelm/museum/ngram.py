"""NgramConfig and NgramLM: an order-n count model with interpolated modified Kneser-Ney
smoothing (Chen & Goodman 1998), the state of the art before neural language models.

No gradients: "training" is counting (fit), done once over the whole train split. The
model then predicts the next token from the previous n-1 tokens alone, through a chain of
levels k = n, n-1, ..., 1, each interpolated with the one below:

    p_k(w | h) = max(c_k(h w) - D_k(c_k(h w)), 0) / c_k(h)  +  gamma_k(h) p_{k-1}(w | h')
    gamma_k(h) = (D_k1 N1(h .) + D_k2 N2(h .) + D_k3 N3+(h .)) / c_k(h)
    p_0(w)     = 1 / V                               (so every token has some probability)

h is the k-1 tokens before w and h' is h without its oldest token; c_k(h) = sum_w c_k(h w),
and N_r(h .) counts the w with c_k(h w) = r (r = 1, 2, 3 and more). A context h never seen
at level k passes p_{k-1} through unchanged. The counts c_k are
    level n      raw counts of the n-grams in the training text
    level k < n  continuation counts N1+(. g): how many DIFFERENT tokens precede the k-gram g
                 ("Francisco" is frequent but follows only "San": a poor guess after new words)
The three discounts of each level come from its count-of-counts n_r (how many k-grams have
count r there):  Y = n1 / (n1 + 2 n2),  D_kr = r - (r + 1) Y n_{r+1} / n_r.  Small or
artificial text can leave that undefined (n_r = 0) or outside [0, r]; such a discount falls
back to 0.5, 1 or 1.5 (the defaults of KenLM's --discount_fallback). With 0 <= D_r <= r every
p_k sums to 1 over the vocabulary, seen context or not.

Storage. A k-gram (w_1 .. w_k) is one integer key in base V, w_1 the most significant digit,
so sorting the keys groups them by context (key // V) and a context's followers are one
contiguous run. Every table is a float64 array in the flat buffer (the checkpoint stores
floats; keys stay exact because V^order <= 2^53, which the config checks):
    {k}gram.keys (N_k)  {k}gram.counts (N_k)          sorted k-gram keys, their c_k
    {k}gram.context_keys (M_k)  .context_totals (M_k)  .gammas (M_k)   per context h: c_k(h), gamma_k(h)
    {k}gram.discounts (3)                              D_k1, D_k2, D_k3+
N_k and M_k depend on the text, so fit() records them in the config (ngrams, contexts): a
checkpoint's config then lays out the buffers before the loader reads them in.

What this file does not do: sentence boundaries (the text is one stream; a window's first
positions just see a shorter history), pruning, or any training by gradient: backward()
returns zeros, and an optimizer step with them leaves every table as it is.
Shapes: B batch, T time, V vocabulary, Q = B T queries, n order.
"""
from dataclasses import dataclass, replace

import numpy as np

from vintagelm.checked_config import ConfigIO
from vintagelm.flat_model import FlatParamsModel
from vintagelm.nn.loss import IGNORE_INDEX

MAX_ORDER = 6
EXACT = 2**53  # float64 holds every integer up to here: the largest key must stay below
FALLBACK = (0.5, 1.0, 1.5)  # D1, D2, D3+ where the closed form fails
CHUNK = 1 << 20  # tokens counted at a time when fit() is given one long array


@dataclass
class NgramConfig(ConfigIO):
    vocab_size: int = 65  # number of token ids (V)
    block_size: int = 64  # the window the training and evaluation loops cut; no positions
    order: int = 3  # n: the prediction sees the previous n-1 tokens (1: unigram)
    ngrams: tuple = ()  # N_k, distinct entries of level k = 1..n (set by fit; () = not fitted)
    contexts: tuple = ()  # M_k, distinct contexts of level k (set by fit)

    def __post_init__(self):
        self.check(positive=("vocab_size", "block_size", "order"))
        name = type(self).__name__
        if self.order > MAX_ORDER:
            raise ValueError(f"{name}.order must be 1..{MAX_ORDER}, got {self.order}")
        if int(self.vocab_size) ** self.order > EXACT:
            top = max(k for k in range(1, MAX_ORDER + 1) if int(self.vocab_size) ** k <= EXACT)
            raise ValueError(f"{name}: order {self.order} over {self.vocab_size} tokens makes keys beyond 2^53, "
                             f"not exact in float64; use order <= {top}")
        for f in ("ngrams", "contexts"):  # JSON gives lists back
            value = tuple(getattr(self, f))
            if value and (len(value) != self.order or any(
                    isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in value)):
                raise ValueError(f"{name}.{f} must be () or {self.order} integers >= 0, got {value!r}")
            setattr(self, f, tuple(int(v) for v in value))
        if bool(self.ngrams) != bool(self.contexts) or any(m > n for m, n in zip(self.contexts, self.ngrams)):
            raise ValueError(f"{name}: ngrams {self.ngrams} and contexts {self.contexts} do not fit together")


def param_shapes(config):
    """Ordered {name: shape} of every table, level 1 (unigrams) to level n."""
    n = config.order
    ngrams, contexts = config.ngrams or (0,) * n, config.contexts or (0,) * n
    shapes = {}
    for k in range(1, n + 1):
        N, M = ngrams[k - 1], contexts[k - 1]
        shapes.update({f"{k}gram.keys": (N,), f"{k}gram.counts": (N,), f"{k}gram.context_keys": (M,),
                       f"{k}gram.context_totals": (M,), f"{k}gram.gammas": (M,), f"{k}gram.discounts": (3,)})
    return shapes


# ---------------------------------------------------------------- counting
def ngram_keys(tokens, k, V):
    """tokens (N,) int64 -> (N-k+1,) int64 keys of its k-grams, w_1 V^(k-1) + ... + w_k."""
    m = len(tokens) - k + 1
    if m <= 0:
        return np.zeros(0, np.int64)
    key = tokens[:m].copy()
    for i in range(1, k):
        key = key * V + tokens[i : i + m]  # Horner: shift one digit, add the next token
    return key


def reduce_counts(keys, counts):
    """Concatenated (key, count) pieces -> sorted unique keys and their summed counts."""
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse.reshape(-1), weights=counts, minlength=len(unique)).astype(np.int64)


class NgramCounter:
    """Streams over consecutive pieces of one token sequence and counts its n-grams.

    The last n-1 tokens of a piece are carried to the front of the next, so an n-gram that
    crosses a boundary is counted once, by the piece where it ends. Each piece is counted
    with np.unique; the pieces' counts are merged by concatenating and reducing again, once
    the pending ones outgrow the merged table (amortised: every n-gram is re-sorted
    O(log pieces) times). The first n-1 tokens are kept too: the lower-order k-grams there
    are the only ones that are not the end of some n-gram (tables())."""

    def __init__(self, order, vocab_size):
        self.n, self.V = order, vocab_size
        self.head = np.zeros(0, np.int64)  # the first n-1 tokens of the sequence
        self.carry = np.zeros(0, np.int64)  # the last n-1 tokens seen
        self.keys, self.counts = np.zeros(0, np.int64), np.zeros(0, np.int64)  # merged so far
        self.pending = []  # [(keys, counts)] of the pieces since the last merge

    def add(self, piece):
        piece = np.asarray(piece)
        if piece.ndim != 1 or not (np.issubdtype(piece.dtype, np.integer) or piece.size == 0):
            raise ValueError(f"fit() takes 1-D arrays of token ids, got {piece.dtype} {piece.shape}")
        if piece.size and (piece.min() < 0 or piece.max() >= self.V):
            raise ValueError(f"token ids must be in [0, {self.V}), got {piece.min()}..{piece.max()}")
        piece = piece.astype(np.int64)
        n = self.n
        if len(self.head) < n - 1:
            self.head = np.concatenate([self.head, piece[: n - 1 - len(self.head)]])
        s = np.concatenate([self.carry, piece])  # (n-1 + len,) n-grams that end in this piece
        keys, counts = np.unique(ngram_keys(s, n, self.V), return_counts=True)
        self.pending.append((keys, counts))
        self.carry = s[max(0, len(s) - (n - 1)):] if n > 1 else s[:0]
        if sum(len(k) for k, _ in self.pending) > max(len(self.keys), CHUNK):
            self._merge()

    def _merge(self):
        pieces = [(self.keys, self.counts)] + self.pending
        self.keys, self.counts = reduce_counts(np.concatenate([k for k, _ in pieces]),
                                               np.concatenate([c for _, c in pieces]))
        self.pending = []

    def tables(self):
        """-> [(keys, counts)] for levels k = 1..n: raw counts at level n, continuation counts
        N1+(. g) below.

        The continuation count of a k-gram g is the number of distinct (k+1)-grams that end
        in g. The distinct (k+1)-grams are the (k+1)-token ends of the distinct (k+2)-grams
        (down from the n-grams), plus those that lie inside the first n-1 tokens (no n-gram
        ends in them)."""
        self._merge()
        n, V = self.n, self.V
        levels = [None] * n
        levels[n - 1] = (self.keys, self.counts)
        distinct = self.keys  # the distinct (k+1)-grams, for k = n-1 down to 1
        for k in range(n - 1, 0, -1):
            ends = distinct % V**k  # drop the oldest token: (N_{k+1},) k-gram keys
            levels[k - 1] = np.unique(ends, return_counts=True)
            if k > 1:
                distinct = np.unique(np.concatenate([ends, ngram_keys(self.head, k, V)]))
        return levels


def kn_discounts(counts):
    """counts (N,) of one level -> (D1, D2, D3+) from its count-of-counts (module docstring)."""
    n = [int(np.count_nonzero(counts == r)) for r in (1, 2, 3, 4)]  # n1..n4
    out = []
    for r in (1, 2, 3):
        d = None
        if n[r - 1] > 0 and n[0] + 2 * n[1] > 0:
            y = n[0] / (n[0] + 2 * n[1])
            d = r - (r + 1) * y * n[r] / n[r - 1]
        out.append(d if d is not None and 0.0 <= d <= r else FALLBACK[r - 1])
    return np.array(out)


def context_table(keys, counts, V, discounts):
    """A level's sorted (keys, counts) -> per context: (keys, totals c(h), gammas)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    ctx = keys // V  # (N,) sorted, so each context's followers are one run
    first = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])  # (M,) where each run starts
    totals = np.add.reduceat(counts, first)  # (M,) c(h)
    followers = [np.add.reduceat((counts == 1).astype(np.int64), first),  # N1(h .)
                 np.add.reduceat((counts == 2).astype(np.int64), first),  # N2(h .)
                 np.add.reduceat((counts >= 3).astype(np.int64), first)]  # N3+(h .)
    gammas = sum(d * f for d, f in zip(discounts, followers)) / totals
    return ctx[first], totals, gammas


# ---------------------------------------------------------------- the decoding state
class NgramHistory:
    """The n-gram model's decoding state: the last n-1 tokens fed (fewer at the window
    start), all the next prediction depends on. Constant size, constant cost per token."""

    def __init__(self, order, batch_size):
        self.keep, self.batch_size = order - 1, batch_size
        self.reset()

    def reset(self):
        self.history = np.zeros((self.batch_size, 0), np.int64)  # (B, <= n-1)
        self.pos = 0  # tokens consumed since the window start

    def advance(self, n):
        self.pos += n


# ---------------------------------------------------------------- the model
class NgramLM(FlatParamsModel):
    """Interpolated modified Kneser-Ney n-gram model. fit(tokens), then forward as any model."""

    architecture = "ngram"  # the name checkpoints record (architectures.py)
    config_class = NgramConfig

    def __init__(self, config, seed=0, dtype=np.float64, backend="auto"):
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        # always float64, whatever is asked: the keys must stay exact integers (and a float32
        # table would save nothing worth the rounding)
        super().__init__(config, seed, np.float64, backend)

    param_shapes = staticmethod(param_shapes)

    def _init_weights(self, rng):
        """Nothing to draw: empty tables are the uniform distribution."""

    def _layout(self, config):
        """New flat buffers for the table sizes of `config` (fit found them)."""
        self.config = config
        self._allocate(param_shapes(config))

    @property
    def fitted(self):
        return bool(self.config.ngrams)

    def fit(self, tokens, chunk_size=CHUNK):
        """Count a token sequence and build every table -> self.

        tokens: one 1-D array (a memmapped split is read chunk_size tokens at a time), or an
        iterable of 1-D arrays that are consecutive pieces of one sequence. A new fit starts
        from nothing; the config's ngrams and contexts are replaced by the sizes found, and
        params/grads become new buffers (an optimizer made before holds the old ones)."""
        V, n = self.config.vocab_size, self.config.order
        pieces = tokens
        if isinstance(tokens, np.ndarray):
            pieces = (tokens[i : i + chunk_size] for i in range(0, len(tokens), chunk_size))
        counter = NgramCounter(n, V)
        for piece in pieces:
            counter.add(piece)
        levels = []
        for keys, counts in counter.tables():
            discounts = kn_discounts(counts)
            levels.append((keys, counts, *context_table(keys, counts, V, discounts), discounts))
        self._layout(replace(self.config, ngrams=tuple(len(lv[0]) for lv in levels),
                             contexts=tuple(len(lv[2]) for lv in levels)))
        names = ("keys", "counts", "context_keys", "context_totals", "gammas", "discounts")
        for k, level in enumerate(levels, start=1):
            for name, array in zip(names, level):
                self.params[f"{k}gram.{name}"][...] = array  # int64 -> float64, exact below 2^53
        return self

    def check_params(self):
        """ValueError naming the first table that breaks what forward's lookups assume of a
        fitted model: keys whole, in range, sorted and unique (searchsorted finds a context's
        followers); counts whole and >= 1; discounts 0 <= D_r <= r; and each context table
        exactly what its keys, counts and discounts make (totals > 0, so every p_k sums to 1).
        A loaded checkpoint is only shape-checked: a table edited or corrupted in place would
        otherwise index out of bounds, give nan, or quietly score wrong."""
        V = self.config.vocab_size
        for k in range(1, self.config.order + 1):
            table = {name: self.params[f"{k}gram.{name}"] for name in
                     ("keys", "counts", "context_keys", "context_totals", "gammas", "discounts")}
            for name, values in table.items():
                if not np.isfinite(values).all():
                    raise ValueError(f"the n-gram table {k}gram.{name} holds nan or inf")
            keys, counts, discounts = table["keys"], table["counts"], table["discounts"]
            if (keys != np.floor(keys)).any() or (keys < 0).any() or (keys >= float(V) ** k).any():
                raise ValueError(f"the n-gram table {k}gram.keys holds keys that are not {k}-grams "
                                 f"of {V} tokens (whole numbers 0 .. {V}^{k} - 1)")
            if (np.diff(keys) <= 0).any():
                raise ValueError(f"the n-gram table {k}gram.keys is not sorted and unique")
            if (counts < 0).any():
                raise ValueError(f"the n-gram table {k}gram.counts has negative counts")
            if (counts != np.floor(counts)).any() or (counts < 1).any():
                raise ValueError(f"the n-gram table {k}gram.counts has counts that are not whole numbers >= 1")
            if ((discounts < 0) | (discounts > np.arange(1, 4))).any():
                raise ValueError(f"the n-gram table {k}gram.discounts is outside 0 <= D_r <= r: {discounts.tolist()}")
            made = context_table(keys.astype(np.int64), counts.astype(np.int64), V, discounts)
            for name, want in zip(("context_keys", "context_totals", "gammas"), made):
                if table[name].shape != want.shape or not np.allclose(table[name], want, rtol=1e-12, atol=0):
                    raise ValueError(f"the n-gram table {k}gram.{name} does not match {k}gram.keys and "
                                     f"{k}gram.counts")

    def num_ngrams(self):
        """Distinct k-grams stored, all levels together (num_params counts every number)."""
        return sum(self.config.ngrams)

    def flops_per_token(self):
        """0: counting does no floating-point training work (lookups and sorts only)."""
        return 0

    def new_kv_cache(self, batch_size=1):
        return NgramHistory(self.config.order, batch_size)

    # ---------------------------------------------------------------- forward
    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) ints -> (logits (B, T, V) = log p(next | previous n-1 tokens), loss).

        Position t sees idx[:, t-n+2 .. t], fewer tokens near the window start. The loss is
        the mean of -log p(target) over targets != -1. With a kv_cache (new_kv_cache) idx
        holds only the new tokens and the cache supplies the history before them."""
        idx = self._check_idx(idx)
        B, T = idx.shape
        history = np.zeros((B, 0), np.int64)
        if kv_cache is not None:
            if kv_cache.batch_size != B:
                raise ValueError(f"the cache holds {kv_cache.batch_size} rows, idx has {B}")
            history = kv_cache.history
        ext = np.concatenate([history, idx.astype(np.int64)], axis=1)  # (B, P+T)
        logp = np.log(self._probs(ext, history.shape[1])).reshape(B, T, -1)  # (B, T, V)
        self._cache = None
        if kv_cache is not None:
            kv_cache.history = ext[:, ext.shape[1] - min(kv_cache.keep, ext.shape[1]):]
            kv_cache.advance(T)
            return logp, None
        if targets is None:
            return logp, None
        t = np.asarray(targets).reshape(-1)
        valid = t != IGNORE_INDEX
        if not valid.any():
            raise ValueError("cross-entropy needs at least one target that is not ignored (-1)")
        if t.min() < IGNORE_INDEX or t.max() >= self.config.vocab_size:
            raise ValueError(f"targets must be in [0, {self.config.vocab_size}) or {IGNORE_INDEX}, "
                             f"got {t.min()}..{t.max()}")
        rows = np.flatnonzero(valid)
        loss = -float(logp.reshape(B * T, -1)[rows, t[rows]].sum()) / len(rows)
        self._cache = True  # nothing to keep: backward has nothing to compute
        return logp, loss

    def _probs(self, ext, P):
        """ext (B, P+T) tokens -> (B T, V) next-token probabilities at positions P..P+T-1,
        each from the (at most n-1) tokens up to it, level 1 up to level n."""
        V, n = self.config.vocab_size, self.config.order
        B, T = ext.shape[0], ext.shape[1] - P
        # level 1 has one context (the empty one): one row, shared by every query
        p1 = self._level(np.full((1, V), 1.0 / V), np.zeros(1, np.int64), np.zeros(1, np.int64), 1)
        p = np.repeat(p1, B * T, axis=0)  # (Q, V)
        pos = np.arange(P, P + T)  # (T,) positions of the queries in ext
        ctx = np.zeros((B, T), np.int64)  # the queries' context keys, one token longer per level
        for k in range(2, n + 1):
            back = pos - (k - 2)  # the token that joins the context, as its most significant digit
            ok = back >= 0  # (T,) a history of k-1 tokens exists (not at the window start)
            ctx[:, ok] += ext[:, back[ok]] * V ** (k - 2)
            rows = (np.arange(B)[:, None] * T + np.flatnonzero(ok)[None, :]).reshape(-1)  # (R,)
            p = self._level(p, rows, ctx[:, ok].reshape(-1), k)
        return p

    def _level(self, p, rows, ctx, k):
        """p_{k-1} in the rows `rows` of p (Q, V) -> p_k there, for the contexts ctx (R,) keys:
        max(c - D, 0) / c(h) + gamma(h) p_{k-1}; rows whose context level k never saw keep
        p_{k-1}. The followers of every context are scattered in at once."""
        V, P = self.config.vocab_size, self.params
        ctx_keys = P[f"{k}gram.context_keys"]  # (M,) sorted
        if ctx_keys.size == 0:
            return p
        q = ctx.astype(np.float64)  # exact: keys < 2^53
        i = np.minimum(np.searchsorted(ctx_keys, q), ctx_keys.size - 1)  # (R,)
        seen = ctx_keys[i] == q
        rows, i, q = rows[seen], i[seen], q[seen]  # (S,) the queries whose context is known
        scale = np.ones(len(p))  # (Q,) gamma(h) where the context is known, else 1
        scale[rows] = P[f"{k}gram.gammas"][i]
        p *= scale[:, None]  # gamma(h) p_{k-1}, in place (no copy of the rows)
        keys = P[f"{k}gram.keys"]  # (N,) sorted, a context's followers contiguous
        first, last = np.searchsorted(keys, q * V), np.searchsorted(keys, q * V + V)  # (S,)
        n_follow = last - first
        # entry indices of all followers of all queries: first[s], first[s]+1, ..., last[s]-1
        entry = np.repeat(first - (np.cumsum(n_follow) - n_follow), n_follow) + np.arange(n_follow.sum())
        c = P[f"{k}gram.counts"][entry]  # (E,)
        D = P[f"{k}gram.discounts"][np.minimum(c, 3).astype(np.int64) - 1]  # (E,) D1, D2 or D3+
        total = P[f"{k}gram.context_totals"][np.repeat(i, n_follow)]  # (E,) c(h)
        word = (keys[entry] % V).astype(np.int64)  # (E,) the follower token
        flat = np.repeat(rows, n_follow) * V + word  # (E,) into p's (Q V) buffer; no repeats
        p.reshape(-1)[flat] += np.maximum(c - D, 0.0) / total
        return p

    def backward(self, accumulate=False):
        """-> self.grads, all zero: a count model has no trainable parameters."""
        self._backward_cache(zero_grads=not accumulate)
        return self.grads
