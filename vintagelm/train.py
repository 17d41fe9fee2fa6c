"""The training loop: batches -> loss -> gradients -> clip -> AdamW, with evaluation,
metrics, checkpoints, exact resume and a guard against non-finite steps.

One step (`Trainer.train_step`): draw a batch of B windows from the train split, cut it into
`grad_accum` micro-batches, then `training_step`: accumulate their gradients (scaled so the
result is the gradient of the whole batch's mean loss), clip to the global norm, and let AdamW
update the weights at the warm-up + cosine learning rate. `training_step` knows nothing of
runs or datasets, so a benchmark times the very same step. A step whose loss or gradient is
not finite is skipped; after `max_bad_steps` in a row the last checkpoint (or the seed's
initial state) is restored and the learning rate is halved, for the rest of the run and
across resumes.

Numbering: `step` counts completed optimizer steps. The metrics line for step s holds the
training loss of the batch that step s used (measured before its update) and, on evaluation
steps, the validation loss after it. Checkpoint step_000500 holds the state after 500 steps.

Determinism: the seed makes four independent generators, never the global one:
[seed, 0] initial weights and [seed, 1] dropout (both made by the model), [seed, 2] the order of
training batches, [seed, 3] the validation batches (re-made at every evaluation, so every
estimate uses the same batches and evaluating never moves the training data).
A checkpoint stores the dropout and batch generators' states, so a resumed run continues
bit for bit as if it had never stopped.

This file does not parse arguments (commands/train.py), define the model (architectures.py),
measure the loss on held-out text (evaluate.py), find and prepare the data (data/resolve.py),
guard the run directory (rundir.py) or know MPI: the world it trains in (world.LOCAL, or
dist.world()'s ranks) and the maker of its optimizer (optim.make_optimizer, or dist's with
ZeRO-1) are handed to train() by the command. A model that trains differently says so through
its interface (architectures.CountedModel, RecurrentModel), never by its name.
"""
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from vintagelm.architectures import CountedModel, RecurrentModel, model_for
from vintagelm.checkpoint import find_latest, linked_checkpoints, load_checkpoint, save_checkpoint
from vintagelm.common import UserError, open_nofollow, write_json_atomic
from vintagelm.data.resolve import resolve_dataset
from vintagelm.evaluate import estimate_val, token_byte_lengths
from vintagelm.interrupt import stop_on_interrupt
from vintagelm.memory import check_fits
from vintagelm.optim import clip_factor, grad_norm, layer_grad_norms, lr_at, make_optimizer
from vintagelm.rundir import METRICS_FILE, check_resumable, check_run_dir, refuse_existing_run, run_files, trim_metrics
from vintagelm.train_config import format_config
from vintagelm.world import LOCAL


# ---------------------------------------------------------------- one step
def accumulate_gradients(model, micro_batches):
    """Forward and backward every (x, y) micro-batch, all of equal shape (B/k, T), leaving in
    model.grads the gradient of the mean loss over all of them; returns that mean loss.

    Each forward's loss is the mean over its own B/k * T tokens, so the k backward passes add
    up to k times the gradient of the full batch's mean: scaling by 1/k makes k micro-batches
    of B/k exactly one batch of B."""
    k, total = len(micro_batches), 0.0
    for i, (x, y) in enumerate(micro_batches):
        _, loss = model.forward(x, y)
        model.backward(accumulate=i > 0)
        total += float(loss)
    if k > 1:
        model.flat_grads *= 1.0 / k
    return total / k


class StepResult(NamedTuple):
    loss: float  # mean loss of the micro-batches, measured before the update
    norm: float  # global gradient norm, before clipping
    stepped: bool  # False: the loss or the norm was not finite and the weights are unchanged


def training_step(model, optimizer, micro_batches, lr, grad_clip, world=LOCAL):
    """One optimizer step on the gradient of the micro-batches' mean loss (accumulate_gradients),
    clipped to global norm `grad_clip` (0 or None: no clipping), at learning rate lr -> StepResult.
    A non-finite loss or gradient skips the update.

    With several ranks (world: world.py, dist.py) each brings its own rows' micro-batches: the
    loss and the gradients are averaged over the ranks before the norm and the step, so every
    rank steps alike; a sharded optimizer (ZeRO-1) reduces, clips and gathers by itself."""
    loss = world.mean(accumulate_gradients(model, micro_batches))
    if optimizer.sharded:
        norm, stepped = optimizer.step_sharded(model.flat_grads, lr, grad_clip)
        return StepResult(loss, norm, stepped and math.isfinite(loss))
    world.average(model.flat_grads)
    norm = grad_norm(model.grads)
    if not (math.isfinite(loss) and math.isfinite(norm)):
        return StepResult(loss, norm, False)
    # clipping: the optimizer reads the gradients times this factor (no pass of its own)
    optimizer.step(model.grads, lr=lr, grad_scale=clip_factor(norm, grad_clip or math.inf))
    return StepResult(loss, norm, True)


