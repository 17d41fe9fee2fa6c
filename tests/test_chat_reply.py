"""chat/reply.py: the prompt of a conversation trimmed to the context, and a streamed reply that
never shows a stop string (not even its first part) nor half a character.

    pytest tests/test_chat_reply.py -q
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vintagelm import GPT, GPTConfig
from vintagelm.chat.format import Message, parse_rendered, special_ids
from vintagelm.chat.reply import ChatModel, Reply, first_stop, held_back, log_softmax
from vintagelm.generate import SamplingSettings, generate
from vintagelm.tokenizers import BPETokenizer, CharTokenizer

TEXT = "Good morrow, my lord. What news from the court? None, my liege; the king is well. You are Hamlet."


def chat_model(tok, block_size=48, seed=0):
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16)
    return ChatModel(GPT(config, seed=seed, dtype=np.float64, backend="reference"), tok, "test")


@pytest.fixture
def char_chat():
    return chat_model(CharTokenizer.train(TEXT))


@given(st.text(alphabet="abc", max_size=30), st.lists(st.text(alphabet="abc", min_size=1, max_size=4), max_size=3))
@settings(max_examples=300, deadline=None)
def test_what_is_held_back_is_exactly_what_could_begin_a_stop_string(text, stops):
    k = held_back(text, stops)
    # the held-back tail is a proper prefix of some stop string...
    assert k == 0 or any(s.startswith(text[len(text) - k:]) and k < len(s) for s in stops)
    # ...and it is the longest such tail: every longer one begins no stop string
    for longer in range(k + 1, len(text) + 1):
        assert not any(s.startswith(text[len(text) - longer:]) and longer < len(s) for s in stops)
    found = first_stop(text, stops)
    assert found == min((text.find(s) for s in stops if s in text), default=None)


def text_only(chat):
    """Rules that never sample a special token (whose text is many characters) and never stop."""
    return sorted(chat.tokenizer.special_tokens.values()), []


def greedy_text(chat, prompt, n):
    reply = Reply(chat, prompt, SamplingSettings(max_new_tokens=n, temperature=0.0), rules=text_only(chat))
    return "".join(reply), reply


@pytest.mark.parametrize("seed", range(4))
def test_a_stop_string_over_several_tokens_is_cut_and_never_shown_even_in_part(seed):
    chat = chat_model(CharTokenizer.train(TEXT), seed=seed)
    prompt = chat.tokenizer.encode("Good morrow")
    full, _ = greedy_text(chat, prompt, 40)
    stop = full[10:13]  # three characters: three tokens of a char tokenizer
    cut = full.find(stop)
    sampling = SamplingSettings(max_new_tokens=40, temperature=0.0, stop=[stop])
    reply = Reply(chat, prompt, sampling, rules=text_only(chat))
    shown = ""
    for piece in reply:
        shown += piece
        assert stop[0] not in shown[cut:]  # not a single character of the stop string was shown
    assert shown == full[:cut] and reply.finish_reason == "stop"
    assert reply.completion_tokens == cut + len(stop)  # the stop string's tokens were generated, not shown


def test_max_tokens_ends_a_reply_with_length(char_chat):
    text, reply = greedy_text(char_chat, char_chat.tokenizer.encode("Good"), 7)
    assert reply.finish_reason == "length" and reply.completion_tokens == 7 and len(text) == 7


GREEDY_TWO = SamplingSettings(max_new_tokens=2, temperature=0.0)


class Scripted:
    """A stand-in model that puts all its mass on the tokens of a fixed script, one per call."""

    training = False

    def __init__(self, config, vocab_size, script):
        self.config, self.vocab_size, self.script, self.calls = config, vocab_size, script, 0

    def eval(self):
        pass

    def train(self, mode=True):
        pass

    def new_kv_cache(self):
        return None

    def forward(self, idx, kv_cache=None):
        logits = np.full((1, idx.shape[1], self.vocab_size), -1e9)
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 0.0
        self.calls += 1
        return logits, None


def test_a_character_split_over_tokens_is_shown_whole():
    tok = BPETokenizer.train("plain words and more words " * 20, vocab_size=280)
    byte_token = {tok.decode_bytes([i]): i for i in range(tok.vocab_size)}
    script = [byte_token[b"\xc3"], byte_token[b"\xa9"]]  # the two bytes of "é", as two tokens
    model = Scripted(chat_model(tok).model.config, tok.vocab_size, script)
    pieces = list(Reply(ChatModel(model, tok, "scripted"), [tok.eot_id], GREEDY_TWO, rules=([], [])))
    assert pieces == ["é"]  # one piece, the whole character, never "\ufffd" for its first byte


def test_the_prompt_keeps_the_system_line_and_the_newest_turns(char_chat):
    roles, end = special_ids(char_chat.tokenizer)
    messages = [Message("system", "You are Hamlet.")]
    for i in range(6):
        messages += [Message("user", "What news?"), Message("assistant", "None, my lord.")]
    messages.append(Message("user", "Good morrow."))
    ids, left_out, dropped = char_chat.chat_prompt(messages, reserve=10)
    assert len(ids) <= char_chat.block_size - 10 and left_out > 0 and dropped == ""
    assert ids[0] == char_chat.tokenizer.eot_id and ids[-1] == roles["assistant"]
    kept = parse_rendered(char_chat.tokenizer, ids)
    assert kept[0] == messages[0] and kept[-1] == messages[-1]
    assert kept[1:] == messages[len(messages) - len(kept) + 1:]  # a suffix of the turns: the oldest went first
    assert left_out == len(messages) - len(kept)


def test_a_last_turn_longer_than_the_window_keeps_its_end(char_chat):
    long = "Good morrow, my lord. " * 10
    ids, left_out, _ = char_chat.chat_prompt([Message("system", "You are Hamlet."), Message("user", long)], reserve=8)
    assert len(ids) == char_chat.block_size - 8 and left_out == 1  # the system line gave way first
    roles, _ = special_ids(char_chat.tokenizer)
    text = char_chat.tokenizer.decode(ids[1:-2])
    assert long.endswith(text) and ids[-1] == roles["assistant"]


def test_characters_the_tokenizer_never_saw_are_left_out_and_reported(char_chat):
    ids, _, dropped = char_chat.chat_prompt([Message("user", "Good “morrow” 🙂")], reserve=8)
    assert dropped == "“”🙂"
    assert parse_rendered(char_chat.tokenizer, ids + [special_ids(char_chat.tokenizer)[1]])[-1].content == ""
    assert Message("user", "Good morrow ") == parse_rendered(char_chat.tokenizer, ids[:-1])[0]


def test_prompt_logprobs_are_the_models_log_softmax(char_chat):
    ids = char_chat.tokenizer.encode("Good morrow, my lord.")
    scored = char_chat.prompt_logprobs(ids, top_n=3)
    logits, _ = char_chat.model.forward(np.asarray([ids]))
    z = logits[0].astype(np.float64)
    want = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(-1, keepdims=True)
    assert scored[0] == (None, [])
    for t in range(1, len(ids)):
        logprob, top = scored[t]
        assert logprob == pytest.approx(want[t - 1, ids[t]], abs=1e-10)
        assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
        assert top[0][1] == pytest.approx(want[t - 1].max(), abs=1e-10)
    np.testing.assert_allclose(np.exp(log_softmax(z)).sum(-1), 1.0, rtol=1e-12)


def test_a_character_cut_in_half_by_max_tokens_is_left_out_not_replaced():
    tok = BPETokenizer.train("plain words and more words " * 20, vocab_size=280)
    byte_token = {tok.decode_bytes([i]): i for i in range(tok.vocab_size)}
    model = Scripted(chat_model(tok).model.config, tok.vocab_size, [byte_token[b"w"], byte_token[b"\xc3"]])
    reply = Reply(ChatModel(model, tok, "scripted"), [tok.eot_id], GREEDY_TWO, rules=([], []))
    assert list(reply) == ["w"] and reply.finish_reason == "length" and reply.completion_tokens == 2


# ---------------------------------------------------------------- the tokens behind the text
def reply_prompt(chat):
    """24 tokens: with 60 more the reply outgrows the context of 48, so its window restarts."""
    prompt, _, _ = chat.chat_prompt([Message("user", "Good morrow, my lord.")], reserve=24)
    assert len(prompt) == 24
    return prompt


@pytest.mark.parametrize("kw", [dict(temperature=1.2, top_k=20, top_p=0.95), dict(temperature=0.7),
                                dict(temperature=1.0, top_k=3)], ids=["topk-topp", "plain", "topk"])
def test_a_reply_shows_what_generate_samples_with_the_same_settings(char_chat, kw):
    """The settings reach the sampler whole and nothing on the way changes a draw: the reply's
    tokens are those of the plain generate function given the same arguments one by one."""
    prompt, rules = reply_prompt(char_chat), text_only(char_chat)
    reply = Reply(char_chat, prompt, SamplingSettings(max_new_tokens=60, seed=11, **kw), rules=rules, logprobs=0)
    text = "".join(reply)
    want = list(generate(char_chat.model, prompt, 60, np.random.default_rng(11), banned_ids=rules[0],
                         stop_ids=rules[1], **kw))
    assert len(want) == 60 and [t.id for t in reply.tokens] == want
    assert text == char_chat.tokenizer.decode(want)


# What this model, prompt, seed and settings gave at commit 7380be6, before the sampling settings
# were passed whole and the reply stopped driving the window itself: the same seed and settings
# must keep giving the same tokens. A float64 model on the reference backend, so that rounding
# differences between machines stay far below the margin of any draw.
PINNED_REPLY = [23, 21, 6, 6, 4, 22, 14, 4, 6, 17, 2, 21, 26, 23, 8, 28, 5, 0, 19, 26, 0, 7, 9, 26, 23, 11, 8, 1, 2,
                25, 17, 23, 28, 12, 21, 5, 15, 21, 2, 25, 25, 23, 28, 5, 23, 4, 7, 7, 3, 11, 5, 22, 22, 22, 20, 27, 6,
                10, 16, 3]
PINNED_CHAT_REPLY = [23, 21, 19, 0, 0, 16, 17]  # then <|end|>, with the chat's own rules


def test_a_seeded_reply_gives_the_tokens_it_gave_before(char_chat):
    prompt = reply_prompt(char_chat)
    sampling = SamplingSettings(max_new_tokens=60, temperature=1.2, top_k=20, top_p=0.95, seed=11)
    reply = Reply(char_chat, prompt, sampling, rules=text_only(char_chat), logprobs=0)
    assert "".join(reply) == char_chat.tokenizer.decode(PINNED_REPLY)
    assert [t.id for t in reply.tokens] == PINNED_REPLY and reply.finish_reason == "length"
    chat_reply = Reply(char_chat, prompt, sampling, logprobs=0)
    assert "".join(chat_reply) == "rnl  hi" and [t.id for t in chat_reply.tokens] == PINNED_CHAT_REPLY
    assert chat_reply.finish_reason == "stop" and chat_reply.completion_tokens == len(PINNED_CHAT_REPLY)
