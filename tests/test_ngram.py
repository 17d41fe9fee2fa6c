"""The Kneser-Ney n-gram model (vintagelm/museum/ngram.py): probabilities that sum to one for
every context, a small example worked out by hand, a dictionary-based reference written
straight from Chen & Goodman, counting in pieces, checkpoints, the training step and sampling.

    pytest tests/test_ngram.py -v
"""
from collections import Counter
from fractions import Fraction as F

import numpy as np
import pytest

from vintagelm import architectures
from vintagelm.checkpoint import load_checkpoint, save_checkpoint
from vintagelm.cli import main
from vintagelm.common import UserError
from vintagelm.generate import ContextWindow, generate
from vintagelm.museum import ngram
from vintagelm.museum.ngram import NgramConfig, NgramLM
from vintagelm.optim import AdamW
from vintagelm.train import training_step


def fitted(text, order, V, block_size=16, **fit_kw):
    return NgramLM(NgramConfig(vocab_size=V, block_size=block_size, order=order)).fit(np.asarray(text), **fit_kw)


def windows(text, T):
    """Every window of T consecutive tokens of text, as rows (N-T+1, T)."""
    text = np.asarray(text)
    return np.stack([text[i : i + T] for i in range(len(text) - T + 1)])


def random_text(seed, n, V_used):
    return np.random.default_rng(seed).integers(0, V_used, n)


# ---------------------------------------------------------------- an independent reference
def reference_kn(text, order, V):
    """p(w | h) by interpolated modified Kneser-Ney, from the definitions, with dicts:
    -> prob(w, h) for a history tuple h of at most order-1 tokens."""
    text = [int(t) for t in text]
    grams = {k: Counter(tuple(text[i : i + k]) for i in range(len(text) - k + 1)) for k in range(1, order + 1)}
    counts = {order: dict(grams[order])}  # the top level counts occurrences
    for k in range(1, order):  # below it: how many different tokens come before the k-gram
        counts[k] = Counter(g[1:] for g in grams[k + 1])  # grams[k+1] iterates distinct (k+1)-grams
    discounts = {}
    for k, level in counts.items():
        n = Counter(level.values())
        d = []
        for r in (1, 2, 3):
            ok = n[r] > 0 and n[1] + 2 * n[2] > 0
            value = r - (r + 1) * n[1] / (n[1] + 2 * n[2]) * n[r + 1] / n[r] if ok else None
            d.append(value if value is not None and 0 <= value <= r else (0.5, 1.0, 1.5)[r - 1])
        discounts[k] = d
    followers = {}  # (level, context) -> {token: count}
    for k, level in counts.items():
        for g, c in level.items():
            followers.setdefault((k, g[:-1]), {})[g[-1]] = c

    def prob(w, h):
        h = tuple(h)[max(0, len(h) - (order - 1)):] if order > 1 else ()
        k = len(h) + 1
        lower = 1.0 / V if k == 1 else prob(w, h[1:])
        f = followers.get((k, h))
        if not f:
            return lower  # a context this level never saw: all of it from below
        total = sum(f.values())
        D = discounts[k]
        gamma = sum(D[min(c, 3) - 1] for c in f.values()) / total
        c = f.get(w, 0)
        return (max(c - D[min(c, 3) - 1], 0) / total if c else 0.0) + gamma * lower

    return prob


