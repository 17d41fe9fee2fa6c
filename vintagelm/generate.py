"""Text generation: the sampling settings, the token sampler and the window a continuation is
sampled in, over a model's KV cache (kv_cache.py; a model hands out its own decoding state
with model.new_kv_cache()).

Separate pieces, each usable on its own:
    SamplingSettings   what one continuation is sampled with (temperature, top_k, top_p, seed,
                       max_new_tokens, stop strings, logit biases), made once where a request
                       is read and passed whole down to the sampler
    sample_next_token  a pure function: logits (B, V) + an explicit rng -> token ids (B,)
    ContextWindow      the one owner of a continuation's window: the text seen so far, the
                       sliding window, the cache and its prefill; `sample` extends the text
                       token by token, yielding each token with its logits
    generate           the same with plain keyword arguments, yielding token ids (batch 1)
    sample_text        generate from an empty prompt, text streamed to a callback (the
                       sample `vintage train` prints at the end)
plus `encode_prompt` (text -> ids, with the empty-prompt rule), and `TextStream`, which turns
ids into text as they arrive without splitting a UTF-8 character.

How a request reaches the sampler: the server's protocol.py (or `vintage sample`, `vintage
chat`) makes a SamplingSettings; chat/reply.py's Reply opens a ContextWindow and reads the
(token, logits) pairs of its `sample` as text. Control goes down that path once and comes back
only as yielded tokens: nothing here calls back up.

Two paths compute the next-token logits, and they must agree (tests/test_generate.py):
    KV cache (default)  prefill the window once, then ONE forward per new token over the
                        cached keys/values: O(T) attention work per token
    no cache            the reference: a full forward over the whole window at every step,
                        as nanoGPT's sample.py does: O(T^2) per token

Sliding window, shared exactly by both paths. The model only knows positions
0..block_size-1, so the text the model sees is a window `ids[start:]` of the whole text:
  * it starts at 0 and stays put while the window holds at most block_size tokens;
  * when a token would make it block_size + 1 long (or a prompt is longer than block_size),
    the window restarts at the LAST keep = max(1, block_size // 2) tokens, at positions 0..
From the first restart on, the model sees between keep and block_size tokens. The cached path
pays for a restart with one prefill of `keep` tokens, once every block_size - keep + 1 new
tokens: about one extra token's work per generated token, done in one batched forward,
instead of a full re-forward at every step (nanoGPT's "crop to the last block_size tokens"
rule, which keeps the most context but makes a cache useless). The no-cache path moves its
window start at exactly the same steps, so both see identical token windows at identical
positions and produce the same logits (up to float rounding) and the same tokens for a seed.

What this file does not do: batched sampling of several prompts, beam search, stop strings
(SamplingSettings carries them; chat/reply.py cuts the text at them).
Shape legend: B batch, T time, L layers, H heads, D head size, V vocab size.
"""
import codecs
import numbers
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from vintagelm.common import UserError
from vintagelm.flat_model import evaluating


