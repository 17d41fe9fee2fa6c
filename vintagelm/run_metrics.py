"""Reading a run directory's metrics.jsonl and config.json: the one reader for `vintage
doctor`, `vintage report` and `vintage plot`, so all three refuse the same files with the same
line.

metrics.jsonl is read a line at a time (a run's can be long, and a line that is not ours can be
huge); config.json must have the shape `vintage train` saves in the fields that are read.
"""
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vintagelm.common import UserError, read_json, regular_file

# A metrics row is a few hundred bytes (a few KB with every layer's gradient norm). A longer line
# is not ours, and reading it whole could hold a runaway line (a sparse file's NUL tail) in memory.
MAX_LINE = 1 << 20
NUMBER_FIELDS = ("loss", "val_loss", "grad_norm", "tokens_per_s", "lr")  # what the rules read as numbers


@dataclass
class Run:
    path: Path
    config: dict  # config.json as saved (model table and training fields)
    rows: list  # metrics rows, step order
    notes: list = field(default_factory=list)  # what was skipped while reading, one line each

    @property
    def vocab_size(self):
        return self.config.get("model", {}).get("vocab_size")

    def series(self, key):
        """(steps, values) of the rows where `key` is a number."""
        pairs = [(r["step"], r[key]) for r in self.rows if isinstance(r.get(key), (int, float))]
        return np.array([p[0] for p in pairs], dtype=np.int64), np.array([p[1] for p in pairs], dtype=np.float64)


def load_run(path):
    """The Run in folder `path`, for the doctor and the report card alike: one reader, so both
    refuse the same files with the same line."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a run directory (no such folder)")
    config = read_config(path / "config.json")
    rows, notes = read_metrics(path)
    return Run(path, config, list(rows.values()), notes)


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def read_config(file):
    """config.json as a dict ({} when the run has none); a UserError when it is a pipe or a
    device, not JSON, or JSON without the shape `vintage train` saves in the fields read here."""
    if not os.path.lexists(file):
        return {}
    try:
        config = read_json(file, what="run config")
    except ValueError:  # an integer too long to convert, which read_json lets through
        config = None
    if not looks_like_run_config(config):
        raise UserError(f"{file} is not a run config")
    return config


def looks_like_run_config(config):
    """Whether a parsed config.json is a table with a model table, and every field the rules
    and the card do arithmetic on is of its type (a positive vocabulary size, integer counts)."""
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return False
    model = config["model"]
    vocab_size = model.get("vocab_size", 1)
    counts = (model.get("n_layer", 0), config.get("warmup_iters", 0), config.get("max_iters", 0))
    rates = (config.get("learning_rate"), config.get("grad_clip"))
    return (is_int(vocab_size) and vocab_size > 0 and all(is_int(n) for n in counts)
            and all(r is None or is_number(r) for r in rates))


def read_metrics(run_dir):
    """metrics.jsonl -> ({step: row} in step order, [note, ...]), read a line at a time.

    When a step appears twice (a run restored an earlier checkpoint and went over it again) the
    later row wins: it is the history that continued. A last line cut short (no newline: a crash
    or a full disk in mid-write) is skipped with a note (returned, and printed to stderr), as
    `train --resume` (trim_metrics) drops it; any other line that is not a metrics record is a
    UserError that names it."""
    file = Path(run_dir) / "metrics.jsonl"
    if not os.path.lexists(file):
        raise UserError(f"no metrics in {run_dir}: {file} not found (is it a run directory of `vintage train`?)")
    rows, notes = {}, []
    try:
        with open(regular_file(file, "run metrics"), "rb") as f:
            for n, line in enumerate(iter(lambda: f.readline(MAX_LINE), b""), 1):
                row = metrics_record(line)
                if row is not None:
                    rows[row["step"]] = row
                elif not line.endswith(b"\n") and len(line) < MAX_LINE:  # so readline stopped at the end
                    notes.append(f"{file} line {n} is cut short (a crash or a full disk leaves that); skipped it")
                else:
                    raise UserError(f"{file} line {n} is not a metrics record")
    except OSError as e:
        raise UserError(f"cannot read {file}: {e.strerror or e}") from None
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return dict(sorted(rows.items())), notes


def metrics_record(line):
    """The row one line of metrics.jsonl (bytes) holds: a table with an integer step, numbers
    (or null) where the rules read numbers. None when the line is anything else."""
    try:
        row = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8 or not JSON (ValueErrors both), or nested too deep
        return None
    if not isinstance(row, dict) or not is_int(row.get("step")):
        return None
    norms = row.get("layer_grad_norms")
    if norms is not None and not isinstance(norms, dict):
        return None
    values = [row.get(k) for k in NUMBER_FIELDS] + list((norms or {}).values())
    return row if all(v is None or is_number(v) for v in values) else None
