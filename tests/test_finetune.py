"""`vintage finetune`: supervised fine-tuning from a base run on conversations, through the
command line as a user runs it: the assistant-token loss goes down, resume is exact, bad
lines are named, both tokenizers work, and `vintage eval` measures the chat validation split.

    pytest tests/test_finetune.py -q
"""
import json

import numpy as np
import pytest

from verse import WORDS
from vintagelm.chat.dataset import load_chat_dataset
from vintagelm.checkpoint import load_checkpoint
from vintagelm.cli import main
from vintagelm.train_config import resolve_config
from vintagelm.evaluate import evaluate_batches, token_byte_lengths
from vintagelm.train import train

GREETINGS = ["Good morrow", "Well met", "Hail", "Fair day"]


def line(rng, low=3, high=7):
    return " ".join(rng.choice(WORDS, rng.integers(low, high))).capitalize()


def write_chats(path, n=40, seed=0):
    """Conversations with a rule to learn: the answer to "<greeting>, <name>." is "<greeting>, my lord."."""
    rng = np.random.default_rng(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            g = GREETINGS[rng.integers(len(GREETINGS))]
            messages = [{"role": "system", "content": "You are the king."},
                        {"role": "user", "content": f"{g}, {line(rng, 1, 3)}."},
                        {"role": "assistant", "content": f"{g}, my lord."}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)


def base_run(root, tokenizer="char"):
    """A short base run on verse made of the same words (and the chats' characters)."""
    rng = np.random.default_rng(1)
    text = "You are the king.\n" + "\n".join(f"{GREETINGS[i % 4]}, {line(rng)}." for i in range(300)) + "\n"
    (root / "verse.txt").write_text(text, encoding="utf-8")
    settings = dict(n_layer=1, n_head=2, n_embd=32, block_size=48, max_iters=30, batch_size=8, eval_interval=30,
                    eval_iters=2, warmup_iters=2, learning_rate=1e-2, sample_tokens=0)
    if tokenizer == "bpe":
        settings["vocab_size"] = 300
    cfg = resolve_config(overrides=[f"{k}={v}" for k, v in settings.items()], data=str(root / "verse.txt"),
                         tokenizer=tokenizer, out=str(root / "base"))
    train(cfg, progress=False, say=lambda msg: None)
    return root / "base"


def metrics(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def assistant_loss(run_dir, chats):
    """The mean loss over the assistant's tokens of every training window, by direct evaluation."""
    ckpt = load_checkpoint(run_dir, with_optimizer=False)
    data = load_chat_dataset("chat:" + str(chats), ckpt.tokenizer, ckpt.model.config.block_size, log=lambda m: None)
    return evaluate_batches(ckpt.model, [data.train], token_byte_lengths(ckpt.tokenizer))["loss"]


FAST = ["--max-iters", "40", "--batch-size", "8", "--learning-rate", "3e-3", "--no-progress",
        "--set", "eval_interval=20", "--set", "eval_iters=4"]


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_fine_tuning_drives_the_assistant_token_loss_down(tmp_path, capsys, tokenizer):
    base = base_run(tmp_path, tokenizer)
    chats = write_chats(tmp_path / "chats.jsonl")
    assert main(["finetune", str(base), "--data", str(chats), "--out", "chat", *FAST]) == 0
    out = capsys.readouterr().out
    assert "val loss on the assistant's tokens" in out and "bits per byte" in out
    before, after = assistant_loss(base, chats), assistant_loss(tmp_path / "chat", chats)
    assert after < 0.5 * before, (before, after)
    rows = metrics(tmp_path / "chat")
    assert sorted(rows) == list(range(1, 41)) and {"val_loss", "val_bpb"} <= set(rows[40])
    saved = json.loads((tmp_path / "chat" / "config.json").read_text())
    assert saved["init_from"].endswith("step_000030") and saved["data"] == "chat:" + str(chats)


def test_a_fine_tune_resumes_bit_for_bit(tmp_path):
    base = base_run(tmp_path)
    chats = write_chats(tmp_path / "chats.jsonl")
    schedule = ["--set", "lr_decay_iters=20", "--set", "warmup_iters=3", "--set", "dropout=0.1", "--no-progress", "--set", "eval_interval=5",
                "--set", "eval_iters=2", "--batch-size", "4"]
    assert main(["finetune", str(base), "--data", str(chats), "--out", "straight", "--max-iters", "20", *schedule]) == 0
    assert main(["finetune", str(base), "--data", str(chats), "--out", "split", "--max-iters", "10", *schedule]) == 0
    assert main(["finetune", str(base), "--out", "split", "--resume", "--max-iters", "20", "--no-progress"]) == 0
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "straight").model.flat_params,
                                  load_checkpoint(tmp_path / "split").model.flat_params)


def test_bad_lines_are_refused_by_number_or_skipped_and_counted(tmp_path, capsys):
    base = base_run(tmp_path)
    chats = write_chats(tmp_path / "chats.jsonl", n=12)
    with open(chats, "a", encoding="utf-8") as f:
        f.write("{not json\n")
        f.write(json.dumps({"messages": [{"role": "king", "content": "Hail"}]}) + "\n")
    assert main(["finetune", str(base), "--data", str(chats), "--out", "bad", "--max-iters", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "2 bad line(s)" in err and "line 13" in err and "line 14" in err and "--skip-bad" in err
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    assert main(["finetune", str(base), "--data", str(chats), "--out", "skipped", "--max-iters", "2", "--skip-bad",
                 "--no-progress"]) == 0
    assert "skipped 2 bad line(s)" in capsys.readouterr().out


def test_a_base_run_that_does_not_exist_is_a_one_line_error(tmp_path, capsys):
    assert main(["finetune", str(tmp_path / "nowhere"), "--out", "x"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_eval_of_a_fine_tuned_run_measures_the_assistant_tokens_of_its_validation_split(tmp_path, capsys):
    base = base_run(tmp_path)
    chats = write_chats(tmp_path / "chats.jsonl")
    assert main(["finetune", str(base), "--data", str(chats), "--out", "chat", "--max-iters", "5", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "chat", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    ckpt = load_checkpoint(tmp_path / "chat", with_optimizer=False)
    data = load_chat_dataset("chat:" + str(chats), ckpt.tokenizer, ckpt.model.config.block_size, log=lambda m: None)
    want = evaluate_batches(ckpt.model, [data.val], token_byte_lengths(ckpt.tokenizer))
    assert result["tokens"] == want["tokens"] == int((data.val[1] >= 0).sum())
    assert result["loss"] == pytest.approx(want["loss"], rel=1e-9)
