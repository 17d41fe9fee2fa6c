"""The training loop: gradient accumulation, the training step, exact resume (after a stop
and after Ctrl-C), optimizer=muon, the non-finite guard, the initial-loss check, run-directory
errors and dataset caching.
Everything runs on a one-layer model over a small text prepared in a temporary folder.

    pytest tests/test_train.py -q
"""
import json
import signal
from dataclasses import replace

import numpy as np
import pytest

from verse import WORDS
from vintagelm import GPT, GPTConfig
from vintagelm.checkpoint import find_latest, load_checkpoint
from vintagelm.cli import main
from vintagelm.common import UserError
from vintagelm.train_config import resolve_config
from vintagelm.data.prepare import prepare_dataset
from vintagelm.data.resolve import resolve_dataset
from vintagelm.evaluate import evaluate_split
from vintagelm.muon import muon_params
from vintagelm.optim import AdamW, clip_grad_norm
from vintagelm.train import Trainer, accumulate_gradients, train, training_step



def write_corpus(path, n_lines=400, seed=0):
    """Deterministic verse-like text: enough tokens for many windows of 16."""
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, rng.integers(4, 9))).capitalize() + "," for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    # prepared source specs are cached under $VINTAGELM_CACHE: keep them in the test's folder
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_dataset([str(write_corpus(root / "verse.txt"))], "char", root / "prepared", progress=False)
    return root / "prepared"


def tiny_config(out, data, **overrides):
    values = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, dropout=0.1, max_iters=20, batch_size=4,
                  eval_interval=3, eval_iters=2, checkpoint_interval=5, keep_checkpoints=10, warmup_iters=2,
                  lr_decay_iters=20, learning_rate=1e-2, min_lr=1e-3, sample_tokens=0)
    values.update(overrides)
    return resolve_config(overrides=[f"{k}={v}" for k, v in values.items()], data=str(data), out=str(out))


def metrics(run_dir):
    """metrics.jsonl as {step: row}, the last row of a step winning."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def quiet(msg):
    pass


# ---------------------------------------------------------------- gradient accumulation
@pytest.mark.parametrize("k", [2, 4])
def test_k_micro_batches_give_the_gradient_of_one_full_batch(k):
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8), seed=3, dtype=np.float64)
    x, y = np.random.default_rng(0).integers(0, 11, (2, 8, 6))  # B = 8
    _, full_loss = model.forward(x, y)
    model.backward()
    full = model.flat_grads.copy()
    micro = list(zip(np.split(x, k), np.split(y, k)))  # k x (8/k, 6)
    loss = accumulate_gradients(model, micro)
    assert loss == pytest.approx(full_loss, rel=1e-13)
    np.testing.assert_allclose(model.flat_grads, full, rtol=1e-10, atol=1e-15)



def test_training_step_is_accumulate_clip_and_adamw():
    config = GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8)
    x, y = np.random.default_rng(0).integers(0, 11, (2, 4, 6))  # B = 4
    micro = list(zip(np.split(x, 2), np.split(y, 2)))  # 2 x (2, 6)
    stepped, by_hand = (GPT(config, seed=3, dtype=np.float64, backend="reference") for _ in range(2))
    opt = AdamW(stepped.params, 1e-2, weight_decay=0.1, backend="reference")
    loss, norm, ok = training_step(stepped, opt, micro, lr=1e-2, grad_clip=0.5)
    assert ok and norm > 0.5  # the clip is active
    assert loss == accumulate_gradients(by_hand, micro)
    assert clip_grad_norm(by_hand.grads, 0.5) == norm
    AdamW(by_hand.params, 1e-2, weight_decay=0.1, backend="reference").step(by_hand.grads, lr=1e-2)
    np.testing.assert_allclose(stepped.flat_params, by_hand.flat_params, rtol=1e-12, atol=1e-15)


def test_training_step_skips_a_non_finite_loss():
    model = GPT(GPTConfig(vocab_size=11, block_size=6, n_layer=1, n_head=2, n_embd=8), seed=3, backend="reference")
    model.params["wte.weight"][0, 0] = np.nan  # token 0's embedding: every forward below reads it
    before = model.flat_params.copy()
    x, y = np.zeros((2, 2, 6), dtype=np.int64)
    loss, norm, ok = training_step(model, AdamW(model.params, 1e-2, backend="reference"), [(x, y)], 1e-2, 1.0)
    assert not ok and not np.isfinite(loss)
    np.testing.assert_array_equal(model.flat_params, before)  # no update (nan equals nan here)

def test_training_with_accumulation_follows_the_same_trajectory(tmp_path, dataset_dir):
    runs = {}
    for k in (1, 4):
        cfg = tiny_config(tmp_path / f"k{k}", dataset_dir, dropout=0.0, grad_accum=k, max_iters=6, dtype="float64")
        train(cfg, progress=False, say=quiet)
        runs[k] = [metrics(tmp_path / f"k{k}")[s]["loss"] for s in range(1, 7)]
    np.testing.assert_allclose(runs[4], runs[1], rtol=1e-10)


# ---------------------------------------------------------------- exact resume
def stop_by_ctrl_c_at(monkeypatch, step):
    """Deliver a real SIGINT right after `step` has been trained (what Ctrl-C does)."""
    real = Trainer.train_step

    def train_step(self):
        row = real(self)
        if self.step == step:
            signal.raise_signal(signal.SIGINT)
        return row

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize("how", ["max_iters", "ctrl_c"])
def test_resume_continues_bit_for_bit(tmp_path, dataset_dir, monkeypatch, how):
    # dropout > 0, so the dropout RNG's state matters; evaluations every 3 steps in between
    straight = tiny_config(tmp_path / "straight", dataset_dir)
    train(straight, progress=False, say=quiet)

    split = tiny_config(tmp_path / "split", dataset_dir)
    if how == "max_iters":
        first = train(replace(split, max_iters=10), progress=False, say=quiet)
    else:
        # as in an interactive terminal, whatever started pytest (a background job ignores it)
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with monkeypatch.context() as m:
                stop_by_ctrl_c_at(m, 10)
                first = train(split, progress=False, say=quiet)
            assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
        finally:
            signal.signal(signal.SIGINT, before)
    assert first.step == 10 and first.interrupted == (how == "ctrl_c")
    assert find_latest(tmp_path / "split").name == "step_000010"
    second = train(split, resume=True, progress=False, say=quiet)
    assert second.step == 20 and not second.interrupted

    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]  # identical floats, not approximately
    assert [a[s].get("val_loss") for s in a if s != 10] == [b[s].get("val_loss") for s in a if s != 10]
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "straight").model.flat_params,
                                  load_checkpoint(tmp_path / "split").model.flat_params)


def test_an_ignored_sigint_stays_ignored(tmp_path, dataset_dir, monkeypatch):
    """Started with SIGINT ignored (nohup, a background job), a SIGINT does not stop training."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop_by_ctrl_c_at(monkeypatch, 2)
        result = train(tiny_config(tmp_path / "run", dataset_dir, max_iters=4), progress=False, say=quiet)
        assert result.step == 4 and not result.interrupted
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


