"""Training configuration: one dataclass, three presets, TOML files and `--set key=value`.

Resolution order (later wins): the preset (`tiny` when none is named), then a TOML file with
`[model]` and `[train]` tables, then `--set key=value` overrides, then explicit CLI flags.
A key is a training field (`max_iters`) or a model field, with or without the `model.`
prefix (`model.n_layer` or `n_layer`; `vocab_size` alone is the training field). Every value
is checked against the field's type; an unknown key is a UserError listing the valid ones.

The model's vocabulary size is not configurable here: it is whatever the tokenizer of the
prepared dataset has (train.py fills it in). `vocab_size` is the BPE tokenizer's target.
This file reads no data and builds no model.
"""
import math
import tomllib
from dataclasses import dataclass, field, fields, replace

from vintagelm.backend import default_backend, resolve_backend
from vintagelm.common import UserError, regular_file
from vintagelm.model import GPTConfig
from vintagelm.architectures import model_class

DTYPES = ("float32", "float64")


def tiny_model():
    # small enough that `vintage train` with no arguments finishes in minutes on 2 CPU cores
    return GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


@dataclass
class TrainConfig:
    """Everything a training run needs. The defaults ARE the `tiny` preset."""

    model: GPTConfig = field(default_factory=tiny_model)  # the config class of `arch`
    arch: str = "gpt"  # the architecture (architectures.ARCHITECTURES): gpt, or the museum's ngram, mlp, rnn, lstm
    # data
    data: str = "builtin:shakespeare"  # a source spec (prepared once, then cached) or a prepared dataset folder
    tokenizer: str = "char"  # "char", "bpe" or a tokenizer file; used when preparing a source spec
    vocab_size: int = 0  # bpe target vocabulary (0: the data pipeline's default)
    out: str = ""  # run directory; "" means runs/<preset>
    # fine-tuning (`vintage finetune`)
    init_from: str = ""  # a checkpoint whose weights the run starts from ("" = fresh from the seed)
    skip_bad: bool = False  # chat data: skip bad JSONL lines (counted) instead of refusing the file
    # optimisation
    max_iters: int = 1000  # optimizer steps
    batch_size: int = 16  # sequences per step (B)
    grad_accum: int = 1  # micro-batches per step; each holds batch_size / grad_accum sequences
    learning_rate: float = 5e-3  # peak, after warm-up (tiny, 1000 steps: 2e-3 -> val 1.96, 3e-3 -> 1.89, 5e-3 -> 1.87)
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_iters: int = 50  # linear warm-up steps
    lr_decay_iters: int = 0  # step where the cosine reaches min_lr (0: max_iters)
    weight_decay: float = 0.1  # AdamW decoupled decay (matrices and embeddings only)
    beta1: float = 0.9
    beta2: float = 0.99  # 0.99 rather than 0.999: small batches give noisy second moments
    grad_clip: float = 1.0  # global-norm clip (0: off)
    # bookkeeping
    eval_interval: int = 100  # steps between validation estimates (and at the last step)
    eval_iters: int = 20  # validation batches per estimate
    log_interval: int = 10  # steps between progress-bar updates
    layer_norm_interval: int = 50  # steps between records of each layer's gradient norm (0: never)
    checkpoint_interval: int = 250  # steps between checkpoints (and at the last step)
    keep_checkpoints: int = 3  # most recent checkpoints kept on disk
    seed: int = 1337  # drives init, data order, dropout and the closing sample
    dtype: str = "float32"  # "float32" or "float64"
    backend: str = field(default_factory=default_backend)  # "reference" (nn/), "fast" (fast/, numba) or "auto"
    sample_tokens: int = 300  # tokens sampled at the end of training (0: none)
    max_bad_steps: int = 3  # consecutive non-finite steps before restoring the last checkpoint
    zero: int = 0  # under mpirun: 1 shards AdamW's moments over the ranks (ZeRO stage 1, dist.py)

    def to_dict(self):
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        return {"model": self.model.to_dict(), **d}

    @classmethod
    def from_dict(cls, d, source="config"):
        """Rebuild from `to_dict()` output, type-checking every value (UserError naming `source`)."""
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise UserError(f"{source} is not a training config (no 'model' table)")
        train = {k: v for k, v in d.items() if k != "model"}
        arch = train.get("arch", "gpt") if isinstance(train.get("arch", "gpt"), str) else "gpt"
        return build(cls(), table_values({"model": d["model"], "train": train}, source, saved=True, arch=arch))


