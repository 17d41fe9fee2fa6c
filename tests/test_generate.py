"""Generation: the KV cache against full recomputation, the sliding window, the sampler's
filters against independent computations, determinism, and UTF-8-safe streaming.

    pytest tests/test_generate.py -q
"""
import dataclasses
import inspect
import re
import itertools

import numpy as np
import pytest

from vintagelm import GPT, GPTConfig
from vintagelm.common import UserError
from vintagelm.generate import ContextWindow, SamplingSettings, TextStream, encode_prompt, generate, sample_next_token
from vintagelm.kv_cache import KVCache
from vintagelm.tokenizers import BPETokenizer, CharTokenizer

BLOCK = 8  # small block so that a few dozen tokens cross several window restarts
TINY = dict(vocab_size=13, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16)


def tiny_model(seed=0, dtype=np.float32, **overrides):
    return GPT(GPTConfig(**{**TINY, **overrides}), seed=seed, dtype=dtype)


# ---------------------------------------------------------------- KV cache vs full forward

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("prompt_len", [3, 2 * BLOCK - 3], ids=["short", "long"])
@pytest.mark.parametrize("norm,pos", list(itertools.product(["pre", "post", "none"], ["learned", "sinusoidal"])))
def test_kv_cache_logits_equal_full_forward_at_every_step(norm, pos, prompt_len, dtype):
    # init="normal" gives large, very different logits per position, so a wrong offset or
    # a stale cache entry cannot hide inside the tolerance
    model = tiny_model(seed=1, dtype=dtype, norm=norm, pos=pos, init="normal", bias=norm != "none")
    rng = np.random.default_rng(2)
    prompt = rng.integers(0, 13, prompt_len)
    cached = ContextWindow(model, prompt, use_kv_cache=True)
    full = ContextWindow(model, prompt, use_kv_cache=False)
    worst = 0.0
    for step in range(3 * BLOCK):  # crosses several window restarts
        assert cached.window == full.window and len(cached.window) <= BLOCK
        # the truth, computed here from the window alone: one full forward, last position
        expected = model.forward(np.array([cached.window]))[0][0, -1]
        for got in (cached.logits(), full.logits()):
            assert got.dtype == dtype  # no silent promotion: float32 stays float32
            worst = max(worst, float(np.abs(got - expected).max()))
        token = rng.integers(0, 13)
        cached.append(token)
        full.append(token)
    assert worst <= 1e-5 * max(1.0, float(np.abs(expected).max())), f"step logits differ by {worst:.2e}"


def test_sliding_window_rule():
    """The window is ids[start:]: fixed until a token would make it block_size + 1 long, then
    it restarts at the last block_size // 2 tokens; a long prompt starts that way too."""
    model = tiny_model()
    keep = BLOCK // 2
    for prompt_len in (1, 5, BLOCK, BLOCK + 1, 3 * BLOCK):
        ctx = ContextWindow(model, [1] * prompt_len, use_kv_cache=True)
        start = 0 if prompt_len <= BLOCK else prompt_len - keep
        for n in range(prompt_len, prompt_len + 3 * BLOCK):
            if n - start > BLOCK:
                start = n - keep
            assert (ctx.start, len(ctx.ids)) == (start, n)
            assert keep <= len(ctx.window) <= BLOCK or n < keep
            ctx.logits()
            assert ctx.cache.pos == len(ctx.window)  # the cache covers exactly the window
            ctx.append(2)


def test_block_size_one_keeps_one_token():
    model = tiny_model(block_size=1, pos="sinusoidal")
    for use_kv_cache in (True, False):
        ctx = ContextWindow(model, [3, 4, 5], use_kv_cache)
        for t in (6, 7):
            assert ctx.window == ctx.ids[-1:]
            np.testing.assert_allclose(ctx.logits(), model.forward(np.array([ctx.ids[-1:]]))[0][0, -1], atol=1e-6)
            ctx.append(t)


