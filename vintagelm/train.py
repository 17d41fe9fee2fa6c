"""The training loop: batches -> loss -> gradients -> clip -> AdamW, with evaluation,
metrics, checkpoints, exact resume and a guard against non-finite steps.

One step (`Trainer.train_step`): draw a batch of B windows from the train split, cut it into
`grad_accum` micro-batches, accumulate their gradients (scaled so the result is the gradient
of the whole batch's mean loss), clip to the global norm, and let AdamW update the weights
at the warm-up + cosine learning rate. A step whose loss or gradient is not finite is skipped;
after `max_bad_steps` in a row the last checkpoint (or the seed's initial state) is restored
and the learning rate is halved, for the rest of the run and across resumes.

Numbering: `step` counts completed optimizer steps. The metrics line for step s holds the
training loss of the batch that step s used (measured before its update) and, on evaluation
steps, the validation loss after it. Checkpoint step_000500 holds the state after 500 steps.

Determinism: the seed makes four independent generators, never the global one:
[seed, 0] initial weights and [seed, 1] dropout (both in model.GPT), [seed, 2] the order of
training batches, [seed, 3] the validation batches (re-made at every evaluation, so every
estimate uses the same batches and evaluating never moves the training data).
A checkpoint stores the dropout and batch generators' states, so a resumed run continues
bit for bit as if it had never stopped.

This file does not parse arguments (commands/train.py) or define the model (model.py).
"""
import hashlib
import json
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vintagelm.checkpoint import find_latest, list_checkpoints, load_checkpoint, read_state, save_checkpoint
from vintagelm.common import UserError, atomic_path, cache_root, write_json_atomic
from vintagelm.config import TrainConfig, format_config, resume_conflicts
from vintagelm.data.loader import get_batch, load_dataset, sequential_batches
from vintagelm.model import GPT
from vintagelm.optim import AdamW, clip_factor, grad_norm, lr_at


# ---------------------------------------------------------------- data
def resolve_dataset(data, tokenizer="char", vocab_size=0, progress=True, log=print):
    """A prepared dataset folder, or a source spec prepared once into the cache, keyed by
    (source, tokenizer, vocab size), and reused by later runs -> PreparedDataset."""
    from vintagelm.data.prepare import prepare_dataset

    if (Path(data) / "meta.json").is_file():
        return load_dataset(data)
    # a local path is keyed by its absolute form, so the same relative name elsewhere differs
    source = str(Path(data).resolve()) if Path(data).exists() else data
    tok_key = tokenizer
    if tokenizer not in ("char", "bpe"):
        from vintagelm.tokenizers import load_tokenizer

        tok_key = load_tokenizer(tokenizer).fingerprint()
    key = json.dumps([source, tok_key, vocab_size])
    folder = cache_root() / "datasets" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if (folder / "meta.json").is_file():
        log(f"data: {data} (cached in {folder}; delete that folder to prepare it again)")
    else:
        log(f"data: preparing {data} with the {tokenizer} tokenizer into {folder}")
        prepare_dataset([data], tokenizer, folder, vocab_size=vocab_size or None, progress=progress)
    return load_dataset(folder)


# ---------------------------------------------------------------- gradients and evaluation
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


def token_byte_lengths(tokenizer):
    """(V,) UTF-8 length of every token id; 0 for special tokens, which stand for no text."""
    special = set(tokenizer.special_tokens.values())
    return np.array([0 if i in special else len(tokenizer.decode_bytes([i])) for i in range(tokenizer.vocab_size)])