def carries_state(model):
    """Whether `model` hands its state from one window to the next (a recurrent model with
    carry_state): then it reads each row's text in order, and micro-batches cannot split a step."""
    return isinstance(model, RecurrentModel) and model.config.carry_state


def training_batch(model, data, batch_size, block_size, step, rng):
    """The (x, y) of training step `step`, (B, T) each, from a dataset's train split: random
    windows (data.batch), or for a model that carries its state across windows the B streams in
    order (data.stream; a fresh state when they start over). The lab's short runs draw here too."""
    if carries_state(model):
        x, y, restart = data.stream(batch_size, block_size, step)
        if restart:
            model.reset_state()
        return x, y
    return data.batch("train", batch_size, block_size, rng)


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    run_dir: Path
    step: int  # steps completed
    interrupted: bool  # stopped by Ctrl-C (a checkpoint was saved)
    val: dict  # the last evaluation (evaluate_batches' dict), or None
    model: object  # a architectures.LanguageModel
    tokenizer: object
    seconds: float


class Trainer:
    """Holds the model, optimizer, generators and counters of one run; `run()` trains.
    make_optimizer(cfg, model) -> the optimizer (made again whenever the model is)."""

    def __init__(self, cfg, dataset, ckpt=None, say=tqdm.write, world=LOCAL, make_optimizer=make_optimizer):
        self.cfg, self.data, self.world, self.make_optimizer = cfg, dataset, world, make_optimizer
        self.say = say if world.rank == 0 else (lambda msg: None)  # rank 0 alone speaks and writes
        self.run_dir = Path(cfg.out)
        self.byte_lengths = token_byte_lengths(dataset.tokenizer)
        self.load(ckpt)
        self.resumed = ckpt is not None
        if carries_state(self.model) and cfg.grad_accum > 1:
            raise UserError("carry_state needs grad_accum 1: micro-batches would hand one row's state to another")

    def load(self, ckpt):
        """Take model, optimizer, generators and counters from a Checkpoint, or make them
        fresh from the seed when ckpt is None (the state at step 0)."""
        cfg = self.cfg
        if ckpt is not None:
            self.model = ckpt.model
        else:
            self.model = model_for(cfg.model)(cfg.model, seed=cfg.seed, dtype=np.dtype(cfg.dtype), backend=cfg.backend)
            if cfg.init_from:
                self.model.flat_params[...] = initial_weights(cfg, self.model)
        # with several ranks, each applies its rows of the one-process dropout masks
        self.model.dropout_rng = self.world.dropout_rng(self.model.dropout_rng)
        self.optimizer = self.make_optimizer(cfg, self.model)
        self.data_rng = np.random.default_rng([cfg.seed, 2])
        self.step, self.lr_scale, self.bad_steps = 0, 1.0, 0
        if ckpt is None:
            return
        state_file = ckpt.path / "state.json"
        try:
            self.optimizer.load_state_dict(ckpt.optimizer_state)
        except ValueError as e:
            raise UserError(f"{ckpt.path / 'optimizer.safetensors'}: {e}") from None
        try:
            self.data_rng.bit_generator.state = ckpt.state["rng"]["data"]
            self.restore_carried_state(ckpt.state.get("recurrent_state"))
            self.lr_scale = float(ckpt.state["train"]["lr_scale"])
            self.bad_steps = int(ckpt.state["train"]["bad_steps"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{state_file} lacks the training state ({e!r}); "
                            "it was not written by `vintage train`") from None
        self.step = ckpt.step

    def carried_state(self):
        """The state a recurrent model carries into the next window, as JSON lists (exact: tolist
        keeps every float), or None."""
        state = self.model.state if isinstance(self.model, RecurrentModel) else None
        return None if state is None else [[a.tolist() for a in layer] for layer in state]

    def restore_carried_state(self, saved):
        if saved is not None and isinstance(self.model, RecurrentModel):
            self.model.state = [tuple(np.asarray(a, dtype=self.model.dtype) for a in layer) for layer in saved]

    def save(self):
        cfg = self.cfg
        train_state = {
            "train_config": cfg.to_dict(),
            "rng": {"data": self.data_rng.bit_generator.state},
            "train": {"lr_scale": self.lr_scale, "bad_steps": self.bad_steps},
            "recurrent_state": self.carried_state(),  # the next window starts from it
            # absolute: `vintage eval RUN` from another folder still finds the data
            "data": {"dataset": self.data.location,
                     "tokenizer_fingerprint": self.data.tokenizer.fingerprint()},
        }
        if self.world.rank != 0:  # the other ranks take part in gathering the optimizer state only
            self.optimizer.state_dict()
            return None
        return save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, train_state,
                               self.data.tokenizer, cfg.keep_checkpoints)

    def lr(self, step):
        """The learning rate of `step`: the schedule peaking at cfg.learning_rate, times lr_scale."""
        cfg = self.cfg
        scheduled = lr_at(step, learning_rate=cfg.learning_rate, min_lr=cfg.min_lr, warmup_iters=cfg.warmup_iters,
                          lr_decay_iters=cfg.lr_decay_iters or cfg.max_iters)
        return scheduled * self.lr_scale

    def draw_batch(self):
        """The step's global batch -> (x, y), (B, T) each (training_batch)."""
        cfg = self.cfg
        return training_batch(self.model, self.data, cfg.batch_size, cfg.model.block_size, self.step,
                              self.data_rng)

    def train_step(self):
        """One optimizer step (or a skipped one) -> its metrics row."""
        cfg = self.cfg
        lr = self.lr(self.step)
        x, y = self.draw_batch()
        mine = self.world.rows(cfg.batch_size)  # this rank's B/N rows (all of them alone)
        x, y = x[mine], y[mine]
        micro = list(zip(np.split(x, cfg.grad_accum), np.split(y, cfg.grad_accum)))  # k x (B/(N k), T)
        loss, norm, stepped = training_step(self.model, self.optimizer, micro, lr, cfg.grad_clip, self.world)
        if self.step == 0 and not cfg.init_from:  # a fine-tune starts from a trained model
            self.check_initial_loss(loss)
        self.step += 1
        row = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm}
        if cfg.layer_norm_interval and self.step % cfg.layer_norm_interval == 0 and math.isfinite(norm):
            row["layer_grad_norms"] = layer_grad_norms(self.model.grads)  # for `vintage report` and doctor
        if stepped:
            self.bad_steps = 0
            return row
        self.bad_steps += 1
        row.update(loss=loss if math.isfinite(loss) else None, grad_norm=None, skipped=True)
        self.say(f"step {self.step}: non-finite {'loss' if row['loss'] is None else 'gradient'}; "
                 f"update skipped ({self.bad_steps} in a row)")
        if self.bad_steps >= cfg.max_bad_steps:
            self.recover(row)
        return row

    def check_initial_loss(self, loss):
        """An untrained model should spread its bets evenly: loss ~ ln(V)."""
        expected = math.log(self.cfg.model.vocab_size)
        self.say(f"step 0: initial loss {loss:.4f}, ln(vocab_size {self.cfg.model.vocab_size}) = {expected:.4f}")
        if not abs(loss - expected) <= 0.1 * expected:  # also true for a nan loss
            self.say(f"warning: the initial loss is more than 10% away from ln(vocab_size); the "
                     f"initialisation (init={getattr(self.cfg.model, 'init', 'default')!r}) or the data may be wrong")

    def recover(self, row):
        """Too many non-finite steps in a row: back to the last checkpoint, half the lr."""
        latest = find_latest(self.run_dir)
        bad, scale = self.bad_steps, self.lr_scale / 2
        self.load(load_checkpoint(latest, dtype=self.cfg.dtype, backend=self.cfg.backend) if latest else None)
        self.lr_scale = scale
        row.update(restored_step=self.step, lr_scale=scale)
        where = f"checkpoint {latest}" if latest else "the initial weights (no checkpoint yet)"
        self.say(f"{bad} non-finite steps in a row: restored {where} at step {self.step} and halved the "
                 f"learning rate: now {scale:g} x the schedule (peak {self.cfg.learning_rate * scale:.3g})")

    def evaluate(self):
        """The validation estimate (rank 0 only: the others would compute the same numbers)."""
        if self.world.rank != 0:
            return None
        micro = self.cfg.batch_size // self.cfg.grad_accum  # the memory a training micro-batch needs
        return estimate_val(self.model, self.data, micro, self.cfg.eval_iters, self.cfg.seed, self.byte_lengths)

    def count(self):
        """A counted model (CountedModel: no gradients) trains by counting the whole train split
        once: that is its one step to max_iters, then evaluation and a checkpoint."""
        cfg = self.cfg
        if self.step >= cfg.max_iters:
            return None, False
        t0 = time.perf_counter()
        self.model.fit(self.data.train)
        self.optimizer = self.make_optimizer(cfg, self.model)  # fit made new tables
        seconds = time.perf_counter() - t0
        self.step = cfg.max_iters
        val = self.evaluate()
        if self.world.rank == 0:
            row = {"step": self.step, "loss": val["loss"], "lr": 0.0, "grad_norm": 0.0, "val_loss": val["loss"],
                   "val_bpb": val["bits_per_byte"], "tokens_per_s": len(self.data.train) / seconds}
            with open_nofollow(self.run_dir / METRICS_FILE) as metrics:
                metrics.write(json.dumps(row) + "\n")
            self.say(f"counted {len(self.data.train):,} tokens in {seconds:.1f} s: "
                     f"{self.model.num_ngrams():,} n-grams; val loss {val['loss']:.4f}, {val['bits_per_byte']:.3f} bits/byte")
        self.save()
        return val, False

    def run(self, progress=True):
        """Train until max_iters or Ctrl-C -> (last evaluation dict or None, interrupted)."""
        cfg = self.cfg
        if isinstance(self.model, CountedModel):
            return self.count()
        tokens_per_step = cfg.batch_size * cfg.model.block_size
        val, metrics_file = None, self.run_dir / METRICS_FILE
        # disable=None: a bar only on a terminal, none in a log file
        writer = self.world.rank == 0
        bar = tqdm(total=cfg.max_iters, initial=self.step, desc="train", unit="step",
                   disable=None if progress and writer else True, dynamic_ncols=True)
        metrics = open_nofollow(metrics_file) if writer else open(os.devnull, "w", encoding="utf-8")
        stopping = False  # a stop signal seen by any rank (every rank then stops after the same step)
        with bar, metrics, stop_on_interrupt(self.say) as stop:
            while self.step < cfg.max_iters and not stopping:
                t0 = time.perf_counter()
                row = self.train_step()
                row["tokens_per_s"] = tokens_per_step / (time.perf_counter() - t0)
                if self.resumed:  # the first step of a resumed run (doctor compares what came before)
                    row["resumed"], self.resumed = True, False
                last = self.step == cfg.max_iters
                if (self.step % cfg.eval_interval == 0 or last) and writer:
                    val = self.evaluate()
                    row.update(val_loss=val["loss"], val_bpb=val["bits_per_byte"])
                    self.say(f"step {self.step}: train loss {fmt(row['loss'])}, "
                             f"val loss {val['loss']:.4f}, val {val['bits_per_byte']:.3f} bits/byte")
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                stopping = self.world.any(stop.is_set())
                if self.step % cfg.checkpoint_interval == 0 or last or stopping:
                    self.save()
                if self.step % cfg.log_interval == 0 or last:
                    bar.set_postfix(loss=fmt(row["loss"]), lr=f"{row['lr']:.2e}",
                                    tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
                bar.update(self.step - bar.n)  # negative right after a restore moved the step back
        return val, stopping


def initial_weights(cfg, model):
    """The flat parameters of the checkpoint cfg.init_from, checked to fit `model` (a fine-tune
    may change dropout, never the shapes)."""
    base = load_checkpoint(cfg.init_from, dtype=cfg.dtype, with_optimizer=False, backend=cfg.backend, finite=True).model
    shapes = {name: p.shape for name, p in model.params.items()}
    if base.architecture != model.architecture or {name: p.shape for name, p in base.params.items()} != shapes:
        raise UserError(f"init_from {cfg.init_from}: its {base.architecture} model's parameters do not match this "
                        f"run's {model.architecture} model; fine-tune with the base run's own model settings")
    return base.flat_params


def fmt(loss):
    return "nan" if loss is None else f"{loss:.4f}"


def train(cfg, resume=False, progress=True, say=tqdm.write, dataset=None, world=LOCAL, make_optimizer=make_optimizer):
    """Train as `cfg` says (resuming the run in cfg.out when `resume`) -> TrainResult.
    Writes cfg.out/config.json, tokenizer.json, metrics.jsonl and checkpoints/.
    dataset: the data to train on (e.g. a chat.dataset.ChatDataset); None resolves cfg.data.
    world: the ranks training together (world.LOCAL; under mpirun every rank calls this with
    dist.world(), and rank 0 alone prepares data, speaks and writes). make_optimizer(cfg, model):
    the optimizer (optim.make_optimizer; dist.make_optimizer for ZeRO-1).

    The run's lock is taken first (rundir.py), before its saved config, its checkpoints or the
    data are read, and the memory a step needs is checked before the model is made."""
    if world.rank != 0:
        say = lambda msg: None  # noqa: E731
    run_dir = Path(cfg.out)
    if cfg.batch_size % (world.size * cfg.grad_accum):
        raise UserError(f"batch_size {cfg.batch_size} does not divide into {world.size} ranks x grad_accum "
                        f"{cfg.grad_accum}: batch_size is the global batch; make it a multiple of "
                        f"{world.size * cfg.grad_accum}")
    check_run_dir(run_dir, resume)
    with run_files(run_dir, world) as writer:
        # from here on no other train can rotate the checkpoints or rewrite the files read below
        if resume:
            check_resumable(run_dir, cfg)
        else:
            refuse_existing_run(run_dir)
        for link in linked_checkpoints(run_dir):
            say(f"note: {link} is a symbolic link; training neither loads nor removes it")
        world.barrier()  # every rank has checked the folder before rank 0 writes into it
        if dataset is None:
            dataset = shared_dataset(cfg, world, progress, say)
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=dataset.tokenizer.vocab_size))
        check_trainable(cfg, dataset, world)
        ckpt = load_checkpoint(run_dir, dtype=cfg.dtype, backend=cfg.backend) if resume else None
        if ckpt is not None and ckpt.tokenizer is not None and \
                ckpt.tokenizer.fingerprint() != dataset.tokenizer.fingerprint():
            raise UserError(f"--resume: the dataset {dataset.location} uses a different tokenizer than {ckpt.path}")
        trainer = Trainer(cfg, dataset, ckpt, say, world, make_optimizer)  # before anything is written
        say(f"config (saved as {run_dir / 'config.json'}):\n{format_config(cfg)}")
        if writer:
            write_json_atomic(run_dir / "config.json", cfg.to_dict())
            dataset.tokenizer.save(run_dir / "tokenizer.json")
        if resume:
            if writer:
                trim_metrics(run_dir / METRICS_FILE, trainer.step)
            say(f"resuming {run_dir} at step {trainer.step} of {cfg.max_iters}")
            if trainer.step >= cfg.max_iters:
                say(f"nothing to train: the run is at step {trainer.step} already; raise --max-iters to go on")
        elif writer:  # a run that died before its first checkpoint left these rows: not this run's
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        ranks = f", {world.size} ranks (MPI){', ZeRO-1' if cfg.zero else ''}" if world.size > 1 else ""
        say(f"model: {trainer.model.num_params():,} parameters, {cfg.dtype}; data: {dataset.describe()}, "
            f"vocab {cfg.model.vocab_size}{ranks}")
        t0 = time.perf_counter()
        val, interrupted = trainer.run(progress)
    return TrainResult(run_dir, trainer.step, interrupted, val, trainer.model, dataset.tokenizer,
                       time.perf_counter() - t0)


def shared_dataset(cfg, world, progress, say):
    """cfg.data, resolved (and prepared into the cache when it is a source spec): rank 0 prepares
    it once, then the other ranks open what it made."""
    dataset = resolve_dataset(cfg.data, cfg.tokenizer, cfg.vocab_size, progress, say) if world.rank == 0 else None
    world.barrier()
    return dataset if world.rank == 0 else resolve_dataset(cfg.data, cfg.tokenizer, cfg.vocab_size, False, say)


def check_trainable(cfg, dataset, world):
    """What must hold before the model is made: a step fits in memory (whatever the architecture:
    architectures.training_bytes) and the data is long enough."""
    micro_batch = cfg.batch_size // (world.size * cfg.grad_accum)
    check_fits(cfg.model, micro_batch, np.dtype(cfg.dtype).itemsize, train_tokens=token_count(dataset.train))
    dataset.check(cfg.model.block_size)


def token_count(split):
    """Tokens in a train split: a prepared dataset's ids (N,), or a chat dataset's (x, y) windows."""
    return split[0].size if isinstance(split, tuple) else len(split)
