"""The run directory is the trainer's own: nothing is written or deleted through a link the
program did not make (train.lock, metrics.jsonl, config.json, linked checkpoints), a busy run
is reported busy, a model too large for the machine is refused before it is made (every
architecture), and resuming a run as another architecture is one line. Each test names the
finding of the fuzz report (round 2) it covers, and failed before its fix.

    pytest tests/test_run_dir_safety.py -q
"""
import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager

import numpy as np
import pytest

from vintagelm import memory
from vintagelm.cli import main
from vintagelm.common import UserError
from vintagelm.train_config import resolve_config, resume_conflicts
from vintagelm.architectures import ARCHITECTURES, model_class, training_bytes
from vintagelm.rundir import run_lock
from vintagelm.train import train

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
        "--batch-size", "4", "--set", "eval_iters=2", "--set", "sample_tokens=0", "--no-progress"]
LSTM = ["--set", "n_embd=16", "--set", "block_size=16", "--batch-size", "4", "--set", "eval_iters=2",
        "--set", "sample_tokens=0", "--no-progress"]
THESIS = "my thesis draft\nline2\n"


def vintage(capsys, *args):
    """Run the CLI -> (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main(["--threads", "1", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def train_run(capsys, out, *extra, shape=TINY):
    rc, _, err = vintage(capsys, "train", "--data", "verse.txt", "--out", out, *shape, *extra)
    assert rc == 0, err


def hashes(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- D2: links to a user's file
def test_a_linked_train_lock_is_refused_and_the_users_file_kept(workdir, capsys):
    """D2: train.lock linked to a user's file, in a fresh run folder. Before, run_lock opened it
    through the link and truncated the user's file to the trainer's pid."""
    (workdir / "thesis.txt").write_text(THESIS)
    (workdir / "runs" / "sl1").mkdir(parents=True)
    (workdir / "runs" / "sl1" / "train.lock").symlink_to("../../thesis.txt")
    rc, _, err = vintage(capsys, "train", "--data", "verse.txt", "--out", "runs/sl1", *TINY, "--max-iters", "2")
    assert rc == 2 and "runs/sl1/train.lock is a symbolic link" in one_error_line(err)
    assert (workdir / "thesis.txt").read_text() == THESIS
    assert (workdir / "runs" / "sl1" / "train.lock").is_symlink()  # the link is the user's too
    assert not (workdir / "runs" / "sl1" / "checkpoints").exists()


def test_the_lock_itself_refuses_a_link_and_a_second_name(workdir):
    """D2: run_lock opens train.lock with O_NOFOLLOW, so a link made after every check (a race)
    is refused too; a hard link (a second name of the user's file) as well."""
    (workdir / "thesis.txt").write_text(THESIS)
    run = workdir / "run"
    run.mkdir()
    (run / "train.lock").symlink_to(workdir / "thesis.txt")
    with pytest.raises(UserError, match="is a symbolic link"):
        with run_lock(run):
            pass
    (run / "train.lock").unlink()
    os.link(workdir / "thesis.txt", run / "train.lock")
    with pytest.raises(UserError, match="has another name"):
        with run_lock(run):
            pass
    assert (workdir / "thesis.txt").read_text() == THESIS


@pytest.mark.parametrize("name", ["train.lock", "metrics.jsonl", "config.json"])
def test_a_resumed_run_refuses_a_linked_run_file(workdir, capsys, name):
    """D2: a run file replaced by a link to the user's copy elsewhere. Before, --resume
    truncated the lock's target, and silently replaced the metrics and config links."""
    train_run(capsys, "run", "--max-iters", "2")
    mine = workdir / "mine"
    mine.mkdir()
    shutil.copy(workdir / "run" / name, mine / name)
    before = hashes(mine)
    (workdir / "run" / name).unlink()
    (workdir / "run" / name).symlink_to(mine / name)
    rc, _, err = vintage(capsys, "train", "--resume", "--out", "run", "--max-iters", "4", "--no-progress")
    assert rc == 2 and f"run/{name} is a symbolic link" in one_error_line(err)
    assert hashes(mine) == before and (workdir / "run" / name).is_symlink()


# ---------------------------------------------------------------- C7: a linked checkpoint
def test_a_linked_step_dir_is_neither_loaded_nor_rotated_and_training_completes(workdir, capsys):
    """C7: a symlinked step dir in checkpoints/ (and a symlinked leftover of the crash it
    caused). Before, the first rotation raised `Cannot call rmtree on a symbolic link` mid-run."""
    train_run(capsys, "base", "--max-iters", "2")
    keep, leftover = workdir / "keep" / "step_000001", workdir / "keep2" / "stuff"
    shutil.copytree(workdir / "base" / "checkpoints" / "step_000002", keep)
    shutil.copytree(workdir / "base" / "checkpoints" / "step_000002", leftover)
    before = hashes(workdir / "keep"), hashes(workdir / "keep2")
    train_run(capsys, "run", "--max-iters", "2", "--set", "checkpoint_interval=2")
    ckpts = workdir / "run" / "checkpoints"
    (ckpts / "step_000001").symlink_to(keep)
    (ckpts / ".step_000003.deleting").symlink_to(leftover)
    rc, out, err = vintage(capsys, "train", "--resume", "--out", "run", "--max-iters", "8", "--no-progress")
    assert rc == 0, err
    assert "step_000001 is a symbolic link; training neither loads nor removes it" in out
    assert (hashes(workdir / "keep"), hashes(workdir / "keep2")) == before
    assert (ckpts / "step_000001").is_symlink()
    assert not os.path.lexists(ckpts / ".step_000003.deleting")  # the leftover link only
    assert sorted(p.name for p in ckpts.iterdir() if not p.is_symlink()) == ["step_000004", "step_000006",
                                                                              "step_000008"]


# ---------------------------------------------------------------- U1: a busy run
@contextmanager
def held_lock(run):
    """Hold run/train.lock as a `vintage train` in another process would: flock, our pid."""
    with open(run / "train.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def test_resuming_a_busy_run_says_in_use_even_while_its_checkpoints_go(workdir, capsys):
    """U1: --resume of a run another train holds, whose checkpoints are mid-rotation (no
    complete one left). Before, the lock came after reading the config and checkpoint, so the
    run was called broken ("no checkpoint", "model.safetensors is missing"), not busy."""
    train_run(capsys, "run", "--max-iters", "4", "--set", "checkpoint_interval=2")
    for step in (workdir / "run" / "checkpoints").iterdir():
        (step / "model.safetensors").unlink()  # what the other train's rotation leaves for a moment
    busy = f"run is in use by another vintage train (pid {os.getpid()})"
    with held_lock(workdir / "run"):
        rc, _, err = vintage(capsys, "train", "--resume", "--out", "run", "--max-iters", "6", "--no-progress")
        assert rc == 2 and busy in one_error_line(err)
        cfg = resolve_config(overrides=["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "max_iters=6"],
                             data="verse.txt", out="run", batch_size=4)
        with pytest.raises(UserError, match=busy.replace("(", r"\(").replace(")", r"\)")):
            train(cfg, resume=True, progress=False, say=lambda s: None)
    rc, _, err = vintage(capsys, "train", "--resume", "--out", "run", "--max-iters", "6", "--no-progress")
    assert rc == 2 and "no checkpoint to resume" in err  # free again: now the missing files are the news


# ---------------------------------------------------------------- C1: memory, every architecture
HUGE = {"gpt": ["--set", "n_embd=65536", "--set", "n_head=4"], "mlp": ["--set", "context=100000"],
        "rnn": ["--set", "n_embd=65536"], "lstm": ["--set", "n_embd=65536"], "ngram": ["--set", "order=6"]}
SMALL_CONFIG = {"gpt": ["n_layer=1", "n_head=2", "n_embd=16"], "mlp": ["context=3", "n_embd=8", "hidden=16"],
                "rnn": ["n_embd=16", "n_layer=2"], "lstm": ["n_embd=16", "n_layer=2"], "ngram": ["order=3"]}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_is_refused_before_its_model_is_made_when_too_large(workdir, capsys, monkeypatch, arch):
    """C1: the memory check ran for the GPT only; `--arch mlp --set context=100000` made a
    1.6-billion-parameter model until the kernel's OOM killer stopped it. The machine is made
    8 GiB (1 MiB for the n-gram, whose bound on this small text is a few MB), and making the
    model fails the test: the refusal must come first."""
    monkeypatch.setattr(memory, "physical_memory", lambda: (1 << 20) if arch == "ngram" else (8 << 30))

    def made(self, *args, **kwargs):
        raise AssertionError(f"the {arch} model was made before the memory check")

    monkeypatch.setattr(model_class(arch), "__init__", made)
    rc, _, err = vintage(capsys, "train", "--arch", arch, "--data", "verse.txt", "--out", "big", *HUGE[arch],
                         "--batch-size", "4", "--no-progress")
    line = one_error_line(err)
    assert rc == 2 and "GiB of memory, more than this machine's" in line


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_estimate_covers_what_the_model_itself_holds(arch):
    """C1: the estimate is made from the config alone; checked against a real model of each
    architecture (the n-gram fitted on the text, its tables then at their real size): at least
    the four copies of its parameters (weights, gradients, AdamW's m and v)."""
    cfg = resolve_config(overrides=[*SMALL_CONFIG[arch], "block_size=16"], arch=arch, out="x")
    config = cfg.model.__class__.from_dict({**cfg.model.to_dict(), "vocab_size": 50})
    tokens = np.random.default_rng(0).integers(0, 50, 5000)
    model = model_class(arch)(config)
    if hasattr(model, "fit"):
        model.fit(tokens)
    itemsize = model.flat_params.itemsize
    assert training_bytes(config, 4, itemsize, len(tokens)) >= 4 * model.flat_params.nbytes


# ---------------------------------------------------------------- C2: another architecture
@pytest.mark.parametrize("old, new, says", [("gpt", "lstm", "is a gpt, not an lstm"),
                                            ("lstm", "gpt", "is an lstm, not a gpt")])
def test_resuming_a_run_as_another_architecture_is_one_line(workdir, capsys, old, new, says):
    """C2: before, resume_conflicts indexed the new model's config with the old one's keys:
    KeyError 'n_head' / 'carry_state' tracebacks."""
    train_run(capsys, "runs/base", "--arch", old, "--max-iters", "2", shape=TINY if old == "gpt" else LSTM)
    rc, _, err = vintage(capsys, "train", "--resume", "--out", "runs/base", "--arch", new, "--data", "verse.txt",
                         "--max-iters", "4", "--no-progress")
    assert rc == 2 and f"--resume: the run in runs/base {says}" in one_error_line(err)
    saved, other = (resolve_config(arch=a, out="runs/base") for a in (old, new))
    assert resume_conflicts(saved, other) == [f"arch: run has {old!r}, now {new!r}"]