def check_sampling_params(temperature=1.0, top_k=None, top_p=None):
    """Raise a ValueError with a clear message for any invalid sampling parameter."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
        np.isfinite(temperature) and temperature >= 0
    ):
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None (no limit), got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1
    ):
        raise ValueError(f"top_p must be a number in (0, 1] or None (no limit), got {top_p!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """How one continuation is sampled. Made once, where a request is read (the server's
    protocol.py, `vintage sample`, `vintage chat`), checked then (a ValueError naming the
    field), and passed whole to the sampler; change a field with dataclasses.replace."""
    max_new_tokens: int  # at most this many tokens are sampled
    temperature: float = 1.0  # 0 = greedy
    top_k: int = None  # None: no limit
    top_p: float = None  # None: no limit
    seed: int = None  # None: every new_rng() draws a fresh seed from the operating system
    stop: tuple = ()  # strings that end a reply: chat/reply.py cuts its text there (the sampler sees no text)
    logit_bias: tuple = ()  # ((token id, bias), ...): added to those logits before sampling (OpenAI's logit_bias)

    def __post_init__(self):
        check_sampling_params(self.temperature, self.top_k, self.top_p)
        if not is_whole(self.max_new_tokens, low=0):
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {self.max_new_tokens!r}")
        if self.seed is not None and not is_whole(self.seed, low=0):
            raise ValueError(f"seed must be an integer >= 0 or None (a fresh one), got {self.seed!r}")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise ValueError(f"stop must be a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))  # an empty string stops nothing
        bad_bias = ValueError(f"logit_bias must map token ids (integers >= 0) to finite numbers, got {self.logit_bias!r}")
        try:
            pairs = dict(self.logit_bias).items()  # a dict, or (id, bias) pairs
        except (TypeError, ValueError):
            raise bad_bias from None
        if not all(is_whole(i, low=0) and isinstance(b, numbers.Real) and np.isfinite(b) for i, b in pairs):
            raise bad_bias
        # sorted, so that equal settings compare equal
        object.__setattr__(self, "logit_bias", tuple(sorted((int(i), float(b)) for i, b in pairs)))

    def new_rng(self):
        """The generator this continuation draws from: the same seed, the same tokens."""
        return np.random.default_rng(self.seed)


def is_whole(value, low):
    """An integer (not a bool) >= low."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


def sample_next_token(logits, rng, temperature=1.0, top_k=None, top_p=None):
    """logits (B, V) -> token ids (B,) int64, one per row. Pure: `logits` is not modified.

    temperature 0   greedy: the argmax (lowest id on ties); rng is not touched
    temperature T   sample from softmax(logits / T)
    top_k = k       keep only the k largest logits (exactly k; ties go to the lower id)
    top_p = p       keep the smallest set of most-probable tokens whose probability mass
                    reaches p (always at least the most probable one)
    Filters compose: top-k first, then top-p over the renormalised top-k distribution.
    Exactly one uniform draw per row is taken from `rng` (an np.random.Generator), so the
    same seed gives the same tokens, whatever the filters keep.
    """
    check_sampling_params(temperature, top_k, top_p)
    logits = np.asarray(logits)
    if logits.ndim != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (B, V) with V >= 1, got {logits.shape}")
    if np.isnan(logits).any() or np.isposinf(logits).any() or np.isneginf(logits).all(axis=1).any():
        raise ValueError("logits must be finite (-inf may mask tokens, but not every token of a row)")
    if temperature == 0:
        return np.argmax(logits, axis=1).astype(np.int64)
    B, V = logits.shape
    # Sort each row by descending logit; a stable sort keeps the lower id first on ties.
    order = np.argsort(-logits, axis=1, kind="stable")  # (B, V) ids, most probable first
    z = np.take_along_axis(logits, order, axis=1).astype(np.float64) / temperature  # (B, V)
    probs = np.exp(z - z[:, :1])  # (B, V) unnormalised softmax; the row max is z[:, 0]
    if top_k is not None and top_k < V:
        probs[:, top_k:] = 0.0
    if top_p is not None and top_p < 1:
        probs /= probs.sum(axis=1, keepdims=True)
        mass_before = np.cumsum(probs, axis=1) - probs  # (B, V) mass of the more probable tokens
        probs[mass_before >= top_p] = 0.0  # the first token has mass_before 0, so it always stays
    # Inverse-CDF sampling: the first sorted token whose cumulative mass exceeds u * total.
    # A zero-probability token never is the first, since its predecessor's cdf equals its own.
    cdf = np.cumsum(probs, axis=1)  # (B, V)
    u = rng.random(B) * cdf[:, -1]  # (B,) in [0, total)
    choice = np.argmax(cdf > u[:, None], axis=1)  # (B,) index into the sorted order
    return order[np.arange(B), choice].astype(np.int64)


