"""`vintage doctor RUN`: each rule names what it sees in a run made to show it (and only that),
a healthy run gets a clean bill, and a real run trained here is read as well.

    pytest tests/test_doctor.py -q
"""
import json
import math

import numpy as np
import pytest

from vintagelm.cli import main
from vintagelm.doctor import diagnose
from vintagelm.run_metrics import load_run

V = 65


def write_run(folder, losses, val=None, config=None, **columns):
    """A run directory with config.json and metrics.jsonl from per-step series.
    val: {step: val_loss}; columns: name -> per-step list (grad_norm, tokens_per_s, resumed, ...)."""
    folder.mkdir(parents=True)
    cfg = {"model": {"vocab_size": V, "n_layer": 4, "norm": "pre", "init": "gpt2"}, "learning_rate": 1e-3,
           "warmup_iters": 10, "grad_clip": 1.0, **(config or {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    rows = []
    for i, loss in enumerate(losses):
        row = {"step": i + 1, "loss": None if loss is None or not math.isfinite(loss) else loss, "lr": 1e-3,
               "grad_norm": 1.0, "tokens_per_s": 10000.0}
        row.update({k: v[i] for k, v in columns.items() if v[i] is not None})
        if val and i + 1 in val:
            row["val_loss"] = val[i + 1]
        rows.append(json.dumps(row))
    (folder / "metrics.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def falling(n, start=math.log(V), end=1.5, seed=0):
    rng = np.random.default_rng(seed)
    steps = np.arange(n)
    return list(end + (start - end) * np.exp(-steps / (n / 5)) + 0.02 * rng.standard_normal(n))


def names(folder):
    return [f.name for f in diagnose(load_run(folder))]


def test_a_healthy_run_gets_a_clean_bill(tmp_path):
    losses = falling(300)
    val = {s: losses[s - 1] + 0.05 for s in range(50, 301, 50)}
    assert names(write_run(tmp_path / "run", losses, val)) == []


def test_divergence_is_named_with_its_likely_causes(tmp_path):
    losses = falling(60) + [3.0, 6.0, 12.0, float("nan")]
    run = write_run(tmp_path / "run", losses, config={"warmup_iters": 0, "learning_rate": 0.3})
    (finding,) = diagnose(load_run(run))
    assert finding.name == "diverged" and "step 64" in finding.evidence
    assert "0.3" in finding.advice and "warm-up" in finding.advice


def test_a_loss_stuck_at_ln_vocab_never_learned(tmp_path):
    rng = np.random.default_rng(0)
    run = write_run(tmp_path / "run", list(math.log(V) + 0.01 * rng.standard_normal(200)))
    assert names(run) == ["never-learned"]
    assert f"ln({V})" in diagnose(load_run(run))[0].evidence


def test_a_plateau(tmp_path):
    losses = falling(60, end=2.0) + [2.0 + 0.005 * math.sin(i) for i in range(240)]
    assert names(write_run(tmp_path / "run", losses)) == ["plateau"]


def test_overfitting_shows_as_a_growing_gap(tmp_path):
    losses = falling(300, end=0.8)
    val = {50: 2.1, 100: 2.0, 150: 2.1, 200: 2.3, 250: 2.5, 300: 2.7}
    assert names(write_run(tmp_path / "run", losses, val)) == ["overfitting"]


def test_a_val_jump_after_a_resume(tmp_path):
    losses = falling(200)
    val = {50: 2.0, 100: 1.8, 150: 2.4, 200: 2.3}
    resumed = [True if s == 101 else None for s in range(1, 201)]
    run = write_run(tmp_path / "run", losses, val, resumed=resumed)
    assert "resume-jump" in names(run)
    assert "resumed at step 101" in next(f for f in diagnose(load_run(run)) if f.name == "resume-jump").evidence


def test_a_gradient_spike_before_a_loss_spike(tmp_path):
    losses = falling(200)
    losses[121] = losses[120] * 2  # the loss follows two steps after the gradient
    norms = [1.0 + 0.01 * (i % 7) for i in range(200)]
    norms[119] = 60.0
    run = write_run(tmp_path / "run", losses, grad_norm=norms)
    assert names(run) == ["gradient-spike"]
    assert "step 120" in diagnose(load_run(run))[0].evidence


def test_throughput_that_drops_mid_run(tmp_path):
    tps = [10000.0] * 150 + [4000.0] * 150
    assert names(write_run(tmp_path / "run", falling(300), tokens_per_s=tps)) == ["slowdown"]


def test_the_command_reads_a_real_run_and_refuses_a_missing_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    words = "the king doth speak of love and night where shall we meet again".split()
    (tmp_path / "t.txt").write_text("\n".join(" ".join(rng.choice(words, 6)) for _ in range(300)))
    assert main(["train", "--data", str(tmp_path / "t.txt"), "--out", str(tmp_path / "run"), "--max-iters", "40",
                 "--set", "n_layer=1", "--set", "n_embd=32", "--set", "n_head=2", "--set", "block_size=32",
                 "--set", "sample_tokens=0", "--set", "layer_norm_interval=10", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["doctor", str(tmp_path / "run"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"].startswith("40 steps") and not any(f["name"] == "diverged" for f in report["findings"])
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    recorded = [r for r in rows if "layer_grad_norms" in r]
    assert [r["step"] for r in recorded] == [10, 20, 30, 40]
    assert set(recorded[0]["layer_grad_norms"]) == {"wte", "h.0", "ln_f"}  # RoPE: no position embedding
    assert main(["doctor", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_layer_norms_add_up_to_the_global_norm():
    from vintagelm import GPT, GPTConfig
    from vintagelm.optim import grad_norm, layer_grad_norms

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8), dtype=np.float64)
    x = np.random.default_rng(0).integers(0, 11, (2, 8))
    model.forward(x, x)
    model.backward()
    per_layer = layer_grad_norms(model.grads)
    assert list(per_layer) == ["wte", "wpe", "h.0", "h.1", "ln_f"]
    assert math.sqrt(sum(v * v for v in per_layer.values())) == pytest.approx(grad_norm(model.grads), rel=1e-12)


def lab_runs(tmp_path, monkeypatch, experiment):
    """Run a lab experiment (--quick) -> {run name: (folder, expected diagnosis)} of its saved runs."""
    monkeypatch.setenv("VINTAGELM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / experiment
    assert main(["--threads", "1", "lab", experiment, "--quick", "--out", str(out), "--no-progress"]) == 0
    runs = json.loads((out / "results.json").read_text())["runs"]
    return {name: (out / r["folder"], r["expected"]) for name, r in runs.items()}


def test_the_doctor_names_the_data_quality_runs_for_what_they_are(tmp_path, monkeypatch):
    runs = lab_runs(tmp_path, monkeypatch, "data-quality")
    found = {name: names(folder) for name, (folder, _) in runs.items()}
    for name, (folder, expected) in runs.items():
        if expected == "overfit":
            assert "overfitting" in found[name], (name, found)
        if expected == "healthy":
            assert found[name] == [], (name, found)


def test_the_doctor_names_the_lr_batch_runs_for_what_they_are(tmp_path, monkeypatch):
    runs = lab_runs(tmp_path, monkeypatch, "lr-batch")
    expected = {name: e for name, (_, e) in runs.items()}
    assert "diverged" in expected.values() and "healthy" in expected.values()
    for name, (folder, e) in runs.items():
        found = names(folder)
        if e == "diverged":
            assert "diverged" in found, (name, found)
        elif e == "too_low":
            assert "never-learned" in found or "plateau" in found, (name, found)
        else:
            assert "diverged" not in found, (name, found)


def test_a_loss_that_starts_far_above_ln_vocab_is_a_bad_start(tmp_path):
    losses = [40.0, 25.0] + falling(200)
    run = write_run(tmp_path / "run", losses, config={"model": {"vocab_size": V, "init": "normal"}})
    assert "bad-start" in names(run)
    assert "init=gpt2" in next(f for f in diagnose(load_run(run)) if f.name == "bad-start").advice


def test_a_run_stopped_at_its_first_non_finite_step_is_diverged(tmp_path):
    assert names(write_run(tmp_path / "run", [float("nan")])) == ["diverged"]


def test_the_doctor_names_the_gradients_runs_for_what_they_are(tmp_path, monkeypatch):
    runs = lab_runs(tmp_path, monkeypatch, "gradients")
    for name, (folder, expected) in runs.items():
        found = names(folder)
        if expected == "diverged":
            assert "diverged" in found, (name, found)
        elif expected == "exploding":  # N(0, 1) init: the loss starts far above ln V
            assert "bad-start" in found, (name, found)
        elif expected == "vanishing":  # post-norm at depth: the lower blocks get almost nothing
            assert "vanishing-gradients" in found, (name, found)
        elif expected == "healthy":
            assert not {"diverged", "bad-start", "vanishing-gradients"} & set(found), (name, found)
    assert "vanishing" in {expected for _, expected in runs.values()}  # the rule is exercised
