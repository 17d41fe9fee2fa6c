"""Training configuration: one dataclass, four presets, TOML files and `--set key=value`.

Resolution order (later wins): the preset (`tiny` when none is named), then a TOML file with
`[model]` and `[train]` tables, then `--set key=value` overrides, then explicit CLI flags.
A key is a training field (`max_iters`) or a model field, with or without the `model.`
prefix (`model.n_layer` or `n_layer`; `vocab_size` alone is the training field). Every value
is checked against the field's type; an unknown key is a UserError listing the valid ones.
Every source is read whole before any value is used: the architecture (which decides what the
model's fields are) is the last `arch` set, typed like any other value, and then every value
is typed for it (apply_sources). The backend is resolved here, once: a run saves and uses
"reference" or "fast", never "auto".

The model's vocabulary size is not configurable here: it is whatever the tokenizer of the
prepared dataset has (train.py fills it in). `vocab_size` is the BPE tokenizer's target.
This file reads no data and builds no model.
"""
import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Callable, NamedTuple

from vintagelm.backend import default_backend, resolve_backend
from vintagelm.common import UserError, regular_file
from vintagelm.architectures import model_class
from vintagelm.model import GPTConfig

DTYPES = ("float32", "float64")
OPTIMIZERS = ("adamw", "muon")
# the optimizer an architecture trains with unless told: Muon for the GPT (so TrainConfig's default),
# AdamW for the museum's models (an LSTM with Muon, 400 steps: 2.819 bits per byte in 39 s, with
# AdamW 2.825 in 26 s: no better per step, and slower)
DEFAULT_OPTIMIZER = {"gpt": "muon"}


# today's block (issue 27): what `vintage train` trains unless a preset says otherwise. On the
# builtin Shakespeare, at the same wall-clock time as the GPT-2 block with AdamW (`--preset gpt2`),
# it reaches a clearly lower validation loss; `vintage lab modern` measures each piece alone.
MODERN_BLOCK = dict(pos="rope", norm_type="rms", activation="swiglu", n_kv_head=2, qk_norm=True, bias=False)
# the GPT-2 block the project trained by default until then (GPTConfig's own defaults)
GPT2_BLOCK = {"pos": "learned", "norm_type": "layer", "activation": "gelu", "n_kv_head": 0, "qk_norm": False,
              "bias": True}


def tiny_model():
    # small enough that `vintage train` with no arguments finishes in about a minute on 2 CPU cores
    return GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, **MODERN_BLOCK)


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
    max_iters: int = 550  # optimizer steps (tiny: about a minute on 2 cores; `--preset gpt2` takes 1000 in that time)
    batch_size: int = 16  # sequences per step (B)
    grad_accum: int = 1  # micro-batches per step; each holds batch_size / grad_accum sequences
    learning_rate: float = 5e-3  # AdamW's peak, after warm-up (gpt2, 1000 steps: 2e-3 -> val 1.96, 3e-3 -> 1.89,
    #   5e-3 -> 1.87); under Muon the rate of what AdamW still updates (embeddings, head, gains)
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_iters: int = 50  # linear warm-up steps
    lr_decay_iters: int = 0  # step where the cosine reaches min_lr (0: max_iters)
    weight_decay: float = 0.1  # AdamW decoupled decay (matrices and embeddings only)
    beta1: float = 0.9
    beta2: float = 0.99  # 0.99 rather than 0.999: small batches give noisy second moments
    grad_clip: float = 1.0  # global-norm clip (0: off)
    optimizer: str = DEFAULT_OPTIMIZER["gpt"]  # "muon": Muon for the hidden matrices, AdamW for the rest (muon.py); or "adamw"
    muon_lr: float = 0.01  # Muon's peak rate for its matrices, on learning_rate's schedule (lab modern: 0.01
    #   beat 0.02 on tiny)
    muon_momentum: float = 0.95  # Muon's momentum
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
        # a config saved before a field existed ran as that field's old default, not today's:
        # the model's missing fields take GPTConfig's own defaults (GPT-2's block, see its
        # ADDED_WITH_DEFAULTS), not the tiny preset's, and a run saved before Muon used AdamW
        train = {"optimizer": "adamw", **{k: v for k, v in d.items() if k != "model"}}
        checked = Source(toml_tables({"model": d["model"], "train": train}, source),
                         lambda v, typ, key: check_type(v, typ, key, source), saved=True)
        return apply_sources(replace(cls(), model=None), [checked])


