"""kv-cache: why generation keeps a cache of keys and values, and what the cache costs.

A model generates one token at a time. Without a cache (nanoGPT's sample.py) every new token
re-runs the whole window: the projections, MLPs and attention of all t earlier positions,
again, so the work per token grows with its position t. With the cache (kv_cache.py) each new
token computes only its own query, key and value and attends over the keys and values kept
from before: the matmuls with the weights are one row's worth, and only the attention over
the cache grows with t.

Both paths are generate.ContextWindow, the code `vintage sample` runs, on a fresh model (the
weights do not change the time). The same tokens are fed to both, one at a time, for every
position 0 .. block_size-1, so the window never restarts in the measured range; each token's
time is the median over a few passes. Their logits are compared too: the cache is a saving of
work, not an approximation.

The price is memory: per layer, a key and a value for every position, each Hkv heads of D
numbers (Hkv = H, so Hkv D = C, but for grouped-query attention, --kv-heads), so
    bytes = 2 (keys and values) * L * T * Hkv * D * itemsize        (batch 1)
measured here as the nbytes of kv_cache.KVCache (and what NumPy allocated for it) at growing
context lengths T.
"""
TITLE = "Why generation keeps a KV cache: time per token against position, and what the cache weighs"
HELP = "time per generated token vs position with and without the KV cache; the cache's bytes vs context"
QUICK = dict(n_layer=2, n_head=4, n_embd=64, block_size=128, repeats=5, lengths=[64, 128, 256, 512, 1024, 2048])
DEFAULT = dict(n_layer=4, n_head=4, n_embd=128, block_size=512, repeats=5,
               lengths=[128, 256, 512, 1024, 2048, 4096, 8192])
VOCAB = 65  # the builtin Shakespeare's characters: a char model's head


def add_arguments(p):
    p.add_argument("--block-size", type=int, metavar="T", help="context of the timed model (positions 0..T-1)")
    p.add_argument("--repeats", type=int, metavar="N", help="passes over the positions; each token's time is their median")
    p.add_argument("--kv-heads", type=int, metavar="N",
                   help="key/value heads, dividing the 4 query heads (default 4; fewer: grouped-query attention)")


def run(args, page):
    import numpy as np

    from vintagelm.common import UserError
    from vintagelm.lab.measure import bar, power_fit
    from vintagelm.model import GPT, GPTConfig

    size = dict(QUICK if args.quick else DEFAULT)
    for key, least in (("block_size", 2), ("repeats", 1), ("kv_heads", 1)):
        if getattr(args, key) is not None:
            if getattr(args, key) < least:
                raise UserError(f"--{key.replace('_', '-')} must be at least {least}")
            size[key] = getattr(args, key)
    try:
        config = GPTConfig(vocab_size=VOCAB, block_size=size["block_size"], n_layer=size["n_layer"],
                           n_head=size["n_head"], n_embd=size["n_embd"], n_kv_head=size.get("kv_heads", 0))
    except ValueError as e:  # kv heads that do not divide the query heads
        raise UserError(f"--kv-heads {args.kv_heads}: {e}") from None
    model = GPT(config, seed=args.seed).eval()
    T, repeats = config.block_size, size["repeats"]

    tokens = generated_tokens(model, T, args.seed)  # warms up both paths too (JIT, buffers)
    with bar(2 * repeats * T, "kv-cache", not args.no_progress) as progress:
        cached, cached_logits = time_positions(model, tokens, True, repeats, progress)
        uncached, uncached_logits = time_positions(model, tokens, False, repeats, progress)
    logit_gap = float(np.max(np.abs(cached_logits - uncached_logits)))

    positions = list(range(T))
    cache_ms, plain_ms = [1000 * s for s in cached], [1000 * s for s in uncached]
    slope_cache, slope_plain = (float(np.polyfit(positions, ms, 1)[0]) * 100 for ms in (cache_ms, plain_ms))
    memory = cache_bytes(config, size["lengths"], model.dtype)
    own_bytes = int(model.new_kv_cache().nbytes)
    memory_exponent = power_fit(memory["lengths"], memory["nbytes"])[0]

    page.results.update(
        model=dict(config.to_dict(), params=model.num_params(), backend=model.backend, dtype=np.dtype(model.dtype).name),
        repeats=repeats,
        timing=dict(positions=positions, cache_ms=cache_ms, no_cache_ms=plain_ms,
                    cache_ms_per_100_positions=slope_cache, no_cache_ms_per_100_positions=slope_plain,
                    cache_total_s=sum(cached), no_cache_total_s=sum(uncached),
                    speedup_at_longest=plain_ms[-1] / cache_ms[-1]),
        max_logit_difference=logit_gap,
        memory=dict(memory, exponent=memory_exponent, model_cache_bytes=own_bytes,
                    model_cache_formula_bytes=formula_bytes(config, T, model.dtype)),
    )
    draw_timing(page, positions, cache_ms, plain_ms, config)
    draw_memory(page, memory, memory_exponent, config)
    tables(page, positions, cache_ms, plain_ms, memory)
    say(page, page.results, config)