def evaluate_batches(model, batches, byte_lengths):
    """Loss over (x, y) batches with dropout off -> dict(loss, perplexity, bits_per_byte,
    tokens, bytes). loss is the mean over every target token; bits per byte counts the text
    only: nats of the ordinary targets / (their UTF-8 bytes * ln 2), special tokens excluded."""
    was_training = model.training
    model.eval()
    nats = text_nats = 0.0
    n_tokens = n_bytes = 0
    try:
        for x, y in batches:
            logits, _ = model.forward(x)  # (b, T, V)
            z = logits.astype(np.float64)
            zmax = z.max(axis=-1, keepdims=True)  # subtract the max for a stable log-sum-exp
            lse = np.log(np.exp(z - zmax).sum(axis=-1)) + zmax[..., 0]  # (b, T)
            nll = lse - np.take_along_axis(z, y[..., None], axis=-1)[..., 0]  # (b, T) nats
            nbytes = byte_lengths[y]  # (b, T)
            nats += nll.sum()
            text_nats += nll[nbytes > 0].sum()
            n_tokens += y.size
            n_bytes += int(nbytes.sum())
    finally:
        model.train(was_training)
    if n_tokens == 0:
        raise UserError("nothing to evaluate: no complete window of block_size + 1 tokens")
    loss = nats / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": text_nats / (n_bytes * math.log(2)) if n_bytes else float("nan"),
        "tokens": n_tokens,
        "bytes": n_bytes,
    }


def estimate_val(model, val, batch_size, n_batches, seed, byte_lengths):
    """Validation estimate over n_batches random windows, the same windows every time."""
    rng = np.random.default_rng([seed, 3])
    T = model.config.block_size
    return evaluate_batches(model, (get_batch(val, batch_size, T, rng) for _ in range(n_batches)), byte_lengths)


