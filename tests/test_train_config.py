"""Training config: presets, TOML, --set, CLI flags, type checks, round trip, resume conflicts,
the backend field.

    pytest tests/test_config.py -q
"""
import argparse
import json
from dataclasses import replace

import pytest

from vintagelm import backend
from vintagelm.backend import default_backend
from vintagelm.cli import main
from vintagelm.common import UserError
from vintagelm.model import GPTConfig
from vintagelm.train_config import PRESETS, RESUMABLE, TrainConfig, format_config, resolve_config, resume_conflicts


def write_toml(tmp_path, text):
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_tiny_preset():
    cfg = resolve_config()
    assert PRESETS["tiny"] == {}
    assert cfg == replace(TrainConfig(), out="runs/tiny")


@pytest.mark.parametrize("preset", ["small", "base"])
def test_presets_change_the_model_and_name_the_run_dir(preset):
    cfg = resolve_config(preset)
    assert cfg.out == f"runs/{preset}"
    assert cfg.model.n_layer == PRESETS[preset]["model.n_layer"]
    assert cfg.model.n_embd == PRESETS[preset]["model.n_embd"]


def test_base_preset_is_6_layers_6_heads_384_block_256():
    m = resolve_config("base").model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size) == (6, 6, 384, 256)


def test_resolution_order_preset_toml_set_flags(tmp_path):
    toml = write_toml(tmp_path, "[model]\nn_layer = 2\nn_embd = 64\n[train]\nmax_iters = 7\nbatch_size = 8\n")
    cfg = resolve_config("small", toml, ["max_iters=9", "model.n_embd=96", "n_head=3", "n_kv_head=1", "dropout=0.25"],
                         batch_size=4)
    assert cfg.model.n_layer == 2  # TOML over the preset
    assert cfg.max_iters == 9  # --set over TOML
    assert (cfg.model.n_embd, cfg.model.n_head, cfg.model.dropout) == (96, 3, 0.25)  # bare model keys work
    assert cfg.batch_size == 4  # CLI flag over TOML
    assert cfg.model.block_size == PRESETS["small"]["model.block_size"]  # untouched preset value


def test_none_cli_flags_mean_not_given():
    assert resolve_config(max_iters=None, seed=None).max_iters == TrainConfig().max_iters


@pytest.mark.parametrize("item,field,value", [
    ("grad_clip=0", "grad_clip", 0.0),  # int text for a float field
    ("learning_rate=3e-4", "learning_rate", 3e-4),
    ("model.bias=false", "bias", False),
    ("tie_weights=YES", "tie_weights", True),
    ("tokenizer=bpe", "tokenizer", "bpe"),
])
def test_set_values_are_parsed_to_the_field_type(item, field, value):
    cfg = resolve_config(overrides=[item])
    got = getattr(cfg.model, field) if hasattr(cfg.model, field) else getattr(cfg, field)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("item", ["max_iters=1.5", "bias=maybe", "batch_size=", "learning_rate=fast"])
def test_set_rejects_values_of_the_wrong_type(item):
    with pytest.raises(UserError, match="expected"):
        resolve_config(overrides=[item])


def test_unknown_set_key_lists_the_valid_keys():
    with pytest.raises(UserError) as e:
        resolve_config(overrides=["n_layers=3"])
    msg = str(e.value)
    assert "'n_layers'" in msg and "max_iters" in msg and "model.n_layer" in msg and "\n" not in msg


def test_model_vocab_size_is_not_settable_and_says_why():
    with pytest.raises(UserError, match="comes from the tokenizer"):
        resolve_config(overrides=["model.vocab_size=100"])
    assert resolve_config(overrides=["vocab_size=512"]).vocab_size == 512  # the bpe target is


@pytest.mark.parametrize("item", ["noequals", "=3"])
def test_set_needs_key_equals_value(item):
    with pytest.raises(UserError, match="key=value"):
        resolve_config(overrides=[item])


