"""attention-cost: why attention is expensive, and what blocked and tiled attention change.

One attention layer (the op alone: scores, mask, softmax, weighted sum), forward + backward,
at growing context lengths T, for the three variants the model has (nn/ops.py):
    naive    the whole (T, T) score matrix per head, kept for the backward pass
    blocked  query blocks that skip the masked keys: less work, the same (T, T) memory
    tiled    online softmax over tiles (flash attention's idea): memory linear in T
Peak memory is what NumPy allocated during the call (tracemalloc), time the median of a few
calls. A power law fitted to each curve gives its growth exponent: ~2 for the score matrix,
~1 for the tiled variant's memory.
"""
TITLE = "Why attention is expensive: time and memory against context length"
HELP = "time and peak memory of attention forward+backward vs context length: naive, blocked, tiled"
QUICK = dict(lengths=[64, 128, 256, 512], heads=2, head_size=32, repeats=1)
DEFAULT = dict(lengths=[128, 256, 512, 1024, 2048, 4096], heads=6, head_size=64, repeats=3)


def add_arguments(p):
    p.add_argument("--lengths", type=int, nargs="+", metavar="T", help="context lengths to measure")


def run(args, page):
    import numpy as np

    from vintagelm.lab.measure import bar, median_seconds, peak_bytes, power_fit
    from vintagelm.nn.attention import attention_backward, attention_forward
    from vintagelm.nn.attention_tiled import tiled_attention_backward, tiled_attention_forward
    from vintagelm.nn.ops import ATTENTION_BLOCK

    size = dict(QUICK if args.quick else DEFAULT)
    if args.lengths:
        size["lengths"] = sorted(args.lengths)
    H, D, lengths = size["heads"], size["head_size"], size["lengths"]
    variants = {
        "naive": lambda qkv, dy: attention_backward(dy, attention_forward(qkv, H)[1]),
        "blocked": lambda qkv, dy: attention_backward(dy, attention_forward(qkv, H, chunk=ATTENTION_BLOCK)[1]),
        "tiled": lambda qkv, dy: tiled_attention_backward(dy, tiled_attention_forward(qkv, H)[1]),
    }
    measured = {name: {"seconds": [], "peak_mib": []} for name in variants}
    rng = np.random.default_rng(args.seed)
    with bar(len(lengths) * len(variants), "attention-cost", not args.no_progress) as progress:
        for T in lengths:
            qkv = rng.standard_normal((1, T, 3 * H * D), dtype=np.float32)  # (B, T, 3C)
            dy = rng.standard_normal((1, T, H * D), dtype=np.float32)  # (B, T, C)
            for name, call in variants.items():
                measured[name]["peak_mib"].append(peak_bytes(lambda: call(qkv, dy)) / 2**20)
                measured[name]["seconds"].append(median_seconds(lambda: call(qkv, dy), size["repeats"]))
                progress.update(1)

    fits = {}
    for name, m in measured.items():
        fits[name] = {"time_exponent": power_fit(lengths, m["seconds"])[0],
                      "memory_exponent": power_fit(lengths, m["peak_mib"])[0]}
    page.results.update(heads=H, head_size=D, lengths=lengths, measured=measured, fits=fits)

    fig, (ax_t, ax_m) = page.figure("attention_cost", "Forward + backward of one attention layer "
                                    f"({H} heads of {D}), log-log", ncols=2)
    for name, m in measured.items():
        ax_t.loglog(lengths, [1000 * s for s in m["seconds"]], "o-", label=f"{name} (T^{fits[name]['time_exponent']:.2f})")
        ax_m.loglog(lengths, m["peak_mib"], "o-", label=f"{name} (T^{fits[name]['memory_exponent']:.2f})")
    ax_t.set(xlabel="context length T", ylabel="milliseconds", title="time")
    ax_m.set(xlabel="context length T", ylabel="peak MiB allocated", title="memory")
    for ax in (ax_t, ax_m):
        ax.set_xticks([], minor=True)  # the measured lengths are the ticks: log's minor labels overlap
        ax.set_xticks(lengths, [str(T) for T in lengths])
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)

    rows = [[T] + [f"{1000 * measured[n]['seconds'][i]:.2f} ms / {measured[n]['peak_mib'][i]:.2f} MiB"
                   for n in variants] for i, T in enumerate(lengths)]
    page.table("time / peak memory per context length", ["T", *variants], rows)
    page.table("fitted growth exponents (y ~ T^a)", ["variant", "time a", "memory a"],
               [[n, f"{f['time_exponent']:.2f}", f"{f['memory_exponent']:.2f}"] for n, f in fits.items()])

    n, t = fits["naive"], fits["tiled"]
    last = len(lengths) - 1
    page.say(f"Naive attention's memory grew as T^{n['memory_exponent']:.2f}: it keeps a score matrix of T x T "
             f"entries per head, so doubling the context about quadruples it "
             f"({measured['naive']['peak_mib'][last]:.1f} MiB at T = {lengths[last]}).")
    page.say(f"Tiled attention's memory grew as T^{t['memory_exponent']:.2f}: it never holds the whole matrix, "
             f"only one tile at a time and a running maximum and sum per row, so at T = {lengths[last]} it needed "
             f"{measured['tiled']['peak_mib'][last]:.1f} MiB, "
             f"{measured['naive']['peak_mib'][last] / measured['tiled']['peak_mib'][last]:.1f}x less than naive.")
    page.say(f"Time grows faster than T for all three (naive T^{n['time_exponent']:.2f}, blocked "
             f"T^{fits['blocked']['time_exponent']:.2f}, tiled T^{t['time_exponent']:.2f}): every query still looks "
             f"at every earlier key. Blocked attention skips the masked half of the work; tiling saves memory, "
             f"not arithmetic. At T = {lengths[last]} blocked took "
             f"{measured['blocked']['seconds'][last] / measured['naive']['seconds'][last]:.2f}x the naive time.")