def test_metrics_rows_have_the_promised_fields(tmp_path, dataset_dir):
    train(tiny_config(tmp_path / "run", dataset_dir, max_iters=6), progress=False, say=quiet)
    rows = metrics(tmp_path / "run")
    for row in rows.values():
        assert {"step", "loss", "lr", "tokens_per_s"} <= set(row)
    assert [s for s, r in rows.items() if "val_loss" in r] == [3, 6]
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["max_iters"] == 6
    assert saved["model"]["vocab_size"] == load_checkpoint(tmp_path / "run").model.config.vocab_size
    assert (tmp_path / "run" / "tokenizer.json").is_file()


def test_same_seed_same_run_other_seed_other_run(tmp_path, dataset_dir):
    losses = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        train(tiny_config(tmp_path / name, dataset_dir, max_iters=4, seed=seed), progress=False, say=quiet)
        losses[name] = [r["loss"] for r in metrics(tmp_path / name).values()]
    assert losses["a"] == losses["b"] != losses["c"]


# ---------------------------------------------------------------- optimizer=muon
def vintage_train(out, data, *extra):
    """`vintage train` of the tiny model of tiny_config -> its exit status."""
    settings = ["n_layer=1", "n_head=2", "n_embd=16", "block_size=16", "dropout=0.1", "eval_interval=3",
                "eval_iters=2", "checkpoint_interval=5", "warmup_iters=2", "lr_decay_iters=12", "sample_tokens=0"]
    return main(["--threads", "1", "train", "--data", str(data), "--out", str(out), "--batch-size", "4",
                 "--no-progress", *(a for kv in settings for a in ("--set", kv)), *extra])


