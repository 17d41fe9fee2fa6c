"""Text hygiene: decoding, NFC + whitespace normalisation, unwrapping, exact de-duplication.
    pytest -q tests/test_data_clean.py
"""
import pytest

from vintagelm.data import clean


@pytest.mark.parametrize(
    "data, text",
    [
        (b"\xef\xbb\xbfplain", "plain"),  # UTF-8 with a byte-order mark
        ("naïve “quotes”".encode("utf-8"), "naïve “quotes”"),
        ("naïve “quotes”".encode("cp1252"), "naïve “quotes”"),  # Windows-1252 curly quotes
        (b"caf\xe9 \x81", "café \x81"),  # 0x81 is undefined in cp1252: true Latin-1
    ],
)
def test_decode_bytes(data, text):
    assert clean.decode_bytes(data) == text


def test_normalize_nfc_and_whitespace():
    raw = "\ufeffCafe\u0301 \t\r\n\tverse\r\n\r\n\r\n\r\n\rend   \n\n"
    assert clean.normalize_text(raw) == "Café\n    verse\n\nend"


def test_normalize_keeps_single_blank_lines_and_inner_spaces():
    assert clean.normalize_text("a  b\n\nc\n") == "a  b\n\nc"


def test_split_and_join_paragraphs():
    assert clean.split_paragraphs("one\ntwo\n  \nthree\n\n\n") == ["one\ntwo", "three"]
    assert clean.join_paragraphs(["one\ntwo", "three"]) == "one\ntwo\n\nthree"


def test_unwrap_joins_wrapped_prose_and_keeps_verse_and_indents():
    prose = [
        "It was a bright cold day in the middle of the harvest month, and the",
        "reapers had gone down to the lower field before the sun was fairly up,",
        "leaving the farmhouse quiet.",
    ]
    verse = ["Whose woods these are", "I think I know;"]
    indented = ["    A letter, set in,", "    keeps its own lines."]
    text = "\n".join(prose) + "\n\n" + "\n".join(verse) + "\n\n" + "\n".join(indented)
    paragraphs = clean.unwrap(text).split("\n\n")
    assert paragraphs == [" ".join(prose), "\n".join(verse), "\n".join(indented)]


def test_deduplicator_documents_and_paragraphs_keep_first():
    dedup = clean.Deduplicator(min_chars=10)
    assert not dedup.is_duplicate_document("a whole document")
    assert dedup.is_duplicate_document("a whole document")
    long_a, long_b, short = "a long paragraph here", "another long paragraph", "Exeunt."
    assert dedup.unique_paragraphs([long_a, short, long_a, short]) == ([long_a, short, short], 1)
    # the state carries over to later documents of the same run
    assert dedup.unique_paragraphs([long_b, long_a]) == ([long_b], 1)


def test_default_dedup_spares_short_repeated_lines():
    repeated = "ALL\nGod save the king! God save the king!"
    assert len(repeated) < clean.DEDUP_MIN_CHARS
    assert clean.Deduplicator().unique_paragraphs([repeated, repeated]) == ([repeated, repeated], 0)
