"""Checkpoints: round trip, keep-last-K, latest lookup, atomic writes under an injected
failure, and a clear error naming the file for every kind of damage.

    pytest tests/test_checkpoint.py -q
"""
import json

import numpy as np
import pytest

import vintagelm.checkpoint as checkpoint
from vintagelm import GPT, GPTConfig
from vintagelm.checkpoint import find_latest, list_checkpoints, load_checkpoint, save_checkpoint
from vintagelm.common import UserError
from vintagelm.optim import AdamW
from vintagelm.tokenizers import CharTokenizer

CONFIG = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.1)


def trained_pair(seed=0, dtype=np.float32):
    """A model and optimizer after two real steps, so every moment buffer is non-zero."""
    model = GPT(CONFIG, seed=seed, dtype=dtype)
    opt = AdamW(model.params, 1e-2, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    for _ in range(2):
        x, y = rng.integers(0, 20, (2, 2, 8))
        model.forward(x, y)
        opt.step(model.backward())
    return model, opt


def save(run_dir, step, model=None, opt=None, keep_last=3):
    if model is None:
        model, opt = trained_pair()
    tok = CharTokenizer.train("abcdefghij")
    return save_checkpoint(run_dir, step, model, opt, {"extra": {"k": 1}, "rng": {"data": {"x": 2}}}, tok, keep_last)


def test_round_trip_restores_params_optimizer_rng_and_tokenizer(tmp_path):
    model, opt = trained_pair(dtype=np.float64)
    model.dropout_rng.random(5)  # move the dropout stream away from its seed
    path = save(tmp_path, 7, model, opt)
    assert path == tmp_path / "checkpoints" / "step_000007"
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors",
                                                      "state.json", "tokenizer.json"]
    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.path == path and ck.model.dtype == np.float64
    np.testing.assert_array_equal(ck.model.flat_params, model.flat_params)
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(ck.optimizer_state[k], v)
    assert ck.model.dropout_rng.random() == model.dropout_rng.random()
    assert ck.state["extra"] == {"k": 1} and ck.state["rng"]["data"] == {"x": 2}
    assert ck.tokenizer.decode([0, 1]) == "ab"


def test_dtype_override_and_optimizer_skip(tmp_path):
    model, opt = trained_pair()
    ck = load_checkpoint(save(tmp_path, 1, model, opt), dtype="float64", with_optimizer=False)
    assert ck.model.dtype == np.float64 and ck.optimizer_state is None
    np.testing.assert_array_equal(ck.model.flat_params, model.flat_params.astype(np.float64))