def test_muon_trains_and_resumes_bit_for_bit(tmp_path, dataset_dir):
    assert vintage_train(tmp_path / "straight", dataset_dir, "--max-iters", "12", "--set", "optimizer=muon") == 0
    assert vintage_train(tmp_path / "split", dataset_dir, "--max-iters", "7", "--set", "optimizer=muon") == 0
    assert main(["--threads", "1", "train", "--resume", "--out", str(tmp_path / "split"), "--max-iters", "12",
                 "--no-progress"]) == 0
    a, b = metrics(tmp_path / "straight"), metrics(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 13))
    assert [a[s]["loss"] for s in a] == [b[s]["loss"] for s in a]  # identical floats
    straight, split = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    np.testing.assert_array_equal(straight.model.flat_params, split.model.flat_params)
    # Muon's state was saved and restored: a momentum buffer for every hidden matrix, and only those
    matrices = muon_params(straight.model.shapes)
    buffers = {k[len("momentum_buffer."):] for k in split.optimizer_state if k.startswith("momentum_buffer.")}
    assert matrices and buffers == set(matrices)
    for name in matrices:
        assert np.abs(split.optimizer_state[f"momentum_buffer.{name}"]).max() > 0
        np.testing.assert_array_equal(split.optimizer_state[f"momentum_buffer.{name}"],
                                      straight.optimizer_state[f"momentum_buffer.{name}"])
    # and it is not AdamW's run under another name
    assert vintage_train(tmp_path / "adamw", dataset_dir, "--max-iters", "12", "--set", "optimizer=adamw") == 0
    assert metrics(tmp_path / "adamw")[12]["loss"] != a[12]["loss"]


def test_muon_settings_are_checked(tmp_path, dataset_dir, capsys):
    assert vintage_train(tmp_path / "sgd", dataset_dir, "--set", "optimizer=sgd") == 2
    assert "optimizer must be one of adamw, muon, got 'sgd'" in capsys.readouterr().err
    assert not (tmp_path / "sgd").exists()
    # the optimizer is part of what a run is: a resume may not change it
    assert vintage_train(tmp_path / "run", dataset_dir, "--max-iters", "2", "--set", "optimizer=muon") == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--max-iters", "4", "--no-progress",
                 "--set", "optimizer=adamw"]) == 2
    assert "optimizer: run has 'muon', now 'adamw'" in capsys.readouterr().err


# ---------------------------------------------------------------- non-finite guard
def poison(monkeypatch, what, bad_calls):
    """Make the training forward (loss) or backward (gradient) non-finite on the given calls,
    counted over training steps only (evaluation runs with model.training off)."""
    calls = {"n": 0}
    real_forward, real_backward = GPT.forward, GPT.backward

    def forward(self, idx, targets=None, kv_cache=None):
        logits, loss = real_forward(self, idx, targets, kv_cache)
        if self.training and targets is not None:
            calls["n"] += 1
            if what == "loss" and calls["n"] in bad_calls:
                loss = float("nan")
        return logits, loss

    def backward(self, accumulate=False):
        grads = real_backward(self, accumulate)
        if what == "gradient" and calls["n"] in bad_calls:
            self.flat_grads[7] = np.inf
        return grads

    monkeypatch.setattr(GPT, "forward", forward)
    monkeypatch.setattr(GPT, "backward", backward)


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_a_non_finite_step_is_skipped_and_logged(tmp_path, dataset_dir, monkeypatch, what):
    poison(monkeypatch, what, {3})
    out = []
    cfg = tiny_config(tmp_path / "run", dataset_dir, max_iters=5, checkpoint_interval=1)
    train(cfg, progress=False, say=out.append)
    rows = metrics(tmp_path / "run")
    assert [s for s, r in rows.items() if r.get("skipped")] == [3]
    assert rows[3]["grad_norm"] is None and (rows[3]["loss"] is None) == (what == "loss")
    assert any(f"non-finite {what}" in line for line in out)
    ck = tmp_path / "run" / "checkpoints"
    np.testing.assert_array_equal(load_checkpoint(ck / "step_000002").model.flat_params,
                                  load_checkpoint(ck / "step_000003").model.flat_params)
    assert int(load_checkpoint(ck / "step_000005").optimizer_state["t"]) == 4  # four real updates


def test_repeated_non_finite_steps_restore_the_checkpoint_and_halve_the_lr(tmp_path, dataset_dir, monkeypatch):
    poison(monkeypatch, "loss", {7, 8, 9})
    out = []
    cfg = tiny_config(tmp_path / "run", dataset_dir, max_iters=12, checkpoint_interval=5, max_bad_steps=3)
    result = train(cfg, progress=False, say=out.append)
    assert result.step == 12
    assert any("restored checkpoint" in line and "step_000005" in line and "halved" in line for line in out)
    raw = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in raw] == [*range(1, 10), *range(6, 13)]  # steps 6.. are trained again
    assert raw[8]["restored_step"] == 5 and raw[8]["lr_scale"] == 0.5
    # the second pass over steps 6..12 runs at half the schedule
    trainer = Trainer(cfg, resolve_dataset(str(dataset_dir)), say=quiet)
    for row in raw[9:]:
        assert row["lr"] == pytest.approx(0.5 * trainer.lr(row["step"] - 1))
    state = load_checkpoint(tmp_path / "run").state
    assert state["train"]["lr_scale"] == 0.5  # persisted: a resume keeps the lower rate