def generated_tokens(model, n, seed):
    """n token ids the model samples from a one-token prompt (batch 1) -> list of ints. The
    timed passes replay them, so both paths see exactly the same text."""
    import numpy as np

    from vintagelm.generate import ContextWindow, sample_next_token

    rng = np.random.default_rng([seed, 5])
    tokens = [0]
    ctx = ContextWindow(model, tokens, use_kv_cache=True)
    while len(tokens) < n:
        token = int(sample_next_token(ctx.logits()[None], rng)[0])
        tokens.append(token)
        ctx.append(token)
    ContextWindow(model, tokens, use_kv_cache=False).logits()  # one full window: the no-cache path warmed up
    return tokens


def time_positions(model, tokens, use_kv_cache, repeats, progress):
    """Feed tokens one at a time through a ContextWindow, `repeats` times -> (seconds per
    position: the median over the passes, (T,) list; the logits (T, V) after each token).
    Position t is the token that makes the window t + 1 long; with the cache its call is a
    forward of that one token, without it a forward of all t + 1."""
    import time

    import numpy as np

    from vintagelm.generate import ContextWindow

    seconds = np.empty((repeats, len(tokens)))  # (passes, T)
    logits = None
    for r in range(repeats):
        ctx = ContextWindow(model, tokens[:1], use_kv_cache)
        rows = []
        for t in range(len(tokens)):
            if t:
                ctx.append(tokens[t])
            t0 = time.perf_counter()
            rows.append(ctx.logits())  # (V,)
            seconds[r, t] = time.perf_counter() - t0
            progress.update(1)
        logits = np.stack(rows)  # (T, V), the same every pass
    return [float(s) for s in np.median(seconds, axis=0)], logits


def formula_bytes(config, length, dtype):
    """2 (k and v) * L * T * Hkv * D * itemsize: the cache of one sequence of `length` positions."""
    import numpy as np

    return 2 * config.n_layer * length * config.kv_heads * config.head_dim * np.dtype(dtype).itemsize


def cache_bytes(config, lengths, dtype):
    """For each context length: the nbytes of a KVCache shaped as the model's own (new_kv_cache:
    its kv heads) but that long, what NumPy allocated while making one (tracemalloc), and the
    formula -> dict of lists."""
    from vintagelm.kv_cache import KVCache
    from vintagelm.lab.measure import peak_bytes

    def make(T):
        return KVCache(config.n_layer, 1, config.kv_heads, T, config.head_dim, dtype)

    nbytes, allocated = [], []
    for T in lengths:
        cache = make(T)
        nbytes.append(int(cache.nbytes))
        del cache
        allocated.append(int(peak_bytes(lambda: make(T))))
    return dict(lengths=list(lengths), nbytes=nbytes, allocated_bytes=allocated,
                formula_bytes=[formula_bytes(config, T, dtype) for T in lengths])


def draw_timing(page, positions, cache_ms, plain_ms, config):
    fig, axes = page.figure("time_per_token", f"Time to compute the next token's logits at each position "
                            f"({config.n_layer} layers x {config.n_embd} wide, block {config.block_size}; "
                            "median of the passes): linear, and log scale to show the cached line", ncols=2)
    for ax, scale in zip(axes, ("linear", "log")):
        ax.plot(positions, plain_ms, lw=1, label="no cache: a forward over the whole window")
        ax.plot(positions, cache_ms, lw=1, label="KV cache: a forward of the new token only")
        ax.set(xlabel="position of the new token", ylabel="milliseconds per token", yscale=scale)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylim(0, None)
    axes[0].legend()


