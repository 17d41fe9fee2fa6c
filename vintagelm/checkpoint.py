"""Checkpoints: one directory per step, written atomically, loaded without executing code.

    RUN_DIR/checkpoints/step_000500/
        model.safetensors      parameters by name (metadata: format vintagelm-model, version 1)
        optimizer.safetensors  optimizer state ("m.<name>", "v.<name>", "t")
        tokenizer.json         a copy, so the directory alone can be sampled
        state.json             format, version, step, dtype, architecture, model_config, rng states, and
                               whatever the trainer adds (train_config, data position, ...)

A checkpoint is written into a hidden temporary directory beside its final name and renamed
into place only when every file is complete, so a kill at any moment leaves the previous
checkpoints intact and never a half-written one under a step_ name. Only safetensors and
JSON are read back: loading cannot run code (no pickle). Anything truncated, corrupt or
inconsistent is a UserError that names the file.

A step_ entry of checkpoints/ that is a symbolic link was not made here (a checkpoint is always
a real folder): it is skipped, never loaded as the run's latest and never removed by the
rotation, and the link itself is left in place (train.py says so once). Removing the run's
own folders never follows a link inside them either.
"""
import json
import re
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from vintagelm.common import UserError, atomic_dir, read_json
from vintagelm.architectures import model_class

FORMAT = "vintagelm-checkpoint"  # state.json
VERSION = 1
MODEL_FORMAT = "vintagelm-model"  # model.safetensors metadata
OPTIMIZER_FORMAT = "vintagelm-optimizer"  # optimizer.safetensors metadata
FILE_VERSION = "1"  # safetensors metadata values are strings
STEP_DIR = re.compile(r"step_(\d{6,})")
REQUIRED = ("model.safetensors", "optimizer.safetensors", "state.json")


@dataclass
class Checkpoint:
    path: Path  # the step_NNNNNN directory
    step: int  # optimizer steps completed
    model: object  # a architectures.LanguageModel, parameters and dropout RNG state restored
    tokenizer: object  # vintagelm tokenizer, or None when the checkpoint has none
    optimizer_state: dict  # name -> array for optimizer.load_state_dict (None if not loaded)
    state: dict  # state.json as read


