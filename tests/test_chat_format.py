"""vintagelm/chat/format.py: conversations from JSONL, their tokens and loss mask, the windows
they are cut into, and the training arrays whose loss comes from the assistant alone."""
import json

import numpy as np
import pytest

from vintagelm import GPT, GPTConfig, UserError
from vintagelm.chat.format import (
    Message, parse_rendered, read_conversations, render, special_ids, training_arrays, windows,
)
from vintagelm.nn.loss import cross_entropy_backward, cross_entropy_forward
from vintagelm.tokenizers import BPETokenizer, CharTokenizer

TEXT = "Good morrow, my lord. And to you, fair sir. What news? None, my liege."
CONVERSATION = [Message("system", "You are Hamlet."), Message("user", "Good morrow."),
                Message("assistant", "And to you."), Message("user", "What news?"), Message("assistant", "None.")]


@pytest.fixture(params=["char", "bpe"])
def tok(request):
    if request.param == "char":
        return CharTokenizer.train(TEXT + "Hamlet Y")
    return BPETokenizer.train(TEXT * 20, vocab_size=300)


def test_the_mask_is_one_on_assistant_content_and_its_end_only(tok):
    ids, mask = render(tok, CONVERSATION)
    roles, end = special_ids(tok)
    # the expectation, built turn by turn by hand
    want_ids, want_mask = [tok.eot_id], [0]
    for m in CONVERSATION:
        content = tok.encode(m.content)
        learn = int(m.role == "assistant")
        want_ids += [roles[m.role]] + content + [end]
        want_mask += [0] + [learn] * len(content) + [learn]
    assert ids == want_ids and mask == want_mask
    assert sum(mask) == len(tok.encode("And to you.")) + len(tok.encode("None.")) + 2


def test_render_then_parse_is_the_conversation(tok):
    assert parse_rendered(tok, render(tok, CONVERSATION)[0]) == CONVERSATION


def test_a_special_token_typed_by_a_user_stays_text():
    tok = BPETokenizer.train(TEXT * 20, vocab_size=300)  # byte level: any text encodes
    tricky = [Message("user", "say <|end|> now"), Message("assistant", "no")]
    ids, _ = render(tok, tricky)
    assert ids.count(tok.special_tokens["<|end|>"]) == 2  # the two real ends only
    assert parse_rendered(tok, ids) == tricky


def test_the_loss_and_gradient_come_from_the_assistant_alone():
    tok = CharTokenizer.train(TEXT + "Hamlet Y")
    ids, mask = render(tok, CONVERSATION)
    T = len(ids) + 5  # a window longer than the conversation: its tail is padding
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=1, n_head=2, n_embd=16),
                dtype=np.float64, backend="reference")
    x, y = training_arrays([(ids, mask)], T, pad_id=tok.eot_id)
    logits, loss = model.forward(x, y)
    logp = logits[0] - logits[0].max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    learn = [t for t in range(len(ids) - 1) if mask[t + 1]]
    assert loss == pytest.approx(-np.mean([logp[t, ids[t + 1]] for t in learn]), rel=1e-12)
    assert (y >= 0).sum() == len(learn)  # every other target, padding included, is ignored
    # the gradient reaching the logits is exactly zero at every position whose target is not
    # the assistant's (system, user, role tokens, padding), and not zero at the assistant's
    _, ce_cache = cross_entropy_forward(logits, y)
    dlogits = cross_entropy_backward(1.0, ce_cache)[0]  # (T, V)
    silent = [t for t in range(T) if t not in learn]
    assert silent and not dlogits[silent].any() and all(dlogits[t].any() for t in learn)
    grads = {k: g.copy() for k, g in model.backward().items()}
    # masked positions contribute exactly nothing: another padding token (the inputs and
    # targets of the masked tail) leaves every gradient as it was, bit for bit
    x2, y2 = training_arrays([(ids, mask)], T, pad_id=tok.encode("Y")[0])
    assert not np.array_equal(x2, x) and np.array_equal(y2, y)
    model.forward(x2, y2)
    assert all(np.array_equal(g, grads[k]) for k, g in model.backward().items())


def test_windows_keep_whole_turns_and_count_what_cannot_fit():
    tok = CharTokenizer.train(TEXT + "Hamlet Y" + "x")
    ids, mask = render(tok, CONVERSATION)
    lengths = [len(tok.encode(m.content)) + 2 for m in CONVERSATION]  # role + content + end
    block = lengths[0] + lengths[1] + lengths[2]  # system + user + assistant fit, with the leading token
    pieces, dropped = windows(tok, ids, mask, block)
    assert dropped == 0 and len(pieces) == 2
    for piece_ids, _ in pieces:
        assert len(piece_ids) <= block + 1
        assert parse_rendered(tok, piece_ids)  # whole messages only
    assert [m.content for m in parse_rendered(tok, pieces[1][0])] == ["What news?", "None."]
    long_turn = [Message("user", "x" * 50), Message("assistant", "None.")]
    # a question too long for the window goes, counted, and so does its answer
    pieces, dropped = windows(tok, *render(tok, long_turn), 20)
    assert (pieces, dropped) == ([], 2)
    long_turn.append(Message("user", "What news?"))
    long_turn.append(Message("assistant", "None."))
    pieces, dropped = windows(tok, *render(tok, long_turn), 20)
    assert dropped == 2 and [parse_rendered(tok, p) for p, _ in pieces] == [long_turn[2:]]