def draw_memory(page, memory, exponent, config):
    fig, ax = page.figure("cache_bytes", f"KV cache size against context length ({config.n_layer} layers x "
                          f"{config.kv_heads} kv heads of {config.head_dim}, batch 1), log-log")
    mib = [b / 2**20 for b in memory["nbytes"]]
    ax.loglog(memory["lengths"], mib, "o", ms=7, label=f"k.nbytes + v.nbytes (T^{exponent:.2f})")
    ax.loglog(memory["lengths"], [b / 2**20 for b in memory["allocated_bytes"]], "x", ms=9,
              label="allocated by NumPy (tracemalloc)")
    ax.loglog(memory["lengths"], [b / 2**20 for b in memory["formula_bytes"]], "-", lw=1,
              label="2 L T Hkv D itemsize")
    ax.set(xlabel="context length T", ylabel="MiB")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)


def tables(page, positions, cache_ms, plain_ms, memory):
    T = len(positions)
    shown = sorted({0, T // 8, T // 4, T // 2, 3 * T // 4, T - 1})
    page.table("milliseconds per token at some positions", ["position", "no cache", "KV cache", "speed-up"],
               [[t, f"{plain_ms[t]:.3f}", f"{cache_ms[t]:.3f}", f"{plain_ms[t] / cache_ms[t]:.1f}x"] for t in shown])
    page.table("KV cache bytes against context length", ["T", "k + v nbytes", "allocated", "2 L T Hkv D itemsize"],
               list(zip(memory["lengths"], memory["nbytes"], memory["allocated_bytes"], memory["formula_bytes"])))


def say(page, r, config):
    t, m = r["timing"], r["memory"]
    last = len(t["positions"]) - 1
    page.say(f"At position {last} a token took {t['no_cache_ms'][-1]:.2f} ms without the cache and "
             f"{t['cache_ms'][-1]:.2f} ms with it, {t['speedup_at_longest']:.1f}x "
             f"{'faster' if t['speedup_at_longest'] > 1 else 'slower'} with the cache; generating all "
             f"{last + 1} positions took {t['no_cache_total_s']:.2f} s against {t['cache_total_s']:.2f} s.")
    plain, cached = t["no_cache_ms_per_100_positions"], t["cache_ms_per_100_positions"]
    page.say(f"Without the cache the time per token grew by {plain:.3f} ms every 100 positions, because each token "
             f"re-runs every earlier position through all {config.n_layer} layers; with the cache "
             + (f"by {cached:.3f} ms ({plain / cached:.0f}x less), " if cached > 0.01 * plain else
                f"it hardly moved ({cached:+.4f} ms), ")
             + "since only the new token's attention over the cached keys gets longer.")
    gap = r["max_logit_difference"]
    page.say(f"The two paths' logits differed by at most {gap:.1e}: "
             + ("float32 rounding, so the cache saves work and changes nothing." if gap < 1e-3 else
                "more than rounding explains, so the cached path computes something else: a bug to chase."))
    exact = all(a == b for a, b in zip(m["nbytes"], m["formula_bytes"]))
    page.say(f"The cache grew as T^{m['exponent']:.2f} and its arrays "
             f"{'matched' if exact else 'did not match'} 2 L T Hkv D itemsize at every length: "
             f"{m['formula_bytes'][0] // m['lengths'][0]:,} bytes per position for this model, "
             f"{m['nbytes'][-1] / 2**20:.1f} MiB at T = {m['lengths'][-1]}; the model's own new_kv_cache() "
             f"holds {m['model_cache_bytes'] / 2**20:.2f} MiB for its {config.block_size} positions.")
    if config.kv_heads < config.n_head:
        page.say(f"Its {config.n_head} query heads share {config.kv_heads} key/value heads (grouped-query "
                 f"attention), so the cache is {config.n_head // config.kv_heads}x smaller than with a key and a "
                 "value per query head.")