def save_checkpoint(run_dir, step, model, optimizer, train_state, tokenizer=None, keep_last=3):
    """Write RUN_DIR/checkpoints/step_{step:06d}/ atomically, keep the newest `keep_last`
    complete checkpoints, and return the new directory's path.

    train_state: JSON-able dict merged into state.json; its "rng" entries join the model's
    dropout RNG state under "rng"."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root)
    state = {
        "format": FORMAT,
        "version": VERSION,
        "step": int(step),
        "dtype": np.dtype(model.dtype).name,
        "architecture": model.architecture,
        "model_config": model.config.to_dict(),
        **train_state,
        "rng": {"dropout": model.dropout_rng.bit_generator.state, **train_state.get("rng", {})},
    }
    final = root / f"step_{step:06d}"
    try:
        with atomic_dir(final, is_ours=lambda p: not p.is_symlink() and (p / "state.json").is_file()) as tmp:
            tmp.mkdir()
            save_file(dict(model.params), tmp / "model.safetensors",
                      metadata={"format": MODEL_FORMAT, "version": FILE_VERSION})
            save_file(optimizer.state_dict(), tmp / "optimizer.safetensors",
                      metadata={"format": OPTIMIZER_FORMAT, "version": FILE_VERSION})
            if tokenizer is not None:
                tokenizer.save(tmp / "tokenizer.json")
            (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    except (OSError, SafetensorError) as e:  # a full disk, a file-size limit, a folder made read-only
        raise UserError(f"cannot write checkpoint {final} ({getattr(e, 'strerror', None) or e}); nothing was "
                        "half-written and the earlier checkpoints are intact: free some space and --resume") from None
    for old in list_checkpoints(run_dir)[:-keep_last]:
        remove_dir(old)
    return final


def remove_dir(path):
    """Delete a checkpoint: first rename it to a hidden name, so that a kill halfway through
    the deletion cannot leave a partial directory that still looks like a checkpoint."""
    doomed = path.with_name(f".{path.name}.deleting")
    path.rename(doomed)
    shutil.rmtree(doomed)


def remove_leftovers(root):
    """Hidden temporaries of a save or delete that was killed midway. One that is a link (a
    linked step dir renamed by an older version's rotation) loses the link only."""
    for p in root.glob(".step_*"):
        if p.suffix in (".tmp", ".deleting"):
            if p.is_symlink():
                p.unlink()
            else:
                shutil.rmtree(p, ignore_errors=True)


def list_checkpoints(run_dir):
    """Complete checkpoint directories of a run, oldest first (links skipped: module docstring)."""
    found = []
    for p in step_entries(run_dir):
        if not p.is_symlink() and p.is_dir() and all((p / f).is_file() for f in REQUIRED):
            found.append((int(STEP_DIR.fullmatch(p.name).group(1)), p))
    return [p for _, p in sorted(found)]


def linked_checkpoints(run_dir):
    """The step_ entries of a run's checkpoints/ that are symbolic links, sorted (skipped)."""
    return sorted(p for p in step_entries(run_dir) if p.is_symlink())


def step_entries(run_dir):
    """Everything in RUN_DIR/checkpoints/ named like a checkpoint, links included."""
    root = Path(run_dir) / "checkpoints"
    return [p for p in root.iterdir() if STEP_DIR.fullmatch(p.name)] if root.is_dir() else []


def find_latest(run_dir):
    """The newest complete checkpoint directory of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def run_dir_of(path):
    """The run directory a checkpoint belongs to (RUN/checkpoints/step_N -> RUN); any other
    folder (a run, a bare checkpoint directory) is its own."""
    path = Path(path)
    return path.parent.parent if path.parent.name == "checkpoints" else path


def resolve_checkpoint(path):
    """A checkpoint directory, or a run directory (-> its latest checkpoint) -> checkpoint dir."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint not found: {path}")
    if (path / "state.json").is_file():
        return path
    if (path / "checkpoints").is_dir() or (path / "config.json").is_file():
        latest = find_latest(path)
        if latest is None:
            raise UserError(f"run directory {path} has no complete checkpoint in {path / 'checkpoints'}")
        newer = [p.name for p in sorted(step_entries(path))
                 if not p.is_symlink() and p.is_dir() and p.name > latest.name]
        if newer:  # a file was removed by hand: say what is skipped rather than fall back in silence
            print(f"note: {', '.join(newer)} in {path / 'checkpoints'} lacks one of {', '.join(REQUIRED)}; "
                  f"using {latest.name}", file=sys.stderr)
        return latest
    raise UserError(f"{path} is neither a run directory nor a checkpoint directory (no state.json)")


