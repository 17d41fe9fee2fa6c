"""Prepared datasets: files and meta, the split, filters and dedup inside a run, atomicity,
the loader's checks and batches, and `vintage prepare` end to end.
    pytest -q tests/test_data_prepare.py
"""
import json

import numpy as np
import pytest

from vintagelm import cli
from vintagelm.common import UserError
from vintagelm.data import prepare as prep
from vintagelm.data.loader import get_batch, load_dataset, sequential_batches
from vintagelm.tokenizers import CharTokenizer, load_tokenizer

EOT = "<|endoftext|>"
WORDS = "the lantern mill orchard river keeper wheel frost harvest ledger candle parish".split()


def write_corpus(folder, n_docs=12):
    """n_docs small distinct documents, each of three paragraphs; -> {path: text}."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = {}
    for d in range(n_docs):
        paragraphs = [
            " ".join(WORDS[(d * 7 + p * 3 + k) % len(WORDS)] for k in range(12)) + f" ({d}.{p})"
            for p in range(3)
        ]
        path = folder / f"doc{d:02d}.txt"
        docs[str(path)] = "\n\n".join(paragraphs)
        path.write_text(docs[str(path)] + "\n")
    return docs


def decoded_documents(ds, split):
    """The documents of a split, as text, cut at the end-of-text tokens."""
    text = ds.tokenizer.decode(np.asarray(getattr(ds, split)).tolist())
    assert text == "" or text.endswith(EOT)
    return text.split(EOT)[:-1]


def test_dataset_files_meta_and_round_trip(tmp_path):
    docs = write_corpus(tmp_path / "corpus")
    meta = prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", val_fraction=0.25, progress=False)
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["meta.json", "tokenizer.json", "train.bin", "val.bin"]
    assert json.loads((tmp_path / "ds" / "meta.json").read_text()) == meta
    assert meta["format"] == "vintagelm-dataset" and meta["version"] == 1 and meta["dtype"] == "uint16"
    assert meta["documents"]["read"] == meta["documents"]["kept"] == 12
    assert meta["documents"]["train"] + meta["documents"]["val"] == 12 and meta["documents"]["val"] >= 1

    ds = load_dataset(tmp_path / "ds")
    assert isinstance(ds.train, np.memmap) and not ds.train.flags.writeable
    assert ds.tokenizer.fingerprint() == meta["tokenizer_fingerprint"]
    assert (len(ds.train), len(ds.val)) == (meta["tokens"]["train"], meta["tokens"]["val"])
    train, val = decoded_documents(ds, "train"), decoded_documents(ds, "val")
    # every document lands whole in exactly one split, in source order, and the rule is the seed's
    # hash of the document's text; when no hash falls under the fraction, the document with the
    # lowest hash goes to val, so val is never empty
    scores = {path: prep.split_score(1337, prep.content_key(text)) for path, text in docs.items()}
    val_paths = [path for path in docs if scores[path] < 0.25] or [min(scores, key=scores.get)]
    expected_val = [docs[path] for path in val_paths]
    assert val == expected_val
    assert train == [text for text in docs.values() if text not in expected_val]
    assert meta["bytes"]["train"] == sum(len(t.encode()) for t in train)


def test_split_is_deterministic_per_seed(tmp_path):
    write_corpus(tmp_path / "corpus", n_docs=20)
    runs = {}
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / name, seed=seed, val_fraction=0.3, progress=False)
        runs[name] = (tmp_path / name / "train.bin").read_bytes(), (tmp_path / name / "val.bin").read_bytes()
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_val_is_never_empty_with_two_documents(tmp_path):
    write_corpus(tmp_path / "corpus", n_docs=2)
    meta = prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", val_fraction=0.01, progress=False)
    assert meta["documents"]["train"] == meta["documents"]["val"] == 1


def test_single_document_is_split_at_a_paragraph(tmp_path):
    text = "\n\n".join(f"Paragraph number {i} of the only book." for i in range(10))
    (tmp_path / "book.txt").write_text(text)
    meta = prep.prepare_dataset([str(tmp_path / "book.txt")], "char", tmp_path / "ds", val_fraction=0.2, progress=False)
    assert meta["split"] == "single-document"
    ds = load_dataset(tmp_path / "ds")
    train, val = decoded_documents(ds, "train"), decoded_documents(ds, "val")
    assert val == ["\n\n".join(f"Paragraph number {i} of the only book." for i in (8, 9))]
    assert train[0] + "\n\n" + val[0] == text


def test_dtype_by_vocab_size(tmp_path):
    assert prep.token_dtype(65536) == np.uint16 and prep.token_dtype(65537) == np.uint32
    # a char vocabulary of 66,000 code points (unassigned planes: stable under NFC) needs uint32
    (tmp_path / "wide.txt").write_text("".join(map(chr, range(0x30000, 0x30000 + 66000))))
    meta = prep.prepare_dataset([str(tmp_path / "wide.txt")], "char", tmp_path / "ds", progress=False)
    assert meta["dtype"] == "uint32" and meta["vocab_size"] > 65536
    ds = load_dataset(tmp_path / "ds")
    assert ds.train.dtype == np.uint32 and int(ds.train.max()) >= 65536


def test_bpe_dataset_and_reusing_a_tokenizer_file(tmp_path):
    write_corpus(tmp_path / "corpus")
    meta = prep.prepare_dataset([str(tmp_path / "corpus")], "bpe", tmp_path / "bpe", vocab_size=300, progress=False)
    assert meta["tokenizer_type"] == "bpe" and meta["vocab_size"] == 300 and meta["bytes_per_token"] > 1.5
    reused = prep.prepare_dataset([str(tmp_path / "corpus")], str(tmp_path / "bpe" / "tokenizer.json"), tmp_path / "again", progress=False)
    assert reused["tokenizer_fingerprint"] == meta["tokenizer_fingerprint"]
    assert (tmp_path / "again" / "train.bin").read_bytes() == (tmp_path / "bpe" / "train.bin").read_bytes()
    with pytest.raises(UserError, match="disagrees"):
        prep.prepare_dataset([str(tmp_path / "corpus")], str(tmp_path / "bpe" / "tokenizer.json"), tmp_path / "x", vocab_size=512)


def test_the_split_follows_the_documents_not_their_folder(tmp_path):
    docs = write_corpus(tmp_path / "here")
    write_corpus(tmp_path / "somewhere" / "else")  # the same files, another place
    splits = []
    for where in ("here", "somewhere/else"):
        prep.prepare_dataset([str(tmp_path / where)], "char", tmp_path / "ds" / where, val_fraction=0.3, progress=False)
        splits.append([(tmp_path / "ds" / where / f).read_bytes() for f in ("train.bin", "val.bin")])
    assert splits[0] == splits[1] and len(docs) == 12


def test_duplicates_across_sources(tmp_path):
    docs = write_corpus(tmp_path / "corpus", n_docs=3)
    first = next(iter(docs.values()))
    long_paragraph = "A paragraph long enough to count as a duplicate when it is printed again. " * 2
    (tmp_path / "extra.txt").write_text(f"{long_paragraph}\n\nSomething new.\n\n{long_paragraph}")
    (tmp_path / "copy.txt").write_text(first)
    sources = [str(tmp_path / "corpus"), str(tmp_path / "copy.txt"), str(tmp_path / "extra.txt")]
    meta = prep.prepare_dataset(sources, "char", tmp_path / "ds", progress=False)
    assert meta["documents"]["dropped_duplicate"] == 1 and meta["documents"]["kept"] == 4
    assert meta["paragraphs_dropped"] == {"duplicate": 1}


def write_period_corpus(folder):
    folder.mkdir()
    (folder / "a.txt").write_text("Old words about the mill.\n\nIn 1901 a telephone rang.\n\nMore old words.")
    (folder / "b.txt").write_text("The keeper trimmed the lamp.\n\nHe sent a telegram home.")
    (folder / "c.txt").write_text("Nothing modern here at all.")


def test_period_filter_paragraph_and_document_units(tmp_path):
    write_period_corpus(tmp_path / "corpus")
    by_para = prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "p", before=1850, progress=False)
    assert by_para["paragraphs_dropped"] == {"year": 1, "term:telegram": 1}
    assert by_para["documents"]["kept"] == 3
    ds = load_dataset(tmp_path / "p")
    kept = "".join(decoded_documents(ds, "train") + decoded_documents(ds, "val"))
    assert "Old words about the mill." in kept and "1901" not in kept and "telegram" not in kept

    by_doc = prep.prepare_dataset(
        [str(tmp_path / "corpus")], "char", tmp_path / "d", before=1850, filter_unit="document", progress=False
    )
    assert by_doc["documents"]["dropped_period"] == 2 and by_doc["documents"]["kept"] == 1
    assert by_doc["period_filter"]["dropped"] == {"year": 1, "term:telegram": 1}
    assert by_doc["paragraphs_dropped"] == {}


def test_everything_filtered_is_a_user_error(tmp_path):
    (tmp_path / "new.txt").write_text("The internet, in 1999.")
    with pytest.raises(UserError, match="no text left"):
        prep.prepare_dataset([str(tmp_path / "new.txt")], "char", tmp_path / "ds", before=1800, progress=False)
    assert not (tmp_path / "ds").exists()


# ---- atomicity ----

def fail_after(monkeypatch, calls):
    """Make the char tokenizer's encoder raise on its (calls+1)-th call."""
    real, count = CharTokenizer.encode_ordinary, [0]

    def encode(self, text):
        count[0] += 1
        if count[0] > calls:
            raise RuntimeError("simulated crash while encoding")
        return real(self, text)

    monkeypatch.setattr(CharTokenizer, "encode_ordinary", encode)


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    write_corpus(tmp_path / "corpus")
    fail_after(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated"):
        prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "out" / "ds", progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # no dataset, no temporary folder


def test_interrupted_run_keeps_the_old_dataset(tmp_path, monkeypatch):
    write_corpus(tmp_path / "corpus")
    prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    fail_after(monkeypatch, 5)
    with pytest.raises(RuntimeError):
        prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", seed=7, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "ds"]


def test_refuses_to_replace_a_folder_that_is_not_a_dataset(tmp_path):
    write_corpus(tmp_path / "corpus")
    with pytest.raises(UserError, match="holds files vintagelm did not write"):
        prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "corpus", progress=False)
    assert len(list((tmp_path / "corpus").iterdir())) == 12


