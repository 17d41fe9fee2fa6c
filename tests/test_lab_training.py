"""The lab's training experiments, `vintage lab gradients`, `lr-batch` and `scaling`, run with
--quick: their pages are real (PNGs with content, finite numbers except the documented Nones of
diverged runs, the sentences in index.html), their run folders are what `vintage doctor`
reads, and the facts they exist to show hold in the numbers they measured:
    gradients   post-norm without warm-up at the deepest depth spreads its gradient norms
                across the blocks more than pre-norm does
    lr-batch    the largest learning rate of the sweep diverges (and is kept, with loss None)
    scaling     every size spent the same compute, and more compute gave a lower frontier
And short_run itself, the loop every experiment trains in: it validates on its schedule (steps,
seconds of a clock the test drives, the start, the end), and a recurrent model that carries
its state reads its text in order, row by row.
"""
import contextlib
import html
import io
import json
import math
import re

import numpy as np
import pytest

from lab_checks import numbers
from vintagelm import cli
from vintagelm.lab.lr_batch import run_name


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One prepared corpus for the three experiments (preparing it takes a few seconds)."""
    return tmp_path_factory.mktemp("cache")


def run_quick(name, cache, tmp_path_factory):
    """Run one experiment with --quick into a fresh folder -> (folder, results, sentences printed)."""
    out = tmp_path_factory.mktemp(name) / "out"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("VINTAGELM_CACHE", str(cache))
        # one BLAS thread: the models are tiny, and on a busy 2-core machine more threads wait on each other
        assert cli.main(["--threads", "1", "lab", name, "--quick", "--out", str(out), "--no-progress"]) == 0
    sentences = [line for line in printed.getvalue().splitlines() if line and not line.startswith("wrote ")]
    return out, json.loads((out / "results.json").read_text(encoding="utf-8")), sentences


@pytest.fixture(scope="module")
def gradients(cache, tmp_path_factory):
    return run_quick("gradients", cache, tmp_path_factory)


@pytest.fixture(scope="module")
def lr_batch(cache, tmp_path_factory):
    return run_quick("lr-batch", cache, tmp_path_factory)


@pytest.fixture(scope="module")
def scaling(cache, tmp_path_factory):
    return run_quick("scaling", cache, tmp_path_factory)


def check_page(out, results, sentences, figures, none_allowed):
    """Non-blank PNGs, finite numbers (None only where none_allowed(place) says), the printed
    sentences in a self-contained index.html -> its text."""
    import matplotlib.image

    for name in figures:
        pixels = matplotlib.image.imread(out / f"{name}.png")
        assert pixels.var() > 1e-3, f"{name}.png is blank"
    for where, value in numbers(results):
        if value is None:
            assert none_allowed(where), f"{where} is None"
        else:
            assert math.isfinite(value), f"{where} = {value}"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page and 'src="http' not in page
    assert len(sentences) >= 3
    for sentence in sentences:
        assert f"<p>{html.escape(sentence, quote=True)}</p>" in page
    return page


def check_runs(out, results, steps_of):
    """Every run listed for `vintage doctor` is a folder with config.json and one metrics row per step."""
    assert results["runs"]
    for name, entry in results["runs"].items():
        folder = out / entry["folder"]
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        assert {"model", "learning_rate", "batch_size", "warmup_iters", "max_iters", "grad_clip"} <= set(config)
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [r["step"] for r in rows] == list(range(1, steps_of(name) + 1))
        assert entry["expected"] in results["expected_rules"]


# ---- gradients ----

def test_gradients_page(gradients):
    out, results, sentences = gradients
    settings = results["settings"]
    diverged = {name for name, m in settings.items() if m["diverged"]}
    check_page(out, results, sentences, ["heatmap", "profile", "spread", "loss"],
               lambda where: any(where.startswith(f"results.settings.{name}.") for name in diverged))
    depths = results["size"]["depths"]
    assert len(settings) == 3 * 2 * len(depths)
    for name, m in settings.items():
        assert len(m["norm_steps"]) == len(m["layer_norms"]) and all(len(r) == len(m["layers"])
                                                                   for r in m["layer_norms"])
        assert [f"h.{i}" for i in range(m["depth"])] == [x for x in m["layers"] if x.startswith("h.")]
        assert (m["final_loss"] is None) == m["diverged"]
        assert (m["expected"] == "diverged") == m["diverged"]


def test_post_norm_spreads_the_gradient_more_than_pre_norm_at_depth(gradients):
    out, results, _ = gradients
    depth = max(results["size"]["depths"])
    assert depth >= 12
    pre, post = results["settings"][f"pre-L{depth}-gpt2"], results["settings"][f"post-L{depth}-gpt2"]
    assert results["warmup"] == 0 and results["grad_clip"] == 0.0
    assert post["early_spread"] > pre["early_spread"]
    assert post["early_ratio"] > pre["early_ratio"]


def test_gradients_runs_are_run_folders(gradients):
    out, results, _ = gradients
    check_runs(out, results, lambda name: results["settings"][name]["steps_run"])
    for name, m in results["settings"].items():
        assert results["runs"][name]["expected"] == m["expected"]
    # N(0, 1) init is never healthy: its loss starts far above ln V, or it diverges
    assert all(m["expected"] in ("exploding", "diverged") for m in results["settings"].values()
               if m["init"] == "normal")


# ---- lr-batch ----

def test_lr_batch_page(lr_batch):
    out, results, sentences = lr_batch
    measured = {m["name"]: m for m in results["runs_measured"]}
    sweep, grid = results["lr_sweep"], results["batch_sweep"]

    def none_allowed(where):
        run = re.match(r"results\.runs_measured\[(\d+)\]\.", where)
        if run:
            return results["runs_measured"][int(run[1])]["diverged"]
        point = re.match(r"results\.lr_sweep\.val_loss\[(\d+)\]$", where)
        if point:
            return sweep["diverged"][int(point[1])]
        cell = re.match(r"results\.batch_sweep\.val_loss\[(\d+)\]\[(\d+)\]$", where)
        if cell:
            B, lr = grid["batches"][int(cell[1])], grid["lrs"][int(cell[2])]
            return measured[run_name(lr, B)]["diverged"]
        return where == "results.batch_sweep.best_lr_exponent"

    check_page(out, results, sentences, ["lr_sweep", "batch_sweep"], none_allowed)
    # the batch sweep compares at equal tokens: steps x batch is the same for every run
    assert {m["steps"] * m["batch_size"] * results["size"]["block_size"] for m in measured.values()} == \
        {results["tokens_per_run"]}
    assert sweep["lrs"] == sorted(sweep["lrs"]) and len(sweep["lrs"]) >= 4


def test_the_largest_learning_rate_diverges(lr_batch):
    out, results, _ = lr_batch
    sweep = results["lr_sweep"]
    assert sweep["diverged"][-1] and sweep["val_loss"][-1] is None
    largest = run_name(sweep["lrs"][-1], sweep["batch_size"])
    assert results["runs"][largest]["expected"] == "diverged"
    best = run_name(sweep["best_lr"], sweep["batch_size"])
    assert results["runs"][best]["expected"] == "healthy"
    # the smallest rate of the sweep hardly left ln V
    assert results["runs"][run_name(sweep["lrs"][0], sweep["batch_size"])]["expected"] == "too_low"


def test_lr_batch_runs_are_run_folders(lr_batch):
    out, results, _ = lr_batch
    measured = {m["name"]: m for m in results["runs_measured"]}
    assert set(results["runs"]) == set(measured)
    check_runs(out, results, lambda name: measured[name]["steps_run"])
    for name, m in measured.items():
        rows = (out / "runs" / name / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        last = json.loads(rows[-1])
        assert (last.get("val_loss") is None) == m["diverged"]  # the final validation is in the run's metrics


# ---- scaling ----

def test_scaling_page(scaling):
    out, results, sentences = scaling
    diverged = {i for i, m in enumerate(results["models"]) if m["diverged"]}
    page = check_page(out, results, sentences, ["loss_vs_flops", "loss_vs_params"],
                      lambda where: where in ("results.isoflop", "results.prediction.params")
                      or any(where.startswith(f"results.models[{i}].") for i in diverged))
    assert results["best"] in page and len(results["models"]) >= 3


def test_every_size_spends_the_same_compute(scaling):
    out, results, _ = scaling
    budget, tokens_per_step = results["size"]["budget"], results["tokens_per_step"]
    for m in results["models"]:
        step_flops = m["flops_per_token"] * tokens_per_step
        assert m["steps"] == int(budget // step_flops)
        assert budget - step_flops < m["flops"] <= budget
    params = [m["params"] for m in results["models"]]
    steps = [m["steps"] for m in results["models"]]
    assert params == sorted(params) and steps == sorted(steps, reverse=True)  # bigger models, fewer steps


def test_more_compute_lowers_the_frontier_and_the_fit_predicts_it(scaling):
    out, results, _ = scaling
    fit, frontier = results["frontier_fit"], results["frontier"]
    assert fit["a"] < 0
    assert results["prediction"]["budget"] == 10 * results["size"]["budget"]
    assert results["prediction"]["val_loss"] < min(frontier["loss"])
    assert math.isfinite(results["params_fit"]["a"]) and 0 <= results["params_fit"]["r2"] <= 1


# ---- short_run, the one training loop of the lab ----

def tiny_text():
    """A SplitData of a short repeated sentence, character level."""
    from vintagelm.lab.short_run import SplitData
    from vintagelm.tokenizers import CharTokenizer

    text = "the quick brown fox jumps over the lazy dog. " * 60
    tokenizer = CharTokenizer.train([text])
    ids = np.asarray(tokenizer.encode_ordinary(text), dtype=np.uint16)
    return SplitData(ids[:2400], ids[2400:], tokenizer)


def tiny_gpt(data):
    from vintagelm.model import GPTConfig

    return GPTConfig(vocab_size=data.tokenizer.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)


@pytest.mark.parametrize("validation, budget, steps, validated", [
    (dict(seconds=0.5, at_start=True), 2.0, 8, [0, 2, 4, 6, 8]),  # every 2 steps of 0.25 s, the start and the end
    (dict(steps=3), None, 7, [3, 6, 7]),  # every 3 steps and after the last
    (dict(steps=3, seconds=1.0), None, 7, [3, 4, 6, 7]),  # either interval
    (dict(), 1.0, 4, []),  # no interval: never
])
def test_short_run_validates_on_its_schedule(validation, budget, steps, validated, monkeypatch):
    """A clock that moves 0.25 s at each reading makes every step take 0.25 s of training (the
    loop reads it before and after a step): a budget of 2 s is 8 steps, whatever the machine."""
    import itertools

    from vintagelm.lab import short_run as loop
    from vintagelm.lab.short_run import Validation, short_run

    readings = itertools.count()
    monkeypatch.setattr(loop, "perf_counter", lambda: 0.25 * next(readings))
    data = tiny_text()
    record = short_run(tiny_gpt(data), data, 7 if budget is None else 1000, 1e-3, batch_size=4, seconds=budget,
                       validation=Validation(batches=2, **validation))
    assert len(record.losses) == steps and record.seconds == 0.25 * steps
    assert [p.step for p in record.val] == validated
    assert [p.seconds for p in record.val] == [0.25 * s for s in validated]
    assert all(math.isfinite(p.loss) and p.bpb > 0 for p in record.val)


def test_a_model_that_carries_its_state_reads_its_streams_in_order(monkeypatch):
    """A recurrent model with carry_state gets, at every step, the windows that continue the
    step before's row by row, and a fresh state exactly when its streams start over from the
    beginning of their stretches of the text."""
    from vintagelm.lab import short_run as loop
    from vintagelm.museum.rnn import RNNConfig, RNNLM

    data = tiny_text()
    batches, resets = [], []
    take_step = loop.training_step

    def recording_step(model, optimizer, micro_batches, lr, grad_clip):
        batches.append(micro_batches[0])
        return take_step(model, optimizer, micro_batches, lr, grad_clip)

    monkeypatch.setattr(loop, "training_step", recording_step)
    reset = RNNLM.reset_state
    monkeypatch.setattr(RNNLM, "reset_state", lambda self: (resets.append(len(batches)), reset(self)))
    config = RNNConfig(vocab_size=data.tokenizer.vocab_size, block_size=16, n_embd=16, carry_state=True)
    B, lane = 4, (len(data.train) - 1) // 4  # each of the 4 rows reads its own quarter of the text
    record = loop.short_run(config, data, 50, 1e-3, batch_size=B)
    assert len(record.losses) == 50 and not record.diverged
    starts = np.asarray(data.train)[np.arange(B) * lane]  # the first token of each quarter
    for step, (x, y) in enumerate(batches):
        if step in resets:
            assert (x[:, 0] == starts).all()
        else:
            assert (x[:, 0] == batches[step - 1][1][:, -1]).all()  # the row goes on where it stopped
    assert resets[0] == 0 and len(resets) >= 2  # the streams went round at least once in 50 steps