def test_kv_cache_buffers():
    model = tiny_model(dtype=np.float64)
    cache = KVCache.for_model(model, batch_size=3)
    assert cache.k.shape == cache.v.shape == (2, 3, 2, BLOCK, 8) and cache.k.dtype == np.float64
    k0, v0 = cache.layer(0)
    assert np.shares_memory(k0, cache.k) and k0.shape == (3, 2, BLOCK, 8)
    model.forward(np.zeros((3, 5), dtype=np.int64), kv_cache=cache)
    assert cache.pos == 5 and np.abs(cache.k[:, :, :, :5]).sum() > 0
    with pytest.raises(ValueError, match="block_size|overflow"):
        model.forward(np.zeros((3, 4), dtype=np.int64), kv_cache=cache)
    cache.reset()
    assert cache.pos == 0
    with pytest.raises(ValueError, match="overflow"):
        cache.advance(BLOCK + 1)


def test_one_forward_per_new_token_with_the_cache():
    model = tiny_model()
    calls = []  # (number of tokens fed, cached?) of every forward
    forward = model.forward

    def counting_forward(idx, targets=None, kv_cache=None):
        calls.append((np.asarray(idx).shape[1], kv_cache is not None))
        return forward(idx, targets, kv_cache)

    model.forward = counting_forward
    n_new = 3 * BLOCK
    tokens = list(generate(model, [1, 2, 3], n_new, np.random.default_rng(0)))
    assert len(tokens) == n_new
    assert len(calls) == n_new and all(cached for _, cached in calls)  # no forward after the last token
    fed = [n for n, _ in calls]
    assert fed[0] == 3 and set(fed[1:]) == {1, BLOCK // 2}  # prefill, then single tokens and restarts
    calls.clear()
    list(generate(model, [1, 2, 3], 5, np.random.default_rng(0), use_kv_cache=False))
    assert [n for n, _ in calls] == [3, 4, 5, 6, 7] and not any(cached for _, cached in calls)


# ---------------------------------------------------------------- generate

@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("prompt", [[5], list(range(13)) * 2], ids=["short", "long"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.3), dict(temperature=0.9, top_k=6, top_p=0.9)],
                         ids=["greedy", "sampled", "topk-topp"])
def test_generate_same_tokens_with_and_without_cache(sampling, prompt, dtype):
    model = tiny_model(seed=4, dtype=dtype, init="normal", n_embd=8)  # init="normal": varied greedy text
    runs = [list(generate(model, prompt, 4 * BLOCK, np.random.default_rng(7), use_kv_cache=kv, **sampling))
            for kv in (True, False, True)]
    assert runs[0] == runs[1] == runs[2]
    assert all(isinstance(t, int) and 0 <= t < 13 for t in runs[0])
    if sampling["temperature"] > 0:
        other_seed = list(generate(model, prompt, 4 * BLOCK, np.random.default_rng(8), **sampling))
        assert other_seed != runs[0]
    else:
        assert len(set(runs[0])) > 1  # a model stuck on one token would make this test vacuous


def test_generate_is_a_lazy_stream_and_checks_arguments_at_call_time():
    model = tiny_model()
    stream = generate(model, [1], 1000, np.random.default_rng(0))
    assert inspect.isgenerator(stream)
    assert isinstance(next(stream), int)  # the first token arrives before the rest are computed
    stream.close()
    assert list(generate(model, [1], 0, np.random.default_rng(0))) == []
    for bad in (dict(prompt_ids=[]), dict(max_new_tokens=-1), dict(max_new_tokens=2.0), dict(temperature=-1.0),
                dict(top_k=0), dict(top_p=0.0)):
        args = {**dict(model=model, prompt_ids=[1], max_new_tokens=3, rng=np.random.default_rng(0)), **bad}
        with pytest.raises(ValueError):
            generate(**args)  # raises before any next()