# ---------------------------------------------------------------- the hand-worked example
def test_a_small_example_worked_by_hand():
    a, b, c, d = 0, 1, 2, 3  # d never occurs
    text = [a, a, a, a, a, b, a, b, a, b, c]
    model = fitted(text, order=2, V=4)
    # level 2, raw bigram counts: aa 4, ab 3, ba 2, bc 1 (10 bigrams in 11 tokens)
    # count-of-counts n1 = n2 = n3 = n4 = 1, so Y = n1 / (n1 + 2 n2) = 1/3 and
    #   D1  = 1 - 2 Y n2/n1 = 1 - 2/3 = 1/3
    #   D2  = 2 - 3 Y n3/n2 = 2 - 1   = 1
    #   D3+ = 3 - 4 Y n4/n3 = 3 - 4/3 = 5/3
    D2 = (F(1, 3), F(1), F(5, 3))
    # context a: followers aa 4, ab 3 (both 3+), total 7, gamma(a) = (5/3 + 5/3) / 7 = 10/21
    # context b: followers ba 2, bc 1, total 3, gamma(b) = (D2 + D1) / 3 = (1 + 1/3) / 3 = 4/9
    # contexts c, d: no followers (c ends the text), so they back off entirely
    gamma_a, gamma_b = (D2[2] + D2[2]) / 7, (D2[1] + D2[0]) / 3
    assert (gamma_a, gamma_b) == (F(10, 21), F(4, 9))
    # level 1, continuation counts (distinct tokens before each): a <- {a, b} 2, b <- {a} 1,
    # c <- {b} 1, d 0. Count-of-counts n1 = 2, n2 = 1, n3 = n4 = 0: Y = 2 / (2 + 2) = 1/2,
    #   D1 = 1 - 2 Y n2/n1 = 1 - 1/2 = 1/2,  D2 = 2 - 3 Y n3/n2 = 2 (a count of 2 is discounted
    #   away entirely: nothing above it to estimate from), D3+ undefined (n3 = 0): fallback 3/2
    D1 = (F(1, 2), F(2), F(3, 2))
    # one context (the empty one): total 4, gamma = (D1 * 2 + D2 * 1) / 4 = 3/4, over 1/V = 1/4
    gamma_1 = (D1[0] * 2 + D1[1] * 1) / 4
    assert gamma_1 == F(3, 4)
    p1 = [max(F(2) - D1[1], 0) / 4 + gamma_1 / 4,  # a: 0 + 3/16
          (F(1) - D1[0]) / 4 + gamma_1 / 4,  # b: 1/8 + 3/16
          (F(1) - D1[0]) / 4 + gamma_1 / 4,  # c: 1/8 + 3/16
          gamma_1 / 4]  # d: only the uniform share
    assert p1 == [F(3, 16), F(5, 16), F(5, 16), F(3, 16)]
    after_a = [(4 - D2[2]) / 7 + gamma_a * p1[a],  # 1/3 + 5/56
               (3 - D2[2]) / 7 + gamma_a * p1[b],  # 4/21 + 25/168
               gamma_a * p1[c], gamma_a * p1[d]]
    assert after_a == [F(71, 168), F(57, 168), F(25, 168), F(15, 168)]
    after_b = [(2 - D2[1]) / 3 + gamma_b * p1[a],  # 1/3 + 1/12
               gamma_b * p1[b],
               (1 - D2[0]) / 3 + gamma_b * p1[c],  # 2/9 + 5/36
               gamma_b * p1[d]]
    assert after_b == [F(15, 36), F(5, 36), F(13, 36), F(3, 36)]

    P = model.params
    np.testing.assert_allclose(P["2gram.discounts"], [float(x) for x in D2], rtol=1e-15)
    np.testing.assert_allclose(P["1gram.discounts"], [float(x) for x in D1], rtol=1e-15)
    np.testing.assert_array_equal(P["2gram.counts"], [4, 3, 2, 1])  # keys aa, ab, ba, bc in order
    np.testing.assert_array_equal(P["1gram.counts"], [2, 1, 1])
    np.testing.assert_allclose(P["2gram.gammas"], [float(gamma_a), float(gamma_b)], rtol=1e-15)
    # position t sees the token at t: rows p(. | a), p(. | b), p(. | c) = p1, p(. | d) = p1
    logits, loss = model.forward(np.array([[a, b, c, d]]), np.array([[b, c, -1, a]]))
    expected = np.array([[float(x) for x in row] for row in (after_a, after_b, p1, p1)])
    np.testing.assert_allclose(np.exp(logits[0]), expected, rtol=1e-13)
    assert loss == pytest.approx(-np.log(float(after_a[b] * after_b[c] * p1[a])) / 3, rel=1e-13)


# ---------------------------------------------------------------- sums and the reference
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_context_sums_to_one_and_matches_the_reference(order):
    V = 7  # token 6 never occurs in the text
    text = np.concatenate([random_text(0, 150, 4), random_text(1, 60, 6)])  # frequent and rare tokens
    model = fitted(text, order, V)
    T = max(order - 1, 1)
    seen = windows(text, T)  # position t of a row: a history of t+1 tokens from the text
    unseen = np.random.default_rng(2).integers(0, V, (40, 5))  # token 6, and new combinations
    unseen[:5, :] = 6
    prob = reference_kn(text, order, V)
    for idx in (seen, unseen):
        logits, _ = model.forward(idx)  # (B, T, V)
        np.testing.assert_allclose(np.exp(logits).sum(-1), 1.0, rtol=0, atol=1e-9)
        assert np.isfinite(logits).all()
        for b in range(0, len(idx), 7):
            for t in range(idx.shape[1]):
                ref = [prob(w, idx[b, : t + 1]) for w in range(V)]
                np.testing.assert_allclose(np.exp(logits[b, t]), ref, rtol=1e-12, atol=1e-15)


def test_an_unfitted_model_is_uniform():
    model = NgramLM(NgramConfig(vocab_size=11, order=3))
    x = np.array([[1, 2, 3, 4]])
    logits, loss = model.forward(x, x)
    np.testing.assert_allclose(logits, np.log(1 / 11))
    assert loss == pytest.approx(np.log(11))