# name -> overrides of the defaults (the dataclass defaults are `tiny`)
PRESETS = {
    "tiny": {},
    # tiny as it was trained before today's block: GPT-2's block and AdamW, 1000 steps
    "gpt2": {**{f"model.{k}": v for k, v in GPT2_BLOCK.items()}, "optimizer": "adamw", "max_iters": 1000},
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
        return typ(text.strip())
    except ValueError:
        raise UserError(f"{key}={text.strip()!r}: expected {typ.__name__}") from None


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


class Source(NamedTuple):
    """One source of settings, read into tables but not yet typed: which fields a model table
    may hold depends on the architecture, and that is decided by all the sources together."""

    tables: dict  # {"model": {key: value}, "train": {name: value}}, model keys as --set takes them
    convert: Callable  # (value, field type, key) -> the typed value, or a UserError
    lenient: bool = False  # leave out model keys the architecture lacks (a preset is written for the GPT)
    saved: bool = False  # a saved config: its model table holds the tokenizer's vocab_size too


def key_tables(flat):
    """{key: value} with keys as `--set` takes them -> {"model": {...}, "train": {...}}: "model.x"
    and any name that is not a training field go to the model (known to any architecture)."""
    tables = {"model": {}, "train": {}}
    for key, value in flat.items():
        tables["train" if key in train_fields() else "model"][key] = value
    return tables


def toml_tables(toml, source):
    """A TOML document -> its [model] and [train] tables, refusing anything else."""
    for table, values in toml.items():
        if table not in ("model", "train") or not isinstance(values, dict):
            raise UserError(f"{source}: unexpected {table!r}; a config has a [model] and a [train] table")
    return {"model": {f"model.{k}": v for k, v in toml.get("model", {}).items()}, "train": toml.get("train", {})}


def override_tables(overrides):
    """`--set key=value` items -> tables of their (untyped) texts."""
    flat = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value")
        flat[key.strip()] = text
    return key_tables(flat)


def typed(source, table, arch):
    """One table of a Source, every value converted to its field's type for architecture `arch`."""
    types = model_fields(with_vocab=source.saved, arch=arch) if table == "model" else train_fields()
    out = {}
    for key, value in source.tables[table].items():
        name = key.removeprefix("model.") if table == "model" else key
        if name in types:
            out[name] = source.convert(value, types[name], key)
        elif not (source.lenient and table == "model"):
            raise unknown_key(key, arch)
    return out


def apply_sources(cfg, sources):
    """cfg with the sources applied in order (later wins). The architecture is decided first (the
    last source that sets `arch`, its value typed like any other); then every value is typed
    for it, and the model config is validated once, at the end, so a later source may fix what
    an earlier one left inconsistent (n_embd vs n_head). Another architecture than cfg's, or a
    cfg without a model (a saved config: TrainConfig.from_dict), starts its model from that
    architecture's config class defaults, and another architecture also takes its own optimizer
    (DEFAULT_OPTIMIZER) unless a source names one."""
    arch = cfg.arch
    for source in sources:
        if "arch" in source.tables["train"]:
            arch = source.convert(source.tables["train"]["arch"], str, "arch")
    cls = model_config_class(arch)  # an unknown architecture is an error now, naming the known ones
    model, train = (cfg.model.to_dict() if type(cfg.model) is cls else {}), {}
    for source in sources:
        train.update(typed(source, "train", arch))
        model.update(typed(source, "model", arch))
    if arch != cfg.arch and "optimizer" not in train:
        train["optimizer"] = DEFAULT_OPTIMIZER.get(arch, "adamw")
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


def typed_already(value, typ, key):
    """The converter of sources whose values are Python values of the right type already."""
    return value


def resolve_config(preset=None, config_file=None, overrides=(), base=None, **cli_flags):
    """Build the TrainConfig: preset (or `base`, e.g. a run's saved config), then the TOML
    file, then `--set` overrides, then CLI flags (None means "not given"). Every source is read
    into tables, then typed and applied (apply_sources); then validated, the backend resolved."""
    if preset is not None and preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    name = preset or "tiny"
    flags = {k: v for k, v in cli_flags.items() if v is not None}
    unknown = sorted(set(flags) - set(train_fields()))
    if unknown:
        raise TypeError(f"resolve_config got unknown flags {unknown}")
    sources = [] if base is not None else [Source(key_tables({**PRESETS[name], "out": f"runs/{name}"}),
                                                  typed_already, lenient=True)]
    if config_file is not None:
        source = str(config_file)
        sources.append(Source(toml_tables(load_toml(config_file), source),
                              lambda v, typ, key: check_type(v, typ, key, source)))
    sources.append(Source(override_tables(overrides), parse_text))
    sources.append(Source({"model": {}, "train": flags}, typed_already))
    cfg = apply_sources(base or TrainConfig(), sources)
    cfg = replace(cfg, backend=concrete_backend(cfg.backend))
    validate(cfg)
    return cfg


def concrete_backend(name):
    """"auto" / "reference" / "fast" -> "reference" or "fast", the name a run saves and every
    part of it then uses as given; a UserError for another name, or for "fast" where numba is
    not installed. (The one resolution of a run's backend: backend.resolve_backend.)"""
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
    if cfg.optimizer not in OPTIMIZERS:
        raise UserError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.batch_size % cfg.grad_accum:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by grad_accum {cfg.grad_accum}")
    for name, value in (("learning_rate", cfg.learning_rate), ("min_lr", cfg.min_lr), ("beta1", cfg.beta1),
                        ("beta2", cfg.beta2), ("weight_decay", cfg.weight_decay), ("grad_clip", cfg.grad_clip),
                        ("muon_lr", cfg.muon_lr), ("muon_momentum", cfg.muon_momentum)):
        if not math.isfinite(value):
            raise UserError(f"{name} must be a finite number, got {value}")
    if not 0.0 <= cfg.min_lr <= cfg.learning_rate:
        raise UserError(f"need 0 <= min_lr <= learning_rate, got {cfg.min_lr} and {cfg.learning_rate}")
    if not (0.0 <= cfg.beta1 < 1.0 and 0.0 <= cfg.beta2 < 1.0):
        raise UserError(f"beta1 and beta2 must be in [0, 1), got {cfg.beta1} and {cfg.beta2}")
    if cfg.weight_decay < 0 or cfg.grad_clip < 0 or cfg.muon_lr < 0:
        raise UserError("weight_decay, grad_clip and muon_lr must not be negative")
    if not 0.0 <= cfg.muon_momentum < 1.0:
        raise UserError(f"muon_momentum must be in [0, 1), got {cfg.muon_momentum}")
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
