"""Data-parallel training over MPI on this machine: tokens/s with 1 and 2 ranks (1 BLAS thread
each) against 1 process with 2 BLAS threads; seconds per step spent communicating; optimizer
bytes per rank with and without ZeRO-1; and a projection, on paper, of the speed-up at 8 and
64 ranks from the measured compute and communication and a stated network.

    python benchmarks/bench_mpi.py [--model tiny|baby] [--optimizer adamw|muon] [--steps 30] [--bandwidth-gbit 10]

The driver starts each configuration as its own job (mpirun for the MPI ones); a worker times
`training_step` (train.py's own) and the time spent inside the collectives, and rank 0 prints
one JSON line. Synthetic token ids: the data does not change the arithmetic.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from harness import BENCH_MODELS

HERE = os.path.abspath(__file__)


def worker(args):
    from vintagelm.common import set_blas_threads
    from vintagelm.dist import make_optimizer, world
    from vintagelm.model import GPT
    from vintagelm.train import training_step
    from vintagelm.train_config import TrainConfig

    set_blas_threads(args.threads)
    w = world()
    bench = BENCH_MODELS[args.model]
    cfg, B = bench.config, bench.batch_size * 2  # a global batch both ranks can halve
    model = GPT(cfg, seed=0, backend="fast")
    # `vintage train`'s own choice: ZeroAdamW / ZeroMuon with zero=1 on several ranks, else AdamW / Muon
    settings = TrainConfig(optimizer=args.optimizer, learning_rate=1e-3, beta2=0.99, weight_decay=0.1,
                           zero=int(args.zero), backend="fast")
    optimizer = make_optimizer(settings, model, w)
    if hasattr(optimizer, "optimizer_bytes"):  # ZeroAdamW, ZeroMuon: this rank's share
        optimizer_bytes = optimizer.optimizer_bytes()
    else:
        optimizer_bytes = sum(a.nbytes for k, a in optimizer.state_dict().items() if k != "t")
    comm = [0.0]  # seconds inside collectives (the loss mean, the gradient average or ZeRO's step)

    def timed(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                comm[0] += time.perf_counter() - t0
        return wrapper

    if w.size > 1:
        w.average, w.mean = timed(w.average), timed(w.mean)
        if args.zero:  # ZeroAdamW reduces and steps in step_sharded; ZeroMuon shares parameters in step
            name = "step_sharded" if optimizer.sharded else "step"
            setattr(optimizer, name, timed(getattr(optimizer, name)))
    rng = np.random.default_rng(0)
    per = B // w.size
    batches = [rng.integers(0, cfg.vocab_size, (B, cfg.block_size + 1)) for _ in range(args.steps + 3)]
    for i, batch in enumerate(batches):
        if i == 3:  # three warm-up steps (compilation, first allocations)
            w.barrier()
            comm[0], t0 = 0.0, time.perf_counter()
        mine = batch[w.rank * per:(w.rank + 1) * per]
        training_step(model, optimizer, [(mine[:, :-1], mine[:, 1:])], 1e-3, 1.0, w)
    w.barrier()
    seconds = time.perf_counter() - t0
    comm_s = w.mean(comm[0]) if w.size > 1 else 0.0
    if w.rank == 0:
        print(json.dumps({"ranks": w.size, "threads": args.threads, "zero": args.zero,
                          "tokens_per_s": args.steps * B * cfg.block_size / seconds,
                          "step_s": seconds / args.steps, "comm_s": comm_s / args.steps,
                          "optimizer_bytes": optimizer_bytes, "grad_bytes": model.flat_grads.nbytes,
                          "params": model.num_params()}))


def run_config(args, ranks, threads, zero):
    command = [sys.executable, HERE, "--worker", "--model", args.model, "--optimizer", args.optimizer,
               "--steps", str(args.steps), "--threads", str(threads)] + (["--zero"] if zero else [])
    if ranks > 1:
        launcher = shutil.which("mpirun")
        if launcher is None:
            sys.exit("mpirun not found: install Open MPI (Debian: apt-get install openmpi-bin)")
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        command = [launcher, *root, "--oversubscribe", "-n", str(ranks), "--bind-to", "none"] + command
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    # rank 0's one JSON line; Open MPI may add lines of its own (colour resets "\x1b[0m")
    line = next(x for x in reversed(done.stdout.splitlines()) if x.lstrip().startswith("{"))
    return json.loads(line[line.index("{"):line.rindex("}") + 1])


def projection(one, two, ranks, bandwidth, latency):
    """Speed-up at `ranks` with the global batch fixed: compute per rank shrinks as 1/N, a ring
    Allreduce moves 2 (N-1)/N of the gradient bytes per rank and pays 2 (N-1) latencies."""
    compute = one["step_s"]  # 1 rank, 1 thread: the whole batch's compute
    comm = 2 * (ranks - 1) / ranks * one["grad_bytes"] / bandwidth + 2 * (ranks - 1) * latency
    return compute / (compute / ranks + comm), comm


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(BENCH_MODELS), default="tiny")
    p.add_argument("--optimizer", choices=["adamw", "muon"], default="adamw",
                   help="AdamW (default), or Muon with AdamW for the rest; ZeRO-1 then shards by whole parameters")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--zero", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--bandwidth-gbit", type=float, default=10.0, help="network for the projection (default 10 Gbit/s)")
    p.add_argument("--latency-us", type=float, default=20.0, help="per-message latency for the projection (default 20 us)")
    args = p.parse_args()
    if args.worker:
        return worker(args)
    from vintagelm.lab.measure import machine

    print(f"machine: {machine()}; model {args.model}, {args.optimizer}, {args.steps} timed steps each")
    runs = {"1 rank x 2 threads": run_config(args, 1, 2, False),
            "1 rank x 1 thread": run_config(args, 1, 1, False),
            "2 ranks x 1 thread": run_config(args, 2, 1, False),
            "2 ranks x 1 thread, ZeRO-1": run_config(args, 2, 1, True)}
    base = runs["1 rank x 2 threads"]["tokens_per_s"]
    print(f"{'configuration':<28} {'tokens/s':>10} {'vs 1x2':>7} {'step ms':>8} {'comm ms':>8} {'optimizer MiB/rank':>19}")
    for name, r in runs.items():
        print(f"{name:<28} {r['tokens_per_s']:>10,.0f} {r['tokens_per_s'] / base:>7.2f} {1000 * r['step_s']:>8.1f} "
              f"{1000 * r['comm_s']:>8.2f} {r['optimizer_bytes'] / 2**20:>19.2f}")
    one, two = runs["1 rank x 1 thread"], runs["2 ranks x 1 thread"]
    bandwidth, latency = args.bandwidth_gbit * 1e9 / 8, args.latency_us * 1e-6
    print(f"\nprojection (global batch fixed, {one['params']:,} parameters = {one['grad_bytes'] / 2**20:.2f} MiB of "
          f"gradients, ring Allreduce over {args.bandwidth_gbit:g} Gbit/s with {args.latency_us:g} us latency, "
          f"compute {1000 * one['step_s']:.1f} ms per step on 1 rank):")
    for n in (2, 8, 64):
        speedup, comm = projection(one, two, n, bandwidth, latency)
        print(f"  {n:>3} ranks: {1000 * comm:.2f} ms communication per step, speed-up {speedup:.1f}x "
              f"(ideal {n}x; efficiency {100 * speedup / n:.0f}%)")


if __name__ == "__main__":
    main()
