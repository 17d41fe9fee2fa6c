"""The museum's architectures through the same commands as the GPT: `vintage train --arch A`,
exact resume, `vintage sample` and `vintage eval` (bits per byte), for mlp, rnn and lstm; an
unknown architecture or a key it does not have is a one-line error.

    pytest tests/test_museum_cli.py -q
"""
import json

import numpy as np
import pytest

from vintagelm.checkpoint import load_checkpoint
from vintagelm.cli import main

SMALL = {"mlp": ["--set", "n_embd=16", "--set", "hidden=32"],
         "rnn": ["--set", "n_embd=32"],
         "lstm": ["--set", "n_embd=32", "--set", "n_layer=2", "--set", "dropout=0.1"]}
COMMON = ["--set", "block_size=16", "--set", "sample_tokens=0", "--set", "eval_interval=5", "--set", "eval_iters=2",
          "--set", "lr_decay_iters=20", "--set", "warmup_iters=2", "--set", "checkpoint_interval=10",
          "--batch-size", "4", "--no-progress"]


def train(arch, out, *extra):
    assert main(["--threads", "1", "train", "--arch", arch, "--data", "verse.txt", "--out", out,
                 *SMALL[arch], *COMMON, *extra]) == 0


def losses(run):
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("arch", ["mlp", "rnn", "lstm"])
def test_an_architecture_trains_resumes_exactly_samples_and_evaluates(workdir, capsys, arch):
    train(arch, "straight", "--max-iters", "20")
    train(arch, "split", "--max-iters", "10")
    assert main(["--threads", "1", "train", "--resume", "--out", "split", "--max-iters", "20", "--no-progress"]) == 0
    assert losses(workdir / "straight") == losses(workdir / "split")  # bit for bit
    ckpt = load_checkpoint(workdir / "split")
    assert ckpt.model.architecture == arch and ckpt.state["train_config"]["arch"] == arch
    np.testing.assert_array_equal(ckpt.model.flat_params, load_checkpoint(workdir / "straight").model.flat_params)
    assert losses(workdir / "straight")[-1] < losses(workdir / "straight")[0]
    capsys.readouterr()
    assert main(["sample", "split", "--max-new-tokens", "20", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
    assert main(["eval", "split", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 < result["bits_per_byte"] < 8


@pytest.mark.parametrize("arch", ["rnn", "lstm"])
def test_carry_state_reads_the_split_in_order_trains_and_resumes_exactly(workdir, arch):
    train(arch, "carry", "--max-iters", "20", "--set", "carry_state=true")
    assert losses(workdir / "carry")[-1] < losses(workdir / "carry")[0]
    train(arch, "split", "--max-iters", "10", "--set", "carry_state=true")
    assert main(["--threads", "1", "train", "--resume", "--out", "split", "--max-iters", "20", "--no-progress"]) == 0
    assert losses(workdir / "split") == losses(workdir / "carry")  # the carried state was checkpointed


def test_an_unknown_architecture_or_key_is_a_one_line_error(workdir, capsys):
    assert main(["train", "--data", "verse.txt", "--out", "x", "--set", "arch=transformer-xl"]) == 2
    assert "unknown architecture 'transformer-xl'" in capsys.readouterr().err
    assert main(["train", "--arch", "rnn", "--data", "verse.txt", "--out", "x", "--set", "n_head=4"]) == 2
    assert "unknown config key 'n_head' for arch 'rnn'" in capsys.readouterr().err


def test_the_ngram_model_trains_by_counting_and_goes_through_the_same_commands(workdir, capsys):
    assert main(["--threads", "1", "train", "--arch", "ngram", "--set", "order=3", "--data", "verse.txt", "--out",
                 "ng", "--set", "sample_tokens=0", "--no-progress"]) == 0
    rows = [json.loads(x) for x in (workdir / "ng" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["val_bpb"] < 2.5  # the words repeat: counting learns them
    ckpt = load_checkpoint(workdir / "ng")
    assert ckpt.model.architecture == "ngram" and ckpt.model.num_ngrams() > 0
    assert main(["train", "--resume", "--out", "ng", "--no-progress"]) == 0  # nothing left to count
    assert len((workdir / "ng" / "metrics.jsonl").read_text().splitlines()) == 1
    capsys.readouterr()
    assert main(["sample", "ng", "--max-new-tokens", "20"]) == 0 and capsys.readouterr().out.strip()
    assert main(["eval", "ng", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_byte"] == pytest.approx(rows[0]["val_bpb"], rel=0.2)