def test_a_users_file_added_to_a_dataset_folder_is_never_replaced_away(tmp_path):
    """A folder holding a prepared dataset AND a file of the user's is refused before any work:
    replacing the dataset swaps the whole folder, which would lose notes.txt (fuzz round 2, the
    rule for folders the user names)."""
    write_corpus(tmp_path / "corpus")
    prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", progress=False)
    (tmp_path / "ds" / "notes.txt").write_text("my notes")
    with pytest.raises(UserError, match="notes.txt"):
        prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", progress=False)
    assert (tmp_path / "ds" / "notes.txt").read_text() == "my notes"
    assert prep.is_dataset(tmp_path / "ds")


# ---- loader ----

@pytest.fixture
def dataset(tmp_path):
    write_corpus(tmp_path / "corpus")
    prep.prepare_dataset([str(tmp_path / "corpus")], "char", tmp_path / "ds", progress=False)
    return tmp_path / "ds"


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "meta.json").unlink(), "meta.json"),
        (lambda d: (d / "val.bin").unlink(), "val.bin is missing"),
        (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]), "train.bin has"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json is missing"),
        (lambda d: edit_meta(d, version=99), "version 99"),
        (lambda d: edit_meta(d, dtype="float32"), "dtype 'float32'"),
        (lambda d: edit_meta(d, format="something-else"), "not a vintagelm dataset"),
        (lambda d: edit_meta(d, tokenizer_fingerprint="0000"), "not the tokenizer"),
    ],
)
def test_loader_rejects_damaged_datasets(dataset, damage, message):
    damage(dataset)
    with pytest.raises(UserError, match=message) as e:
        load_dataset(dataset)
    assert "vintage prepare" in str(e.value) or "meta.json" in str(e.value)