# ---------------------------------------------------------------- counting
def test_counting_in_pieces_equals_counting_the_whole(tmp_path, monkeypatch):
    text = random_text(3, 500, 9).astype(np.uint16)
    whole = fitted(text, 4, 10, chunk_size=10**6)
    file = tmp_path / "train.bin"
    text.tofile(file)
    memmap = np.memmap(file, dtype=np.uint16, mode="r")
    monkeypatch.setattr(ngram, "CHUNK", 8)  # merge the pending counts every few pieces, not only at the end
    cuts = np.sort(np.random.default_rng(4).integers(0, len(text), 40))
    pieces = np.split(text, cuts)  # some empty, some of 1 or 2 tokens: shorter than the order
    for other in (fitted(memmap, 4, 10, chunk_size=7), fitted(memmap, 4, 10, chunk_size=1),
                  NgramLM(NgramConfig(vocab_size=10, block_size=16, order=4)).fit(iter(pieces))):
        assert other.config == whole.config
        np.testing.assert_array_equal(other.flat_params, whole.flat_params)


def test_a_text_shorter_than_the_order():
    model = fitted([2, 3], order=4, V=5)
    # level 1 holds 3 (after 2; nothing comes before 2), level 2 would need a 3-gram, level 4 a 4-gram
    assert model.config.ngrams == (1, 0, 0, 0)
    logits, _ = model.forward(np.array([[2, 3, 2]]))
    np.testing.assert_allclose(np.exp(logits).sum(-1), 1.0, atol=1e-12)


def test_a_longer_history_fits_a_repetitive_text_better():
    V = 20
    motif = random_text(5, 40, V)
    train, val = np.tile(motif, 9), np.tile(motif, 2)[7:]
    x, y = windows(val[:-1], 16)[::16], windows(val[1:], 16)[::16]
    losses = {n: fitted(train, n, V).forward(x, y)[1] for n in (1, 2, 3)}
    assert losses[3] < losses[2] < losses[1]
    assert losses[3] < losses[1] / 4, losses


# ---------------------------------------------------------------- config
def test_config_checks_and_json_round_trip():
    with pytest.raises(ValueError, match="order must be 1..6"):
        NgramConfig(order=7)
    with pytest.raises(ValueError, match="order must be a positive integer"):
        NgramConfig(order=0)
    with pytest.raises(ValueError, match="beyond 2\\^53.*use order <= 3"):
        NgramConfig(vocab_size=50257, order=4)
    with pytest.raises(ValueError, match="ngrams must be"):
        NgramConfig(order=2, ngrams=(3,), contexts=(1,))
    with pytest.raises(ValueError, match="do not fit together"):
        NgramConfig(order=2, ngrams=(3, 4), contexts=(1, 5))
    with pytest.raises(ValueError, match="unknown NgramConfig field"):
        NgramConfig.from_dict({"order": 2, "dropout": 0.1})
    cfg = fitted(random_text(6, 100, 5), 3, 5).config
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.to_dict().items()}
    assert NgramConfig.from_dict(as_json) == cfg


# ---------------------------------------------------------------- the loops
@pytest.fixture
def ngram_registered(monkeypatch):
    monkeypatch.setitem(architectures.ARCHITECTURES, "ngram", "vintagelm.museum.ngram:NgramLM")


def test_checkpoint_round_trip(ngram_registered, tmp_path):
    model = fitted(random_text(7, 300, 8), 3, 9)
    x = np.random.default_rng(8).integers(0, 9, (4, 16))
    before, _ = model.forward(x)
    path = save_checkpoint(tmp_path, 1, model, AdamW({}, lr=0.0), {})
    for dtype in (None, "float32"):  # the tables stay float64 whatever is asked
        ckpt = load_checkpoint(path, dtype=dtype)
        assert isinstance(ckpt.model, NgramLM) and ckpt.state["architecture"] == "ngram"
        assert ckpt.model.config == model.config and ckpt.model.dtype == np.float64
        np.testing.assert_array_equal(ckpt.model.flat_params, model.flat_params)
        np.testing.assert_array_equal(ckpt.model.forward(x)[0], before)


def test_a_training_step_changes_nothing():
    model = fitted(random_text(9, 200, 6), 3, 6)
    tables = model.flat_params.copy()
    optimizer = AdamW(model.params, lr=0.1, weight_decay=0.1)
    x = np.random.default_rng(10).integers(0, 6, (2, 8))
    step = training_step(model, optimizer, [(x[:, :-1], x[:, 1:])], lr=0.1, grad_clip=1.0)
    assert step.loss == pytest.approx(model.forward(x[:, :-1], x[:, 1:])[1])
    assert not model.flat_grads.any() and model.flops_per_token() == 0
    np.testing.assert_array_equal(model.flat_params, tables)