def test_keeps_the_last_k_and_a_run_dir_means_its_latest(tmp_path):
    model, opt = trained_pair()
    for step in (5, 10, 15, 20):
        save(tmp_path, step, model, opt, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000015", "step_000020"]
    assert find_latest(tmp_path).name == "step_000020"
    assert load_checkpoint(tmp_path).step == 20


def test_find_latest_of_an_empty_run(tmp_path):
    assert find_latest(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        load_checkpoint(tmp_path)


def test_failure_mid_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, opt = trained_pair()
    save(tmp_path, 10, model, opt)
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step_000010").iterdir()}
    real_save_file, calls = checkpoint.save_file, []

    def failing_save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:  # model.safetensors is on disk, optimizer.safetensors is not
            raise OSError("disk full (injected)")
        real_save_file(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", failing_save_file)
    opt.step(model.grads)  # the state to be saved differs from the one on disk
    with pytest.raises(UserError, match=r"cannot write checkpoint .*disk full \(injected\).*earlier checkpoints are intact"):
        save(tmp_path, 20, model, opt)
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000010"]  # no stray dir
    assert find_latest(tmp_path).name == "step_000010"
    after = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints" / "step_000010").iterdir()}
    assert after == before
    load_checkpoint(tmp_path)


def test_leftovers_of_a_killed_save_are_ignored_then_removed(tmp_path):
    model, opt = trained_pair()
    save(tmp_path, 10, model, opt)
    # what a kill -9 during the next save leaves: a hidden temporary with some files
    nest = tmp_path / "checkpoints" / ".step_000020.abc123.tmp" / "step_000020"
    nest.mkdir(parents=True)
    (nest / "model.safetensors").write_bytes(b"partial")
    # and a step directory without its state.json (never produced by save, but must not count)
    (tmp_path / "checkpoints" / "step_000030").mkdir()
    assert find_latest(tmp_path).name == "step_000010"
    save(tmp_path, 11, model, opt)
    assert not (tmp_path / "checkpoints" / ".step_000020.abc123.tmp").exists()
    assert find_latest(tmp_path).name == "step_000011"


# ---------------------------------------------------------------- damage -> UserError naming the file
def damage_truncate(ckpt):
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return f


def damage_garbage_state(ckpt):
    f = ckpt / "state.json"
    f.write_bytes(b"\x00garbage{")
    return f


def edit_state(ckpt, edit):
    """Rewrite state.json after `edit(state)`; return its path."""
    f = ckpt / "state.json"
    state = json.loads(f.read_text())
    edit(state)
    f.write_text(json.dumps(state))
    return f


def damage_version(ckpt):
    return edit_state(ckpt, lambda s: s.update(version=99))


def damage_config_mismatch(ckpt):
    # state.json now describes a wider model than the tensors on disk
    edit_state(ckpt, lambda s: s["model_config"].update(n_embd=32))
    return ckpt / "model.safetensors"


def damage_garbage_optimizer(ckpt):
    f = ckpt / "optimizer.safetensors"
    f.write_bytes(b"not a safetensors file at all")
    return f


def damage_missing_tokenizer_field(ckpt):
    f = ckpt / "tokenizer.json"
    f.write_text('{"format": "vintagelm-tokenizer", "version": 1, "type": "char"}')
    return f


def damage_bad_rng(ckpt):
    return edit_state(ckpt, lambda s: s["rng"].update(dropout={"bit_generator": "PCG64", "state": "?"}))


def damage_wrong_metadata(ckpt):
    # a valid safetensors file that is not ours: the optimizer file in the model's place
    (ckpt / "model.safetensors").write_bytes((ckpt / "optimizer.safetensors").read_bytes())
    return ckpt / "model.safetensors"


@pytest.mark.parametrize("damage", [
    damage_truncate, damage_garbage_state, damage_version, damage_config_mismatch, damage_garbage_optimizer,
    damage_missing_tokenizer_field, damage_bad_rng, damage_wrong_metadata,
], ids=lambda f: f.__name__.removeprefix("damage_"))
def test_damaged_checkpoint_is_a_user_error_naming_the_file(tmp_path, damage):
    ckpt = save(tmp_path, 3)
    bad_file = damage(ckpt)
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path)
    assert str(bad_file) in str(e.value) and "\n" not in str(e.value)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(UserError, match="neither a run directory nor a checkpoint"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_from_before_the_modern_switches_loads_as_the_model_it_was(tmp_path):
    """A GPT-2 checkpoint written before GPTConfig gained norm_type, norm_eps, rope_theta,
    mlp_hidden, n_kv_head and qk_norm lacks them; their defaults are what it computed, so it
    loads with the same logits. Any other missing field is still refused."""
    model, opt = trained_pair()
    ckpt = save(tmp_path / "run", 2, model, opt)
    edit_state(ckpt, lambda s: [s["model_config"].pop(k) for k in GPTConfig.ADDED_WITH_DEFAULTS])
    loaded = load_checkpoint(ckpt).model
    x = np.arange(8).reshape(1, 8) % 20
    np.testing.assert_array_equal(loaded.eval().forward(x)[0], model.eval().forward(x)[0])
    edit_state(ckpt, lambda s: s["model_config"].pop("n_head"))
    with pytest.raises(UserError, match="missing n_head"):
        load_checkpoint(ckpt)