@pytest.mark.parametrize("text,match", [
    ("[train]\nmax_iters = 'many'\n", "should be int"),
    ("[train]\nmax_iters = true\n", "should be int"),
    ("[model]\nbias = 1\n", "should be bool"),
    ("[train]\nn_layer = 2\n", "unknown config key"),
    ("[optim]\nlr = 1\n", r"\[model\] and a \[train\] table"),
    ("max_iters = 3\n", r"\[model\] and a \[train\] table"),
    ("[train\n", "not valid TOML"),
])
def test_toml_errors(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        resolve_config(config_file=write_toml(tmp_path, text))


def test_missing_toml_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        resolve_config(config_file=tmp_path / "nope.toml")


@pytest.mark.parametrize("items,match", [
    (["batch_size=10", "grad_accum=3"], "divisible"),
    (["n_embd=30", "n_head=4"], "divisible by n_head"),
    (["max_iters=0"], "at least 1"),
    (["min_lr=0.1"], "min_lr"),
    (["dtype=float16"], "dtype"),
    (["warmup_iters=100", "lr_decay_iters=50"], "lr_decay_iters"),
])
def test_invalid_combinations(items, match):
    with pytest.raises(UserError, match=match):
        resolve_config(overrides=items)


def test_unknown_preset():
    with pytest.raises(UserError, match="tiny, gpt2, small, base"):
        resolve_config("huge")


def test_round_trip_through_dict_keeps_the_model_vocab():
    cfg = resolve_config("small", overrides=["dropout=0.3"])
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=77))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_names_the_source_on_bad_values():
    d = TrainConfig().to_dict()
    d["seed"] = "x"
    with pytest.raises(UserError, match="state.json: seed"):
        TrainConfig.from_dict(d, source="state.json")


def test_resume_conflicts_ignore_length_and_logging_but_not_the_model():
    saved = resolve_config()
    ok = resolve_config(max_iters=5000, overrides=["eval_interval=7", "keep_checkpoints=1"])
    assert resume_conflicts(saved, ok) == []
    bad = resolve_config(overrides=["n_layer=2", "learning_rate=0.01"])
    conflicts = resume_conflicts(saved, bad)
    assert any(c.startswith("model.n_layer: run has 4, now 2") for c in conflicts)
    assert any(c.startswith("learning_rate") for c in conflicts)


def test_format_config_lists_every_field():
    text = format_config(resolve_config())
    assert "model.n_layer" in text and "max_bad_steps" in text


# ---------------------------------------------------------------- backend
def test_the_default_backend_is_resolved_and_saved():
    cfg = resolve_config()
    assert cfg.backend == default_backend() in ("reference", "fast")
    assert cfg.to_dict()["backend"] == cfg.backend
    assert resolve_config(overrides=["backend=auto"]).backend == default_backend()  # never saved as "auto"


def test_set_backend_reference_is_saved_in_config_json(tmp_path, monkeypatch):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    text = tmp_path / "verse.txt"
    text.write_text("Shall I compare thee to a summer's day?\n" * 40, encoding="utf-8")
    run = tmp_path / "run"
    assert main(["train", "--data", str(text), "--out", str(run), "--set", "backend=reference",
                 "--set", "n_layer=1", "--set", "n_head=2", "--set", "n_embd=16", "--set", "block_size=8",
                 "--set", "sample_tokens=0", "--set", "eval_iters=1", "--max-iters", "1", "--batch-size", "2",
                 "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["backend"] == "reference"


def test_an_unknown_backend_names_the_valid_ones():
    with pytest.raises(UserError, match="auto, reference, fast; got 'gpu'"):
        resolve_config(overrides=["backend=gpu"])


def test_backend_fast_without_numba_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(backend, "fast_available", lambda: False)
    with pytest.raises(UserError, match=r"pip install 'vintagelm\[fast\]'"):
        resolve_config(overrides=["backend=fast"])
    assert resolve_config().backend == "reference"


def test_resume_may_change_the_backend():
    saved = resolve_config(overrides=["backend=reference"])
    assert "backend" in RESUMABLE
    assert resume_conflicts(saved, replace(saved, backend="fast")) == []


def test_the_default_is_todays_block_and_the_gpt2_preset_is_the_old_default():
    """`vintage train` trains today's block with Muon; `--preset gpt2` is what it trained before
    (GPTConfig's own GPT-2 defaults at the tiny sizes, AdamW, 1000 steps)."""
    from vintagelm.commands import train as train_command

    new, old = resolve_config(), resolve_config("gpt2")
    m = new.model
    assert (m.pos, m.norm_type, m.activation, m.kv_heads, m.qk_norm, m.bias, new.optimizer) == \
        ("rope", "rms", "swiglu", 2, True, False, "muon")
    assert old.model == GPTConfig(vocab_size=m.vocab_size, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
    assert (old.optimizer, old.max_iters, old.out) == ("adamw", 1000, "runs/gpt2")
    # the museum's models keep AdamW unless told (Muon was no better per step for an LSTM, and slower)
    for arch in ("ngram", "mlp", "rnn", "lstm"):
        assert resolve_config(arch=arch).optimizer == "adamw"
        assert resolve_config(overrides=["optimizer=muon"], arch=arch).optimizer == "muon"
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    assert next(a for a in parser._actions if a.dest == "preset").choices == list(PRESETS)