# name -> overrides of the defaults (the dataclass defaults are `tiny`)
PRESETS = {
    "tiny": {},
    "small": {
        "model.block_size": 128, "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 192,
        "model.dropout": 0.1, "max_iters": 3000, "batch_size": 32, "learning_rate": 1e-3,
        "warmup_iters": 100, "eval_interval": 250, "eval_iters": 40, "checkpoint_interval": 500,
    },
    # nanoGPT's shakespeare_char recipe: hours on a laptop CPU
    "base": {
        "model.block_size": 256, "model.n_layer": 6, "model.n_head": 6, "model.n_embd": 384,
        "model.dropout": 0.2, "max_iters": 5000, "batch_size": 64, "learning_rate": 1e-3,
        "warmup_iters": 100, "eval_interval": 250, "eval_iters": 100, "checkpoint_interval": 500,
    },
}

# fields a --resume may change: how long to train, how to report and which implementation
# computes it (the backends do the same mathematics), never what is trained
RESUMABLE = (
    "max_iters", "eval_interval", "eval_iters", "log_interval", "layer_norm_interval", "checkpoint_interval",
    "keep_checkpoints", "sample_tokens", "max_bad_steps", "backend", "zero",
    "out",  # the folder being resumed, however it is spelled (runs/x, ./runs/x/, an absolute path)
)


def train_fields():
    return {f.name: f.type for f in fields(TrainConfig) if f.name != "model"}


def model_config_class(arch):
    """The config dataclass of architecture `arch` (architectures.ARCHITECTURES); a UserError naming the
    known ones for another name."""
    try:
        return model_class(arch).config_class
    except ValueError as e:
        raise UserError(f"--arch: {e}") from None


def model_fields(with_vocab=False, arch="gpt"):
    # the model's vocabulary comes from the tokenizer, so a user cannot set it
    return {f.name: f.type for f in fields(model_config_class(arch)) if with_vocab or f.name != "vocab_size"}


def valid_keys(arch="gpt"):
    return sorted(train_fields()) + sorted(f"model.{k}" for k in model_fields(arch=arch))


def unknown_key(key, arch="gpt"):
    hint = ""
    if key.endswith("vocab_size"):
        hint = "; the model's vocab_size comes from the tokenizer (bpe: set vocab_size)"
    return UserError(f"unknown config key {key!r} for arch {arch!r}{hint}; valid keys: {', '.join(valid_keys(arch))}")


def split_key(key, arch="gpt"):
    """'n_layer' / 'model.n_layer' -> ('model', 'n_layer', int); 'max_iters' -> ('train', 'max_iters', int)."""
    if key.startswith("model."):
        table, name = "model", key[len("model."):]
    else:
        table, name = ("train" if key in train_fields() else "model"), key
    types = model_fields(arch=arch) if table == "model" else train_fields()
    if name not in types:
        raise unknown_key(key, arch)
    return table, name, types[name]


def parse_text(text, typ, key):
    """A `--set` value (always a string) -> the field's type."""
    try:
        if typ is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        return typ(text)
    except ValueError:
        raise UserError(f"{key}={text!r}: expected {typ.__name__}") from None