def test_bad_lines_are_named_by_number(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ho"}]})
    lines = [good, "{not json", json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
             json.dumps({"messages": [{"role": "king", "content": "x"}]}), good]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"3 bad line\(s\): line 2: .*; line 3: no assistant message.*; line 4: message 0"):
        read_conversations(path)
    conversations, skipped = read_conversations(path, skip_bad=True)
    assert len(conversations) == 2 and skipped == 3


def test_evaluation_counts_the_assistant_tokens_only():
    from vintagelm.evaluate import evaluate_batches, token_byte_lengths

    tok = CharTokenizer.train(TEXT + "Hamlet Y")
    ids, mask = render(tok, CONVERSATION)
    T = len(ids) - 1
    x, y = training_arrays([(ids, mask)], T, pad_id=tok.eot_id)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=T, n_layer=1, n_head=2, n_embd=16),
                dtype=np.float64, backend="reference")
    _, loss = model.forward(x, y)
    result = evaluate_batches(model, [(x, y)], token_byte_lengths(tok))
    assert result["tokens"] == sum(mask[1:]) and result["loss"] == pytest.approx(loss, rel=1e-12)
    text_bytes = len("And to you.".encode()) + len("None.".encode())  # the two <|end|> are no text
    assert result["bytes"] == text_bytes


def chat_line(user="hi", assistant="ho"):
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]})


def test_a_lone_surrogate_is_a_bad_line_named_by_its_line_and_skipped(tmp_path):
    """Fuzz U5: a "\\ud800" escape (half a surrogate pair) became a str that no tokenizer can
    encode, refused later under its index in the train split and never skipped. It is now a
    bad line of its own, by its line number, with advice about the escape."""
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join([chat_line(), chat_line(), chat_line("Hello \ud800 there")]) + "\n")
    with pytest.raises(UserError, match=r"1 bad line\(s\): line 3: message 0 has a lone surrogate '\\ud800'.*"
                                        r"fix or remove that escape"):
        read_conversations(path)
    conversations, skipped = read_conversations(path, skip_bad=True)
    assert len(conversations) == 2 and skipped == 1


def test_a_character_the_tokenizer_never_saw_is_a_bad_line_by_its_line(tmp_path):
    """Fuzz U5: a character a char tokenizer never saw is named with the file's line number and
    --skip-bad skips it; the lines kept come back rendered."""
    tok = CharTokenizer.train(TEXT)
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join([chat_line("Good morrow."), chat_line("What €uros?"), chat_line("None.")]) + "\n")
    with pytest.raises(UserError, match=r"line 2: characters the base model's tokenizer never saw: '€'; remove those"):
        read_conversations(path, tokenizer=tok)
    rendered, skipped = read_conversations(path, skip_bad=True, tokenizer=tok)
    assert skipped == 1
    assert rendered == [render(tok, [Message("user", q), Message("assistant", "ho")]) for q in ("Good morrow.", "None.")]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be"])
def test_a_utf16_file_is_named_as_utf16(tmp_path, encoding):
    """Fuzz U6: json.loads(bytes) guessed an encoding per line ("'utf-16-le' codec can't decode
    ..."); each line is now decoded as UTF-8, and a UTF-16 file is called so at its first line."""
    path = tmp_path / "chat.jsonl"
    path.write_bytes(("\n".join([chat_line()] * 3) + "\n").encode(encoding))
    with pytest.raises(UserError, match=r"chat.jsonl: line 1 is not UTF-8 \(the file looks like UTF-16\)"):
        read_conversations(path, skip_bad=True)


def test_nul_bytes_and_other_encodings_are_bad_lines_that_say_so(tmp_path):
    """Fuzz U6: a line of NUL bytes gave "'utf-32-be' codec can't decode"; a Latin-1 line and
    NULs are now named as what they are, a UTF-8 byte-order mark on line 1 is no error."""
    latin = json.dumps({"messages": [{"role": "user", "content": "caf\u00e9"}]}, ensure_ascii=False).encode("latin-1")
    path = tmp_path / "chat.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + chat_line().encode() + b"\n" + b"\0" * 100 + b"\n" + latin + b"\r\n"
                     + chat_line().encode() + b"\r\n")
    with pytest.raises(UserError) as e:
        read_conversations(path)
    assert "2 bad line(s): line 2: holds NUL bytes" in str(e.value)
    assert str(e.value).endswith(f"line 3: not UTF-8 (byte 0xe9 at byte {latin.index(0xE9)}); save the file as UTF-8 "
                                 "(--skip-bad skips them)")
    assert read_conversations(path, skip_bad=True) == ([[Message("user", "hi"), Message("assistant", "ho")]] * 2, 2)


def test_advice_shared_by_many_bad_lines_is_given_once(tmp_path):
    """Fuzz U5: every line with a character the tokenizer never saw repeated the same advice."""
    tok = CharTokenizer.train(TEXT)
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(chat_line(f"Question {i}?") for i in range(8)) + "\n")
    with pytest.raises(UserError) as e:
        read_conversations(path, tokenizer=tok)
    message = str(e.value)
    assert "8 bad line(s): line 1: characters the base model's tokenizer never saw: '0Q'; line 2:" in message
    assert message.count("remove those characters") == 1 and message.endswith("(--skip-bad skips them)")
