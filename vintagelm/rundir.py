"""The run directory: which folders a run may be written into, its lock, its saved config and
its metrics file.

    RUN_DIR/
        config.json       the TrainConfig, as trained (written by train.py)
        tokenizer.json    the dataset's tokenizer
        metrics.jsonl     one JSON line per step
        checkpoints/      step_NNNNNN/ folders (checkpoint.py)
        train.lock        held (flock) by the `vintage train` writing the run; holds its pid

Order matters: a command first checks that the folder is new, empty or a run (so a folder of
the user's never gets a train.lock), then takes the lock, and only then reads the saved config
or a checkpoint: while another train holds the lock, its checkpoints may be rotated away under
a reader, so a busy run is reported busy, not broken. None of the run's files is opened through
a symbolic link: a link there points at something that is not the run's.
"""
import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from vintagelm.checkpoint import find_latest, read_state
from vintagelm.common import UserError, atomic_file, link_refused, make_parent, open_nofollow
from vintagelm.train_config import TrainConfig, resume_conflicts
from vintagelm.world import LOCAL

LOCK_FILE = "train.lock"
METRICS_FILE = "metrics.jsonl"
RUN_FILES = ("config.json", "tokenizer.json", METRICS_FILE, "checkpoints", LOCK_FILE)  # what a run dir holds


def check_run_dir(run_dir, resume):
    """What can be known before the lock is taken (taking it creates train.lock): a fresh run
    goes into a new, empty or run folder (check_new_run_dir); a resumed one into a folder that
    holds a run (checkpoints, or the lock of a run training towards its first one). No file
    of the run may be a symbolic link."""
    run_dir = Path(run_dir)
    if resume and not ((run_dir / "checkpoints").is_dir() or os.path.lexists(run_dir / LOCK_FILE)):
        raise UserError(f"--resume: no checkpoint to resume in {run_dir / 'checkpoints'}")
    if not resume:
        refuse_existing_run(run_dir)
        check_new_run_dir(run_dir)
    refuse_links(run_dir)


def refuse_existing_run(run_dir):
    """A fresh run never goes over one that has checkpoints. (Checked again under the lock: a
    train may have made its first checkpoint since.)"""
    latest = find_latest(run_dir)
    if latest is not None:
        raise UserError(f"{run_dir} already holds a run (latest {latest.name}); pass --resume to continue it, "
                        "or choose a new --out")


def check_new_run_dir(run_dir):
    """A fresh run may go into a new or empty folder, or one holding only what an earlier
    `vintage train` there wrote before its first checkpoint; never into a folder of the user's
    (its config.json or tokenizer.json would be overwritten)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} is a file; give a folder for the run")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FILES) if run_dir.is_dir() else []
    if foreign or (run_dir / "config.json").is_file() and not is_run_config(run_dir / "config.json"):
        shown = ", ".join(foreign[:3]) or "config.json"
        raise UserError(f"--out {run_dir} holds files that are not a vintagelm run ({shown}); choose a new folder")


def refuse_links(run_dir):
    """A UserError naming the first of the run's files (RUN_FILES) that is a symbolic link: the
    run would write (config.json, metrics.jsonl, train.lock) or delete (checkpoints) through it."""
    for name in RUN_FILES:
        if (Path(run_dir) / name).is_symlink():
            raise link_refused(Path(run_dir) / name)


def is_run_config(file):
    """Whether `file` is a config.json that `vintage train` wrote (a training config)."""
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("model"), dict) and "max_iters" in doc


@contextmanager
def run_lock(run_dir):
    """Hold the run directory's lock: a second `vintage train` on the same folder stops with a
    clear error instead of interleaving checkpoints and metrics, or reading a checkpoint while
    it is rotated away. The lock is the kernel's (flock), so it goes away with the process,
    even after kill -9. The file is opened without following a link (open_nofollow): it is
    truncated to hold our pid, and a link would have that truncate the file it points to."""
    with open_nofollow(Path(run_dir) / LOCK_FILE, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise UserError(f"{run_dir} is in use by another vintage train (pid {holder}); wait for it to finish "
                            "or train into another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield


def remove_if_unused(run_dir):
    """Remove a run folder that holds nothing but its lock (a train made it, then stopped before
    writing anything), so that a mistyped --data leaves no folder behind."""
    if [p.name for p in Path(run_dir).iterdir()] == [LOCK_FILE]:
        (Path(run_dir) / LOCK_FILE).unlink()
        Path(run_dir).rmdir()


@contextmanager
def run_files(run_dir, world):
    """Rank 0 holds the run directory's lock (run_lock) while every rank trains -> whether this
    rank writes the run's files."""
    if world.rank == 0:
        made = not run_dir.exists()
        make_parent(run_dir / LOCK_FILE)
        with run_lock(run_dir):
            try:
                world.barrier()
                yield True
            except BaseException:
                if made:  # stopped before writing anything (bad data, too large): leave no folder behind
                    remove_if_unused(run_dir)
                raise
    else:
        world.barrier()  # after rank 0 took the lock: a second job on the same folder fails there first
        yield False


def saved_config(run_dir, world=LOCAL):
    """The TrainConfig a run was trained with (from its latest checkpoint), read under the run's
    lock: a run another `vintage train` is writing is reported in use. (Under MPI rank 0 alone
    takes the lock; the job stops there if the run is busy.)"""
    check_run_dir(run_dir, resume=True)
    if world.rank != 0:
        return read_saved_config(run_dir)
    with run_lock(run_dir):
        return read_saved_config(run_dir)


def check_resumable(run_dir, cfg):
    """A UserError unless `cfg` continues the run in run_dir: the same architecture, and no
    setting changed but those a resume may change (train_config.RESUMABLE). Call it holding the lock."""
    saved = read_saved_config(run_dir)
    if saved.arch != cfg.arch:
        raise UserError(f"--resume: the run in {run_dir} is {with_article(saved.arch)}, not {with_article(cfg.arch)}")
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        raise UserError(f"--resume: these settings differ from the run in {run_dir} ({'; '.join(conflicts)}); "
                        "only max_iters, the backend and the logging/checkpoint settings may change on resume; "
                        "drop the other flags or train into a new --out")


def with_article(name):
    """'gpt' -> 'a gpt', 'lstm' -> 'an lstm': "an" before a vowel sound, as a letter's name is
    read aloud (el, em, en, ar, es, ef, ex, aitch)."""
    return f"{'an' if name[:1].lower() in 'aefhilmnorsx' else 'a'} {name}"


def read_saved_config(run_dir):
    """saved_config, for a caller that holds the run's lock already."""
    latest = find_latest(run_dir)
    if latest is None:
        raise UserError(f"--resume: no checkpoint to resume in {Path(run_dir) / 'checkpoints'}")
    state = read_state(latest / "state.json")
    if "train_config" not in state:
        raise UserError(f"{latest / 'state.json'} has no train_config; it was not written by `vintage train`")
    return TrainConfig.from_dict(state["train_config"], source=str(latest / "state.json"))


def trim_metrics(file, step):
    """Drop metrics lines after `step` (written after the checkpoint a run resumes from) and a
    partial last line, so the file reads as one uninterrupted run."""
    if not os.path.lexists(file):
        return
    with open_nofollow(file, "r") as f:
        lines = f.read().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_file(file) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")