def check_type(value, typ, key, source):
    """A TOML/JSON value -> the field's type; an int is accepted for a float field, a list
    (JSON has no tuples) for a tuple field."""
    if typ is tuple and isinstance(value, list):
        return tuple(value)
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ) and not isinstance(value, bool)
    if not ok:
        raise UserError(f"{source}: {key} = {value!r} should be {typ.__name__}")
    return float(value) if typ is float else value


def table_values(tables, source, saved=False, arch="gpt"):
    """Typed values {"model": {...}, "train": {...}} (a TOML file, a saved config), checked ->
    the same shape. Only a saved config (`saved`) may carry the model's vocab_size."""
    out = {"model": {}, "train": {}}
    for table, values in tables.items():
        if table not in out or not isinstance(values, dict):
            raise UserError(f"{source}: unexpected {table!r}; a config has a [model] and a [train] table")
        types = model_fields(with_vocab=saved, arch=arch) if table == "model" else train_fields()
        for name, value in values.items():
            key = f"model.{name}" if table == "model" else name
            if name not in types:
                raise unknown_key(key, arch)
            out[table][name] = check_type(value, types[name], key, source)
    return out


def key_values(flat, arch="gpt", lenient=False):
    """{"key": typed value} with keys as `--set` takes them -> {"model": {...}, "train": {...}}.
    lenient: leave out model keys the architecture does not have (a preset is written for the GPT)."""
    out = {"model": {}, "train": {}}
    for key, value in flat.items():
        if lenient and key.startswith("model.") and key[len("model."):] not in model_fields(arch=arch):
            continue
        table, name, _ = split_key(key, arch)
        out[table][name] = value
    return out


def build(cfg, *updates):
    """cfg with the updates applied in order; the model config is validated once, at the end,
    so a later update may fix what an earlier one left inconsistent (n_embd vs n_head). An
    update may change the architecture (train "arch"): the model then starts from its defaults."""
    arch = cfg.arch
    for u in updates:
        arch = u["train"].get("arch", arch)
    cls = model_config_class(arch)
    model, train = (cfg.model.to_dict() if type(cfg.model) is cls else {}), {}
    for u in updates:
        model.update(u["model"])
        train.update(u["train"])
    try:
        new_model = cls.from_dict(model)
    except ValueError as e:
        raise UserError(str(e)) from None
    return replace(cfg, model=new_model, **train)


