"""Tokenizers: round trips, a hand-derived BPE, the incremental trainer vs a naive one,
special tokens, files and errors. Run: pytest -q tests/test_tokenizers.py

HF parity lives in test_tokenizer_hf.py, the CLI in test_tokenizer_cli.py; both reuse
`make_corpus` from here. Everything is trained on small text made in this file.
"""
import json
import random
from collections import Counter

import pytest
import regex
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vintagelm import BPETokenizer, CharTokenizer, UserError
from vintagelm.tokenizers import DEFAULT_SPECIAL_TOKENS, PATTERNS, Tokenizer, load_tokenizer

WORDS = (
    "the king queen lord lady thou thee thy art hath doth love death night day sweet fair "
    "good noble heart eyes blood crown sword honour grace heaven Romeo Juliet Hamlet I'll "
    "we're don't can't 'tis o'er café naïve Æthelred 東京 の 🌹 42 1599 3.14"
).split()


def make_corpus(n_lines=400, seed=0):
    """Pseudo-verse: random lines of WORDS with punctuation, blank lines, a CRLF and a tab."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        words = rng.choices(WORDS, k=rng.randint(3, 9))
        lines.append(" ".join(words) + rng.choice([",", ".", ";", "!", "?", ":", ""]))
        if i % 17 == 0:
            lines.append("")
    return "\n".join(lines) + "\r\n\tExeunt.\n"


CORPUS = make_corpus()
CHAR_TEXT = CORPUS + " <x|y> "  # so the char tokenizer can also spell the specials as plain text
SPECIALS = list(DEFAULT_SPECIAL_TOKENS)

# characters a text may hold that nothing in CORPUS does (plus everything st.text() invents)
EDGE_TEXTS = [
    "",
    " ",
    "a",
    "the king",
    "  the   king  \n\n\n  ",
    "\r\n\r\n",
    "\t\x00\x07\x1b\x7f",
    "e\u0301 n\u0303 \u0915\u094d\u0937",  # combining marks, Devanagari conjunct
    "👨‍👩‍👧‍👦 🏳️‍🌈 🌹🌹",  # ZWJ sequences, flag, repeated emoji
    "漢字かなカナ한국어",
    "\u200b\ufeff\u2028\u00a0",  # zero width space, BOM, line separator, NBSP
    "x" * 5000,
    " " * 3000,
    "\n" * 1000,
    "東" * 2000,  # one long letter chunk of 3-byte characters
]


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(CORPUS, vocab_size=400, special_tokens=SPECIALS)


@pytest.fixture(scope="module")
def char():
    return CharTokenizer.train(CHAR_TEXT, special_tokens=SPECIALS)


# ---- round trips ----


@pytest.mark.parametrize("text", EDGE_TEXTS + [CORPUS])
def test_bpe_round_trip_edge_texts(bpe, text):
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert bpe.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < bpe.n_ordinary for i in ids)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text())
def test_bpe_round_trip_any_text(bpe, text):
    assert bpe.decode(bpe.encode_ordinary(text)) == text


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(alphabet=sorted(set(CORPUS)) + ["é", "🌹", "\x00"], max_size=300))
def test_bpe_round_trip_text_like_training(bpe, text):
    # mostly characters the merges know, so merged tokens (not just bytes) come out
    assert bpe.decode(bpe.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1))
def test_char_round_trip_on_its_own_training_text(text):
    tok = CharTokenizer.train(text, special_tokens=[])
    assert tok.decode(tok.encode(text)) == text
    assert tok.chars == sorted(set(text))


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_char_reserve_policy_maps_unseen_characters_to_unk(text):
    tok = CharTokenizer.train(CORPUS, unknown="reserve", special_tokens=[])
    ids = tok.encode(text)
    assert len(ids) == len(text)
    expected = "".join(c if c in tok.chars else "<|unk|>" for c in text)
    assert tok.decode(ids) == expected
    assert all((i == tok.unk_id) == (c not in tok.chars) for i, c in zip(ids, text))


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_char_error_policy_names_the_unseen_character(char, text):
    unseen = [c for c in text if c not in char.chars]
    if not unseen:
        assert char.decode(char.encode(text)) == text
        return
    with pytest.raises(UserError, match=f"character {regex.escape(repr(unseen[0]))}"):
        char.encode(text)


def test_char_vocabulary_is_the_sorted_characters(char):
    assert char.chars == sorted(set(CHAR_TEXT))
    assert char.n_ordinary == len(char.chars)
    assert char.vocab_size == len(char.chars) + len(SPECIALS)
    assert char.encode("the") == [char.chars.index(c) for c in "the"]


def test_char_vocab_size_is_a_cap():
    assert CharTokenizer.train("abc", vocab_size=3, special_tokens=[]).vocab_size == 3
    with pytest.raises(UserError, match="more than vocab_size=7"):
        CharTokenizer.train("abc", vocab_size=7)  # 3 chars + 5 specials = 8 ids


# ---- BPE by hand ----


def test_bpe_hand_derived_example():
    # "aaabdaaabac" is one letter chunk. Pair counts: aa 4, ab 2, bd da ba ac 1 each.
    #   merge 1: (a, a) -> 256 "aa"   word: aa a b d aa a b a c
    #   now (aa, a) and (a, b) both occur twice: the tie goes to the smaller pair, (97, 98)
    #   merge 2: (a, b) -> 257 "ab"   word: aa ab d aa ab a c
    #   merge 3: (aa, ab) -> 258 "aaab" (count 2)   word: aaab d aaab a c
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=[])
    assert tok.merges == [(97, 97), (97, 98), (256, 257)]
    assert tok.encode("aaabdaaabac") == [258, ord("d"), 258, ord("a"), ord("c")]
    # encoding applies the lowest rank first, leftmost first: "aaaa" -> aa aa, "aab" -> aa b
    assert tok.encode("aaaa") == [256, 256]
    assert tok.encode("aab") == [256, ord("b")]
    assert tok.decode([258]) == "aaab"


def test_bpe_two_merges_to_the_same_bytes_share_one_id():
    # training never learns two routes to one byte string, but a merges list may hold them:
    # "bc", "a"+"bc" = "abc", "ab", then "ab"+"c" = "abc" again, which must reuse id 257
    tok = BPETokenizer([(98, 99), (97, 256), (97, 98), (258, 99)], special_tokens=[])
    assert tok.n_ordinary == 259
    assert tok.decode_bytes([257]) == b"abc"
    assert tok.encode("abc") == [257]  # (b, c) has the lowest rank
    assert tok.encode("abd abc") == [258, ord("d"), ord(" "), 257]


def test_bpe_reaches_the_target_vocab_size_exactly(bpe):
    assert bpe.vocab_size == 400
    assert bpe.n_ordinary == 400 - len(SPECIALS)
    assert bpe.special_tokens == {s: bpe.n_ordinary + i for i, s in enumerate(SPECIALS)}


def test_bpe_stops_early_when_the_text_runs_out_of_pairs():
    tok = BPETokenizer.train("ab ab", vocab_size=1000, special_tokens=[], pattern="gpt2")
    assert tok.vocab_size < 1000
    assert tok.encode("ab ab") == [256, 257]  # "ab", " ab"


def test_bpe_gpt2_and_gpt4_patterns_split_differently():
    text = "I'LL pay 12345 dollars!!\n\n  ok"
    gpt2 = regex.findall(PATTERNS["gpt2"], text)
    gpt4 = regex.findall(PATTERNS["gpt4"], text)
    assert gpt2 != gpt4 and "".join(gpt2) == "".join(gpt4) == text
    assert "123" in gpt4 and " 12345" in gpt2  # GPT-4 groups digits by three


def test_bpe_training_does_not_depend_on_document_order():
    docs = CORPUS.split("\n\n")
    a = BPETokenizer.train(docs, vocab_size=350, special_tokens=[])
    b = BPETokenizer.train(docs[::-1], vocab_size=350, special_tokens=[])
    assert a.merges == b.merges


def test_bpe_encode_does_not_depend_on_what_was_encoded_before(bpe):
    # the chunk cache must only ever speed things up
    text = "the sweet night, the sweet night 東京"
    first = bpe.encode(text)
    bpe.encode(CORPUS)
    assert bpe.encode(text) == first
    assert bpe.encode(text + text) == first + first


# ---- the incremental trainer against a naive one ----


def naive_train(text, n_tokens, pattern):
    """The textbook trainer: recount every pair of every word for each merge.

    Same rules as ours: most frequent pair first, ties to the smallest (a, b); a merge
    whose bytes already are a token reuses that token's id. Returns the merges.
    """
    words = [(list(w.encode("utf-8")), n) for w, n in Counter(regex.findall(pattern, text)).items()]
    pieces = [bytes([b]) for b in range(256)]
    merges = []
    while len(pieces) < n_tokens:
        counts = Counter()
        for word, n in words:
            for pair in zip(word, word[1:]):
                counts[pair] += n
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merged = pieces[pair[0]] + pieces[pair[1]]
        if merged not in pieces:
            pieces.append(merged)
        new_id = pieces.index(merged)
        merges.append(pair)
        for k, (word, n) in enumerate(words):
            out, i = [], 0
            while i < len(word):
                if tuple(word[i : i + 2]) == pair:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[k] = (out, n)
    return merges


@pytest.mark.parametrize("seed", range(6))
def test_incremental_trainer_equals_naive_recount(seed):
    rng = random.Random(seed)
    # small alphabets make many ties, repeated pairs ("aaaa") and two routes to the same bytes
    alphabet = rng.choice(["ab ", "abc \n", "xyz.!  ", "aé東 "])
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(200, 800)))
    pattern = PATTERNS[rng.choice(["gpt2", "gpt4"])]
    n_tokens = 256 + rng.randint(10, 80)
    tok = BPETokenizer.train(text, vocab_size=n_tokens, special_tokens=[], pattern=pattern)
    assert tok.merges == naive_train(text, n_tokens, pattern)


def test_incremental_trainer_equals_naive_recount_on_verse():
    pattern = PATTERNS["gpt4"]
    text = make_corpus(60, seed=3)
    tok = BPETokenizer.train(text, vocab_size=330, special_tokens=[], pattern=pattern)
    assert tok.merges == naive_train(text, 330, pattern)


# ---- special tokens ----


def test_default_specials_and_eot(bpe, char):
    assert DEFAULT_SPECIAL_TOKENS[0] == "<|endoftext|>"
    assert {"<|system|>", "<|user|>", "<|assistant|>", "<|end|>"} <= set(DEFAULT_SPECIAL_TOKENS)
    for tok in (bpe, char):
        assert tok.eot_id == tok.special_tokens["<|endoftext|>"] == tok.n_ordinary
    assert BPETokenizer.train("abc", vocab_size=260, special_tokens=[]).eot_id is None


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_special_tokens_in_text(kind, bpe, char):
    tok = bpe if kind == "bpe" else char
    text = "the king<|endoftext|>the queen<|user|>"
    with pytest.raises(UserError, match="special token '<\\|endoftext\\|>' at character 8"):
        tok.encode(text)
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(tok.eot_id) == 1 and ids[-1] == tok.special_tokens["<|user|>"]
    assert tok.decode(ids) == text
    # a set allows those specials only; the others still raise
    with pytest.raises(UserError, match="<\\|user\\|>"):
        tok.encode(text, allowed_special={"<|endoftext|>"})
    with pytest.raises(UserError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|nope|>"})
    # "none" and encode_ordinary treat them as text
    assert tok.encode(text, allowed_special="none") == tok.encode_ordinary(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(SPECIALS)), max_size=8))
def test_specials_never_come_from_ordinary_encoding(bpe, parts):
    text = "".join(parts)
    ids = bpe.encode_ordinary(text)
    assert all(i < bpe.n_ordinary for i in ids)
    assert bpe.decode(ids) == text
    ids_all = bpe.encode(text, allowed_special="all")
    assert bpe.decode(ids_all) == text
    assert sum(i >= bpe.n_ordinary for i in ids_all) == sum(text.count(s) for s in SPECIALS)


def test_training_treats_specials_as_boundaries():
    tok = CharTokenizer.train("ab<|endoftext|>ba", special_tokens=["<|endoftext|>"])
    assert tok.chars == ["a", "b"]


def test_longest_special_wins():
    tok = CharTokenizer.train("xy", special_tokens=["<|a|>", "<|a|><|b|>"], unknown="reserve")
    assert tok.encode("<|a|><|b|>", allowed_special="all") == [tok.special_tokens["<|a|><|b|>"]]


@pytest.mark.parametrize("specials", [["<|a|>", "<|a|>"], [""], "<|a|>"])
def test_bad_special_token_lists(specials):
    with pytest.raises(UserError):
        BPETokenizer.train("abc", vocab_size=300, special_tokens=specials)


# ---- errors ----


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_lone_surrogate_is_a_user_error(kind, bpe, char):
    tok = bpe if kind == "bpe" else char
    with pytest.raises(UserError, match="lone surrogate '\\\\ud800'"):
        tok.encode("the \ud800 king")
    with pytest.raises(UserError, match="surrogate"):
        type(tok).train(["fine", "bad \udfff"], vocab_size=300)


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_out_of_range_ids_are_a_user_error(kind, bpe, char):
    tok = bpe if kind == "bpe" else char
    for bad in (tok.vocab_size, -1, 10**9):
        with pytest.raises(UserError, match=f"token id {bad} is out of range"):
            tok.decode([0, bad])


def test_bpe_partial_utf8_decodes_with_replacement(bpe):
    ids = bpe.encode("🎭")  # 4 bytes never seen in training: one id per byte
    raw = b"".join(bpe.decode_bytes([i]) for i in ids)
    assert len(ids) == 4 and raw == "🎭".encode("utf-8")
    assert bpe.decode(ids[:1]) == "\ufffd"  # a cut multi-byte char is replaced, not an exception


@pytest.mark.parametrize("vocab_size", [100, 260, None, 1 << 21])
def test_bpe_bad_vocab_size(vocab_size):
    with pytest.raises(UserError, match="vocab_size"):
        BPETokenizer.train("abc", vocab_size=vocab_size)


def test_bad_pattern_and_unknown_policy():
    with pytest.raises(UserError, match="bad split pattern"):
        BPETokenizer.train("abc", vocab_size=300, pattern="(")
    with pytest.raises(UserError, match="capturing groups"):
        BPETokenizer.train("abc", vocab_size=300, pattern=r"(\w+)|\s")
    with pytest.raises(UserError, match="does not match character ' ' at 1"):
        BPETokenizer.train("a b", vocab_size=300, pattern=r"\w+")
    with pytest.raises(UserError, match="unknown-character policy"):
        CharTokenizer.train("abc", unknown="ignore")


# ---- files ----


@pytest.mark.parametrize("kind", ["bpe", "char"])
def test_save_load_round_trip(kind, bpe, tmp_path):
    tok = bpe if kind == "bpe" else CharTokenizer.train(CORPUS, unknown="reserve")
    path = tmp_path / "tok.json"
    tok.save(path)
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert (doc["format"], doc["version"], doc["type"]) == ("vintagelm-tokenizer", 1, kind)
    for loaded in (load_tokenizer(path), type(tok).load(path), Tokenizer.load(path)):
        assert type(loaded) is type(tok)
        assert loaded.fingerprint() == tok.fingerprint()
        assert loaded.special_tokens == tok.special_tokens
        text = CORPUS[:2000] + " 東京 🌹 ñ"
        assert loaded.encode(text) == tok.encode(text)
    assert list(tmp_path.iterdir()) == [path]  # atomic save leaves no temporary behind


def test_fingerprint_tracks_content(bpe):
    assert len(bpe.fingerprint()) == 16 and int(bpe.fingerprint(), 16) >= 0
    same = BPETokenizer(bpe.merges, bpe.pattern, SPECIALS)
    assert same.fingerprint() == bpe.fingerprint()
    assert BPETokenizer(bpe.merges[:-1], bpe.pattern, SPECIALS).fingerprint() != bpe.fingerprint()
    assert BPETokenizer(bpe.merges, bpe.pattern, SPECIALS[:1]).fingerprint() != bpe.fingerprint()
    assert BPETokenizer(bpe.merges, "gpt2", SPECIALS).fingerprint() != bpe.fingerprint()


def _bpe_doc(bpe):
    return {"format": "vintagelm-tokenizer", "version": 1, "type": "bpe", "pattern": bpe.pattern,
            "merges": [list(p) for p in bpe.merges], "special_tokens": SPECIALS}


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "not valid JSON"),
        ('{"format": "vintagelm-tokenizer", "version": 1, "ty', "not valid JSON"),  # truncated
        ("[1, 2, 3]", "not a vintagelm tokenizer file"),
        ('{"model": {"type": "BPE"}}', "not a vintagelm tokenizer file"),  # e.g. an HF tokenizer.json
        (lambda d: {**d, "version": 2}, "format version 2, but this vintagelm reads version 1"),
        (lambda d: {**d, "type": "wordpiece"}, "unknown type 'wordpiece'"),
        (lambda d: {k: v for k, v in d.items() if k != "merges"}, "missing field 'merges'"),
        (lambda d: {**d, "merges": [[1, 2, 3]]}, "pair of token ids"),
        (lambda d: {**d, "merges": [[300, 1]]}, "does not exist yet"),
        (lambda d: {**d, "merges": [[1, 2], [1, 2]]}, "listed twice"),
        (lambda d: {**d, "merges": "97 98"}, "pair of token ids"),
        (lambda d: {**d, "pattern": "("}, "bad split pattern"),
        (lambda d: {**d, "special_tokens": ["<|a|>", "<|a|>"]}, "distinct"),
        (lambda d: {**d, "special_tokens": [7]}, "non-empty strings"),
        (lambda d: {**d, "type": "char", "chars": ["ab"], "unknown": "error"}, "single characters"),
        (lambda d: {**d, "type": "char", "chars": ["a"], "unknown": "maybe"}, "unknown-character policy"),
    ],
)
def test_malformed_files_are_one_line_user_errors(bpe, tmp_path, content, message):
    path = tmp_path / "tok.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content(_bpe_doc(bpe))), encoding="utf-8")
    with pytest.raises(UserError, match=message) as err:
        load_tokenizer(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_wrong_type_and_missing_file(bpe, tmp_path):
    path = tmp_path / "tok.json"
    bpe.save(path)
    with pytest.raises(UserError, match="holds a 'bpe' tokenizer, not a 'char' one"):
        CharTokenizer.load(path)
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