def load_checkpoint(path, dtype=None, with_optimizer=True, backend="auto", finite=False):
    """Load a checkpoint directory, or a run directory's latest checkpoint -> Checkpoint.

    dtype: None keeps the saved precision; "float32"/"float64" converts.
    backend: which implementation runs the model (backend.py); it does not change the weights.
    with_optimizer=False skips optimizer.safetensors (sampling and evaluation need no moments).
    finite=True refuses weights that are nan or inf (a diverged run: nothing to sample or score)."""
    ckpt = resolve_checkpoint(path)
    state_file = ckpt / "state.json"
    state = read_state(state_file)
    try:
        cls = model_class(state.get("architecture", "gpt"))  # (checkpoints before the field: GPT)
        later = getattr(cls.config_class, "ADDED_WITH_DEFAULTS", ())  # older checkpoints lack these
        missing = sorted(f.name for f in fields(cls.config_class)
                         if f.name not in state["model_config"] and f.name not in later)
        if missing:  # a default would load another model whose weights may still fit the shapes
            raise ValueError(f"missing {', '.join(missing)}")
        config = cls.config_class.from_dict(state["model_config"])
    except (TypeError, ValueError) as e:
        raise UserError(f"{state_file} has an invalid architecture or model_config ({e})") from None
    model = cls(config, dtype=np.dtype(dtype or state["dtype"]), backend=backend)

    model_file = ckpt / "model.safetensors"
    tensors = read_tensors(model_file, MODEL_FORMAT)
    expected = {name: tuple(shape) for name, shape in model.shapes.items()}
    got = {name: tuple(t.shape) for name, t in tensors.items()}
    if got != expected:
        wrong = sorted(n for n in expected.keys() | got.keys() if got.get(n) != expected.get(n))
        details = ", ".join(f"{n}: file {got.get(n)}, config {expected.get(n)}" for n in wrong[:3])
        raise UserError(f"{model_file} does not match the model config in {state_file} ({details})")
    for name, t in tensors.items():
        if not np.issubdtype(t.dtype, np.floating):
            raise UserError(f"{model_file}: {name} holds {t.dtype} numbers, not floating point; it is not our weights file")
        model.params[name][...] = t
    if hasattr(model, "check_params"):  # invariants beyond shapes that a model's lookups rely on (n-gram tables)
        try:
            model.check_params()
        except ValueError as e:
            raise UserError(f"{model_file}: {e}; the checkpoint is corrupt: train the run again") from None
    if finite and not np.isfinite(model.flat_params).all():
        raise UserError(f"checkpoint {ckpt} has non-finite weights (nan or inf): the run diverged; use an earlier "
                        "checkpoint, or train again with a lower learning rate")
    try:
        model.dropout_rng.bit_generator.state = state["rng"]["dropout"]
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{state_file} has no valid dropout RNG state ({e!r})") from None

    optimizer_state = read_tensors(ckpt / "optimizer.safetensors", OPTIMIZER_FORMAT) if with_optimizer else None
    tokenizer = None
    if (ckpt / "tokenizer.json").is_file():
        from vintagelm.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(ckpt / "tokenizer.json")
        recorded = state.get("data", {}).get("tokenizer_fingerprint") if isinstance(state.get("data"), dict) else None
        if recorded is not None and tokenizer.fingerprint() != recorded:
            raise UserError(f"{ckpt / 'tokenizer.json'} is not the tokenizer this model was trained with "
                            f"(fingerprint {tokenizer.fingerprint()}, {state_file} says {recorded})")
    return Checkpoint(ckpt, state["step"], model, tokenizer, optimizer_state, state)


def read_state(file):
    """state.json -> dict, checked for format, version and the fields every loader needs."""
    state = read_json(file, what="checkpoint state")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{file} is not a vintagelm checkpoint state file (no \"format\": \"{FORMAT}\")")
    if state.get("version") != VERSION:
        raise UserError(f"{file} has checkpoint format version {state.get('version')!r}; this vintagelm "
                        f"reads version {VERSION} (train again, or use the vintagelm that wrote it)")
    step, dtype = state.get("step"), state.get("dtype")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UserError(f"{file} has an invalid step {step!r}")
    if dtype not in ("float32", "float64") or not isinstance(state.get("model_config"), dict):
        raise UserError(f"{file} lacks a valid dtype and model_config")
    return state


def read_tensors(file, fmt):
    """A safetensors file with our format metadata -> {name: array}; UserError naming the file."""
    if not file.is_file():
        raise UserError(f"{file} is missing")
    try:
        with safe_open(file, framework="np") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{file} is truncated or corrupt ({e}); delete its checkpoint directory "
                        "to fall back to the previous one") from None
    if meta.get("format") != fmt or meta.get("version") != FILE_VERSION:
        raise UserError(f"{file} is not a version {FILE_VERSION} {fmt} file (metadata {meta})")
    return tensors
