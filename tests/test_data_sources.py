"""Corpus sources: the builtin Shakespeare, files/folders/globs, JSONL, and bad specs.
    pytest -q tests/test_data_sources.py
"""
import json
import re

import pytest

from vintagelm.common import UserError
from vintagelm.data.sources import Document, iter_documents, markdown_play_to_text

# Markdown that must not survive: headings, emphasis, escapes, links, images, HTML, tables,
# block quotes, code, and hard-break trailing spaces
MARKDOWN = re.compile(r"^#|[*_`\\~|<>]|\]\(|^\s*>|!\[| $", re.MULTILINE)


@pytest.fixture(scope="module")
def plays():
    return {doc.source: doc.text for doc in iter_documents("builtin:shakespeare")}


def test_builtin_shakespeare_is_every_play_as_plain_text(plays):
    assert 35 <= len(plays) <= 40
    assert all(name.startswith("shakespeare/") for name in plays)
    for name, text in plays.items():
        bad = MARKDOWN.search(text)
        assert bad is None, f"{name}: Markdown left near {text[max(0, bad.start() - 40):bad.end() + 40]!r}"
        assert "[ ]" not in text and "\n\n\n" not in text


def test_builtin_shakespeare_keeps_known_lines(plays):
    hamlet = plays["shakespeare/hamlet"]
    assert hamlet.startswith("Hamlet\n\nACT I\n\nSCENE I. Elsinore. A platform before the castle.")
    assert "HAMLET\nTo be, or not to be: that is the question:\n" in hamlet
    assert "\nBERNARDO\nWho's there?\n" in hamlet
    assert "\nEnter Ghost\n" in hamlet  # a stage direction, unitalicised, on its own line
    assert "Now is the winter of our discontent" in plays["shakespeare/richard-iii"]
    assert "Double, double toil and trouble" in plays["shakespeare/macbeth"]


def test_markdown_conversion_rules():
    md = (
        "# Title\n\n## ACT I\n\n_Enter A and\nB_\n\n**A**  \nNay, \\--stay.  \n"
        "__\\[Aside]_ I go *[Drawing.]*\nhe'll _\\[ ]_  \n"
    )
    assert markdown_play_to_text(md) == "Title\n\nACT I\n\nEnter A and\nB\n\nA\nNay, --stay.\n[Aside] I go [Drawing.]\nhe'll"


def test_file_folder_and_glob(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("first  \r\n\r\n\r\n\r\nsecond\n")
    (tmp_path / "b" / "c.txt").write_text("third")
    (tmp_path / "b" / "notes.md").write_text("not a text file")

    [doc] = list(iter_documents(str(tmp_path / "a.txt")))
    assert doc == Document("first\n\nsecond", str(tmp_path / "a.txt"))
    by_dir = [d.source for d in iter_documents(str(tmp_path))]
    assert by_dir == [str(tmp_path / "a.txt"), str(tmp_path / "b" / "c.txt")]  # recursive, sorted
    by_glob = [d.text for d in iter_documents(str(tmp_path / "**" / "*.txt"))]
    assert by_glob == ["first\n\nsecond", "third"]


def test_jsonl_with_field(tmp_path):
    path = tmp_path / "letters.jsonl"
    rows = [{"body": "Dear Sir,\n\nYours."}, {"body": "Cafe\u0301", "id": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:1]) + "\n\n" + json.dumps(rows[1]) + "\n")
    docs = list(iter_documents(f"jsonl:{path}:body"))
    assert docs == [Document("Dear Sir,\n\nYours.", f"{path}:1"), Document("Café", f"{path}:3")]


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"text": "hello"}', r"letters.jsonl:1: no field 'body' \(found: text\)"),
        ('{"body": 3}', "holds int, not text"),
        ("not json", "letters.jsonl:1: not valid JSON"),
        ('{"body": ' + "9" * 5000 + "}", "letters.jsonl:1: not valid JSON"),  # past Python's int-string limit
        ("[" * 100000 + "]" * 100000, "letters.jsonl:1: not valid JSON"),  # nested deeper than the parser goes
    ],
)
def test_jsonl_errors(tmp_path, line, message):
    path = tmp_path / "letters.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(UserError, match=message):
        list(iter_documents(f"jsonl:{path}:body"))


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nowhere/at/all.txt", "accepted forms: builtin:shakespeare"),
        ("builtin:marlowe", "available: builtin:shakespeare"),
        ("jsonl:only-a-file.jsonl", "jsonl:FILE:FIELD"),
        ("jsonl:missing.jsonl:text", "JSONL file not found"),
        ("gutenberg:", "book id or a file"),
        ("gutenberg:missing.txt", "source file not found"),
        ("nowhere/*.txt", "no files match"),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec, message):
    with pytest.raises(UserError, match=message) as e:
        list(iter_documents(spec))
    assert "\n" not in str(e.value)


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no \\*.txt files under folder"):
        list(iter_documents(str(tmp_path)))
