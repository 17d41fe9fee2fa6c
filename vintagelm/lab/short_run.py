"""The one training loop of the lab: a short run that records what a picture needs.

`short_run` is the loop of train.py reduced to what an experiment varies (model config,
learning rate and its schedule, batch size, steps or seconds of training, warm-up, clipping)
and what it records (the loss at every step, per-layer gradient norms, validation bits per
byte). Each step is train.py's `training_step`, with the optimizer `vintage train` makes
(optim.make_optimizer: AdamW with its default settings, or the optimizer fields given), and
a model that carries its state across windows reads its streams in order as it does in
`vintage train`, so what the lab measures is what `vintage train` does. Every experiment that
trains a model trains it here; save_run writes a short run as a run folder for `vintage doctor`.

What the runs train on: `corpus()` (the builtin Shakespeare, character level, as `vintage
prepare` makes it), or a SplitData an experiment builds itself, often from the plays split as
`vintage prepare` splits them (held_out_split).
"""
import math
from dataclasses import dataclass, field
from time import perf_counter
from typing import NamedTuple

import numpy as np

from vintagelm.architectures import model_for
from vintagelm.data.loader import TokenSplits, get_batch
from vintagelm.evaluate import evaluate_batches, token_byte_lengths
from vintagelm.optim import layer_grad_norms, lr_at, make_optimizer
from vintagelm.train import training_batch, training_step
from vintagelm.train_config import TrainConfig

VAL_FRACTION = 0.1  # the plays prepare's split puts in val (split_score < 0.1 at its default seed)
SPLIT_SEED = 1337  # prepare's default split seed


def corpus(progress=False, log=lambda msg: None):
    """The builtin Shakespeare, character level, prepared once into the cache -> PreparedDataset."""
    from vintagelm.data.resolve import resolve_dataset

    return resolve_dataset("builtin:shakespeare", "char", progress=progress, log=log)


def held_out_split():
    """The builtin plays split as `vintage prepare` splits them at its default seed ->
    (training plays' texts in split order, the held-out plays' text)."""
    from vintagelm.data.prepare import content_key, split_score
    from vintagelm.data.sources import shakespeare_documents

    plays = sorted((split_score(SPLIT_SEED, content_key(d.text)), d.text) for d in shakespeare_documents())
    val = [text for u, text in plays if u < VAL_FRACTION] or [plays[0][1]]
    train = [text for _, text in plays[len(val):]]
    return train, "\n\n".join(val)


@dataclass
class SplitData(TokenSplits):
    """What short_run and validate read from a dataset, for text an experiment prepares itself."""
    train: object  # (N_train,) token ids
    val: object  # (N_val,) token ids
    tokenizer: object


class ValPoint(NamedTuple):
    """One validation measurement of a short run."""
    step: int  # steps taken before it (0: the untrained model)
    loss: float
    bpb: float  # bits per byte
    seconds: float  # training seconds spent before it


@dataclass
class Validation:
    """When short_run measures the validation split on `batches` fixed windows: every `steps`
    steps, every `seconds` of training, or both, and after the last step; also before the first
    step when at_start. Neither interval: never."""
    steps: int = 0
    seconds: float = 0.0
    batches: int = 4
    at_start: bool = False

    def due(self, steps_done, clock_due, last):
        """Whether to validate after `steps_done` steps; clock_due: another `seconds` of training
        have passed; last: the run ends after this step."""
        if not (self.steps or self.seconds):
            return False
        return last or clock_due or (self.steps > 0 and steps_done % self.steps == 0)


@dataclass
class RunRecord:
    """What short_run measured."""
    losses: list  # training loss at every step (None where it was not finite)
    lrs: list
    grad_norms: list  # global gradient norm at every step (None where not finite)
    layer_norms: list = field(default_factory=list)  # [(step, {layer: norm}), ...]
    val: list = field(default_factory=list)  # [ValPoint, ...]
    diverged: bool = False  # the loss became non-finite or rose far above where it started
    seconds: float = 0.0  # of training steps: validation not counted
    params: int = 0
    flops: float = 0.0  # training FLOPs spent (6 N per token plus attention, model.flops_per_token)
    model: object = None

    def final_loss(self, last=10):
        """Mean training loss over the last steps (None when the run diverged)."""
        tail = [x for x in self.losses[-last:] if x is not None]
        return None if self.diverged or not tail else float(np.mean(tail))


def cosine_schedule(lr, steps, warmup, min_lr_ratio):
    """The learning rate of `vintage train` (optim.lr_at) over `steps` -> lr_of(step, seconds)."""
    return lambda step, seconds: lr_at(step, learning_rate=lr, min_lr=lr * min_lr_ratio, warmup_iters=warmup,
                                       lr_decay_iters=steps)