def evaluate_split(model, tokens, tokenizer, batch_size=16, max_batches=None, progress=False):
    """Every token of `tokens` once, in consecutive windows of block_size (see
    loader.sequential_batches) -> evaluate_batches' dict."""
    T = model.config.block_size
    total = -(-((len(tokens) - 1) // T) // batch_size)  # ceil(windows / batch_size)
    batches = tqdm(sequential_batches(tokens, batch_size, T, max_batches), total=min(total, max_batches or total),
                   desc="eval", unit="batch", disable=None if progress else True, leave=False)
    return evaluate_batches(model, batches, token_byte_lengths(tokenizer))


# ---------------------------------------------------------------- Ctrl-C
@contextmanager
def stop_on_interrupt(say):
    """While active, Ctrl-C (SIGINT) only raises a flag that the loop checks between steps,
    so a step is never cut in half; the loop then saves a checkpoint and returns. A second
    Ctrl-C gets Python's usual KeyboardInterrupt (the checkpoints on disk stay intact)."""
    flag = threading.Event()
    # signal handlers can only be installed from the main thread; and a SIGINT that was
    # ignored when we started (nohup, `&` in a non-interactive shell) stays ignored
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        flag.set()
        signal.signal(signal.SIGINT, previous)
        say("\nCtrl-C: finishing this step, then saving a checkpoint and stopping (Ctrl-C again quits at once)")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


# ---------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    run_dir: Path
    step: int  # steps completed
    interrupted: bool  # stopped by Ctrl-C (a checkpoint was saved)
    val: dict  # the last evaluation (evaluate_batches' dict), or None
    model: GPT
    tokenizer: object
    seconds: float


class Trainer:
    """Holds the model, optimizer, generators and counters of one run; `run()` trains."""

    def __init__(self, cfg, dataset, ckpt=None, say=tqdm.write):
        self.cfg, self.data, self.say = cfg, dataset, say
        self.run_dir = Path(cfg.out)
        self.byte_lengths = token_byte_lengths(dataset.tokenizer)
        self.load(ckpt)

    def load(self, ckpt):
        """Take model, optimizer, generators and counters from a Checkpoint, or make them
        fresh from the seed when ckpt is None (the state at step 0)."""
        cfg = self.cfg
        self.model = ckpt.model if ckpt else GPT(cfg.model, seed=cfg.seed, dtype=np.dtype(cfg.dtype))
        self.optimizer = AdamW(self.model.params, cfg.learning_rate, (cfg.beta1, cfg.beta2),
                               weight_decay=cfg.weight_decay)
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
            self.lr_scale = float(ckpt.state["train"]["lr_scale"])
            self.bad_steps = int(ckpt.state["train"]["bad_steps"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{state_file} lacks the training state ({e!r}); "
                            "it was not written by `vintage train`") from None
        self.step = ckpt.step

    def save(self):
        cfg = self.cfg
        train_state = {
            "train_config": cfg.to_dict(),
            "rng": {"data": self.data_rng.bit_generator.state},
            "train": {"lr_scale": self.lr_scale, "bad_steps": self.bad_steps},
            "data": {"dataset": str(self.data.path), "tokenizer_fingerprint": self.data.tokenizer.fingerprint()},
        }
        return save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, train_state,
                               self.data.tokenizer, cfg.keep_checkpoints)

    def lr(self, step):
        cfg = self.cfg
        peak = lr_at(step, max_lr=cfg.learning_rate, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_iters,
                     decay_steps=cfg.lr_decay_iters or cfg.max_iters)
        return peak * self.lr_scale

    def train_step(self):
        """One optimizer step (or a skipped one) -> its metrics row."""
        cfg, model = self.cfg, self.model
        lr = self.lr(self.step)
        x, y = get_batch(self.data.train, cfg.batch_size, cfg.model.block_size, self.data_rng)  # (B, T) each
        micro = list(zip(np.split(x, cfg.grad_accum), np.split(y, cfg.grad_accum)))  # k x (B/k, T)
        loss = accumulate_gradients(model, micro)
        if self.step == 0:
            self.check_initial_loss(loss)
        norm = grad_norm(model.grads)  # before clipping; nan/inf: the step is skipped
        self.step += 1
        row = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm}
        if math.isfinite(loss) and math.isfinite(norm):
            # clipping: the optimizer reads the gradients times this factor
            self.optimizer.step(model.grads, lr=lr, grad_scale=clip_factor(norm, cfg.grad_clip or math.inf))
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
                     f"initialisation (init={self.cfg.model.init!r}) or the data may be wrong")

    def recover(self, row):
        """Too many non-finite steps in a row: back to the last checkpoint, half the lr."""
        latest = find_latest(self.run_dir)
        bad, scale = self.bad_steps, self.lr_scale / 2
        self.load(load_checkpoint(latest, dtype=self.cfg.dtype) if latest else None)
        self.lr_scale = scale
        row.update(restored_step=self.step, lr_scale=scale)
        where = f"checkpoint {latest}" if latest else "the initial weights (no checkpoint yet)"
        self.say(f"{bad} non-finite steps in a row: restored {where} at step {self.step} and halved the "
                 f"learning rate: now {scale:g} x the schedule (peak {self.cfg.learning_rate * scale:.3g})")

    def evaluate(self):
        micro = self.cfg.batch_size // self.cfg.grad_accum  # the memory a training micro-batch needs
        return estimate_val(self.model, self.data.val, micro, self.cfg.eval_iters, self.cfg.seed, self.byte_lengths)

    def run(self, progress=True):
        """Train until max_iters or Ctrl-C -> (last evaluation dict or None, interrupted)."""
        cfg = self.cfg
        tokens_per_step = cfg.batch_size * cfg.model.block_size
        val, metrics_file = None, self.run_dir / "metrics.jsonl"
        # disable=None: a bar only on a terminal, none in a log file
        bar = tqdm(total=cfg.max_iters, initial=self.step, desc="train", unit="step",
                   disable=None if progress else True, dynamic_ncols=True)
        with bar, open(metrics_file, "a", encoding="utf-8") as metrics, stop_on_interrupt(self.say) as stop:
            while self.step < cfg.max_iters and not stop.is_set():
                t0 = time.perf_counter()
                row = self.train_step()
                row["tokens_per_s"] = tokens_per_step / (time.perf_counter() - t0)
                last = self.step == cfg.max_iters
                if self.step % cfg.eval_interval == 0 or last:
                    val = self.evaluate()
                    row.update(val_loss=val["loss"], val_bpb=val["bits_per_byte"])
                    self.say(f"step {self.step}: train loss {fmt(row['loss'])}, "
                             f"val loss {val['loss']:.4f}, val {val['bits_per_byte']:.3f} bits/byte")
                metrics.write(json.dumps(row) + "\n")
                metrics.flush()
                if self.step % cfg.checkpoint_interval == 0 or last or stop.is_set():
                    self.save()
                if self.step % cfg.log_interval == 0 or last:
                    bar.set_postfix(loss=fmt(row["loss"]), lr=f"{row['lr']:.2e}",
                                    tok_s=f"{row['tokens_per_s']:.0f}", refresh=False)
                bar.update(self.step - bar.n)  # negative right after a restore moved the step back
        return val, stop.is_set()


def fmt(loss):
    return "nan" if loss is None else f"{loss:.4f}"


def saved_config(run_dir):
    """The TrainConfig a run was trained with (from its latest checkpoint)."""
    latest = find_latest(run_dir)
    if latest is None:
        raise UserError(f"--resume: no checkpoint to resume in {Path(run_dir) / 'checkpoints'}")
    state = read_state(latest / "state.json")
    if "train_config" not in state:
        raise UserError(f"{latest / 'state.json'} has no train_config; it was not written by `vintage train`")
    return TrainConfig.from_dict(state["train_config"], source=str(latest / "state.json"))


def trim_metrics(file, step):
    """Drop metrics lines after `step` (written after the checkpoint a run resumes from) and a
    partial last line, so the file reads as one uninterrupted run."""
    if not file.is_file():
        return
    kept = []
    for line in file.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_path(file) as tmp:
        tmp.write_text("".join(kept), encoding="utf-8")


def train(cfg, resume=False, progress=True, say=tqdm.write):
    """Train as `cfg` says (resuming the run in cfg.out when `resume`) -> TrainResult.
    Writes cfg.out/config.json, tokenizer.json, metrics.jsonl and checkpoints/."""
    run_dir = Path(cfg.out)
    ckpt = None
    if resume:
        conflicts = resume_conflicts(saved_config(run_dir), cfg)
        if conflicts:
            raise UserError(f"--resume: these settings differ from the run in {run_dir} ({'; '.join(conflicts)}); "
                            "only max_iters and the logging/checkpoint settings may change on resume; "
                            "drop the other flags or train into a new --out")
        ckpt = load_checkpoint(find_latest(run_dir), dtype=cfg.dtype)
    elif list_checkpoints(run_dir):
        raise UserError(f"{run_dir} already holds a run (latest {find_latest(run_dir).name}); pass --resume to "
                        "continue it, or choose a new --out")

    dataset = resolve_dataset(cfg.data, cfg.tokenizer, cfg.vocab_size, progress, say)
    cfg = replace(cfg, model=replace(cfg.model, vocab_size=dataset.tokenizer.vocab_size))
    fingerprint = dataset.tokenizer.fingerprint()
    if ckpt is not None and ckpt.tokenizer is not None and ckpt.tokenizer.fingerprint() != fingerprint:
        raise UserError(f"--resume: the dataset {dataset.path} uses a different tokenizer than {ckpt.path}")
    say(f"config (saved as {run_dir / 'config.json'}):\n{format_config(cfg)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "config.json", cfg.to_dict())
    dataset.tokenizer.save(run_dir / "tokenizer.json")
    trainer = Trainer(cfg, dataset, ckpt, say)
    if resume:
        trim_metrics(run_dir / "metrics.jsonl", trainer.step)
        say(f"resuming {run_dir} at step {trainer.step} of {cfg.max_iters}")
    say(f"model: {trainer.model.num_params():,} parameters, {cfg.dtype}; data: "
        f"{len(dataset.train):,} train / {len(dataset.val):,} val tokens, vocab {cfg.model.vocab_size}")
    t0 = time.perf_counter()
    val, interrupted = trainer.run(progress)
    return TrainResult(run_dir, trainer.step, interrupted, val, trainer.model, dataset.tokenizer,
                       time.perf_counter() - t0)


def sample_text(model, tokenizer, n_tokens, seed, write):
    """Sample n_tokens from an empty prompt (a fresh document), passing each piece of text to
    `write` as it arrives; returns the whole text."""
    from vintagelm.generate import TextStream, encode_prompt, generate

    stream, pieces = TextStream(tokenizer), []
    rng = np.random.default_rng([seed, 4])
    # temperature 0.8, as `vintage sample`: a little sharper than the model, fewer misspellings
    for token in generate(model, encode_prompt(tokenizer, ""), n_tokens, rng, temperature=0.8):
        pieces.append(stream.push(token))
        write(pieces[-1])
    pieces.append(stream.finish())
    write(pieces[-1])
    return "".join(pieces)
