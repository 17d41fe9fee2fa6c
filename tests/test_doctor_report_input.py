"""`vintage doctor` and `vintage report` read a run's metrics.jsonl and config.json the same way:
a file that is not ours is one line naming it (the same line from both commands), a partial
last line (a crash or a full disk) is skipped with a note, a huge file is read a line at a time,
and a full disk while writing the card is one line with nothing left behind
(fuzz round 2: C4, C5, U7, U8, K1, K2).

    pytest tests/test_doctor_report_input.py -q
"""
import errno
import json
import math
import os
import pathlib
import tracemalloc

import numpy as np
import pytest

from test_doctor import falling, write_run
from vintagelm.cli import main

STEPS = 30


@pytest.fixture
def run(tmp_path):
    """A healthy-looking run of STEPS steps."""
    return write_run(tmp_path / "run", falling(STEPS))


def vintage(capsys, *argv):
    """(exit status, stdout, stderr) of one CLI call."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def refusal(capsys, folder):
    """Run doctor and report on `folder`; both must refuse it with the same single line. Returns it."""
    lines = []
    for command in ("doctor", "report"):
        status, _, err = vintage(capsys, command, str(folder))
        assert status == 2 and len(err.splitlines()) == 1, (command, err)
        lines.append(err.strip().split(": error: ", 1)[1])
    assert lines[0] == lines[1]
    assert not (folder / "report.html").exists()
    return lines[0]


def append(file, data):
    with open(file, "ab") as f:
        f.write(data)


BAD_LINES = {
    "latin-1": b'{"step": 31, "loss": 1.0, "note": "caf\xe9"}\n',  # not UTF-8
    "nested": b"[" * 100_000 + b"]" * 100_000 + b"\n",  # json.loads recurses past the limit
    "step-string": b'{"step": "31", "loss": 1.0}\n',
    "loss-string": b'{"step": 31, "loss": "low"}\n',
    "layer-norms-list": b'{"step": 31, "loss": 1.0, "layer_grad_norms": [1, 2]}\n',
}


@pytest.mark.parametrize("line", BAD_LINES.values(), ids=BAD_LINES)
def test_a_line_that_is_not_a_metrics_record_is_named(capsys, run, line):
    """C5: a non-UTF-8 byte, deep nesting or a field of the wrong type is
    "line N is not a metrics record" from both commands, not a traceback."""
    append(run / "metrics.jsonl", line)
    assert refusal(capsys, run) == f"{run / 'metrics.jsonl'} line {STEPS + 1} is not a metrics record"


def test_random_bytes_are_not_metrics(capsys, run):
    """C5: a metrics.jsonl of random bytes is refused at its first line."""
    noise = np.random.default_rng(0).bytes(5000)
    (run / "metrics.jsonl").write_bytes(noise + b"\n")
    assert refusal(capsys, run) == f"{run / 'metrics.jsonl'} line 1 is not a metrics record"


CONFIGS = {"model-a-number": {"model": 5, "max_iters": "x"}, "array": [1, 2], "string": "run",
           "vocab-a-string": {"model": {"vocab_size": "65"}}, "vocab-negative": {"model": {"vocab_size": -3}},
           "lr-a-string": {"model": {"vocab_size": 65}, "learning_rate": "fast"}}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS)
def test_a_config_that_is_json_but_no_run_config_is_named(capsys, run, config):
    """C5: config.json that parses but is not a training config (a number for the model
    table, an array, a vocabulary size that is not a positive count) is refused by name."""
    (run / "config.json").write_text(json.dumps(config))
    assert refusal(capsys, run) == f"{run / 'config.json'} is not a run config"


def test_a_partial_last_line_is_skipped_with_a_note(capsys, run):
    """U7: the last line cut short with no newline (what a crash or a full disk leaves) is
    skipped with a note, and the rest of the run is diagnosed; a report card is written."""
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-30])
    status, out, err = vintage(capsys, "doctor", str(run))
    assert status == 0 and out.startswith(f"{run}: {STEPS - 1} steps")
    note = f"{metrics} line {STEPS}"
    assert note in err and "skipped" in err
    status, out, err = vintage(capsys, "report", str(run))
    assert status == 0 and note in err
    card = (run / "report.html").read_text()
    assert f"{STEPS - 1} steps" in card and f"line {STEPS}" in card


def test_a_bad_last_line_that_ends_in_a_newline_is_still_refused(capsys, run):
    """U7's limit: only a line cut short at the end of the file is forgiven; a whole bad line is
    not (this held before the fix too: it guards the fix from forgiving too much)."""
    append(run / "metrics.jsonl", b'{"step": 31, "loss": \n')
    assert refusal(capsys, run) == f"{run / 'metrics.jsonl'} line {STEPS + 1} is not a metrics record"


@pytest.mark.parametrize("kind", ["fifo", "folder", "dev-zero"])
@pytest.mark.parametrize("name", ["metrics.jsonl", "config.json"])
def test_a_pipe_device_or_folder_in_place_of_a_file_is_named(capsys, run, kind, name):
    """U8: metrics.jsonl (or config.json) that is a FIFO, a folder or a link to /dev/zero is
    named as what it is, not "not found" (and the pipe is never opened: no hang)."""
    file = run / name
    file.unlink()
    if kind == "fifo":
        os.mkfifo(file)
    elif kind == "folder":
        file.mkdir()
    else:
        file.symlink_to("/dev/zero")
    what = "is a folder" if kind == "folder" else "is not a regular file (a device or a pipe)"
    message = refusal(capsys, run)
    assert str(file) in message and what in message


def test_all_nan_losses_are_diverged_and_not_a_bad_start(capsys, tmp_path):
    """K1: a run whose every loss is NaN diverged; its first loss is no evidence of a bad start."""
    run = write_run(tmp_path / "run", falling(STEPS))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({**r, "loss": math.nan}) + "\n" for r in rows))
    status, out, _ = vintage(capsys, "doctor", str(run), "--json")
    assert status == 0 and [f["name"] for f in json.loads(out)["findings"]] == ["diverged"]
    assert vintage(capsys, "report", str(run))[0] == 0
    assert "far above" not in (run / "report.html").read_text()


def test_an_empty_metrics_file_says_no_steps_were_recorded(capsys, run):
    """K1: an empty metrics.jsonl is "no steps recorded", not a clean bill of health."""
    (run / "metrics.jsonl").write_bytes(b"")
    status, out, _ = vintage(capsys, "doctor", str(run))
    assert status == 0 and "no steps recorded" in out and "no problems found" not in out
    assert vintage(capsys, "report", str(run))[0] == 0
    card = (run / "report.html").read_text()
    assert "no steps recorded" in card.lower() and "no problems found" not in card.lower()


@pytest.mark.parametrize("command", ["doctor", "report"])
def test_a_huge_sparse_tail_is_refused_without_reading_it_whole(capsys, run, command):
    """K2: 200 MB of NUL bytes after the real lines is refused at its first line while at most
    a small fraction of the file is held in memory (the reader goes a line at a time and caps
    a line's length)."""
    metrics = run / "metrics.jsonl"
    tail = 200 << 20
    with open(metrics, "r+b") as f:
        f.truncate(metrics.stat().st_size + tail)  # sparse: no disk is used
    import vintagelm.report_card  # noqa: F401  (imports are not what is measured)

    tracemalloc.start()
    try:
        status, _, err = vintage(capsys, command, str(run))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert status == 2 and f"{metrics} line {STEPS + 1} is not a metrics record" in err
    assert peak < tail / 20, f"peak {peak / 2**20:.1f} MiB of Python memory"


def test_a_full_disk_while_writing_the_card_is_one_line_and_leaves_nothing(capsys, run, monkeypatch):
    """C4: no space left while the card is written: one line naming the file, the old card
    kept as it was, and no temporary file left beside it."""
    card = run / "report.html"
    card.write_text("the previous card")
    write_text = pathlib.Path.write_text

    def disk_full(self, *args, **kwargs):
        if self.parent == run:  # the card's temporary file: the disk fills while it is written
            write_text(self, "<html>half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    before = sorted(p.name for p in run.iterdir())
    monkeypatch.setattr(pathlib.Path, "write_text", disk_full)
    status, _, err = vintage(capsys, "report", str(run))
    assert status == 2 and err.strip() == f"vintage report: error: cannot write {card}: No space left on device"
    assert card.read_text() == "the previous card"
    assert sorted(p.name for p in run.iterdir()) == before
