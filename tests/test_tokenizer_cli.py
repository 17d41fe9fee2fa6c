"""`vintage tokenizer train|encode|decode|info|export-hf`, end to end through cli.main.
Run: pytest -q tests/test_tokenizer_cli.py
"""
import json

import pytest

from test_tokenizers import CORPUS
from vintagelm.cli import main
from vintagelm.tokenizers import load_tokenizer


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "plays.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return path


def run(capsys, *argv):
    """-> (exit status, stdout, stderr) of `vintage tokenizer ARGV...`."""
    status = main(["tokenizer", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_bpe_train_encode_decode_info(capsys, tmp_path, corpus_file):
    tok_path = tmp_path / "tok.json"
    status, out, _ = run(capsys, "train", "--type", "bpe", "--vocab-size", 350, "--input", corpus_file, "--out", tok_path)
    assert status == 0 and "vocab size 350" in out
    tok = load_tokenizer(tok_path)
    assert tok.fingerprint() in out

    text = "the king, thou art 東京"
    status, out, _ = run(capsys, "encode", tok_path, "--text", text)
    ids = [int(x) for x in out.split()]
    assert status == 0 and ids == tok.encode(text)
    status, out, _ = run(capsys, "decode", tok_path, *ids)
    assert status == 0 and out == text + "\n"

    status, out, _ = run(capsys, "encode", tok_path, "--file", corpus_file, "--json")
    assert status == 0 and json.loads(out) == tok.encode(CORPUS)

    status, out, _ = run(capsys, "info", tok_path, "--tokens", 3)
    assert status == 0
    for expected in ("bpe, vocab size 350", "pattern      gpt4", "<|endoftext|>=345", tok.fingerprint()):
        assert expected in out
    assert len(out.split("last 3 ordinary tokens:")[1].strip().splitlines()) == 3


def test_char_train_with_specials_and_export(capsys, tmp_path, corpus_file):
    tok_path = tmp_path / "char.json"
    status, out, _ = run(capsys, "train", "--type", "char", "--input", corpus_file, "--out", tok_path,
                         "--unknown", "reserve", "--special", "<|endoftext|>")
    assert status == 0
    tok = load_tokenizer(tok_path)
    assert tok.special_tokens == {"<|endoftext|>": tok.vocab_size - 1} and tok.unk_id is not None

    status, out, _ = run(capsys, "encode", tok_path, "--text", "ab<|endoftext|>", "--allow-special")
    assert status == 0 and out.split()[-1] == str(tok.eot_id)

    hf_path = tmp_path / "tokenizer.json"
    status, out, _ = run(capsys, "export-hf", tok_path, "--out", hf_path)
    assert status == 0 and json.loads(hf_path.read_text(encoding="utf-8"))["model"]["type"] == "BPE"


def test_train_on_a_corpus_source(capsys, tmp_path):
    tok_path = tmp_path / "plays.json"
    status, out, _ = run(capsys, "train", "--source", "builtin:shakespeare", "--vocab-size", 270, "--out", tok_path)
    assert status == 0 and "vocab size 270" in out
    assert load_tokenizer(tok_path).decode(load_tokenizer(tok_path).encode("Romeo")) == "Romeo"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--type", "bpe", "--out", "{tmp}/t.json", "--input", "{corpus}"], "--vocab-size is required"),
        (["train", "--type", "bpe", "--vocab-size", "100", "--input", "{corpus}", "--out", "{tmp}/t.json"], "vocab_size"),
        (["train", "--vocab-size", "300", "--out", "{tmp}/t.json"], "--input FILE or --source SPEC"),
        (["train", "--vocab-size", "300", "--input", "{tmp}/nope.txt", "--out", "{tmp}/t.json"], "file not found"),
        (["train", "--vocab-size", "300", "--input", "{tmp}/latin1.txt", "--out", "{tmp}/t.json"], "is not UTF-8"),
        (["train", "--type", "char", "--input", "{tmp}/empty.txt", "--out", "{tmp}/t.json"], "empty"),
        (["train", "--vocab-size", "300", "--input", "{corpus}", "--pattern", "(", "--out", "{tmp}/t.json"], "split pattern"),
        (["encode", "{tmp}/good.json", "--text", "hi<|endoftext|>"], "--allow-special"),
        (["encode", "{tmp}/nope.json", "--text", "hi"], "tokenizer file not found"),
        (["encode", "{tmp}/latin1.txt", "--text", "hi"], "not valid JSON"),
        (["decode", "{tmp}/good.json", "5", "99999"], "token id 99999 is out of range"),
        (["decode", "{tmp}/good.json", "-3"], "token id -3 is out of range"),
    ],
)
def test_user_mistakes_are_one_line_errors(capsys, tmp_path, corpus_file, argv, message):
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    main(["tokenizer", "train", "--vocab-size", "300", "--input", str(corpus_file), "--out", str(tmp_path / "good.json")])
    capsys.readouterr()
    argv = [a.format(tmp=tmp_path, corpus=corpus_file) for a in argv]
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert message in err and err.startswith("vintage tokenizer: error:") and err.count("\n") == 1