def window_restart(length, block_size):
    """Where the window starts after a restart of a `length`-token text: keep the last
    max(1, block_size // 2) tokens (see the module docstring)."""
    return length - max(1, block_size // 2)


class ContextWindow:
    """The text so far, its sliding window, and (with use_kv_cache) the cache over the window:
    everything a continuation keeps between two tokens.

        ctx = ContextWindow(model, prompt_ids)
        for token, logits in ctx.sample(sampling, rng):   # the whole loop, as generate runs it
            ...
    or step by step:
        logits = ctx.logits()      # (V,) next-token logits after the whole text
        ctx.append(token)          # extend the text; the window slides when it must

    `start` is the window start: the model sees ids[start:] at positions 0, 1, ...
    Both paths move `start` at the same steps, so their logits agree at every step.
    The cache holds the first cache.pos tokens of the window; the rest are fed at the next
    logits() call. `forward_last` is the one place a model is run (the sampling benchmark
    overrides it to drive the torch reference through the same window bookkeeping), inside
    `lock` when one is given: the server's replies share one model and take turns on its lock.
    """

    def __init__(self, model, prompt_ids, use_kv_cache=True, lock=None):
        self.model = model
        self.lock = nullcontext() if lock is None else lock
        self.block_size = model.config.block_size
        self.ids = [int(t) for t in prompt_ids]
        if not self.ids:
            raise ValueError("the prompt must hold at least one token id")
        self.start = 0 if len(self.ids) <= self.block_size else window_restart(len(self.ids), self.block_size)
        self.cache = model.new_kv_cache() if use_kv_cache else None
        self._logits = None  # (V,) logits after the last token, once computed

    def sample(self, sampling, rng, banned_ids=(), stop_ids=()):
        """Extend the text by sampling (sampling: SamplingSettings; rng: np.random.Generator):
        yield (token, logits) for up to sampling.max_new_tokens new tokens, `logits` the (V,)
        row the token was drawn from, before bans and filters (a server reports
        log-probabilities from them). sampling.logit_bias is added to the logits first; banned_ids
        are never sampled (their logits are set to -inf, whatever their bias); sampling a token of
        stop_ids ends the loop there, without yielding it."""
        banned_ids, stop_ids = list(banned_ids), set(stop_ids)
        bias = None
        for step in range(sampling.max_new_tokens):
            if step:
                self.append(token)  # fed lazily, so no forward is spent after the last token
            logits = self.logits()
            if bias is None:
                bias = bias_vector(sampling.logit_bias, len(logits))
            allowed = logits
            if banned_ids or sampling.logit_bias:
                allowed = logits + bias
                allowed[banned_ids] = -np.inf
            token = int(sample_next_token(allowed[None], rng, temperature=sampling.temperature,
                                          top_k=sampling.top_k, top_p=sampling.top_p)[0])
            if token in stop_ids:
                return
            yield token, logits

    @property
    def window(self):
        return self.ids[self.start:]

    def append(self, token):
        """Add one token to the text; restart the window when it would outgrow block_size."""
        self.ids.append(int(token))
        self._logits = None
        if len(self.ids) - self.start > self.block_size:
            self.start = window_restart(len(self.ids), self.block_size)
            if self.cache is not None:
                self.cache.reset()  # re-prefill: the kept tokens now sit at positions 0..

    def logits(self):
        """(V,) next-token logits after the whole text (computed once per appended token)."""
        if self._logits is None:
            if self.cache is None:
                self._logits = self.forward_last(self.window)
            else:
                self._logits = self.forward_last(self.window[self.cache.pos:], self.cache)
        return self._logits

    def forward_last(self, tokens, cache=None):
        """The model's logits (V,) at the last of `tokens` (all of the window, or with a cache
        only the tokens it lacks). Dropout is off for this call only: the model's training
        mode is restored, so sampling in the middle of training changes nothing."""
        with self.lock, evaluating(self.model) as model:
            logits, _ = model.forward(np.asarray([tokens], dtype=np.int64), kv_cache=cache)  # (1, T, V)
        return logits[0, -1]


def bias_vector(logit_bias, vocab_size):
    """((token id, bias), ...) -> (V,) float64 biases, 0 for every id not named."""
    bias = np.zeros(vocab_size)
    for token, value in logit_bias:
        if token >= vocab_size:
            raise ValueError(f"logit_bias names token id {token}, but the model's ids are 0..{vocab_size - 1}")
        bias[token] = value
    return bias


def generate(model, prompt_ids, max_new_tokens, rng, temperature=1.0, top_k=None, top_p=None, use_kv_cache=True,
             banned_ids=(), stop_ids=()):
    """Yield up to max_new_tokens new token ids (ints), one at a time, continuing prompt_ids:
    ContextWindow.sample with its settings given as plain arguments (the tokens only).

    rng: np.random.Generator (same seed, same tokens, with or without the cache).
    banned_ids are never sampled; sampling a token of stop_ids ends the sample there, without
    yielding it (see special_token_rules).
    The arguments are checked now, not at the first next(), so mistakes surface at the call.
    """
    sampling = SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    window = ContextWindow(model, prompt_ids, use_kv_cache)
    return (token for token, _ in window.sample(sampling, rng, banned_ids, stop_ids))


def special_token_rules(tokenizer, allow_special=False):
    """-> (banned_ids, stop_ids) for sampling text from a base model: the end-of-text token
    ends the sample, and the other special tokens (role markers and the like, which stand for
    no text) are never sampled, unless allow_special, which samples them like any token."""
    if allow_special:
        return [], []
    eot = tokenizer.eot_id
    banned = sorted(i for i in tokenizer.special_tokens.values() if i != eot)
    return banned, [] if eot is None else [eot]


def encode_prompt(tokenizer, text):
    """Prompt text -> ids. Special-token strings in it (e.g. "<|endoftext|>") become their ids.
    An empty prompt starts a fresh document: the `<|endoftext|>` id when the tokenizer has
    one, else a newline. Text the tokenizer cannot encode is a one-line UserError."""
    if text:
        try:
            return tokenizer.encode(text, allowed_special="all")
        except UserError as e:
            raise UserError(f"the prompt cannot be encoded: {e}") from None
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n")
    except UserError:
        raise UserError("the prompt is empty and the tokenizer has neither <|endoftext|> nor a newline "
                        "to start from; give a prompt") from None


class TextStream:
    """Turn token ids into text as they arrive, never printing half a UTF-8 character.

    A byte-level BPE token may end in the middle of a multi-byte character (an emoji is
    4 bytes, often split over tokens). Bytes are fed to an incremental UTF-8 decoder that
    holds an incomplete character back until its last byte arrives; bytes that can never
    form a character become U+FFFD instead of raising.
        stream = TextStream(tokenizer)
        print(stream.push(token_id), end="")   # "" while a character is incomplete
        print(stream.finish(), end="")          # whatever is still held back, as U+FFFD
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def token_bytes(self, token_id):
        """The raw bytes of one id (char tokenizers have no byte decoder: encode their text)."""
        tok = self.tokenizer
        if hasattr(tok, "decode_bytes"):
            return tok.decode_bytes([token_id])
        return tok.decode([token_id]).encode("utf-8")

    def push(self, token_id):
        """The text completed by this token ('' when it only begins a character)."""
        return self._utf8.decode(self.token_bytes(token_id))

    def finish(self):
        """Flush the end of the stream: an incomplete trailing character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)


def sample_text(model, tokenizer, n_tokens, seed, write):
    """Sample n_tokens from an empty prompt (a fresh document), passing each piece of text to
    `write` as it arrives; returns the whole text."""
    stream, pieces = TextStream(tokenizer), []
    rng = np.random.default_rng([seed, 4])
    banned, stop = special_token_rules(tokenizer)
    # temperature 0.8, as `vintage sample`: a little sharper than the model, fewer misspellings
    for token in generate(model, encode_prompt(tokenizer, ""), n_tokens, rng, temperature=0.8,
                          banned_ids=banned, stop_ids=stop):
        pieces.append(stream.push(token))
        write(pieces[-1])
    pieces.append(stream.finish())
    write(pieces[-1])
    return "".join(pieces)
