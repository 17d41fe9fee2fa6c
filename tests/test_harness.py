"""vintagelm/harness.py and `vintage eval --choices/--documents` without lm-eval: the windows
score every token of a document exactly once after the token before it, a context and its
continuation split as lm-eval splits them, and the one-line errors of the command.
(tests/test_lm_eval.py holds the same scores against lm-eval's own through the server.)

    pytest tests/test_harness.py -q
"""
import json

import numpy as np
import pytest

from vintagelm.cli import main
from vintagelm.harness import continuation_logprob, document_logprob, encode_pair
from vintagelm.nn.loss import log_softmax
from vintagelm.tokenizers import BPETokenizer

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
        "--set", "sample_tokens=0", "--max-iters", "2", "--no-progress"]


class Bigram:
    """A model whose next token depends on the last one alone: logits = table[token]. Whatever
    the windows, a document's log-likelihood is then the sum of log p(token | the one before)."""

    training = False

    def __init__(self, vocab_size, seed):
        self.table = np.random.default_rng(seed).normal(size=(vocab_size, vocab_size))

    def eval(self):
        pass

    def train(self, mode=True):
        pass

    def forward(self, idx, kv_cache=None):
        return self.table[idx], None  # (1, T, V)


@pytest.mark.parametrize("size", [2, 3, 7, 40, 41, 100])
def test_every_token_of_a_document_is_scored_once_after_the_one_before(size):
    model = Bigram(12, seed=size)
    ids = list(np.random.default_rng(0).integers(0, 11, size=40))
    start = 11
    logp = log_softmax(model.table)  # (V, V): row a predicts the token after a
    want = sum(logp[a, b] for a, b in zip([start] + ids[:-1], ids))
    assert document_logprob(model, ids, start, size) == pytest.approx(want, abs=1e-9)


def test_a_continuation_is_scored_after_the_end_of_its_context_when_both_do_not_fit():
    model = Bigram(12, seed=1)
    context, continuation = [1, 2, 3, 4, 5], [6, 7]
    logp = log_softmax(model.table)
    want = logp[5, 6] + logp[6, 7]
    for size in (3, 4, 10):
        assert continuation_logprob(model, context, continuation, size) == pytest.approx(want, abs=1e-12)


def test_a_pair_is_split_as_lm_eval_splits_it():
    tok = BPETokenizer.train("the king and the queen thereof " * 30, vocab_size=280)
    # the context's trailing spaces move to the continuation; the continuation's ids are those of
    # the whole text after the context's own
    context_ids, continuation_ids = encode_pair(tok, "the king ", "and")
    assert context_ids == tok.encode("the king")
    assert context_ids + continuation_ids == tok.encode("the king and")
    assert encode_pair(tok, "", " and") == ([tok.eot_id], tok.encode(" and"))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    (root / "text.txt").write_text("Shall I compare thee to a summer's day?\n" * 60, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
        assert main(["train", "--data", str(root / "text.txt"), "--out", str(root / "run"), *TINY]) == 0
    return root / "run"


def write_lines(path, *items):
    path.write_text("\n".join(i if isinstance(i, str) else json.dumps(i) for i in items) + "\n", encoding="utf-8")
    return str(path)


def test_vintage_eval_reports_the_tables_of_both_kinds_of_task(run, tmp_path, capsys):
    choices = write_lines(tmp_path / "c.jsonl", {"context": "Shall I compare", "choices": ["thee", "day"], "answer": 0},
                          {"context": "to a summer's", "choices": ["day", "thee"], "answer": 0})
    documents = write_lines(tmp_path / "d.jsonl", {"text": "Shall I compare thee"}, {"text": "to a summer's day?"})
    capsys.readouterr()
    assert main(["eval", str(run), "--choices", choices, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["items"] == 2 and result["context"] == 16 and len(result["loglikelihoods"][0]) == 2
    assert result["acc"] in (0, 0.5, 1) and result["acc_norm"] in (0, 0.5, 1)
    assert main(["eval", str(run), "--documents", documents, "--context", "8"]) == 0
    out = capsys.readouterr().out
    assert "2 documents, 8 words, 38 bytes, windows of 8 tokens" in out and "bits_per_byte" in out


@pytest.mark.parametrize("args, message", [
    (["--choices", "{bad}"], "line 2: not JSON"),
    (["--choices", "{choices}"], "needs two or more non-empty choices"),
    (["--documents", "{empty}"], "document 1 is empty"),
    (["--documents", "{missing}"], "task file not found"),
    (["--choices", "{good}", "--context", "1"], "--context must be from 2 to the model's block_size (16)"),
    (["--choices", "{good}", "--context", "17"], "--context must be from 2"),
    (["--choices", "{good}", "--era"], "--choices and --documents each score one task file alone"),
    (["--choices", "{good}", "--documents", "{good}"], "each score one task file alone"),
    (["--context", "8"], "--context sets the window of --choices or --documents"),
])
def test_a_bad_task_is_one_line_and_exit_2(run, tmp_path, capsys, args, message):
    files = {
        "good": write_lines(tmp_path / "good.jsonl", {"context": "Shall", "choices": ["I", "we"], "answer": 0}),
        "bad": write_lines(tmp_path / "bad.jsonl", {"context": "Shall", "choices": ["I", "we"], "answer": 0}, "{oops"),
        "choices": write_lines(tmp_path / "one.jsonl", {"context": "Shall", "choices": ["I"], "answer": 0}),
        "empty": write_lines(tmp_path / "empty.jsonl", {"text": ""}),
        "missing": str(tmp_path / "nothing.jsonl"),
    }
    capsys.readouterr()
    assert main(["eval", str(run), *[a.format(**files) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
