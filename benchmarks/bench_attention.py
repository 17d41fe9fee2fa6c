"""Attention cost by sequence length: naive vs blocked vs tiled (online softmax), forward +
backward of the attention op alone as the reference backend has it (vintagelm/nn/), float32,
batch 1, by default the heads of the `baby` model (harness.py: 6 heads of 64).

Peak memory is what NumPy allocates during the call (tracemalloc sees NumPy's buffers),
beyond the inputs; time is the median of a few runs, measured without tracing.

    python benchmarks/bench_attention.py [--lengths 256 512 1024 2048 4096] [--threads 2]
"""
import argparse
import time
import tracemalloc

import numpy as np

from harness import BENCH_MODELS, set_threads
from vintagelm.nn.attention import attention_backward, attention_forward
from vintagelm.nn.attention_tiled import tiled_attention_backward, tiled_attention_forward
from vintagelm.nn.ops import ATTENTION_BLOCK

KINDS = {
    "naive": lambda qkv, dy, H: attention_backward(dy, attention_forward(qkv, H)[1]),
    "blocked": lambda qkv, dy, H: attention_backward(dy, attention_forward(qkv, H, chunk=ATTENTION_BLOCK)[1]),
    "tiled": lambda qkv, dy, H: tiled_attention_backward(dy, tiled_attention_forward(qkv, H)[1]),
}


def measure(kind, T, H, D, repeats):
    rng = np.random.default_rng(0)
    qkv = rng.standard_normal((1, T, 3 * H * D), dtype=np.float32)
    dy = rng.standard_normal((1, T, H * D), dtype=np.float32)
    run = KINDS[kind]
    tracemalloc.start()
    run(qkv, dy, H)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(qkv, dy, H)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times)), peak / 2**20


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    baby = BENCH_MODELS["baby"].config
    p.add_argument("--heads", type=int, default=baby.n_head)
    p.add_argument("--head-size", type=int, default=baby.n_embd // baby.n_head)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    set_threads(args.threads)
    print(f"attention forward+backward, B=1, H={args.heads}, D={args.head_size}, float32, {args.threads} threads")
    header = f"{'T':>5} " + " ".join(f"{k + ' ms':>11}" for k in KINDS) + " " + " ".join(f"{k + ' MB':>11}" for k in KINDS)
    print(header + f" {'tiled/naive mem':>16}")
    for T in args.lengths:
        res = {k: measure(k, T, args.heads, args.head_size, args.repeats) for k in KINDS}
        print(f"{T:>5} " + " ".join(f"{res[k][0]:>11.1f}" for k in KINDS) + " "
              + " ".join(f"{res[k][1]:>11.1f}" for k in KINDS) + f" {res['tiled'][1] / res['naive'][1]:>16.3f}")


if __name__ == "__main__":
    main()
