"""Replies from a trained model, as the terminal chat and the server need them: the prompt of a
conversation (trimmed to the context window from the oldest turn), and a streamed reply that
ends at <|end|>, at a stop string or at max_new_tokens, with log-probabilities when asked.

A Reply turns tokens into text and nothing else: the tokens come from generate.py's
ContextWindow.sample, which owns the window (cache, sliding, prefill) and the sampling, and is
given the reply's SamplingSettings whole.

Two rules make a stream safe to show as it arrives:
  * a character whose UTF-8 bytes are split over tokens is shown only once complete
    (generate.TextStream), never as a replacement character;
  * a stop string is never shown, not even its first half: text that could still turn out to
    be the start of a stop string is held back until the next token settles it.
Shape legend: T tokens, V vocabulary.
"""
import threading
from dataclasses import dataclass

import numpy as np

from vintagelm.chat.format import Message, special_ids
from vintagelm.common import UserError
from vintagelm.flat_model import evaluating
from vintagelm.generate import ContextWindow, TextStream, special_token_rules
from vintagelm.nn.loss import log_softmax


class ChatModel:
    """A model with its tokenizer and name, shared by every conversation that talks to it.
    `lock` lets one forward pass run at a time: the model keeps per-call state, so concurrent
    replies take turns token by token."""

    def __init__(self, model, tokenizer, name, path=None):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.path = path  # the checkpoint directory, when loaded from one
        self.block_size = model.config.block_size
        self.lock = threading.Lock()

    @classmethod
    def load(cls, path, name=None, backend="auto"):
        """A run directory (its latest checkpoint) or a checkpoint directory -> ChatModel."""
        from pathlib import Path

        from vintagelm.checkpoint import load_checkpoint, run_dir_of

        ckpt = load_checkpoint(path, with_optimizer=False, finite=True, backend=backend)
        if ckpt.tokenizer is None:
            raise UserError(f"checkpoint {ckpt.path} has no tokenizer.json, so its ids cannot be turned into text")
        if ckpt.tokenizer.vocab_size > ckpt.model.config.vocab_size:
            raise UserError(f"checkpoint {ckpt.path}: the tokenizer has {ckpt.tokenizer.vocab_size} ids but the "
                            f"model only {ckpt.model.config.vocab_size}")
        return cls(ckpt.model, ckpt.tokenizer, name or run_dir_of(Path(path).resolve()).name, ckpt.path)

    def encode_text(self, text):
        """Ordinary text -> (ids, characters dropped). Special-token strings stay text; a character
        the tokenizer cannot encode (a char tokenizer never saw it) is left out and returned, so
        a chat goes on when a user types a modern quotation mark."""
        tok = self.tokenizer
        try:
            return tok.encode(text, allowed_special="none"), ""
        except UserError:
            kept, dropped = [], []
            for ch in text:
                try:
                    kept += tok.encode(ch, allowed_special="none")
                except UserError:
                    dropped.append(ch)
            return kept, "".join(dropped)

    def chat_prompt(self, messages, reserve):
        """[Message, ...] ending with the user's turn -> (ids, turns left out, characters dropped):
        the rendered conversation followed by <|assistant|>, in at most block_size - reserve tokens
        (reserve: room for the reply). The oldest turns after the system message go first, then the
        system message; a last turn still too long keeps its end. Characters dropped are those of
        the turns kept.

        The turns are taken from the newest back while they fit, so each is encoded at most once,
        and the turns before the first one that does not fit are never encoded at all: the work
        grows with the context, not with the length of the conversation."""
        roles, end = special_ids(self.tokenizer)
        budget = max(2, self.block_size - max(1, reserve))

        def turn(m):
            content, lost = self.encode_text(m.content)
            return [roles[m.role], *content, end], lost

        head, tail = [self.tokenizer.eot_id], [roles["assistant"]]
        system, system_lost = turn(messages[0]) if messages and messages[0].role == "system" else ([], "")
        rest = messages[1:] if system else messages
        kept, lost, room = [], [], budget - len(head) - len(system) - len(tail)  # kept, lost: newest first
        for m in reversed(rest):
            t, dropped = turn(m)
            if kept and len(t) > room:
                break
            kept.append(t)
            lost.append(dropped)
            room -= len(t)
        left_out = len(rest) - len(kept)
        if system and room < 0:  # the newest turn alone does not fit beside it
            system, system_lost, left_out = [], "", left_out + 1
        ids = head + system + [i for t in reversed(kept) for i in t] + tail
        if len(ids) > budget:  # one turn longer than the window: keep its end
            ids = head + ids[len(ids) - budget + 1:]
        return ids, left_out, system_lost + "".join(reversed(lost))

    def chat_rules(self):
        """(banned ids, stop ids) for a chat reply: <|end|> or <|endoftext|> ends it, and no other
        special token (a role marker) is ever sampled."""
        _, end = special_ids(self.tokenizer)
        stops = {end, self.tokenizer.eot_id} - {None}
        banned = sorted(set(self.tokenizer.special_tokens.values()) - stops)
        return banned, sorted(stops)

    def text_rules(self):
        """(banned ids, stop ids) for continuing text: as `vintage sample` does."""
        return special_token_rules(self.tokenizer)

    def prompt_logprobs(self, ids, top_n=0):
        """The log-probability of every prompt token after the ones before it, from one forward
        pass -> [(logprob or None for the first token, [(token text, logprob), ...] top_n)]."""
        if len(ids) > self.block_size:
            raise UserError(f"the prompt has {len(ids)} tokens, more than the context of {self.block_size}")
        with self.lock, evaluating(self.model) as model:
            logits, _ = model.forward(np.asarray([ids], dtype=np.int64))  # (1, T, V)
        logp = log_softmax(logits[0])  # (T, V): row t predicts token t + 1
        out = [(None, [])]
        for t in range(1, len(ids)):
            out.append((float(logp[t - 1, ids[t]]), self.top(logp[t - 1], top_n)))
        return out

    def top(self, logp, n):
        """The n most likely tokens of one (V,) row of log-probabilities, as (text, logprob)."""
        if n <= 0:
            return []
        best = np.argsort(-logp, kind="stable")[:n]
        return [(self.token_text(int(i)), float(logp[i])) for i in best]

    def token_text(self, token_id):
        return self.tokenizer.decode([token_id])