def test_generation_continues_the_pattern_with_and_without_the_cache():
    V, motif = 12, np.array([0, 3, 1, 4, 1, 5, 9, 2, 6, 5])  # "1" and "5" need two tokens of context
    model = fitted(np.tile(motif, 30), 3, V, block_size=6)
    greedy = list(generate(model, [0, 3], 25, np.random.default_rng(0), temperature=0))
    assert greedy == list(np.tile(motif, 4)[2:27])
    sampled = [list(generate(model, [1], 40, np.random.default_rng(1), use_kv_cache=cache)) for cache in (True, False)]
    assert sampled[0] == sampled[1] and all(0 <= t < V for t in sampled[0])
    # the same window, the same logits, through the window restarts of block_size 6
    cached, plain = ContextWindow(model, [4]), ContextWindow(model, [4], use_kv_cache=False)
    for token in np.random.default_rng(2).integers(0, V, 20):
        np.testing.assert_allclose(cached.logits(), plain.logits(), rtol=1e-13)
        assert len(cached.cache.history[0]) <= 2  # constant size: the last n-1 tokens
        cached.append(token), plain.append(token)


def test_discounts_fall_back_where_the_closed_form_fails():
    # n1 = 1, n2 = 1, n3 = 5, n4 = 1: Y = 1/3, D1 = 1 - 2/3 = 1/3, D2 = 2 - 3 (1/3) 5 = -3 < 0
    # (fallback 1), D3+ = 3 - 4 (1/3) (1/5) = 41/15
    np.testing.assert_allclose(ngram.kn_discounts(np.array([1, 2, 3, 3, 3, 3, 3, 4])), [1 / 3, 1.0, 41 / 15])
    # no singletons: D1 undefined (fallback 0.5), Y = 0 so D2 = 2 and D3+ = 3
    np.testing.assert_allclose(ngram.kn_discounts(np.array([2, 2, 3])), [0.5, 2.0, 3.0])


# ---------------------------------------------------------------- tables read from a file
def tamper(path, change):
    """Rewrite path/model.safetensors with change({name: array}) applied, keeping its metadata:
    the header and the shapes stay valid, only the numbers lie."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    file = path / "model.safetensors"
    with safe_open(file, framework="np") as f:
        meta, tensors = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
    change(tensors)
    save_file(tensors, file, metadata=meta)


def negate_counts(t):
    for name in t:
        if name.endswith(".counts"):
            t[name] = -t[name]


def zero_everything(t):
    for name in t:
        t[name] = np.zeros_like(t[name])


def shuffle_keys(t):
    for name in t:
        if name.endswith(".keys") and not name.endswith("context_keys"):
            t[name] = np.random.default_rng(0).permutation(t[name])


def nan_gamma(t):
    t["2gram.gammas"][0] = np.nan


def key_out_of_range(t):
    t["3gram.keys"][-1] = 9.0 ** 3  # one past the largest 3-gram of 9 tokens, still sorted


def swap_counts_across_contexts(t):
    t["3gram.counts"][[0, -1]] = t["3gram.counts"][[-1, 0]] + [0, 1]  # totals no longer add up


@pytest.mark.parametrize("change, table, problem", [
    (negate_counts, "1gram.counts", "has negative counts"),
    (zero_everything, "1gram.keys", "is not sorted and unique"),
    (shuffle_keys, "1gram.keys", "is not sorted and unique"),
    (nan_gamma, "2gram.gammas", "holds nan or inf"),
    (key_out_of_range, "3gram.keys", "not 3-grams of 9 tokens"),
    (swap_counts_across_contexts, "3gram.context_totals", "does not match"),
])
def test_a_corrupt_table_is_refused_on_load_naming_the_file_and_table(ngram_registered, tmp_path, capsys,
                                                                       change, table, problem):
    """Fuzz C6: tables whose header and shapes are valid but whose numbers break the lookup's
    invariants gave an IndexError traceback (negative counts), nan logits (all zero) or a quietly
    wrong loss (shuffled keys). Each is now refused when the checkpoint is loaded."""
    model = fitted(random_text(7, 300, 8), 3, 9)
    path = save_checkpoint(tmp_path, 1, model, AdamW({}, lr=0.0), {})
    tamper(path, change)
    with pytest.raises(UserError) as e:
        load_checkpoint(path, with_optimizer=False)
    message = str(e.value)
    assert message.startswith(f"{path / 'model.safetensors'}: the n-gram table {table} ")
    assert problem in message and "corrupt" in message
    assert main(["sample", str(path), "--max-new-tokens", "5"]) == 2  # one line, no traceback
    assert "the checkpoint is corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_every_fitted_table_passes_the_load_check(order):
    """Fuzz C6: the check refuses no table that fit() makes (long text, short text, one token)."""
    for text in (random_text(order, 500, 7), random_text(order, 3, 7), [4]):
        fitted(text, order, 7).check_params()
    NgramLM(NgramConfig(vocab_size=7, order=order)).check_params()  # unfitted: empty tables