def short_run(config, data, steps, lr, batch_size=16, seed=0, warmup=0, grad_clip=1.0, min_lr_ratio=0.1,
              layer_norm_every=0, validation=None, seconds=None, lr_of=None, dtype=np.float32,
              backend="auto", progress=None, optimizer_fields=None):
    """Train a fresh model of `config` on data.train for `steps` steps, or until `seconds` of
    training wall time (validation is not counted) -> RunRecord.

    The learning rate is `vintage train`'s warm-up and cosine decay over `steps` from peak `lr`,
    unless lr_of(step, training seconds so far) gives it. Divergence (a non-finite loss, or a
    loss above 1.5x the first and above ln V + 1) ends the run early. `progress` (a tqdm bar)
    advances a step at a time, or by training seconds when `seconds` is the budget.
    optimizer_fields: TrainConfig's optimizer fields ({"optimizer": "muon", "muon_lr": 0.02}) over its
    defaults, AdamW's unless they say otherwise (the experiments compare GPT-2-era recipes)."""
    model = model_for(config)(config, seed=seed, dtype=dtype, backend=backend)
    fields = {"optimizer": "adamw", **(optimizer_fields or {})}
    optimizer = make_optimizer(TrainConfig(learning_rate=lr, backend=backend, **fields), model)
    lr_of = lr_of or cosine_schedule(lr, steps, warmup, min_lr_ratio)
    validation = validation or Validation()
    rng = np.random.default_rng([seed, 2])
    T, record = config.block_size, RunRecord([], [], [], params=model.num_params())
    byte_lengths = token_byte_lengths(data.tokenizer)
    limit = math.log(config.vocab_size) + 1
    spent, next_eval = 0.0, validation.seconds  # seconds of training so far, validation left out

    def validate_now(step):
        loss, bpb = validate(model, data, batch_size, validation.batches, seed, byte_lengths)
        record.val.append(ValPoint(step, loss, bpb, spent))

    if validation.at_start:
        validate_now(0)
    # a run that blows up overflows in float32 on its way to a non-finite loss: that is a
    # measured outcome (record.diverged), not a warning to print
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for step in range(steps):
            t0 = perf_counter()
            now = lr_of(step, spent)
            x, y = training_batch(model, data, batch_size, T, step, rng)
            loss, norm, stepped = training_step(model, optimizer, [(x, y)], now, grad_clip)
            record.losses.append(loss if math.isfinite(loss) else None)
            record.grad_norms.append(norm if math.isfinite(norm) else None)
            record.lrs.append(now)
            record.flops += model.flops_per_token() * batch_size * T
            if layer_norm_every and step % layer_norm_every == 0:
                record.layer_norms.append((step, finite_or_none(layer_grad_norms(model.grads))))
            took = perf_counter() - t0
            if progress is not None:
                progress.update(1 if seconds is None else min(took, seconds - spent))
            spent += took
            first = record.losses[0]
            if not stepped or (first is not None and loss > max(1.5 * first, limit)):
                record.diverged = True
                break
            last = step + 1 == steps or (seconds is not None and spent >= seconds)
            clock_due = validation.seconds > 0 and spent >= next_eval
            if clock_due:
                next_eval += validation.seconds
            if validation.due(step + 1, clock_due, last):
                validate_now(step + 1)
            if last:
                break
    record.seconds = spent
    record.model = model
    return record


def validate(model, data, batch_size, n_batches, seed, byte_lengths):
    """(loss, bits per byte) on n_batches fixed random windows of the val split."""
    return loss_on(model, data.val, batch_size, n_batches, seed, byte_lengths)


def loss_on(model, tokens, batch_size, n_batches, seed, byte_lengths):
    """(loss, bits per byte) on n_batches fixed random windows of `tokens` (any split)."""
    rng = np.random.default_rng([seed, 3])
    T = model.config.block_size
    result = evaluate_batches(model, (get_batch(tokens, batch_size, T, rng) for _ in range(n_batches)), byte_lengths)
    return result["loss"], result["bits_per_byte"]


def finite_or_none(d):
    return {k: (v if math.isfinite(v) else None) for k, v in d.items()}


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
    val = {point.step: point for point in record.val}
    layers = {step + 1: norms for step, norms in record.layer_norms}
    rows = []
    for i, (loss, lr, norm) in enumerate(zip(record.losses, record.lrs, record.grad_norms), 1):
        row = {"step": i, "loss": loss, "lr": lr, "grad_norm": norm}
        if i in val:
            row.update(val_loss=val[i].loss, val_bpb=val[i].bpb)
        if i in layers:
            row["layer_grad_norms"] = layers[i]
        rows.append(json.dumps(row))
    with atomic_file(folder / "metrics.jsonl") as tmp:
        tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder
