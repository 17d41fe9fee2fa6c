"""Fuzz round 2 (issue 25), the inputs of `vintage finetune`, through the command line as a
user runs it: an n-gram base, --set data, bad lines named by the file's line number and
skipped, and the default --out of a checkpoint directory.

    pytest tests/test_fuzz2_inputs.py -q
"""
import json

import pytest

from test_finetune import base_run, write_chats
from vintagelm.cli import main

ONE_STEP = ["--max-iters", "1", "--batch-size", "2", "--no-progress", "--set", "eval_iters=1"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A char GPT base run, an n-gram base run on the same verse, and good conversations."""
    root = tmp_path_factory.mktemp("fuzz2")
    mp = pytest.MonkeyPatch()
    mp.setenv("VINTAGELM_CACHE", str(root / "cache"))
    gpt = base_run(root)
    ngram = root / "ngram"
    assert main(["train", "--arch", "ngram", "--data", str(root / "verse.txt"), "--out", str(ngram),
                 "--set", "sample_tokens=0", "--no-progress"]) == 0
    yield {"root": root, "gpt": gpt, "ngram": ngram, "chats": write_chats(root / "chats.jsonl", n=30)}
    mp.undo()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_an_ngram_base_cannot_be_fine_tuned_and_says_so(bases, capsys):
    """Fuzz U2: an n-gram base got "its ngram model's parameters do not match this run's ngram
    model; fine-tune with the base run's own model settings", though the settings were its own."""
    assert main(["finetune", str(bases["ngram"]), "--data", str(bases["chats"]), "--out", "ft", *ONE_STEP]) == 2
    err = capsys.readouterr().err
    assert "is an n-gram (count) model, which cannot be fine-tuned" in err and err.count("\n") == 1
    assert not (bases["root"] / "ft").exists()


@pytest.mark.parametrize("data", ["builtin:shakespeare", "verse.txt"])
def test_set_data_that_is_no_chat_data_is_refused(bases, capsys, data):
    """Fuzz U3: --set data=builtin:shakespeare became "chat file not found: in:shakespeare" (the
    "chat:" prefix sliced off a spec that never had it), and a text file "chat file . is a folder"."""
    data = str(bases["root"] / data) if data.endswith(".txt") else data
    assert main(["finetune", str(bases["gpt"]), "--out", "ft", "--set", f"data={data}", *ONE_STEP]) == 2
    err = capsys.readouterr().err
    assert "must be a chat file (chat:FILE) or chat:builtin" in err and "--data CHAT.jsonl" in err
    assert not (bases["root"] / "ft").exists()


def test_bad_lines_are_named_by_the_files_line_and_skipped(bases, tmp_path, capsys):
    """Fuzz U5: a lone surrogate on line 15 was refused as "train conversation 14" (its index in
    the train split) with advice to retrain the base, and --skip-bad did not skip it; a character
    the char tokenizer never saw behaved the same."""
    lines = bases["chats"].read_text(encoding="utf-8").splitlines()
    lines[6] = lines[6].replace("my lord", "my \u20ac lord")  # line 7: a character the base never saw
    lines[14] = lines[14].replace("my lord", "my \\ud800 lord")  # line 15: half a surrogate pair, as JSON
    chats = tmp_path / "bad.jsonl"
    chats.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert main(["finetune", str(bases["gpt"]), "--data", str(chats), "--out", "ft", *ONE_STEP]) == 2
    err = capsys.readouterr().err
    assert "2 bad line(s): line 7: characters the base model's tokenizer never saw: '\u20ac'" in err
    assert "line 15: message 2 has a lone surrogate '\\ud800'" in err and "conversation 14" not in err
    assert main(["finetune", str(bases["gpt"]), "--data", str(chats), "--out", "ft", "--skip-bad", *ONE_STEP]) == 0
    assert "skipped 2 bad line(s) (--skip-bad)" in capsys.readouterr().out


def test_a_checkpoint_directory_fine_tunes_into_its_runs_name(bases, tmp_path):
    """Fuzz K7: `vintage finetune runs/base/checkpoints/step_000030` wrote runs/step_000030-chat."""
    checkpoint = bases["gpt"] / "checkpoints" / "step_000030"
    assert main(["finetune", str(checkpoint), "--data", str(bases["chats"]), *ONE_STEP]) == 0
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["base-chat"]
    config = json.loads((tmp_path / "runs" / "base-chat" / "config.json").read_text())
    assert config["init_from"] == str(checkpoint.resolve())
