"""The command line end to end on a tiny config: train -> eval --json -> plot -> sample, and
the one-line errors a user sees.

    pytest tests/test_eval.py -q
"""
import json
import sys

import pytest

from vintagelm.cli import main

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
        "--set", "eval_interval=2", "--set", "eval_iters=2", "--set", "warmup_iters=1",
        "--set", "sample_tokens=20", "--batch-size", "4", "--max-iters", "4", "--no-progress"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "sonnets.txt"
    lines = ["Shall I compare thee to a summer's day,", "Thou art more lovely and more temperate,",
             "Rough winds do shake the darling buds of May,", "And summer's lease hath all too short a date."]
    path.write_text("\n".join(lines * 40) + "\n", encoding="utf-8")
    return path


def test_train_eval_plot_sample_end_to_end(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--out", str(run), "--seed", "3", *TINY]) == 0
    out = capsys.readouterr().out
    assert "model.n_layer" in out and "step 0: initial loss" in out and "done: step 4" in out
    assert "--- sample" in out
    assert (run / "config.json").is_file() and (run / "metrics.jsonl").is_file()

    assert main(["eval", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"] == 4 and result["tokens"] > 0
    assert result["bits_per_byte"] > 0 and result["perplexity"] > 1
    assert result["checkpoint"].endswith("step_000004")

    assert main(["eval", str(run), "--text", str(text_file), "--max-batches", "2"]) == 0
    assert "bits per byte" in capsys.readouterr().out

    png = tmp_path / "loss.png"
    assert main(["plot", str(run), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in capsys.readouterr().out

    assert main(["sample", str(run), "--max-new-tokens", "10", "--prompt", "Shall"]) == 0
    assert capsys.readouterr().out.startswith("Shall")


def test_eval_prepares_a_source_with_the_checkpoints_tokenizer(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--out", str(run), *TINY]) == 0
    capsys.readouterr()
    other = tmp_path / "more.txt"
    other.write_text("And summer's lease hath all too short a date,\n" * 30, encoding="utf-8")
    assert main(["eval", str(run), "--data", str(other), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] > 0
    # a dataset tokenized differently cannot be scored by this model
    alien = tmp_path / "alien.txt"
    alien.write_text("zzz qqq xxx\n" * 200, encoding="utf-8")
    assert main(["train", "--data", str(alien), "--out", str(tmp_path / "alien_run"), *TINY]) == 0
    alien_data = json.loads((tmp_path / "alien_run" / "checkpoints" / "step_000004" / "state.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(run), "--data", alien_data["data"]["dataset"]]) == 2
    assert "different tokenizer" in capsys.readouterr().err


def test_resume_through_the_cli_needs_no_repeated_flags(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--out", str(run), *TINY]) == 0
    # only --resume, --out and a longer run: everything else comes from the saved config
    assert main(["train", "--out", str(run), "--resume", "--max-iters", "6", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


@pytest.mark.parametrize("argv,message", [
    (["train", "--set", "n_layers=2"], "valid keys: "),
    (["train", "--set", "max_iters=lots"], "expected int"),
    (["train", "--resume", "--out", "{tmp}/none"], "no checkpoint to resume"),
    (["eval", "{tmp}/none"], "checkpoint not found"),
    (["plot", "{tmp}"], "metrics.jsonl not found"),
])
def test_user_mistakes_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_resume_with_conflicting_flags_explains(tmp_path, text_file, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(text_file), "--out", str(run), *TINY]) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", "--set", "n_embd=32", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "model.n_embd: run has 16, now 32" in err and "only max_iters" in err


def test_plot_without_matplotlib_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0, "lr": 0.001, "tokens_per_s": 10}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install 'vintagelm[plot]'" in capsys.readouterr().err