def test_generate_turns_dropout_off_and_restores_the_training_mode():
    model = tiny_model(dropout=0.5).train()
    runs = [list(generate(model, [1, 2], 2 * BLOCK, np.random.default_rng(0), use_kv_cache=kv)) for kv in (True, False)]
    assert runs[0] == runs[1]  # dropout would make the no-cache path random
    assert model.training


# What generate gave at commit 7380be6, before SamplingSettings and ContextWindow.sample took over
# its loop: the same seed and settings must keep giving the same tokens. A float64 model on the
# reference backend, so that rounding differences between machines stay far below any draw's margin.
PINNED = {
    "topk-topp": (dict(temperature=0.9, top_k=6, top_p=0.9),
                  [4, 1, 1, 1, 9, 1, 9, 4, 1, 9, 9, 9, 4, 1, 9, 9, 2, 1, 1, 2, 9, 9, 9, 9, 9, 2, 1, 1, 1, 9, 9, 9]),
    "sampled": (dict(temperature=1.3),
                [1, 4, 5, 1, 1, 12, 1, 7, 4, 1, 5, 9, 1, 1, 1, 9, 6, 1, 9, 0, 5, 9, 9, 5, 9, 5, 1, 1, 1, 5, 9, 9]),
    "greedy": (dict(temperature=0.0),
               [2, 1, 1, 1, 9, 9, 9, 4, 1, 9, 9, 9, 4, 1, 9, 5, 9, 4, 1, 1, 5, 9, 9, 9, 9, 9, 1, 1, 1, 5, 5, 9]),
}


@pytest.mark.parametrize("name", list(PINNED))
def test_seeded_generation_gives_the_tokens_it_gave_before(name):
    kw, want = PINNED[name]
    model = GPT(GPTConfig(**{**TINY, "n_embd": 8, "init": "normal"}), seed=4, dtype=np.float64, backend="reference")
    assert list(generate(model, [5, 1, 2], 4 * BLOCK, np.random.default_rng(7), **kw)) == want
    sampling = SamplingSettings(max_new_tokens=4 * BLOCK, seed=7, **kw)  # the path of a server's reply
    assert [token for token, _ in ContextWindow(model, [5, 1, 2]).sample(sampling, sampling.new_rng())] == want


class RecordingLock:
    """A context manager that says whether it is held and how often it was entered."""

    def __init__(self):
        self.held, self.entered = False, 0

    def __enter__(self):
        self.held, self.entered = True, self.entered + 1

    def __exit__(self, *exc):
        self.held = False


def test_every_forward_of_a_window_runs_inside_its_lock():
    model, lock = tiny_model(), RecordingLock()
    forward = model.forward

    def forward_holding_the_lock(idx, targets=None, kv_cache=None):
        assert lock.held, "a forward ran outside the window's lock"
        return forward(idx, targets, kv_cache)

    model.forward = forward_holding_the_lock
    window = ContextWindow(model, [1, 2, 3], lock=lock)
    steps = window.sample(SamplingSettings(max_new_tokens=3 * BLOCK), np.random.default_rng(0))
    tokens = [token for token, _ in steps]
    assert len(tokens) == lock.entered == 3 * BLOCK and not lock.held  # one forward per token, restarts included


@pytest.mark.parametrize(
    "kw,message",
    [(dict(max_new_tokens=-1), "max_new_tokens"), (dict(max_new_tokens=2.0), "max_new_tokens"),
     (dict(max_new_tokens=True), "max_new_tokens"), (dict(temperature=-1.0), "temperature"), (dict(top_k=0), "top_k"),
     (dict(top_p=1.5), "top_p"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(stop="end"), "stop"),
     (dict(stop=["end", 3]), "stop")],
)
def test_sampling_settings_are_checked_when_made_and_when_changed(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplingSettings(**{"max_new_tokens": 5, **kw})
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SamplingSettings(max_new_tokens=5), **kw)