@dataclass
class Token:
    """One generated token, for log-probabilities."""
    id: int
    text: str  # its own decoded text
    logprob: float  # under the model's distribution (before temperature and filters)
    top: list  # [(text, logprob), ...] the most likely alternatives
    offset: int  # where its text starts in the reply


class Reply:
    """One reply being generated: the tokens sampled with `sampling` (a SamplingSettings, stop
    strings included) after prompt_ids, as text. Iterating yields pieces of text as they become
    safe to show; `tokens` then holds the Tokens behind the pieces shown so far (when logprobs is
    not None: that many alternatives each). rules: (banned ids, stop ids), by default the chat's.
    Afterwards: finish_reason "stop" (<|end|>, end of text or a stop string) or "length"
    (max_new_tokens reached), prompt_tokens and completion_tokens (the tokens of text; the
    stop token that ended a reply is not one), and `end`: that stop token as a Token (its
    text is at the end of the reply's) when logprobs is not None, else None. A client that
    scores text by generating one token (lm-eval) needs its log-probability even then."""

    def __init__(self, chat_model, prompt_ids, sampling, rules=None, logprobs=None):
        self.chat_model = chat_model
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.rng = sampling.new_rng()
        self.banned, self.stop_ids = rules if rules is not None else chat_model.chat_rules()
        self.logprobs = logprobs
        self.tokens, self._pending = [], []  # Tokens shown / generated but not yet shown
        self.finish_reason, self.end = None, None
        self.prompt_tokens, self.completion_tokens = len(self.prompt_ids), 0
        self.text = ""  # what has been shown

    def __iter__(self):
        chat, max_new_tokens, stops = self.chat_model, self.sampling.max_new_tokens, self.sampling.stop
        window = ContextWindow(chat.model, self.prompt_ids, lock=chat.lock)
        # the stop ids are caught here, not by the window, to keep the stop token's logits
        steps = window.sample(self.sampling, self.rng, self.banned)
        stream, made = TextStream(chat.tokenizer), ""  # made: all text decoded so far
        self.finish_reason = "stop" if max_new_tokens else "length"
        for n, (token, logits) in enumerate(steps, 1):
            scored = self.scored(token, logits, len(made))
            if token in self.stop_ids:
                self.end = scored
                break
            self.completion_tokens = n
            if scored is not None:
                self._pending.append(scored)
            made += stream.push(token)
            cut = first_stop(made, stops, len(self.text))
            if cut is not None:
                yield from self._show(made[:cut])
                return
            yield from self._show(made[: len(made) - held_back(made, stops)])
            if n == max_new_tokens:
                self.finish_reason = "length"
        # the end: what was held back for a stop string that never came is shown; the bytes of a
        # character that max_new_tokens cut in half are not (they would show as U+FFFD)
        yield from self._show(made)

    def scored(self, token, logits, offset):
        """The Token of one sampled id with its log-probabilities, or None when none were asked."""
        if self.logprobs is None:
            return None
        logp = log_softmax(logits)
        chat = self.chat_model
        return Token(token, chat.token_text(token), float(logp[token]), chat.top(logp, self.logprobs), offset)

    def _show(self, upto):
        """Yield the text from what was shown up to `upto` (the whole text shown so far after)."""
        piece = upto[len(self.text):]
        if not piece:
            return
        self.text = upto
        while self._pending and self._pending[0].offset < len(upto):
            self.tokens.append(self._pending.pop(0))
        yield piece


def first_stop(text, stops, start=0):
    """The position of the earliest stop string in text[start:], or None."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found) if found else None


def held_back(text, stops):
    """How many characters at the end of `text` could be the start of a stop string, and so
    must wait for the next token before they are shown. A client may send many stop strings,
    and long ones: each is tried only where the text holds its first character, longest first."""
    longest = 0
    for s in stops:
        tail = text[len(text) - min(len(s) - 1, len(text)):]  # the end of text that could start s
        i = tail.find(s[0]) if tail else -1
        while 0 <= i < len(tail) - longest:  # only a longer match than the best so far matters
            if s.startswith(tail[i:]):
                longest = len(tail) - i
                break
            i = tail.find(s[0], i + 1)
    return longest


def user_turns(history, system, user_text):
    """The conversation to answer: the system line (if any), the turns so far, the new question."""
    messages = [Message("system", system)] if system else []
    return messages + list(history) + [Message("user", user_text)]

