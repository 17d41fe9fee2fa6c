"""Faults and hostile input, through the command line as a user meets them: every bad input is
a one-line error with exit status 2 and no traceback, and a kill -9 at any moment loses
nothing (the latest complete checkpoint loads, --resume gives the losses of a run that was
never stopped; a killed prepare leaves the old dataset or a complete new one).

Each kill follows a point the process under test shows itself (its Nth metrics line, a file of
prepare's appearing in its temporary folder), never a sleep, so the trials hold on a machine
of any speed, however busy. `pytest -m slow` runs many more of them (20 and 16) than the
default run (3 and 2), and each asserts that most of its kills really cut the work short.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from verse import WORDS
from vintagelm.checkpoint import find_latest, load_checkpoint
from vintagelm.cli import main
from vintagelm.common import UserError
from vintagelm.train_config import resolve_config, valid_keys
from vintagelm.data.loader import load_dataset
from vintagelm.data.prepare import prepare_dataset

TINY = ["--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
        "--batch-size", "2", "--set", "eval_iters=1", "--set", "sample_tokens=0", "--no-progress",
        "--set", "backend=reference"]


def verse(n_lines, seed=0):
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(n_lines)) + "\n"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Prepared dataset, a trained run, and a shelf of bad inputs."""
    root = tmp_path_factory.mktemp("faults")
    os.environ["VINTAGELM_CACHE"] = str(root / "cache")
    (root / "verse.txt").write_text(verse(600))
    prepare_dataset([str(root / "verse.txt")], "char", root / "ds", progress=False)
    assert main(["train", "--data", str(root / "ds"), "--out", str(root / "run"), *TINY, "--max-iters", "2"]) == 0
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("  \n\n\t \n")
    (root / "short.txt").write_text("ab")
    (root / "few_words.txt").write_text("the king\n")
    (root / "latin.txt").write_bytes(b"caf\xe9 cr\xe8me\n" * 50)
    (root / "nul.txt").write_bytes(b"a\0b\0c\n")
    (root / "bad.toml").write_bytes(b"\xff\xfe[model]")
    (root / "deep.toml").write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "tables.toml").write_text("[model]\nn_layer = 2\n[bogus]\nx = 1\n")
    os.mkfifo(root / "fifo")
    spoil(root)
    return root