def test_sampling_settings_are_one_frozen_value():
    sampling = SamplingSettings(max_new_tokens=5, seed=3, stop=["", "end"])
    assert sampling.stop == ("end",)  # an empty stop string would stop every reply at once
    with pytest.raises(dataclasses.FrozenInstanceError):
        sampling.temperature = 0.5
    assert sampling.new_rng().random() == sampling.new_rng().random() == np.random.default_rng(3).random()
    unseeded = SamplingSettings(max_new_tokens=5)
    assert unseeded.new_rng().random() != unseeded.new_rng().random()  # a fresh seed each time


# ---------------------------------------------------------------- sample_next_token

N_DRAWS = 200_000
LOGITS = np.array([2.0, -1.0, 0.5, 3.0, 0.5, -4.0, 1.0, 0.0])  # a known distribution over 8 ids (a tie at 0.5)


def softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def expected_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """The target distribution, computed token by token in plain Python (independent of the
    vectorised sampler): rank ids by logit (lower id first on ties), cut to k, then add ids in
    rank order until their mass reaches p, renormalise what is kept."""
    ranked = sorted(range(len(logits)), key=lambda i: (-logits[i], i))
    kept = ranked[:top_k] if top_k else ranked
    p = softmax(np.array([logits[i] for i in kept]) / temperature)
    if top_p is not None:
        mass, n = 0.0, 0
        while n < len(kept) and (n == 0 or mass < top_p):
            mass += p[n]
            n += 1
        kept, p = kept[:n], p[:n] / p[:n].sum()
    out = np.zeros(len(logits))
    out[kept] = p
    return out


def empirical_distribution(logits, seed=0, **kw):
    """Draw N_DRAWS tokens in one call (every row the same logits) -> frequency of each id."""
    ids = sample_next_token(np.tile(logits, (N_DRAWS, 1)), np.random.default_rng(seed), **kw)
    return np.bincount(ids, minlength=len(logits)) / N_DRAWS


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=3), dict(top_k=1), dict(top_k=100),
     dict(top_p=0.5), dict(top_p=0.9), dict(top_p=0.01), dict(top_p=1.0), dict(top_k=4, top_p=0.8),
     dict(temperature=0.7, top_k=5, top_p=0.95)],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "plain",
)
def test_sampling_frequencies_match_the_truncated_distribution(kw):
    want = expected_distribution(LOGITS, **kw)
    got = empirical_distribution(LOGITS, **kw)
    assert np.all(got[want == 0] == 0), "a token outside the kept set was drawn"
    sigma = np.sqrt(want * (1 - want) / N_DRAWS)
    assert np.all(np.abs(got - want) <= 5 * sigma + 1e-4), f"\nwant {np.round(want, 4)}\ngot  {np.round(got, 4)}"


def test_temperature_scaling_is_softmax_of_logits_over_t():
    for t in (0.25, 1.0, 3.0):
        want = softmax(LOGITS / t)
        got = empirical_distribution(LOGITS, seed=1, temperature=t)
        assert np.abs(got - want).max() < 5 * np.sqrt(0.25 / N_DRAWS)


def test_top_k_ties_keep_exactly_k_and_prefer_lower_ids():
    got = empirical_distribution(np.array([1.0, 0.0, 1.0, 1.0]), top_k=2)
    assert got[1] == got[3] == 0 and abs(got[0] - 0.5) < 0.01


def test_greedy_is_argmax_and_leaves_the_rng_alone():
    logits = np.random.default_rng(0).normal(size=(5, 50))
    rng = np.random.default_rng(1)
    before = rng.bit_generator.state
    ids = sample_next_token(logits, rng, temperature=0, top_k=3, top_p=0.5)
    assert ids.dtype == np.int64 and np.array_equal(ids, logits.argmax(axis=1))
    assert rng.bit_generator.state == before


