"""Ctrl-C and SIGTERM during training: finish the step, save, stop.

A signal that arrives in the middle of a step must not cut it in half (the weights would hold a
half-applied update); the handler only raises a flag, which the training loop (train.py) checks
between steps before it saves a checkpoint and returns.
"""
import signal
import threading
from contextlib import contextmanager


@contextmanager
def stop_on_interrupt(say):
    """While active, Ctrl-C (SIGINT) or SIGTERM (a scheduler's or `kill`'s stop) only raises a
    flag that the loop checks between steps, so a step is never cut in half; the loop then
    saves a checkpoint and returns. A second signal gets its usual effect (Ctrl-C's
    KeyboardInterrupt; the checkpoints on disk stay intact)."""
    flag = threading.Event()
    # signal handlers can only be installed from the main thread
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    # a signal that was ignored when we started (nohup, `&` in a non-interactive shell) stays ignored
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN}

    def handler(signum, frame):
        flag.set()
        for s, old in previous.items():
            signal.signal(s, old)
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        say(f"\n{name}: finishing this step, then saving a checkpoint and stopping (a second one quits at once)")

    for s in previous:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
