"""Training speed of this checkout against another commit of vintagelm, paired round by round.

    python benchmarks/bench_commits.py --base 4376dc5            # the commit before a change
    python benchmarks/bench_commits.py --base HEAD~3 --rounds 10 --config baby

Answers "did this change make training slower?" The base commit is checked out into a
temporary git worktree, and one worker process per side imports its own vintagelm (the base's,
or this checkout's) and trains the same model from the same seed on the same batches with an
AdamW step clipped to norm 1 (the API both sides have: GPT, forward, backward, AdamW.step
with grad_scale). The parent asks the workers for a turn of timed steps in alternating order,
so both see the same minutes of the machine; each turn starts after a pause (the other
process's OpenBLAS workers spin for ~0.1 s after its last matmul) and one untimed step. The
table gives each side's median ms per step and the paired ratio this / base per round
(median and geometric mean; above 1 is faster). Both sides run the default backend of their
version (this checkout's: `auto`, so `fast` with numba).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = {  # name -> (GPTConfig fields both versions know, batch size), as benchmarks/harness.py's
    "tiny": (dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0), 12),
    "baby": (dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.0), 8),
}
STEPS_PER_TURN = {"tiny": 10, "baby": 2}


def worker(threads):
    """One side: read `NAME STEPS` lines, answer each with the mean seconds per step (JSON)."""
    import numpy as np
    import threadpoolctl

    threadpoolctl.threadpool_limits(threads, user_api="blas")
    from vintagelm.model import GPT, GPTConfig
    from vintagelm.optim import AdamW, clip_factor, grad_norm

    trainers = {}
    for name, (fields, batch) in CONFIGS.items():
        model = GPT(GPTConfig(**fields), seed=0)
        optimizer = AdamW(model.params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
        rng = np.random.default_rng(0)
        shape = (batch, fields["block_size"])
        batches = [(rng.integers(0, 65, shape), rng.integers(0, 65, shape)) for _ in range(4)]
        trainers[name] = (model, optimizer, batches)

    def step(name, i):
        model, optimizer, batches = trainers[name]
        model.forward(*batches[i % len(batches)])
        grads = model.backward()
        optimizer.step(grads, grad_scale=clip_factor(grad_norm(grads), 1.0))

    import vintagelm

    print(json.dumps(str(Path(vintagelm.__file__).parent.parent)), flush=True)
    for line in sys.stdin:
        name, n = line.split()
        time.sleep(0.2)
        step(name, 0)  # untimed: warm caches
        t0 = time.perf_counter()
        for i in range(int(n)):
            step(name, i)
        print(json.dumps((time.perf_counter() - t0) / int(n)), flush=True)


def start_worker(root, threads):
    env = {**os.environ, "PYTHONPATH": str(root)}  # this side's vintagelm first on the path
    proc = subprocess.Popen([sys.executable, __file__, "--worker", "--threads", str(threads)], cwd=root, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    loaded_from = json.loads(proc.stdout.readline())
    if Path(loaded_from).resolve() != Path(root).resolve():
        raise SystemExit(f"the worker for {root} imported vintagelm from {loaded_from}")
    return proc


def turn(proc, name):
    proc.stdin.write(f"{name} {STEPS_PER_TURN[name]}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="the commit to compare with (any git revision)")
    ap.add_argument("--config", action="append", choices=list(CONFIGS), help="model (repeatable; default: all)")
    ap.add_argument("--rounds", type=int, default=8, help="alternating rounds (default 8; even keeps the order fair)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads of each side (default 2)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.threads)
    if not args.base or args.rounds < 1 or args.threads < 1:
        ap.error("--base REV is required; --rounds and --threads must be at least 1")
    names = args.config or list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(base_tree), args.base],
                       check=True)
        try:
            sides = {"base": start_worker(base_tree, args.threads), "this": start_worker(REPO, args.threads)}
            times = {name: {side: [] for side in sides} for name in names}
            order = list(sides)
            for _ in range(args.rounds):
                for name in names:
                    for side in order:
                        times[name][side].append(turn(sides[side], name))
                order.reverse()
            for proc in sides.values():
                proc.stdin.close()
                proc.wait()
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)], check=False)
    print(f"this checkout vs {args.base}, {args.rounds} alternating rounds, {args.threads} BLAS threads each")
    print(f"{'config':<6} {'base ms':>8} {'this ms':>8} {'this/base speed, median':>24} {'geo mean':>9}")
    for name in names:
        base, this = times[name]["base"], times[name]["this"]
        ratios = [b / t for b, t in zip(base, this)]
        print(f"{name:<6} {1000 * statistics.median(base):>8.1f} {1000 * statistics.median(this):>8.1f} "
              f"{statistics.median(ratios):>24.3f} {statistics.geometric_mean(ratios):>9.3f}")


if __name__ == "__main__":
    main()