def test_sampling_is_pure_and_seeded():
    logits = np.random.default_rng(0).normal(size=(64, 30)).astype(np.float32)
    copy = logits.copy()
    a = sample_next_token(logits, np.random.default_rng(5), 1.0, 10, 0.9)
    b = sample_next_token(logits, np.random.default_rng(5), 1.0, 10, 0.9)
    c = sample_next_token(logits, np.random.default_rng(6), 1.0, 10, 0.9)
    assert np.array_equal(logits, copy) and np.array_equal(a, b) and not np.array_equal(a, c)
    top10 = np.argsort(-logits, axis=1, kind="stable")[:, :10]
    assert all(a[i] in top10[i] for i in range(64))  # each row is filtered on its own


def test_masked_tokens_are_never_drawn():
    logits = np.array([[0.0, -np.inf, 0.0, -np.inf]])
    ids = sample_next_token(np.repeat(logits, 1000, axis=0), np.random.default_rng(0))
    assert set(ids) == {0, 2}


@pytest.mark.parametrize(
    "kw,message",
    [(dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
     (dict(temperature=float("inf")), "temperature"), (dict(temperature="1"), "temperature"),
     (dict(top_k=0), "top_k"), (dict(top_k=-2), "top_k"), (dict(top_k=2.5), "top_k"), (dict(top_k=True), "top_k"),
     (dict(top_p=0.0), "top_p"), (dict(top_p=1.01), "top_p"), (dict(top_p=-0.5), "top_p"),
     (dict(top_p=float("nan")), "top_p"), (dict(logits=np.zeros(4)), "shape"),
     (dict(logits=np.array([[0.0, np.nan]])), "finite"), (dict(logits=np.full((1, 3), -np.inf)), "finite")],
)
def test_invalid_sampling_parameters(kw, message):
    logits = kw.pop("logits", np.zeros((1, 4)))
    with pytest.raises(ValueError, match=message):
        sample_next_token(logits, np.random.default_rng(0), **kw)


# ---------------------------------------------------------------- streaming text

TEXT = "héllo wörld 🌍 — naïve café 日本"


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train([TEXT * 3, "plain ascii text " * 5], vocab_size=300)


def test_stream_holds_back_split_utf8_characters(bpe):
    stream = TextStream(bpe)
    pieces = [stream.push(b) for b in TEXT.encode("utf-8")]  # ids 0..255 are the raw bytes
    assert "".join(pieces) + stream.finish() == TEXT
    assert "\ufffd" not in "".join(pieces)
    globe = "🌍".encode("utf-8")  # 4 bytes: the first three print nothing, the fourth prints it
    assert [stream.push(b) for b in globe] == ["", "", "", "🌍"]


def test_stream_reassembles_any_token_split(bpe):
    ids = bpe.encode(TEXT)
    assert len(ids) < len(TEXT.encode("utf-8"))  # merged tokens, not just bytes
    stream = TextStream(bpe)
    assert "".join(map(stream.push, ids)) + stream.finish() == TEXT
    # the same text with every character split after its first byte, as a model may emit it
    split_ids = [bid for ch in TEXT for bid in ch.encode("utf-8")]
    assert "".join(map(stream.push, split_ids)) + stream.finish() == TEXT


def test_stream_flushes_an_incomplete_character_as_a_replacement(bpe):
    stream = TextStream(bpe)
    assert stream.push(ord("a")) == "a" and stream.push(0xE6) == "" and stream.finish() == "\ufffd"
    assert stream.push(0xFF) == "\ufffd"  # a byte that never starts a character is replaced, not raised


def test_stream_with_a_char_tokenizer():
    tok = CharTokenizer.train(TEXT)
    stream = TextStream(tok)
    ids = tok.encode(TEXT + "<|endoftext|>", allowed_special="all")
    assert len(ids) == len(TEXT) + 1
    assert "".join(map(stream.push, ids)) == TEXT + "<|endoftext|>"


def test_encode_prompt():
    tok = CharTokenizer.train("ab\ncd")
    assert encode_prompt(tok, "") == [tok.eot_id]
    assert encode_prompt(tok, "ab<|endoftext|>") == tok.encode("ab") + [tok.eot_id]
    no_specials = CharTokenizer.train("ab\ncd", special_tokens=[])
    assert encode_prompt(no_specials, "") == no_specials.encode("\n")
    with pytest.raises(UserError, match="prompt.*'z'"):
        encode_prompt(tok, "abz")
    with pytest.raises(UserError, match="prompt is empty"):
        encode_prompt(CharTokenizer.train("ab", special_tokens=[]), "")


# ---------------------------------------------------------------- vintage sample, end to end

PATTERN = "abc\n"  # a text a tiny model learns to continue exactly in a few dozen steps


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory with one checkpoint of a tiny char model trained on PATTERN repeated."""
    from vintagelm.checkpoint import save_checkpoint
    from vintagelm.optim import AdamW

    tok = CharTokenizer.train(PATTERN + "é")
    model = GPT(GPTConfig(**{**TINY, "vocab_size": tok.vocab_size}), seed=0)
    ids = np.array(tok.encode(PATTERN * 20))
    rng = np.random.default_rng(0)
    opt = AdamW(model.params, lr=1e-2)
    for _ in range(60):
        starts = rng.integers(0, len(ids) - BLOCK - 1, 8)
        x = np.stack([ids[s:s + BLOCK] for s in starts])
        y = np.stack([ids[s + 1:s + BLOCK + 1] for s in starts])
        model.forward(x, y)
        opt.step(model.backward())
    out = tmp_path_factory.mktemp("run")
    save_checkpoint(out, 60, model, opt, {}, tokenizer=tok)
    return out


class Recorder:
    """A stdout stand-in that remembers every write and how many flushes followed writes."""

    def __init__(self):
        self.writes, self.flushes = [], 0

    def write(self, s):
        self.writes.append(s)

    def flush(self):
        self.flushes += 1

    def text(self):
        return "".join(self.writes)


def sample(monkeypatch, *argv):
    from vintagelm.cli import main

    out = Recorder()
    monkeypatch.setattr("sys.stdout", out)
    return main(["sample", *map(str, argv)]), out


def test_vintage_sample_streams_the_learned_continuation(run_dir, monkeypatch, capsys):
    n = 3 * BLOCK  # crosses window restarts
    code, out = sample(monkeypatch, run_dir, "--prompt", "abc\na", "--max-new-tokens", n, "--temperature", 0)
    assert code == 0
    want = "abc\na" + (PATTERN * n)[1:n + 1] + "\n"
    assert out.text() == want
    assert out.flushes >= n  # flushed token by token, not once at the end
    assert "tokens/s" in capsys.readouterr().err
    ckpt_dir = run_dir / "checkpoints" / "step_000060"
    code, out_dir = sample(monkeypatch, ckpt_dir, "--prompt", "abc\na", "--max-new-tokens", n, "--temperature", 0,
                           "--no-kv-cache")
    assert code == 0 and out_dir.text() == want  # a checkpoint dir works as well as a run dir


def test_vintage_sample_is_seeded_and_cache_independent(run_dir, monkeypatch):
    runs = [sample(monkeypatch, run_dir, "--max-new-tokens", 40, "--temperature", 2.0, "--top-k", 4, "--top-p", 0.95,
                   "--seed", seed, *extra)[1].text()
            for seed, extra in ((5, ()), (5, ("--no-kv-cache",)), (6, ()))]
    assert runs[0] == runs[1] != runs[2]  # the empty prompt starts at <|endoftext|>, which is not printed
    assert len(runs[0]) >= 40 and set(runs[0]) <= set(PATTERN + "é<|endoftx>\n")


@pytest.mark.parametrize(
    "argv,message",
    [(["--prompt", "abz"], "prompt cannot be encoded.*'z'"), (["--top-p", "1.5"], "top_p"),
     (["--temperature", "-1"], "temperature"), (["--max-new-tokens", "-3"], "max_new_tokens")],
)
def test_vintage_sample_user_errors_are_one_line(run_dir, monkeypatch, capsys, argv, message):
    code, out = sample(monkeypatch, run_dir, *argv)
    err = capsys.readouterr().err
    assert code == 2 and out.text() == "" and err.count("\n") == 1
    assert err.startswith("vintage sample: error:") and re.search(message, err)


def test_vintage_sample_missing_checkpoint(tmp_path, monkeypatch, capsys):
    code, _ = sample(monkeypatch, tmp_path / "nowhere")
    assert code == 2 and "not found" in capsys.readouterr().err


def rigged_model(tok, favourite, runner_up):
    """An untied model whose next-token logits are the same at every position: 10 for
    `favourite`, 5 for `runner_up`, 0 for every other id (final norm gain 0, its bias u, and
    head rows that are multiples of u)."""
    model = GPT(GPTConfig(**{**TINY, "vocab_size": tok.vocab_size}, tie_weights=False), seed=0)
    u = np.ones(TINY["n_embd"]) / TINY["n_embd"]  # |u|^2 = 1 / C
    model.params["ln_f.weight"][...] = 0.0
    model.params["ln_f.bias"][...] = u
    head = model.params["lm_head.weight"]
    head[...] = 0.0
    head[favourite] = 10.0 * TINY["n_embd"] * u
    head[runner_up] = 5.0 * TINY["n_embd"] * u
    return model


def test_a_base_model_never_samples_role_tokens_and_stops_at_end_of_text():
    from vintagelm.generate import special_token_rules

    tok = CharTokenizer.train("abc")
    user, eot, a = tok.special_tokens["<|user|>"], tok.eot_id, tok.encode("a")[0]
    banned, stop = special_token_rules(tok)
    assert eot not in banned and user in banned and stop == [eot]
    rng = np.random.default_rng(0)
    # the role token is the model's favourite: banned, so the runner-up (end of text) ends the sample
    model = rigged_model(tok, favourite=user, runner_up=eot)
    assert list(generate(model, [a], 5, rng, temperature=0, banned_ids=banned, stop_ids=stop)) == []
    assert list(generate(model, [a], 3, rng, temperature=0)) == [user] * 3  # no rules: sampled as text
    # sampled (not greedy): over many draws no banned id ever appears
    model = rigged_model(tok, favourite=a, runner_up=user)
    tokens = list(generate(model, [a], 200, rng, temperature=3.0, banned_ids=banned, stop_ids=stop))
    assert tokens and not set(tokens) & set(banned) and eot not in tokens


def test_vintage_sample_applies_the_rules_unless_asked(tmp_path, monkeypatch):
    from vintagelm.checkpoint import save_checkpoint
    from vintagelm.optim import AdamW

    tok = CharTokenizer.train("abc")
    model = rigged_model(tok, favourite=tok.special_tokens["<|assistant|>"], runner_up=tok.encode("b")[0])
    save_checkpoint(tmp_path, 1, model, AdamW(model.params, lr=1e-3), {}, tokenizer=tok)
    code, out = sample(monkeypatch, tmp_path, "--prompt", "a", "--max-new-tokens", 4, "--temperature", 0)
    assert code == 0 and out.text() == "abbbb\n"
    code, out = sample(monkeypatch, tmp_path, "--prompt", "a", "--max-new-tokens", 2, "--temperature", 0,
                       "--allow-special")
    assert code == 0 and out.text() == "a<|assistant|><|assistant|>\n"


def test_vintage_sample_refuses_non_finite_weights(tmp_path, monkeypatch, capsys):
    from vintagelm.checkpoint import save_checkpoint
    from vintagelm.optim import AdamW

    tok = CharTokenizer.train("abc")
    model = GPT(GPTConfig(**{**TINY, "vocab_size": tok.vocab_size}), seed=0)
    model.params["wte.weight"][0, 0] = np.nan
    save_checkpoint(tmp_path, 1, model, AdamW(model.params, lr=1e-3), {}, tokenizer=tok)
    code, _ = sample(monkeypatch, tmp_path, "--prompt", "a")
    assert code == 2 and "non-finite weights" in capsys.readouterr().err