def load_toml(path):
    path = regular_file(path, "config file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None
    except RecursionError:
        raise UserError(f"config file {path} is nested too deeply; a config has [model] and [train] tables") from None


def parse_override(item, arch="gpt"):
    """'key=value' -> (key, typed value)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected key=value")
    _, _, typ = split_key(key, arch)
    return key, parse_text(text.strip(), typ, key)


def chosen_arch(base, toml, overrides, flags):
    """The architecture a config will have: a CLI flag, else `--set arch=`, else the TOML file's
    [train] arch, else the base config's, else "gpt" (the later sources win, as in resolve_config)."""
    if flags.get("arch"):
        return flags["arch"]
    for item in reversed(overrides):
        key, sep, text = item.partition("=")
        if sep and key.strip() == "arch":
            return text.strip()
    if isinstance(toml.get("train"), dict) and isinstance(toml["train"].get("arch"), str):
        return toml["train"]["arch"]
    return base.arch if base is not None else "gpt"


def resolve_config(preset=None, config_file=None, overrides=(), base=None, **cli_flags):
    """Build the TrainConfig: preset (or `base`, e.g. a run's saved config), then the TOML
    file, then `--set` overrides, then CLI flags (None means "not given"). Validated."""
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    name = preset or "tiny"
    flags = {k: v for k, v in cli_flags.items() if v is not None}
    toml = load_toml(config_file) if config_file is not None else {}
    arch = chosen_arch(base, toml, overrides, flags)
    model_config_class(arch)  # an unknown architecture is an error now, naming the known ones
    updates = [] if base is not None else [key_values(PRESETS[name], arch, lenient=True),
                                           key_values({"out": f"runs/{name}"}, arch)]
    if config_file is not None:
        updates.append(table_values(toml, str(config_file), arch=arch))
    updates.append(key_values(dict(parse_override(item, arch) for item in overrides), arch))
    unknown = sorted(set(flags) - set(train_fields()))
    if unknown:
        raise TypeError(f"resolve_config got unknown flags {unknown}")
    updates.append({"model": {}, "train": flags})
    cfg = build(base or TrainConfig(), *updates)
    cfg = replace(cfg, backend=concrete_backend(cfg.backend))
    validate(cfg)
    return cfg


def concrete_backend(name):
    """"auto" / "reference" / "fast" -> "reference" or "fast", the name a run saves; a UserError
    for another name, or for "fast" where numba is not installed."""
    try:
        return resolve_backend(name)
    except ValueError as e:
        raise UserError(str(e)) from None


def validate(cfg):
    """Cross-field checks the types alone cannot express."""
    for name in ("max_iters", "batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval",
                 "checkpoint_interval", "keep_checkpoints", "max_bad_steps"):
        if getattr(cfg, name) < 1:
            raise UserError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    for name in ("warmup_iters", "lr_decay_iters", "vocab_size", "sample_tokens", "seed", "layer_norm_interval"):
        if getattr(cfg, name) < 0:
            raise UserError(f"{name} must not be negative, got {getattr(cfg, name)}")
    if cfg.zero not in (0, 1):
        raise UserError(f"zero must be 0 (off) or 1 (ZeRO stage 1: shard the optimizer state), got {cfg.zero}")
    if cfg.batch_size % cfg.grad_accum:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by grad_accum {cfg.grad_accum}")
    for name, value in (("learning_rate", cfg.learning_rate), ("min_lr", cfg.min_lr), ("beta1", cfg.beta1),
                        ("beta2", cfg.beta2), ("weight_decay", cfg.weight_decay), ("grad_clip", cfg.grad_clip)):
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
    if not 0.0 <= cfg.min_lr <= cfg.learning_rate:
        raise UserError(f"need 0 <= min_lr <= learning_rate, got {cfg.min_lr} and {cfg.learning_rate}")
    if not (0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0):
        raise UserError(f"beta1 and beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0:
        raise UserError("weight_decay and grad_clip must not be negative")
    if cfg.lr_decay_iters and cfg.lr_decay_iters <= cfg.warmup_iters:
        raise UserError(f"lr_decay_iters {cfg.lr_decay_iters} must exceed warmup_iters {cfg.warmup_iters}")
    if cfg.dtype not in DTYPES:
        raise UserError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if not cfg.out:
        raise UserError("out (the run directory) must not be empty")


def resume_conflicts(saved, new):
    """Fields (other than RESUMABLE ones) where `new` differs from the run's `saved` config,
    as ['field: run has X, now Y', ...]; the model's vocab_size is the tokenizer's, so skipped.
    Two architectures' model fields do not compare: another arch is that one difference."""
    if saved.arch != new.arch:
        return [f"arch: run has {saved.arch!r}, now {new.arch!r}"]
    old_d, new_d = saved.to_dict(), new.to_dict()
    old_m, new_m = old_d.pop("model"), new_d.pop("model")
    old_m.pop("vocab_size"), new_m.pop("vocab_size")
    diffs = [(f"model.{k}", old_m[k], new_m[k]) for k in old_m if old_m[k] != new_m[k]]
    diffs += [(k, old_d[k], new_d[k]) for k in old_d if k not in RESUMABLE and old_d[k] != new_d[k]]
    return [f"{k}: run has {a!r}, now {b!r}" for k, a, b in diffs]


def format_config(cfg):
    """The resolved config as aligned `key = value` lines, model fields first."""
    d = cfg.to_dict()
    rows = [(f"model.{k}", v) for k, v in d.pop("model").items()] + list(d.items())
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}} = {v!r}" for k, v in rows)
