"""A reader that stops early (`vintage doctor RUN | head -3`): every command ends quietly, with
no traceback and the status 141 a shell gives any program that wrote into a closed pipe.

The pipes here are real: one whose reader is gone before the command starts (every write
fails at once), and one whose reader takes a few bytes of a long output and closes it
while the command is still writing.
"""
import os
import subprocess
import sys

import pytest

from verse import verse
from vintagelm.cli import SIGPIPE_STATUS, main
from vintagelm.data.prepare import prepare_dataset


def vintage(*argv):
    return [sys.executable, "-m", "vintagelm", *map(str, argv)]


def into_a_closed_pipe(argv):
    """Run `vintage ARGV` with stdout a pipe whose reader closed before it started -> (status, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(vintage(*argv), stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A trained run (2 steps) for `vintage doctor`."""
    root = tmp_path_factory.mktemp("pipe")
    (root / "verse.txt").write_text(verse(100))
    prepare_dataset([str(root / "verse.txt")], "char", root / "ds", progress=False)
    assert main(["train", "--data", str(root / "ds"), "--out", str(root / "run"), "--max-iters", "2",
                 "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=16",
                 "--batch-size", "2", "--set", "eval_iters=1", "--set", "sample_tokens=0", "--no-progress",
                 "--set", "backend=reference"]) == 0
    return root / "run"


@pytest.mark.parametrize("json", [False, True])
def test_doctor_into_a_closed_pipe_ends_quietly(run_dir, json):
    status, err = into_a_closed_pipe(["doctor", run_dir, *(["--json"] if json else [])])
    assert err == "" and status == SIGPIPE_STATUS, (status, err)


def test_help_into_a_closed_pipe_ends_quietly():
    status, err = into_a_closed_pipe(["--help"])
    # argparse ignores a failed write of its help itself (status 0); were it to raise, ours gives 141
    assert err == "" and status in (0, SIGPIPE_STATUS), (status, err)


def test_a_reader_that_stops_after_a_few_bytes_ends_a_long_output_quietly(tmp_path):
    text = verse(8000)  # ~300k characters, so ~300k ids printed: several times the 64 KiB a pipe holds
    assert len(text) > 4 * 64 * 1024
    (tmp_path / "text.txt").write_text(text)
    assert main(["tokenizer", "train", "--type", "char", "--input", str(tmp_path / "text.txt"),
                 "--out", str(tmp_path / "tok.json")]) == 0
    proc = subprocess.Popen(vintage("tokenizer", "encode", tmp_path / "tok.json", "--file", tmp_path / "text.txt"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(16)
    proc.stdout.close()  # as `head -c 16` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == SIGPIPE_STATUS and err == "", err
    assert first.split()[0].isdigit()  # the command had begun its output