def spoil(root):
    """Copies of the run and the dataset, each with one file broken."""
    import shutil
    import struct

    from safetensors.numpy import load_file, save_file

    step = "checkpoints/step_000002"
    broken = {
        "truncated": lambda r: (r / step / "model.safetensors").write_bytes((r / step / "model.safetensors").read_bytes()[:50]),
        "random": lambda r: (r / step / "model.safetensors").write_bytes(os.urandom(4096)),
        "huge_header": lambda r: (r / step / "model.safetensors").write_bytes(struct.pack("<Q", 10**15) + b"{"),
        "state_missing": lambda r: (r / step / "state.json").unlink(),
        "state_corrupt": lambda r: (r / step / "state.json").write_text("{not json"),
        # valid JSON, but an integer longer than Python converts (its int-string limit: ValueError)
        "state_long_int": lambda r: (r / step / "state.json").write_text('{"step": ' + "9" * 5000 + "}"),
        "state_version": lambda r: (r / step / "state.json").write_text('{"format": "vintagelm-checkpoint", "version": 99}'),
        "tokenizer_corrupt": lambda r: (r / step / "tokenizer.json").write_text("[" * 100000),
    }
    for name, breaking in broken.items():
        shutil.copytree(root / "run", root / f"run_{name}")
        breaking(root / f"run_{name}")
    for name, text in (("meta_corrupt", "garbage"), ("meta_version", '{"format": "vintagelm-dataset", "version": 7}')):
        shutil.copytree(root / "ds", root / f"ds_{name}")
        (root / f"ds_{name}" / "meta.json").write_text(text)
    shutil.copytree(root / "ds", root / "ds_tokenizer_corrupt")
    (root / "ds_tokenizer_corrupt" / "tokenizer.json").write_text("x")
    shutil.copytree(root / "run", root / "run_nan")  # a run that diverged
    nan_file = root / "run_nan" / step / "model.safetensors"
    weights = load_file(nan_file)
    weights["wte.weight"][0, 0] = float("nan")
    save_file(weights, nan_file, metadata={"format": "vintagelm-model", "version": "1"})
    shutil.copytree(root / "run", root / "run_config_gap")  # a model_config field missing: no silent default
    state_file = root / "run_config_gap" / step / "state.json"
    state = json.loads(state_file.read_text())
    del state["model_config"]["n_head"]
    state_file.write_text(json.dumps(state))
    shutil.copytree(root / "run", root / "run_other_tokenizer")
    from vintagelm.tokenizers import CharTokenizer

    CharTokenizer.train("xyz").save(root / "run_other_tokenizer" / step / "tokenizer.json")
    shutil.copytree(root / "ds", root / "ds_no_counts")
    meta = json.loads((root / "ds" / "meta.json").read_text())
    del meta["tokens"]
    (root / "ds_no_counts" / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(root / "ds", root / "ds_beyond_vocab")  # an id the tokenizer does not have
    ids = (root / "ds_beyond_vocab" / "train.bin").read_bytes()
    (root / "ds_beyond_vocab" / "train.bin").write_bytes(b"\xff\xff" + ids[2:])
    (root / "one_doc.txt").write_text(verse(40))  # one document: val is its last 0.4%, under a block
    prepare_dataset([str(root / "one_doc.txt")], "char", root / "ds_tiny_val", val_fraction=0.004, progress=False)
    shutil.copytree(root / "run", root / "run_wrong_shape")  # a checkpoint whose weights are another model's
    model_file = root / "run_wrong_shape" / step / "model.safetensors"
    tensors = load_file(model_file)
    save_file({**tensors, "wte.weight": tensors["wte.weight"][:3]}, model_file,
              metadata={"format": "vintagelm-model", "version": "1"})
    shutil.copytree(root / "run", root / "run_int_weights")  # right names and shapes, integers
    save_file({k: t.astype("int64") for k, t in tensors.items()}, root / "run_int_weights" / step / "model.safetensors",
              metadata={"format": "vintagelm-model", "version": "1"})


def fails_cleanly(capsys, argv, pattern):
    """Run `vintage ARGV` -> its one-line error; asserts exit 2, one line, no traceback."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert pattern in err, err
    return err


CASES = {
    # corpora
    "empty corpus": (["prepare", "--source", "{r}/empty.txt", "--tokenizer", "char", "--out", "{r}/o1"], "no text left"),
    "blank corpus": (["prepare", "--source", "{r}/blank.txt", "--tokenizer", "char", "--out", "{r}/o2"], "no text left"),
    "a FIFO": (["prepare", "--source", "{r}/fifo", "--tokenizer", "char", "--out", "{r}/o3"], "not a file, folder or glob"),
    "/dev/zero": (["prepare", "--source", "/dev/zero", "--tokenizer", "char", "--out", "{r}/o4"], "not a file, folder or glob"),
    "jsonl /dev/zero": (["prepare", "--source", "jsonl:/dev/zero:text", "--tokenizer", "char", "--out", "{r}/o5"],
                        "not a regular file"),
    "gutenberg FIFO": (["prepare", "--source", "gutenberg:{r}/fifo", "--tokenizer", "char", "--out", "{r}/o6"],
                       "not a regular file"),
    "tokenizer on /dev/zero": (["tokenizer", "train", "--type", "char", "--input", "/dev/zero", "--out", "{r}/t.json"],
                               "not a regular file"),
    "eval a FIFO": (["eval", "{r}/run", "--text", "{r}/fifo"], "not a regular file"),
    "eval NaN weights": (["eval", "{r}/run_nan"], "non-finite weights"),
    "eval non-UTF-8": (["eval", "{r}/run", "--text", "{r}/latin.txt"], "cannot read --text"),
    "eval a text outside the vocabulary": (["eval", "{r}/run", "--text", "{r}/short.txt"],
                                           "short.txt cannot be encoded"),
    "eval a text shorter than a block": (["eval", "{r}/run", "--text", "{r}/few_words.txt"], "few_words.txt has"),
    # configuration
    "NaN learning rate": (["train", "--data", "{r}/ds", "--out", "{r}/c1", *TINY, "--set", "learning_rate=nan"],
                          "learning_rate must be a finite number"),
    "inf learning rate": (["train", "--data", "{r}/ds", "--out", "{r}/c2", *TINY, "--set", "learning_rate=inf"],
                          "learning_rate must be a finite number"),
    "zero width": (["train", "--data", "{r}/ds", "--out", "{r}/c3", *TINY, "--set", "n_embd=0"], "n_embd must be"),
    "negative batch": (["train", "--data", "{r}/ds", "--out", "{r}/c4", *TINY, "--batch-size", "-2"], "batch_size must be"),
    "unknown key": (["train", "--data", "{r}/ds", "--out", "{r}/c5", *TINY, "--set", "colour=red"], "unknown config key"),
    "unknown TOML table": (["train", "--config", "{r}/tables.toml", "--data", "{r}/ds", "--out", "{r}/c6", *TINY],
                           "unexpected 'bogus'"),
    "non-UTF-8 TOML": (["train", "--config", "{r}/bad.toml", "--data", "{r}/ds", "--out", "{r}/c7", *TINY],
                       "is not valid TOML"),
    "nested TOML": (["train", "--config", "{r}/deep.toml", "--data", "{r}/ds", "--out", "{r}/c8", *TINY],
                    "nested too deeply"),
    "TOML is /dev/zero": (["train", "--config", "/dev/zero", "--data", "{r}/ds", "--out", "{r}/c9", *TINY],
                          "not a regular file"),
    "impossible size": (["train", "--data", "{r}/ds", "--out", "{r}/c10", *TINY, "--set", "block_size=200000"],
                        "GiB of memory"),
    "shorter than a block": (["train", "--data", "{r}/short.txt", "--out", "{r}/c11", *TINY], "fewer than block_size + 1"),
    "out is a file": (["train", "--data", "{r}/ds", "--out", "{r}/verse.txt", *TINY], "is a file"),
    # files we load, broken
    "truncated weights": (["sample", "{r}/run_truncated"], "truncated or corrupt"),
    "random weights file": (["sample", "{r}/run_random"], "truncated or corrupt"),
    "oversized header": (["sample", "{r}/run_huge_header"], "truncated or corrupt"),
    "wrong-shape weights": (["sample", "{r}/run_wrong_shape"], "does not match the model config"),
    "state.json missing": (["sample", "{r}/run_state_missing"], "no complete checkpoint"),
    "state.json corrupt": (["sample", "{r}/run_state_corrupt/checkpoints/step_000002"], "is not valid JSON"),
    "state.json version": (["sample", "{r}/run_state_version"], "format version 99"),
    "state.json with a 5000-digit integer": (["sample", "{r}/run_state_long_int/checkpoints/step_000002"],
                                             "is not valid JSON"),
    "tokenizer.json corrupt": (["sample", "{r}/run_tokenizer_corrupt"], "nested too deeply"),
    "model_config field missing": (["sample", "{r}/run_config_gap"], "missing n_head"),
    "another tokenizer": (["sample", "{r}/run_other_tokenizer"], "is not the tokenizer this model was trained with"),
    "integer weights": (["sample", "{r}/run_int_weights"], "not floating point"),
    "meta.json without counts": (["train", "--data", "{r}/ds_no_counts", "--out", "{r}/m7", *TINY], "lacks the token counts"),
    "meta.json corrupt": (["train", "--data", "{r}/ds_meta_corrupt", "--out", "{r}/m1", *TINY], "is not valid JSON"),
    "meta.json version": (["train", "--data", "{r}/ds_meta_version", "--out", "{r}/m2", *TINY], "format version 7"),
    "dataset tokenizer corrupt": (["train", "--data", "{r}/ds_tokenizer_corrupt", "--out", "{r}/m3", *TINY],
                                  "is not valid JSON"),
    "ids beyond the vocabulary": (["train", "--data", "{r}/ds_beyond_vocab", "--out", "{r}/m4", *TINY],
                                  "beyond the vocabulary"),
    "val shorter than a block": (["train", "--data", "{r}/ds_tiny_val", "--out", "{r}/m5", *TINY],
                                 "the val split"),
    "empty --data": (["train", "--data", "", "--out", "{r}/m6", *TINY], "--data is empty"),
    "empty --out": (["train", "--data", "{r}/ds", "--out", "", *TINY], "--out is empty"),
    "--out under a file": (["train", "--data", "{r}/ds", "--out", "{r}/verse.txt/run", *TINY],
                           "cannot create the folder"),
    "tokenizer --out under a file": (["tokenizer", "train", "--type", "char", "--input", "{r}/verse.txt", "--out",
                                      "{r}/verse.txt/t.json"], "cannot create the folder"),
    # sampling
    "negative temperature": (["sample", "{r}/run", "--temperature", "-1"], "temperature must be"),
    "top-k 0": (["sample", "{r}/run", "--top-k", "0"], "top_k must be"),
    "top-p above 1": (["sample", "{r}/run", "--top-p", "1.5"], "top_p must be"),
    "prompt outside the vocabulary": (["sample", "{r}/run", "--prompt", "QZ€"], "not in this char tokenizer"),
    "negative seed": (["sample", "{r}/run", "--seed", "-1"], "--seed: must be an integer >= 0"),
    "gradcheck negative seed": (["gradcheck", "--seed", "-1"], "--seed: must be an integer >= 0"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_clear_line(files, capsys, case):
    argv, pattern = CASES[case]
    if case in ("negative seed", "gradcheck negative seed"):  # argparse's own error: two lines (usage + error)
        with pytest.raises(SystemExit) as stop:
            main([a.format(r=files) for a in argv])
        assert stop.value.code == 2 and pattern in capsys.readouterr().err
        return
    fails_cleanly(capsys, [a.format(r=files) for a in argv], pattern)


def test_odd_but_valid_corpora_are_read(files):
    """Latin-1 bytes, a UTF-16 file with its byte-order mark, NUL bytes: text, not an error."""
    (files / "u16.txt").write_bytes(("hello from a UTF-16 file\n" * 20).encode("utf-16"))
    (files / "surrogate.jsonl").write_text('{"text": "half a pair \\ud800 here, then more text"}\n' * 30)
    for name, expect in (("latin.txt", "café crème"), ("u16.txt", "hello from a UTF-16 file"), ("nul.txt", "a\0b"),
                         ("surrogate.jsonl", "half a pair \ufffd here")):
        source = f"jsonl:{files / name}:text" if name.endswith(".jsonl") else str(files / name)
        prepare_dataset([source], "char", files / f"ok_{name}", progress=False)
        ds = load_dataset(files / f"ok_{name}")
        text = ds.tokenizer.decode(list(ds.train) + list(ds.val))
        assert expect in text, (name, text[:80])


@settings(max_examples=60, deadline=None)
@given(key=st.sampled_from(valid_keys() + ["model.nope", "nope", ""]), value=st.text(max_size=12))
def test_any_set_value_is_a_config_or_a_user_error(key, value):
    try:
        cfg = resolve_config(overrides=[f"{key}={value}"], out="runs/x")
    except UserError as e:
        assert "\n" not in str(e)
    else:
        assert cfg.to_dict()  # a valid config that round-trips


def test_resume_takes_the_run_dir_however_it_is_spelled(files, monkeypatch):
    run = files / "spelled"
    assert main(["train", "--data", str(files / "ds"), "--out", str(run), *TINY, "--max-iters", "2"]) == 0
    monkeypatch.chdir(files)
    assert main(["train", "--resume", "--out", "./spelled/", *TINY, "--data", str(files / "ds"),
                 "--max-iters", "3"]) == 0
    assert find_latest(run).name == "step_000003"


def test_resuming_a_finished_run_says_there_is_nothing_to_do(files, capsys):
    run = files / "finished"
    assert main(["train", "--data", str(files / "ds"), "--out", str(run), *TINY, "--max-iters", "3"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--data", str(files / "ds"), "--out", str(run), *TINY, "--max-iters", "2"]) == 0
    assert "nothing to train: the run is at step 3 already" in capsys.readouterr().out


def test_eval_of_a_run_finds_its_data_from_any_folder(files, capsys, monkeypatch):
    monkeypatch.chdir(files / "cache")  # elsewhere: the run recorded its dataset's absolute path
    assert main(["eval", str(files / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data"].startswith(str(files / "ds"))


def test_a_checkpoint_skipped_for_a_missing_file_is_named(files, capsys):
    # run_state_missing: its only checkpoint lacks state.json; give it an earlier complete one
    import shutil

    run = files / "run_skip"
    shutil.copytree(files / "run", run)
    shutil.copytree(run / "checkpoints" / "step_000002", run / "checkpoints" / "step_000001")
    (run / "checkpoints" / "step_000002" / "state.json").unlink()
    main(["sample", str(run), "--max-new-tokens", "2"])
    err = capsys.readouterr().err
    assert "note: step_000002" in err and "using step_000001" in err


def test_binary_read_as_text_gets_a_warning(files, capsys):
    rng = random.Random(0)
    (files / "noise.bin.txt").write_bytes(bytes(rng.randrange(256) for _ in range(5000)))
    prepare_dataset([str(files / "noise.bin.txt")], "char", files / "noise_ds", progress=False)
    assert "does not look like text" in capsys.readouterr().err
    prepare_dataset([str(files / "verse.txt")], "char", files / "verse_ds", progress=False)
    assert "does not look like text" not in capsys.readouterr().err


def test_files_we_write_are_readable_by_others_as_the_umask_says(files):
    mode = os.stat(files / "run" / "config.json").st_mode & 0o777
    step = files / "run" / "checkpoints" / "step_000002"
    assert mode == os.stat(step / "tokenizer.json").st_mode & 0o777 == 0o666 & ~_umask()
    assert os.stat(step).st_mode & 0o777 == 0o777 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_absurd_loss_has_an_infinite_perplexity_not_an_overflow():
    import numpy as np

    from vintagelm.evaluate import evaluate_batches

    class Huge:  # a model whose logits make the loss ~1e6 nats
        training = True

        def train(self, mode=True):
            self.training = mode

        def eval(self):
            self.train(False)

        def forward(self, x):
            logits = np.zeros(x.shape + (3,))
            logits[..., 0] = 1e6
            return logits, None

    x = y = np.ones((1, 4), dtype=np.int64)
    result = evaluate_batches(Huge(), [(x, y)], np.ones(3, dtype=np.int64))
    assert result["loss"] > 1e5 and result["perplexity"] == float("inf")


def test_sigterm_stops_after_the_step_with_a_checkpoint(files, uninterrupted):
    run = files / "terminated"
    proc = subprocess.Popen(vintage("train", "--data", files / "ds", "--out", run, *TRAIN),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # halfway: the loop runs (its handler is in place) and has steps left
    assert wait_for(proc, lambda: metrics_lines(run) >= STEPS // 2), proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=HANG_GUARD)
    assert proc.returncode == 130 and "SIGTERM: finishing this step" in out
    stopped_at = int(find_latest(run).name.split("_")[1])
    assert STEPS // 2 <= stopped_at < STEPS
    subprocess.run(vintage("train", "--resume", "--data", files / "ds", "--out", run, *TRAIN), check=True,
                   capture_output=True)
    assert losses(run) == uninterrupted


# ---------------------------------------------------------------- kill -9
def vintage(*argv):
    return [sys.executable, "-m", "vintagelm", *map(str, argv)]


def losses(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def metrics_lines(run_dir):
    """-> the complete lines of run_dir/metrics.jsonl (one a finished step; a step's line is
    written just before its checkpoint), or -1 before the training loop has opened it."""
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return -1


def newest_checkpoint(run_dir):
    """-> the step of the newest checkpoint in place (its folder renamed in), or -1."""
    return max((int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*")), default=-1)


HANG_GUARD = 600  # seconds: only a process that hangs takes this long; the pace is always its own


def wait_for(proc, seen):
    """Poll until `seen()` holds -> True, or False when `proc` ends first."""
    deadline = time.monotonic() + HANG_GUARD
    while not seen():
        if proc.poll() is not None:
            return False
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{proc.args} made no progress in {HANG_GUARD} s")
        time.sleep(0.001)
    return True


STEPS = 300  # a checkpoint every step: a kill lands while one is being written, or between two
TRAIN = [*TINY, "--max-iters", STEPS, "--set", "checkpoint_interval=1", "--set", "keep_checkpoints=2",
         "--set", "eval_interval=50"]


@pytest.fixture(scope="module")
def uninterrupted(files):
    """-> the losses of a run never stopped."""
    subprocess.run(vintage("train", "--data", files / "ds", "--out", files / "whole", *TRAIN), check=True,
                   capture_output=True)
    return losses(files / "whole")


def kill_train_trial(files, uninterrupted, trial):
    """kill -9 right after the run shows a step drawn from the first nine tenths done: its
    metrics line written (the kill lands while that step's checkpoint is being written; a tenth
    of the trials, as soon as the loop began) or its checkpoint in place (the kill lands in the
    next step) -> whether the kill stopped the run before its end."""
    run = files / f"killed{trial}"
    rng = random.Random(trial)
    after = max(0, rng.randrange(-STEPS // 10, STEPS * 9 // 10))
    shown = rng.choice([metrics_lines, newest_checkpoint])
    proc = subprocess.Popen(vintage("train", "--data", files / "ds", "--out", run, *TRAIN),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert wait_for(proc, lambda: shown(run) >= after), proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    latest = find_latest(run)
    interrupted = latest is None or not latest.name.endswith(f"{STEPS:06d}")
    if latest is not None:
        load_checkpoint(latest)  # the latest complete checkpoint always loads
        again = vintage("train", "--resume", "--data", files / "ds", "--out", run, *TRAIN)
    else:  # killed before its first checkpoint: a fresh start in the same folder is allowed
        again = vintage("train", "--data", files / "ds", "--out", run, *TRAIN)
    subprocess.run(again, check=True, capture_output=True)
    assert losses(run) == uninterrupted  # bit for bit: resuming is as if it had never stopped
    return interrupted


def test_kill_9_during_training_loses_nothing(files, uninterrupted):
    assert sum(kill_train_trial(files, uninterrupted, trial) for trial in range(3)) >= 1


@pytest.mark.slow
def test_kill_9_during_training_loses_nothing_20_trials(files, uninterrupted):
    assert sum(kill_train_trial(files, uninterrupted, trial) for trial in range(100, 120)) >= 15


# what a kill of prepare follows: the path in its temporary dataset folder that shows a stage
# begun (trial N takes stage N mod 5). The last one shows a complete dataset, its renames next:
# the kill may land between them, or after, and the new dataset is in place.
PREPARE_STAGES = (
    "",                 # the temporary folder is made; pass 1 reads the sources
    "documents.jsonl",  # the cleaned text is being staged
    "tokenizer.json",   # the tokenizer is trained and saved; encoding begins
    "train.bin",        # the ids are being written
    "meta.json",        # complete; the renames are next
)


def kill_prepare_trial(files, big_corpus, trial):
    """kill -9 `vintage prepare` (replacing a dataset) once it shows a stage begun -> whether
    the old dataset was kept (the kill came before the new one was complete)."""
    out = files / f"prep{trial}"
    prepare_dataset([str(files / "verse.txt")], "char", out, progress=False)
    old = (out / "meta.json").read_text()
    proc = subprocess.Popen(vintage("prepare", "--source", big_corpus, "--tokenizer", "char", "--out", out),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stage = PREPARE_STAGES[trial % len(PREPARE_STAGES)]

    def stage_begun():
        return any((nest / out.name / stage).exists() for nest in files.glob(f".{out.name}.{proc.pid}.*.tmp"))

    if wait_for(proc, stage_begun):
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err  # it finished first only if it was all right
    ds = load_dataset(out)  # the old dataset, or the complete new one: never half of either
    kept_old = (out / "meta.json").read_text() == old
    assert kept_old or json.loads((out / "meta.json").read_text())["sources"] == [str(big_corpus)]
    assert len(ds.train) > 0
    return kept_old


@pytest.fixture(scope="module")
def big_corpus(files):
    """A ~3 MB corpus: each of prepare's stages takes long enough for a poll to see it begun."""
    (files / "big.txt").write_text(verse(60000, seed=1))
    return files / "big.txt"


def test_kill_9_during_prepare_loses_nothing(files, big_corpus):
    assert sum(kill_prepare_trial(files, big_corpus, trial) for trial in range(2)) >= 1


@pytest.mark.slow
def test_kill_9_during_prepare_loses_nothing_16_trials(files, big_corpus):
    assert sum(kill_prepare_trial(files, big_corpus, trial) for trial in range(100, 116)) >= 10


def test_two_prepares_into_one_folder_leave_one_complete_dataset(files, big_corpus):
    out = files / "twice"
    procs = [subprocess.Popen(vintage("prepare", "--source", src, "--tokenizer", "char", "--out", out),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for src in (files / "verse.txt", big_corpus)]
    codes = [p.wait() for p in procs]
    assert 0 in codes  # at least one finished; the other finished too or refused in one line
    ds = load_dataset(out)
    assert len(ds.train) > 0 and json.loads((out / "meta.json").read_text())["format"] == "vintagelm-dataset"


def test_a_loaded_pattern_that_backtracks_without_end_is_an_error_not_a_hang(tmp_path):
    from vintagelm.tokenizers import BPETokenizer

    tok = BPETokenizer.train("aaaa bbbb aaaa", vocab_size=264)
    doc = json.loads((tok.save(tmp_path / "tok.json")).read_text())
    doc["pattern"] = r"(?:a|a)+$|[\s\S]"  # what a hostile or broken tokenizer.json may hold
    (tmp_path / "tok.json").write_text(json.dumps(doc))
    # Unguarded, this match takes about 2**40 backtracking steps (days); the guard's budget is a
    # few seconds. The budget's own message proves the guard ended it; the subprocess's limit,
    # far above any machine's time for the budget, only turns a lost guard into a failure
    # instead of a hung test run.
    done = subprocess.run(vintage("tokenizer", "encode", tmp_path / "tok.json", "--text", "a" * 40 + "!"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "takes too long" in done.stderr and "Traceback" not in done.stderr, done.stderr