def test_non_finite_before_any_checkpoint_restarts_from_the_seed(tmp_path, dataset_dir, monkeypatch):
    poison(monkeypatch, "loss", {1, 2})
    out = []
    cfg = tiny_config(tmp_path / "run", dataset_dir, max_iters=3, max_bad_steps=2)
    train(cfg, progress=False, say=out.append)
    assert any("initial weights" in line for line in out)
    assert load_checkpoint(tmp_path / "run").state["train"]["lr_scale"] == 0.5


# ---------------------------------------------------------------- initial loss
def test_initial_loss_is_compared_with_ln_vocab(tmp_path, dataset_dir):
    out = []
    train(tiny_config(tmp_path / "good", dataset_dir, max_iters=1), progress=False, say=out.append)
    assert any(line.startswith("step 0: initial loss") and "ln(vocab_size" in line for line in out)
    assert not any("warning" in line for line in out)
    out.clear()
    train(tiny_config(tmp_path / "bad", dataset_dir, max_iters=1, init="normal"), progress=False, say=out.append)
    assert any("warning" in line and "10%" in line for line in out)


# ---------------------------------------------------------------- run directory errors
def test_run_directory_errors(tmp_path, dataset_dir):
    cfg = tiny_config(tmp_path / "run", dataset_dir, max_iters=2)
    with pytest.raises(UserError, match="no checkpoint to resume"):
        train(cfg, resume=True, progress=False, say=quiet)
    train(cfg, progress=False, say=quiet)
    with pytest.raises(UserError, match="already holds a run.*--resume"):
        train(cfg, progress=False, say=quiet)
    other = tiny_config(tmp_path / "run", dataset_dir, max_iters=4, n_embd=32)
    with pytest.raises(UserError, match="model.n_embd: run has 16, now 32"):
        train(other, resume=True, progress=False, say=quiet)
    assert train(replace(cfg, max_iters=4), resume=True, progress=False, say=quiet).step == 4  # allowed change


def test_a_run_that_stops_before_writing_leaves_no_folder(tmp_path, dataset_dir):
    """The lock comes first (it creates the folder); a run refused after it, here for data too
    short for its block, removes the folder it made and nothing else."""
    cfg = tiny_config(tmp_path / "runs" / "new", dataset_dir, block_size=5000)
    with pytest.raises(UserError, match="fewer than block_size"):
        train(cfg, progress=False, say=quiet)
    assert not (tmp_path / "runs" / "new").exists()
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    with pytest.raises(UserError, match="fewer than block_size"):
        train(replace(cfg, out=str(tmp_path / "runs" / "mine")), progress=False, say=quiet)
    assert (tmp_path / "runs" / "mine").is_dir()  # not made by the run: kept, with its lock


# ---------------------------------------------------------------- data
def test_a_source_spec_is_prepared_once_then_cached(tmp_path):
    text = write_corpus(tmp_path / "t.txt", n_lines=50)
    logs = []
    first = resolve_dataset(str(text), "char", log=logs.append, progress=False)
    second = resolve_dataset(str(text), "char", log=logs.append, progress=False)
    assert first.path == second.path and str(first.path).startswith(str(tmp_path / "cache"))
    assert "preparing" in logs[0] and "cached" in logs[1]
    assert resolve_dataset(str(first.path)).path == first.path  # a prepared folder is used as is


def test_evaluate_split_counts_every_window_once(dataset_dir):
    data = resolve_dataset(str(dataset_dir))
    model = GPT(GPTConfig(vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16),
                seed=1, dtype=np.float64)
    r = evaluate_split(model, data.val, data.tokenizer, batch_size=5)
    n_windows = (len(data.val) - 1) // 16
    assert r["tokens"] == n_windows * 16
    # the reference: the model's own mean cross-entropy over the same windows in one batch
    idx = np.arange(n_windows)[:, None] * 16 + np.arange(17)  # (n_windows, 17)
    windows = np.asarray(data.val)[idx].astype(np.int64)
    _, loss = model.forward(windows[:, :-1], windows[:, 1:])
    assert r["loss"] == pytest.approx(loss, rel=1e-12)
    assert r["perplexity"] == pytest.approx(np.exp(loss))
    # ASCII text: one byte per ordinary character; <|endoftext|> counts no bytes
    eot = data.tokenizer.eot_id
    assert r["bytes"] == int((windows[:, 1:] != eot).sum())
    assert r["bits_per_byte"] > 0