def edit_meta(folder, **changes):
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_get_batch(dataset):
    ds = load_dataset(dataset)
    x, y = get_batch(ds.train, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    assert np.array_equal(x[:, 1:], y[:, :-1])
    data = np.asarray(ds.train)
    for row_x, row_y in zip(x, y):  # each row is a real window of the split, and y follows x
        starts = [s for s in range(len(data) - 16) if np.array_equal(data[s : s + 16], row_x)]
        assert any(np.array_equal(data[s + 1 : s + 17], row_y) for s in starts)
    again = get_batch(ds.train, 4, 16, np.random.default_rng(0))
    assert np.array_equal(again[0], x)
    with pytest.raises(UserError, match="block size"):
        get_batch(ds.val[:10], 1, 10, np.random.default_rng(0))


def test_sequential_batches_cover_the_split(dataset):
    ds = load_dataset(dataset)
    T = 32
    batches = list(sequential_batches(ds.val, 3, T))
    xs = np.concatenate([x for x, _ in batches])
    ys = np.concatenate([y for _, y in batches])
    n_windows = (len(ds.val) - 1) // T
    assert xs.shape == (n_windows, T) and all(len(x) <= 3 for x, _ in batches)
    assert np.array_equal(xs.reshape(-1), np.asarray(ds.val[: n_windows * T]))
    assert np.array_equal(ys.reshape(-1), np.asarray(ds.val[1 : n_windows * T + 1]))
    assert len(list(sequential_batches(ds.val, 3, T, max_batches=2))) == 2


# ---- the command ----

def test_cli_end_to_end(tmp_path, capsys):
    write_period_corpus(tmp_path / "corpus")
    terms = tmp_path / "terms.txt"
    terms.write_text("mill\t1700\n")
    argv = [
        "prepare", "--source", str(tmp_path / "corpus"), "--tokenizer", "char", "--before", "1850",
        "--terms", str(terms), "--explain", "--out", str(tmp_path / "ds"),
    ]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "documents: 3 read, 3 kept" in out
    assert "paragraphs dropped:" in out and "bytes/token" in out
    assert "year: '1901' in" in out and "In 1901 a telephone rang." in out
    assert "term:telegram: 'telegram' (1852) in" in out
    assert "term:mill: 'mill' (1700)" not in out  # 1700 < 1850: not modern for this cut-off
    ds = load_dataset(tmp_path / "ds")
    assert ds.meta["period_filter"]["terms_file"] == str(terms)
    assert load_tokenizer(tmp_path / "ds" / "tokenizer.json").fingerprint() == ds.meta["tokenizer_fingerprint"]


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["prepare", "--source", "nowhere.txt", "--tokenizer", "char", "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vintage prepare: error: source 'nowhere.txt'") and err.count("\n") == 1
    assert cli.main(["prepare", "--tokenizer", "chars", "--out", str(tmp_path / "ds")]) == 2
    assert "'char', 'bpe' or a tokenizer file" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "A Title\n\n" + "one long paragraph of single spaced text that goes on and on " * 200,  # a break only at the start
    "x" * 5000,  # no break at all
])
def test_a_single_document_splits_at_the_val_fraction_wherever_its_breaks_are(tmp_path, text):
    (tmp_path / "one.txt").write_text(text)
    meta = prep.prepare_dataset([str(tmp_path / "one.txt")], "char", tmp_path / "ds", val_fraction=0.1, progress=False)
    share = meta["bytes"]["val"] / (meta["bytes"]["train"] + meta["bytes"]["val"])
    assert meta["split"] == "single-document" and 0.075 <= share <= 0.125, meta["bytes"]
