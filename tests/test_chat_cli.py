"""`vintage chat RUN` in a real terminal (a pseudo-terminal): replies stream, the commands work,
Ctrl-C stops a reply and not the program, Ctrl-D leaves.

    pytest tests/test_chat_cli.py -q
"""
import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import time

import numpy as np
import pytest

from vintagelm.train_config import resolve_config
from vintagelm.train import train

WORDS = "good morrow my lord what news from the court none liege king is well".split()


def verse(n_lines=400, seed=0):
    """Varied lines of the chat's words (a repeated line would teach the model where text ends)."""
    rng = np.random.default_rng(seed)
    return "".join(" ".join(rng.choice(WORDS, rng.integers(4, 9))).capitalize() + ".\n" for _ in range(n_lines))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat_cli")
    (root / "text.txt").write_text(verse(), encoding="utf-8")
    settings = dict(n_layer=1, n_head=2, n_embd=16, block_size=32, max_iters=100, batch_size=8, eval_interval=100,
                    eval_iters=1, sample_tokens=0)
    env = os.environ.get("VINTAGELM_CACHE")
    os.environ["VINTAGELM_CACHE"] = str(root / "cache")
    try:
        # GPT-2's block: the default block's base model, this small, samples <|end|> often enough
        # to end a reply of 100,000 tokens within a second, before a typed Ctrl-C arrives
        cfg = resolve_config("gpt2", overrides=[f"{k}={v}" for k, v in settings.items()], data=str(root / "text.txt"),
                             out=str(root / "run"))
        train(cfg, progress=False, say=lambda m: None)
    finally:
        if env is None:
            os.environ.pop("VINTAGELM_CACHE")
        else:
            os.environ["VINTAGELM_CACHE"] = env
    return root / "run"


class Terminal:
    """A program on a pseudo-terminal, as a person at a keyboard sees it."""

    def __init__(self, args, sigint=signal.SIG_DFL):
        self.master, slave = pty.openpty()

        def start():
            # a session of its own whose controlling terminal is the pty: then the terminal turns a
            # typed Ctrl-C into SIGINT for the program, as a real one does
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            signal.signal(signal.SIGINT, sigint)  # what the program inherits, as exec keeps SIG_IGN

        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=start)
        os.close(slave)
        self.seen = ""

    def read_until(self, text, timeout=30):
        end = time.monotonic() + timeout
        while text not in self.seen:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} did not appear; the terminal shows:\n{self.seen}")
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 4096).decode("utf-8", errors="replace")
                except OSError:  # the program ended
                    break
        assert text in self.seen, self.seen
        return self.seen

    def read_some(self, n_chars, timeout=30):
        """The next n_chars characters (or more), as soon as they have arrived."""
        before, end = len(self.seen), time.monotonic() + timeout
        while len(self.seen) - before < n_chars and (left := end - time.monotonic()) > 0:
            if select.select([self.master], [], [], left)[0]:
                self.seen += os.read(self.master, 4096).decode("utf-8", errors="replace")
        return self.seen[before:]

    def type(self, keys):
        os.write(self.master, keys.encode())

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal():
    opened = []

    def open_terminal(*args, sigint=signal.SIG_DFL):
        opened.append(Terminal([sys.executable, "-m", "vintagelm", "chat", *map(str, args)], sigint))
        return opened[-1]

    yield open_terminal
    for t in opened:
        t.close()


# started from a shell, or in the background by one without job control (it ignores SIGINT)
@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["foreground", "sigint-ignored"])
def test_ctrl_c_stops_a_reply_and_the_chat_goes_on(run_dir, terminal, sigint):
    t = terminal(run_dir, "--max-tokens", "100000", sigint=sigint)  # a reply that would go on for minutes
    t.read_until("you> ")
    for attempt in range(10):  # a tiny model may end a reply at once with <|end|>: ask again
        t.type("Good morrow\n")
        t.read_until(f"{run_dir.name}> ")
        streamed = t.read_some(8)
        if "you> " not in streamed:
            break
    assert len(streamed) >= 8 and "you> " not in streamed  # the reply streams, and has not ended
    t.type("\x03")  # Ctrl-C, turned into SIGINT by the terminal
    t.read_until("[stopped]")
    t.read_until("you> ")
    assert t.proc.poll() is None  # the program lives on
    t.type("/temp 0\n")
    t.read_until("(temperature 0.0)")
    t.type("/reset\n")
    t.read_until("(conversation forgotten)")
    t.type("\x04")  # Ctrl-D at the prompt leaves
    assert t.proc.wait(timeout=10) == 0


def test_commands_and_a_streamed_reply_through_a_pipe(run_dir):
    lines = "Good morrow\n/system You are the king.\n/temp hot\n/bogus\nWhat news?\n/quit\n"
    done = subprocess.run([sys.executable, "-m", "vintagelm", "chat", str(run_dir), "--max-tokens", "5",
                           "--temperature", "0"], input=lines, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.count(f"{run_dir.name}> ") == 2  # two questions, two replies
    assert "(system line: 'You are the king.')" in out
    assert "(/temp takes a number >= 0" in out and "(unknown command /bogus" in out


def test_a_bad_setting_is_a_one_line_error(run_dir):
    done = subprocess.run([sys.executable, "-m", "vintagelm", "chat", str(run_dir), "--top-p", "2"],
                          input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "top_p must be" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("errors", ["surrogateescape", "strict"])
def test_input_bytes_that_are_not_utf8_are_shown_as_bytes(run_dir, errors):
    """Fuzz K9: `printf 'why \\xff\\xfe\\n' | vintage chat RUN` said "(left out characters the model
    has never seen: '\\udcfe\\udcff')", the surrogate escapes of the bytes (and a terminal whose
    stdin decodes strictly would end in a UnicodeDecodeError traceback)."""
    env = {**os.environ, "PYTHONIOENCODING": f"utf-8:{errors}"}
    done = subprocess.run([sys.executable, "-m", "vintagelm", "chat", str(run_dir), "--max-tokens", "2"],
                          input=b"why \xff\xfe\n/quit\n", capture_output=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode("utf-8")
    assert "(left out undecodable bytes \\xfe\\xff (not UTF-8))" in out and "\\udc" not in out
