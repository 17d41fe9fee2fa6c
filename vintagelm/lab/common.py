"""What the lab's experiments share: the corpus, a short training run that records what a
picture needs, timing, peak memory and power-law fits, and a line describing the machine.

`short_run` is the training loop of train.py reduced to what an experiment varies (model
config, learning rate, batch size, steps, warm-up, clipping) and what it records (the loss at
every step, per-layer gradient norms, validation bits per byte). It calls the same
`training_step`, so what the lab measures is what `vintage train` does.
"""
import math
import platform
import time
import tracemalloc
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from vintagelm.data.loader import get_batch
from vintagelm.evaluate import evaluate_batches, token_byte_lengths
from vintagelm.architectures import model_for
from vintagelm.optim import AdamW, layer_grad_norms, lr_at
from vintagelm.train import training_step


def machine():
    """'AMD EPYC ..., 2 cores, OpenBLAS 0.3.31 (Haswell), 2 threads': what a timing depends on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    blas = ""
    try:
        from threadpoolctl import threadpool_info

        info = next((i for i in threadpool_info() if i.get("user_api") == "blas"), None)
        if info:
            blas = f", {info.get('internal_api')} {info.get('version')} ({info.get('architecture')}), " \
                   f"{info.get('num_threads')} threads"
    except ImportError:
        pass
    import os

    return f"{cpu}, {os.cpu_count()} cores{blas}"


def corpus(progress=False, log=lambda msg: None):
    """The builtin Shakespeare, character level, prepared once into the cache -> PreparedDataset."""
    from vintagelm.data.resolve import resolve_dataset

    return resolve_dataset("builtin:shakespeare", "char", progress=progress, log=log)


@dataclass
class RunRecord:
    """What short_run measured."""
    losses: list  # training loss at every step (None where it was not finite)
    lrs: list
    grad_norms: list  # global gradient norm at every step (None where not finite)
    layer_norms: list = field(default_factory=list)  # [(step, {layer: norm}), ...]
    val: list = field(default_factory=list)  # [(step, loss, bits per byte), ...]
    diverged: bool = False  # the loss became non-finite or rose far above where it started
    seconds: float = 0.0
    params: int = 0
    flops: float = 0.0  # training FLOPs spent (6 N per token plus attention, model.flops_per_token)
    model: object = None

    def final_loss(self, last=10):
        """Mean training loss over the last steps (None when the run diverged)."""
        tail = [x for x in self.losses[-last:] if x is not None]
        return None if self.diverged or not tail else float(np.mean(tail))


def short_run(config, data, steps, lr, batch_size=16, seed=0, warmup=0, grad_clip=1.0, min_lr_ratio=0.1,
              layer_norm_every=0, eval_every=0, eval_batches=4, seconds=None, dtype=np.float32,
              backend="auto", progress=None):
    """Train a fresh model of `config` on data.train for `steps` steps (or until `seconds` of
    training wall time: the validation passes are not counted) -> RunRecord. Divergence (a
    non-finite loss, or a loss above 1.5x the first and
    above ln V + 1) ends the run early."""
    model = model_for(config)(config, seed=seed, dtype=dtype, backend=backend)
    optimizer = AdamW(model.params, lr, (0.9, 0.99), weight_decay=0.1, backend=backend)
    rng = np.random.default_rng([seed, 2])
    T, record = config.block_size, RunRecord([], [], [], params=model.num_params())
    byte_lengths = token_byte_lengths(data.tokenizer)
    limit = math.log(config.vocab_size) + 1
    bar = progress if progress is not None else None
    spent = 0.0  # seconds of training so far, validation left out: the budget is the training's
    # a run that blows up overflows in float32 on its way to a non-finite loss: that is a
    # measured outcome (record.diverged), not a warning to print
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(steps):
            t0 = time.perf_counter()
            now = lr_at(step, max_lr=lr, min_lr=lr * min_lr_ratio, warmup_steps=warmup, decay_steps=steps)
            x, y = get_batch(data.train, batch_size, T, rng)
            loss, norm, stepped = training_step(model, optimizer, [(x, y)], now, grad_clip)
            record.losses.append(loss if math.isfinite(loss) else None)
            record.grad_norms.append(norm if math.isfinite(norm) else None)
            record.lrs.append(now)
            record.flops += model.flops_per_token() * batch_size * T
            if layer_norm_every and step % layer_norm_every == 0:
                record.layer_norms.append((step, finite_or_none(layer_grad_norms(model.grads))))
            if bar is not None:
                bar.update(1)
            spent += time.perf_counter() - t0
            first = record.losses[0]
            if not stepped or (first is not None and loss > max(1.5 * first, limit)):
                record.diverged = True
                break
            if eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
                record.val.append((step + 1, *validate(model, data, batch_size, eval_batches, seed, byte_lengths)))
            if seconds is not None and spent >= seconds:
                break
    record.seconds = spent
    record.model = model
    return record


def validate(model, data, batch_size, n_batches, seed, byte_lengths):
    """(loss, bits per byte) on n_batches fixed random windows of the val split."""
    rng = np.random.default_rng([seed, 3])
    T = model.config.block_size
    result = evaluate_batches(model, (get_batch(data.val, batch_size, T, rng) for _ in range(n_batches)), byte_lengths)
    return result["loss"], result["bits_per_byte"]


def finite_or_none(d):
    return {k: (v if math.isfinite(v) else None) for k, v in d.items()}


def median_seconds(fn, repeats=3):
    """The median wall time of fn() over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_bytes(fn):
    """The most memory NumPy (and Python) held above the starting point while fn() ran
    (tracemalloc sees NumPy's array buffers)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def power_fit(x, y):
    """Least squares of log y = a log x + b -> (a, e^b): y ~ c x^a."""
    a, b = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(a), float(math.exp(b))


def bar(total, desc, progress=True):
    """A progress bar on a terminal (none in a log file, none when progress is False)."""
    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=None if progress else True,
                dynamic_ncols=True)


def save_run(record, folder, config, train_settings, data_summary=None):
    """Write a short run as a run directory that `vintage doctor` and `vintage report` read:
    config.json (the model config and the training settings, as `vintage train` saves them) and
    metrics.jsonl (one row per step: step, loss, lr, grad_norm, and on the steps they were
    measured val_loss, val_bpb and layer_grad_norms). No checkpoint: the lab keeps only numbers.

    train_settings: {"learning_rate", "batch_size", "warmup_iters", "max_iters", "grad_clip", ...}."""
    import json
    from pathlib import Path

    from vintagelm.common import atomic_file, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "config.json", {"model": config.to_dict(), **train_settings,
                                               "data_summary": data_summary or {}})
    val = {step: (loss, bpb) for step, loss, bpb in record.val}
    layers = {step + 1: norms for step, norms in record.layer_norms}
    rows = []
    for i, (loss, lr, norm) in enumerate(zip(record.losses, record.lrs, record.grad_norms), 1):
        row = {"step": i, "loss": loss, "lr": lr, "grad_norm": norm}
        if i in val:
            row.update(val_loss=val[i][0], val_bpb=val[i][1])
        if i in layers:
            row["layer_grad_norms"] = layers[i]
        rows.append(json.dumps(row))
    with atomic_file(folder / "metrics.jsonl") as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder
