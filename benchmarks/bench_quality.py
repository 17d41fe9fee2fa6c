"""Quality benchmark: nanoGPT's CPU recipe on tiny shakespeare, vintagelm vs the team's torch
reference GPT, one after the other in this one process.

Recipe (nanoGPT README, "I only have a macbook"): character level, first 90% train / last 10%
validation, the benchmarks' `tiny` model and batch (harness.py: 4 layers, 4 heads, 128 wide,
block 64, batch 12) without biases (nanoGPT's train.py default), 2000 iterations, lr 1e-3 with
100 warm-up steps and cosine decay to 1e-4, AdamW betas (0.9, 0.99), weight decay 0.1
(matrices and embeddings), clip 1.0, dropout 0. Both implementations start from the same
weights and see the same batches. vintagelm trains with vintagelm.train.training_step, the
step `vintage train` runs (the clip factor folded into AdamW's pass); the torch reference
(tests/torch_gpt.py) clips, then steps (harness.torch_training_step). Wall time covers the
training steps only; the final validation loss is the mean over every non-overlapping block of
the validation split (deterministic, no sampling noise).

Two vintagelm rows: the recipe as is (same 2000 iterations as torch: the two must agree to
float32 rounding), and a time-matched run that gets the torch run's wall time as its budget:
its iteration count is that budget divided by vintagelm's measured time per iteration (with
5% to spare), and the same schedule (warm-up, cosine to min_lr) is stretched over it.

    python benchmarks/bench_quality.py [--data ../shared/data/tinyshakespeare.txt] [--iters 2000]
"""
import argparse
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from harness import BENCH_MODELS, blas_kernel, load_torch_reference, set_threads, torch_adamw, torch_training_step
from vintagelm import GPT
from vintagelm.optim import AdamW, lr_at
from vintagelm.train import training_step

HERE = Path(__file__).resolve().parent
TINY = BENCH_MODELS["tiny"]
BETAS, WEIGHT_DECAY, GRAD_CLIP = (0.9, 0.99), 0.1, 1.0


def load_chars(path):
    text = Path(path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    ids = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lut = np.zeros(max(map(ord, chars)) + 1, dtype=np.int64)
    lut[[ord(c) for c in chars]] = np.arange(len(chars))
    data = lut[ids]
    n = int(0.9 * len(data))
    return data[:n], data[n:], len(chars)


def batches(train, iters, batch_size, block_size, seed):
    """The same list of (x, y) batches for both implementations."""
    rng = np.random.default_rng(seed)
    for _ in range(iters):
        starts = rng.integers(0, len(train) - block_size - 1, batch_size)
        x = np.stack([train[s : s + block_size] for s in starts])
        y = np.stack([train[s + 1 : s + 1 + block_size] for s in starts])
        yield x, y


def val_blocks(val, block_size, batch_size):
    n = (len(val) - 1) // block_size
    x = val[: n * block_size].reshape(n, block_size)
    y = val[1 : n * block_size + 1].reshape(n, block_size)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)]


def schedule(step, args, iters=None):
    return lr_at(step, learning_rate=args.lr, min_lr=args.min_lr, warmup_iters=args.warmup,
                 lr_decay_iters=iters or args.iters)


def train_vintagelm(config, init_params, data, args):
    model = GPT(config, seed=args.seed)
    model.flat_params[:] = init_params
    opt = AdamW(model.params, lr=args.lr, betas=BETAS, weight_decay=WEIGHT_DECAY)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(data):
        training_step(model, opt, [(x, y)], schedule(step, args, len(data)), GRAD_CLIP)
    wall = time.perf_counter() - t0
    model.eval()
    losses = [model.forward(x, y)[1] * x.size for x, y in args.val]
    return sum(losses) / sum(x.size for x, _ in args.val), wall


def train_torch(torch_gpt, config, init_params, data, args):
    torch = torch_gpt.torch
    model = torch_gpt.TorchGPT.from_numpy(config, init_params, dtype=torch.float32)
    opt, _ = torch_adamw(model, args.lr, BETAS, WEIGHT_DECAY)
    t0 = time.perf_counter()
    for step, (x, y) in enumerate(data):
        torch_training_step(model, opt, x, y, schedule(step, args), GRAD_CLIP)
    wall = time.perf_counter() - t0
    with torch.no_grad():
        losses = [model(torch.from_numpy(x), torch.from_numpy(y))[1].item() * x.size for x, y in args.val]
    return sum(losses) / sum(x.size for x, _ in args.val), wall


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(HERE.parent.parent / "shared/data/tinyshakespeare.txt"))
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    args = p.parse_args()
    # loaded first: a checkout without tests/ or torch fails here, not after vintagelm's run
    torch_gpt = None if args.skip_torch else load_torch_reference()
    set_threads(args.threads)  # (after importing torch, so that its threads are set too)
    train, val, vocab = load_chars(args.data)
    config = replace(TINY.config, vocab_size=vocab, bias=False)
    init = GPT(config, seed=args.seed)
    args.val = val_blocks(val, config.block_size, 64)
    data = list(batches(train, args.iters, TINY.batch_size, config.block_size, args.seed))

    print(f"tiny shakespeare, char level: {len(train):,} train / {len(val):,} val chars, vocab {vocab}")
    print(f"model {config.n_layer}L/{config.n_head}H/{config.n_embd}, block {config.block_size}, "
          f"batch {TINY.batch_size}, {args.iters} iterations; {args.threads} threads; "
          f"BLAS {blas_kernel()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    rows = [("vintagelm", args.iters, *train_vintagelm(config, init.flat_params.copy(), data, args))]
    if torch_gpt is not None:
        rows.append((f"torch {torch_gpt.torch.__version__} eager", args.iters,
                     *train_torch(torch_gpt, config, dict(init.params), data, args)))
        budget = rows[1][3]
        iters = int(0.95 * budget / (rows[0][3] / args.iters))
        matched = list(batches(train, iters, TINY.batch_size, config.block_size, args.seed))
        rows.append(("vintagelm, torch's time", iters, *train_vintagelm(config, init.flat_params.copy(), matched, args)))
    print(f"\n{'implementation':<24} {'iters':>6} {'val loss':>9} {'wall s':>8} {'ms/iter':>8}")
    for name, iters, loss, wall in rows:
        print(f"{name:<24} {iters:>6} {loss:>9.4f} {wall:>8.1f} {1000 * wall / iters:>8.1f}")
    if len(rows) == 3:
        print(f"\nsame recipe: wall-time ratio torch / vintagelm = {rows[1][3] / rows[0][3]:.2f}; "
              f"val loss {rows[0][2]:.4f} vs {rows[1][2]:.4f}")
        print(f"in torch's wall time ({rows[1][3]:.0f} s): vintagelm val loss {rows[2][2]:.4f} in {rows[2][3]:.0f} s "
              f"(target <= 1.88); ln(vocab) = {math.log(vocab):.3f}")


if __name__ == "__main__":
    main()
