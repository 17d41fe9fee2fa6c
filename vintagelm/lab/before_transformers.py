"""museum (before_transformers): the language models before the transformer, on the same text, budget and measuring stick.

Five architectures (architectures.ARCHITECTURES) get the same wall-clock budget on the same corpus
(builtin Shakespeare, character level) and are measured in bits per byte on the same
validation windows:
    ngram   interpolated Kneser-Ney counts (museum/ngram.py). Its "training" is model.fit()
            over the WHOLE train split, which takes about a second, far inside the budget;
            fits on growing prefixes of the split (each from scratch, each timed) give its
            curve of bits per byte against time.
    mlp     Bengio 2003: a fixed window of embeddings, a tanh layer, a softmax
    rnn     Elman 1990: one tanh recurrence, truncated BPTT with the state carried across
            consecutive windows (carry_state, read in order with loader.stream_batch, as
            `vintage train` does for a recurrent model)
    lstm    1997 with a forget gate: the same, gated
    gpt     the project's transformer
The neural models have roughly equal parameter counts (MODELS: 134k-175k); the n-gram's size
is whatever the text makes its tables. Every neural model trains in the lab's short_run
(train.py's training_step: AdamW, gradient clipping) at one peak learning rate (1e-2, better than 3e-3
for all four in 30-second trials) with a warm-up and a cosine decay over the wall-clock
budget; the GPT on the `auto` backend, as `vintage train` (--backend changes it). The budget
counts only the training steps: validation (every few seconds of training) is paused time,
and one throwaway step on a separate model first keeps one-time costs (numba compilation,
first allocations) out of it.

Then, from the trained models:
    samples       1000 characters each, the same seed, temperature 0.8 (generate.py), the
                  end-of-text token banned so that every sample has its full length; the page
                  shows the first 200 of each
    copying       the share of each sample's 8-grams (of characters: the tokenizer is char
                  level) found verbatim in the training text, over all 1000 characters (200
                  give only 193 8-grams, a share too noisy to rank models by), looked up in
                  the sorted keys of every training 8-gram; held-out Shakespeare (the val
                  split) is the reference
    vanishing     ||dLoss_T / dh_t||, the gradient of the loss at the LAST position of a window
                  with respect to the hidden state at every earlier position t, for the
                  trained RNN and LSTM and for freshly initialised copies (same config and
                  seed), by the models' own BPTT functions (state_gradient_norms)
    cost          the time of one decoding step (a forward of one new token through the
                  model's cache) at positions 1 ... L, on untrained models of the same shapes
                  (weights do not change the arithmetic): constant for a recurrent state,
                  growing for the GPT's KV cache, whose every new query reads all cached keys
"""
TITLE = "The museum: n-gram, MLP, RNN, LSTM and GPT on the same text, budget and measuring stick"
HELP = ("ngram, mlp, rnn, lstm, gpt trained for the same wall time: bits per byte vs time, parameters and "
        "FLOPs; samples, copying, vanishing gradients, cost per generated token")
ARCHS = ("ngram", "mlp", "rnn", "lstm", "gpt")
NEURAL = ARCHS[1:]
# config fields per architecture (vocab_size and block_size come from the corpus and the size)
MODELS = {
    "ngram": dict(order=5),
    "mlp": dict(context=8, n_embd=32, hidden=384),  # 134k parameters
    "rnn": dict(n_embd=256, carry_state=True),  # 175k
    "lstm": dict(n_embd=128, carry_state=True),  # 153k
    "gpt": dict(n_layer=3, n_head=4, n_embd=64),  # 160k
}
QUICK = dict(seconds=4.0, block_size=64, batch_size=16, lr=1e-2, warmup=10, eval_seconds=1.0, eval_batches=8,
             ngram_prefixes=3, sample_chars=1000, shown_chars=200, grad_windows=8, cost_length=2048,
             cost_repeats=15)
DEFAULT = dict(seconds=150.0, block_size=64, batch_size=16, lr=1e-2, warmup=50, eval_seconds=10.0,
               eval_batches=32, ngram_prefixes=6, sample_chars=1000, shown_chars=200, grad_windows=16,
               cost_length=4096, cost_repeats=40)
COPY_N = 8  # the n of the verbatim-copy test: an 8-character run is rarely a coincidence
GRAD_CLIP = 1.0
MIN_LR_RATIO = 0.1
MAX_STEPS = 10**9  # the clock ends every run long before this
TEMPERATURE = 0.8  # as `vintage sample` and generate.sample_text


def add_arguments(p):
    p.add_argument("--seconds", type=float, metavar="S",
                   help="training wall time per architecture (quick 4, default 150)")
    p.add_argument("--order", type=int, choices=(3, 4, 5), help="the n-gram's order (default 5)")
    p.add_argument("--lr", type=float, help="peak learning rate of every neural model (default 1e-2)")
    p.add_argument("--backend", choices=("auto", "reference", "fast"), default="auto",
                   help="the GPT's ops (default auto: fast when numba is installed, as `vintage train`); "
                        "the museum models have one NumPy implementation")


def run(args, page):
    from vintagelm.common import UserError
    from vintagelm.evaluate import token_byte_lengths
    from vintagelm.lab.measure import bar
    from vintagelm.lab.short_run import corpus

    size = dict(QUICK if args.quick else DEFAULT)
    if args.seconds is not None:
        size["seconds"] = args.seconds
    if args.lr is not None:
        size["lr"] = args.lr
    if size["seconds"] <= 0 or size["lr"] <= 0:
        raise UserError("--seconds and --lr must be positive")
    models = {arch: dict(fields) for arch, fields in MODELS.items()}
    if args.order is not None:
        models["ngram"]["order"] = args.order
    data = corpus(progress=not args.no_progress)
    byte_lengths = token_byte_lengths(data.tokenizer)
    configs = {arch: make_config(arch, data.tokenizer.vocab_size, size["block_size"], fields)
               for arch, fields in models.items()}

    measured = {}
    with bar(round(len(NEURAL) * size["seconds"]), "museum: training", not args.no_progress, unit="s") as progress:
        ngram_model, measured["ngram"] = count_ngram(configs["ngram"], data, size, args.seed, byte_lengths)
        trained = {"ngram": ngram_model}
        for arch in NEURAL:
            trained[arch], measured[arch] = train_for(configs[arch], data, size, args.seed, args.backend, progress)
    samples = sample_all(trained, data.tokenizer, size["sample_chars"], args.seed)
    copying = copy_shares(data, samples, COPY_N)
    vanishing = {arch: vanishing_gradients(trained[arch], configs[arch], data, size["grad_windows"], args.seed)
                 for arch in ("rnn", "lstm")}
    cost = generation_cost(trained, configs, data.val[: size["cost_length"]], size["cost_repeats"], args.seed,
                           args.backend)

    for arch in ARCHS:
        measured[arch].update(sample=samples[arch]["text"], copy_share=copying["samples"][arch],
                              ms_per_token=cost["ms"][arch], cost_growth=cost["growth"][arch])
    ngram_bpb = measured["ngram"]["val_bpb"]
    for arch in NEURAL:
        measured[arch]["seconds_to_beat_ngram"] = first_time_below(measured[arch]["curve"], ngram_bpb)
    page.results.update(size=size, corpus={"source": "builtin:shakespeare", "tokenizer": "char",
                                           "vocab_size": data.tokenizer.vocab_size, "train_tokens": len(data.train),
                                           "val_tokens": len(data.val)},
                        architectures=measured, copying={k: v for k, v in copying.items() if k != "samples"},
                        vanishing=vanishing, generation_cost={"positions": cost["positions"]},
                        documented_nones={
                            "architectures.*.val_bpb": "a run that diverged (none did unless the page says so)",
                            "architectures.*.seconds_to_beat_ngram": "never reached the n-gram's bits per byte",
                        })
    draw_race(page, measured, size)
    draw_samples_figure(page, measured, size["shown_chars"])
    draw_copying(page, measured, copying)
    draw_vanishing(page, vanishing)
    draw_cost(page, measured, cost)
    write_tables(page, measured, vanishing, size)
    interpret(page, measured, copying, vanishing, cost, size)


# ---------------------------------------------------------------- models and training
def make_config(arch, vocab_size, block_size, fields):
    from vintagelm.architectures import model_class

    return model_class(arch).config_class(vocab_size=vocab_size, block_size=block_size, **fields)


def count_ngram(config, data, size, seed, byte_lengths):
    """Fit the n-gram on prefixes of the train split, each 4x the one before, the last one the
    whole split -> (the whole-split model, its measurements). Each fit starts from nothing and is timed;
    its curve point is (that fit's seconds, bits per byte on the validation windows)."""
    import time

    import numpy as np

    from vintagelm.lab.short_run import validate
    from vintagelm.museum.ngram import NgramLM

    n_train = len(data.train)
    curve = []
    for k in reversed(range(size["ngram_prefixes"])):
        tokens = np.asarray(data.train[: n_train >> (2 * k)])  # 1/4^k of the split, k = ..., 1, 0
        model = NgramLM(config, seed=seed)
        t0 = time.perf_counter()
        model.fit(tokens)
        seconds = time.perf_counter() - t0
        _, bpb = validate(model, data, size["batch_size"], size["eval_batches"], seed, byte_lengths)
        curve.append(dict(seconds=seconds, tokens=len(tokens), bpb=float(bpb)))
    return model, dict(config=model.config.to_dict(), params=model.num_params(), ngrams=model.num_ngrams(),
                       flops_per_token=model.flops_per_token(), training_flops=0, steps=0,
                       train_seconds=curve[-1]["seconds"], val_bpb=curve[-1]["bpb"], diverged=False,
                       backend="numpy", curve=curve)


def time_lr(step, elapsed, size):
    """Linear warm-up over the first steps, then half a cosine over the wall-clock budget down
    to MIN_LR_RATIO of the peak: the schedule of train.py (optim.lr_at) with time for steps."""
    import math

    peak, warmup = size["lr"], size["warmup"]
    if step < warmup:
        return peak * (step + 1) / (warmup + 1)
    progress = min(1.0, elapsed / size["seconds"])
    return peak * (MIN_LR_RATIO + (1.0 - MIN_LR_RATIO) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def train_for(config, data, size, seed, backend, progress):
    """Train a fresh model of `config` for size["seconds"] of training-step wall time
    (short_run) -> (the model, its measurements). The curve holds (training seconds, steps,
    FLOPs, bits per byte) at the start and after every eval_seconds of training; a run that
    diverges ends early, with val_bpb None."""
    from functools import partial

    from vintagelm.lab.short_run import Validation, short_run

    B, T = size["batch_size"], config.block_size
    settings = dict(batch_size=B, seed=seed, grad_clip=GRAD_CLIP, backend=backend)
    # one throwaway step on a model of its own: compilation and first allocations are not the budget's
    short_run(config, data, 1, size["lr"], **settings)
    record = short_run(config, data, MAX_STEPS, size["lr"], **settings, seconds=size["seconds"],
                       lr_of=partial(time_lr, size=size), progress=progress,
                       validation=Validation(seconds=size["eval_seconds"], batches=size["eval_batches"], at_start=True))
    model, steps = record.model, len(record.losses)
    curve = [dict(seconds=p.seconds, steps=p.step, flops=float(model.flops_per_token() * B * T * p.step),
                  bpb=float(p.bpb)) for p in record.val]
    implementation = model.backend if model.architecture == "gpt" else "numpy"  # the museum's have one
    return model, dict(config=config.to_dict(), params=record.params, flops_per_token=model.flops_per_token(),
                       training_flops=record.flops, steps=steps, train_seconds=record.seconds,
                       val_bpb=None if record.diverged else curve[-1]["bpb"], diverged=record.diverged,
                       backend=implementation, curve=curve)


def first_time_below(curve, target):
    """The training seconds at which a curve first reached `target` bits per byte, or None."""
    return next((p["seconds"] for p in curve if p["bpb"] <= target), None)


# ---------------------------------------------------------------- samples and copying
def sample_all(models, tokenizer, n_chars, seed):
    """arch -> {"ids", "text"}: n_chars new tokens from an empty prompt (a fresh document),
    each model with the same seed and temperature, as generate.sample_text draws them, except
    that the end-of-text token is banned with the other special tokens rather than ending
    the sample: every sample is n_chars characters long, so their copy shares compare."""
    import numpy as np

    from vintagelm.generate import encode_prompt, generate

    banned = sorted(tokenizer.special_tokens.values())
    out = {}
    for arch, model in models.items():
        ids = list(generate(model, encode_prompt(tokenizer, ""), n_chars, np.random.default_rng([seed, 4]),
                            temperature=TEMPERATURE, banned_ids=banned))
        out[arch] = {"ids": ids, "text": tokenizer.decode(ids)}
    return out


def sorted_ngram_keys(tokens, n, vocab_size):
    """tokens (N,) -> the sorted distinct keys of its n-grams (ngram.ngram_keys: base V numbers)."""
    import numpy as np

    from vintagelm.museum.ngram import ngram_keys

    return np.unique(ngram_keys(np.asarray(tokens, dtype=np.int64), n, vocab_size))


def copy_share(tokens, known, n, vocab_size):
    """The share of the n-grams of `tokens` whose key is in the sorted array `known` (None when
    `tokens` is shorter than n)."""
    import numpy as np

    from vintagelm.museum.ngram import ngram_keys

    keys = ngram_keys(np.asarray(tokens, dtype=np.int64), n, vocab_size)
    if keys.size == 0:
        return None
    at = np.minimum(np.searchsorted(known, keys), known.size - 1)
    return float(np.mean(known[at] == keys))


def copy_shares(data, samples, n):
    """How much of each sample (and, for reference, of the val split) is verbatim training text."""
    V = data.tokenizer.vocab_size
    known = sorted_ngram_keys(data.train, n, V)  # (K,) every distinct training n-gram, once
    return dict(n=n, training_ngrams=int(known.size), val_share=copy_share(data.val, known, n, V),
                samples={arch: copy_share(s["ids"], known, n, V) for arch, s in samples.items()})


# ---------------------------------------------------------------- gradient through time
def state_gradient_norms(model, x, y):
    """||dLoss_T / dh_t|| for t = 0 .. T-1: the gradient of the loss at the LAST position of
    each window with respect to the hidden state h_t of a one-layer RNNLM or LSTMLM, in
    float64, from a zero initial state -> (T,) mean over the windows.

    x, y (B, T): windows and their targets. The model's own layer_forward / layer_backward
    do the work. The gradient enters at h_{T-1} only (dhs is zero elsewhere: only the last
    position's loss counts), and BPTT carries it back. The layer's backward returns
    dx_t = da_t W_xhᵀ, the gradient of its input; handed a cache whose W_xh is W_hh, it
    returns da_t W_hhᵀ instead, exactly what h_{t-1} receives from step t through the
    recurrence. Since h_{t-1} has no other consumer once dhs is zero there,
        dLoss_T / dh_{T-1} = dhs[:, T-1],    dLoss_T / dh_{t-1} = da_t W_hhᵀ for t >= 1.
    For the LSTM this is the gradient of h_t alone, its cell c_t held fixed (the cell's own
    gradient flows inside the backward, along the gated path, and reaches h_t through da).
    The weight gradients it accumulates on the way are those of a float64 copy, thrown away."""
    import numpy as np

    from vintagelm.architectures import model_for

    if model.config.n_layer != 1:
        raise ValueError("state_gradient_norms reads a one-layer recurrent model")
    copy = model_for(model.config)(model.config, dtype=np.float64)
    copy.flat_params[...] = model.flat_params
    P = copy.params
    B, T = x.shape
    zero = copy.new_kv_cache(B).state[0]  # the one layer's zero state, (h,) or (h, c), each (B, C)
    hs, cache, _ = copy.layer_forward(P["wte.weight"][x], zero, 0)  # (B, T, C)
    logits = hs[:, -1] @ P["lm_head.weight"] + P["lm_head.bias"]  # (B, V) the last position only
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(B), y[:, -1]] -= 1.0  # dLoss_T / dlogits_T of each window's cross-entropy
    dhs = np.zeros_like(hs)
    dhs[:, -1] = p @ P["lm_head.weight"].T  # (B, C)
    through = copy.layer_backward(dhs, cache._replace(w_xh=cache.w_hh), 0)  # (B, T, C) da_t W_hhᵀ
    dh = np.concatenate([through[:, 1:], dhs[:, -1:]], axis=1)  # (B, T, C) dLoss_T / dh_t
    return np.linalg.norm(dh, axis=2).mean(axis=0)  # (T,)


def vanishing_gradients(model, config, data, n_windows, seed):
    """The trained model's and a fresh copy's (same config and seed) gradient norms through
    time on n_windows fixed validation windows of block_size."""
    import numpy as np

    from vintagelm.architectures import model_for

    x, y = data.batch("val", n_windows, config.block_size, np.random.default_rng([seed, 5]))
    out = {"window": config.block_size, "windows": n_windows}
    for name, m in (("trained", model), ("init", model_for(config)(config, seed=seed))):
        norms = state_gradient_norms(m, x, y)
        out[name] = [float(v) for v in norms]
        out[f"{name}_ratio"] = float(norms[0] / norms[-1])  # earliest position / last
    return out


# ---------------------------------------------------------------- generation cost
def decoding_step(model, tokens, position):
    """-> a function that runs one decoding step at `position` (1-based): the forward of token
    position-1 through a cache already holding the tokens before it, the same step at every call.

    The cache is filled once (one batched forward); each call first puts its attributes back
    (a shallow copy suffices: a forward REPLACES the recurrent state and histories, and a KV
    cache step overwrites the same slot with the same keys)."""
    import numpy as np

    cache = model.new_kv_cache()
    if position > 1:
        model.forward(np.asarray(tokens[None, : position - 1]), kv_cache=cache)
    saved = dict(vars(cache))
    new = np.asarray(tokens[None, position - 1 : position])  # (1, 1)

    def step():
        vars(cache).update(saved)
        model.forward(new, kv_cache=cache)

    return step


def step_seconds(model, tokens, positions, repeats):
    """-> the median seconds of one decoding step at each position. The positions take turns
    within each of the `repeats` rounds, so a busy moment of a shared machine falls on all of
    them alike rather than on one position's measurements."""
    import time

    import numpy as np

    steps = [decoding_step(model, tokens, p) for p in positions]
    for step in steps:  # warm-up
        step()
    seconds = np.empty((repeats, len(steps)))  # (rounds, positions)
    for r in range(repeats):
        for i, step in enumerate(steps):
            t0 = time.perf_counter()
            step()
            seconds[r, i] = time.perf_counter() - t0
    return np.median(seconds, axis=0)


def generation_cost(trained, configs, text, repeats, seed, backend):
    """ms per new token at positions 1 ... L = len(text) for every architecture, decoding the
    tokens of `text` (L,): the fitted n-gram itself, untrained copies of the neural models with
    block_size = L (the GPT's positions and cache must reach it; the others have no positions)."""
    from dataclasses import replace

    import numpy as np

    from vintagelm.architectures import model_for

    tokens = np.asarray(text, dtype=np.int64)
    length = len(tokens)
    # the first powers of two, then eighths of the length: dense where a cache is small, even further on
    positions = sorted({1 << k for k in range(7) if 1 << k < length // 8} | {length * k // 8 for k in range(1, 9)})
    ms, growth = {}, {}
    for arch in ARCHS:
        if arch == "ngram":
            model = trained[arch]
        else:
            config = replace(configs[arch], block_size=length)
            model = model_for(config)(config, seed=seed, backend=backend)
        model.eval()
        ms[arch] = [1000 * float(t) for t in step_seconds(model, tokens, positions, repeats)]
        growth[arch] = ms[arch][-1] / ms[arch][0]  # time at the longest context / at the first
    return dict(positions=positions, ms=ms, growth=growth)


# ---------------------------------------------------------------- figures, tables, sentences
COLORS = {"ngram": "#8c6d31", "mlp": "#7b4173", "rnn": "#d62728", "lstm": "#1f77b4", "gpt": "#2ca02c"}
NAMES = {"ngram": "n-gram", "mlp": "MLP (2003)", "rnn": "RNN (1990)", "lstm": "LSTM (1997)",
         "gpt": "GPT (2017)"}


def label(arch, m):
    return f"{m['config']['order']}-gram (Kneser-Ney)" if arch == "ngram" else NAMES[arch]


def draw_race(page, measured, size):
    from matplotlib.ticker import NullFormatter

    fig, (ax_t, ax_n, ax_f) = page.figure(
        "race", f"Validation bits per byte (the same {size['eval_batches']} x {size['batch_size']} windows of "
        f"{size['block_size']} characters) against training wall time, parameters and training FLOPs. The n-gram "
        "is fitted on growing prefixes of the train split (each point one fit, timed) and its whole-split fit is "
        "the dashed line; the neural curves start from about log2 V bits at step 0, above the frame. The n-gram's "
        "FLOPs are 0 (counting does no floating-point training work): it is left off the log-scale FLOPs axis.",
        ncols=3, size=(5.2, 4.2))
    ng = measured["ngram"]
    for arch, m in measured.items():
        c = COLORS[arch]
        if arch == "ngram":
            ax_t.plot([p["seconds"] for p in m["curve"]], [p["bpb"] for p in m["curve"]], "s", color=c,
                      label=f"{label(arch, m)} fits")
            ax_t.axhline(m["val_bpb"], color=c, ls="--", lw=1, label="its whole-split fit")
        else:
            ax_t.plot([p["seconds"] for p in m["curve"]], [p["bpb"] for p in m["curve"]], "-", color=c,
                      label=label(arch, m))
            later = m["curve"][1:]  # step 0 has spent no FLOPs: not on a log axis
            ax_f.plot([p["flops"] for p in later], [p["bpb"] for p in later], "-", color=c, label=label(arch, m))
        if m["val_bpb"] is not None:
            ax_n.plot(m["params"], m["val_bpb"], "o", color=c, ms=8, label=label(arch, m))
            ax_n.annotate(f"{m['params'] / 1e3:,.0f}k", (m["params"], m["val_bpb"]), xytext=(6, -3),
                          textcoords="offset points", fontsize=8)
    ax_f.axhline(ng["val_bpb"], color=COLORS["ngram"], ls="--", lw=1, label="n-gram's bits per byte (0 FLOPs)")
    trained = [p["bpb"] for m in measured.values() for p in m["curve"][1:]]  # every point after step 0
    ax_t.set_ylim(min(trained) - 0.1, max(trained) + 0.2)
    ax_t.set(xlabel="training wall time (s)", ylabel="validation bits per byte", title="against time")
    ax_n.set(xscale="log", xlabel="parameters (n-gram: numbers in its tables)", ylabel="bits per byte at the budget",
             title="against parameters")
    ax_f.set(xscale="log", xlabel="training FLOPs spent", ylabel="validation bits per byte", title="against FLOPs")
    for ax in (ax_t, ax_n, ax_f):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    for ax in (ax_n, ax_f):
        ax.xaxis.set_minor_formatter(NullFormatter())  # the 2x10^5 ... labels of a log axis overlap


def draw_samples_figure(page, measured, shown):
    import textwrap

    fig, axes = page.figure("samples", f"Samples side by side (their first {shown} characters): the same seed, "
                            "temperature 0.8, from an empty prompt; the title gives the share of the 8-grams of "
                            "the whole sample found verbatim in the training text",
                            ncols=len(ARCHS), size=(3.4, 3.0))
    for ax, arch in zip(axes, ARCHS):
        m = measured[arch]
        lines = [textwrap.fill(line, 34) for line in m["sample"][:shown].split("\n")]
        # parse_math=False: a sample is text, and two "$" in it would otherwise be read as mathtext
        ax.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7,
                transform=ax.transAxes, parse_math=False)
        ax.set_title(f"{label(arch, m)}\ncopied 8-grams {percent(m['copy_share'])}", fontsize=9)
        ax.axis("off")


def draw_copying(page, measured, copying):
    fig, ax = page.figure("copying", f"Share of each sample's {copying['n']}-grams of characters that occur "
                          f"verbatim in the training text ({copying['training_ngrams']:,} distinct training "
                          f"{copying['n']}-grams); the dashed line is held-out Shakespeare (the val split)")
    shares = [measured[a]["copy_share"] for a in ARCHS]
    ax.bar([label(a, measured[a]) for a in ARCHS], shares, color=[COLORS[a] for a in ARCHS])
    ax.axhline(copying["val_share"], color="black", ls="--", lw=1, label="held-out Shakespeare")
    ax.set(ylabel=f"share of {copying['n']}-grams found in training text", ylim=(0, 1))
    ax.tick_params(axis="x", labelsize=8)
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)


def draw_vanishing(page, vanishing):
    T = vanishing["rnn"]["window"]
    fig, ax = page.figure("vanishing", f"||dLoss_T / dh_t||: how much of the last position's loss gradient "
                          f"reaches the hidden state t steps earlier, over {vanishing['rnn']['windows']} validation "
                          f"windows of {T} characters (trained: solid; freshly initialised: dashed)")
    back = list(range(T - 1, -1, -1))  # steps before the last position, for t = 0 .. T-1
    for arch in ("rnn", "lstm"):
        v = vanishing[arch]
        ax.semilogy(back, v["trained"], "-", color=COLORS[arch], label=f"{NAMES[arch]} trained")
        ax.semilogy(back, v["init"], "--", color=COLORS[arch], label=f"{NAMES[arch]} at init")
    ax.set(xlabel="steps back from the last position (T-1-t)", ylabel="gradient norm")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)


def draw_cost(page, measured, cost):
    fig, (ax_ms, ax_rel) = page.figure(
        "generation_cost", "Time of one decoding step (one new token through the model's cache) at growing context "
        "positions, median of repeats; right, as a multiple of the model's own time at position 1. A recurrent "
        "state, an n-gram history or an MLP window cost the same at every position; every new token of the GPT "
        "reads its whole KV cache", ncols=2)
    positions = cost["positions"]
    for arch in ARCHS:
        ms = measured[arch]["ms_per_token"]
        ax_ms.semilogy(positions, ms, "o-", ms=4, color=COLORS[arch], label=label(arch, measured[arch]))
        ax_rel.plot(positions, [t / ms[0] for t in ms], "o-", ms=4, color=COLORS[arch],
                    label=label(arch, measured[arch]))
    ax_ms.set(xlabel="position of the new token", ylabel="ms per token", title="time per token")
    ax_rel.set(xlabel="position of the new token", ylabel="time / time at position 1", title="growth")
    for ax in (ax_ms, ax_rel):
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)


def percent(share):
    return "—" if share is None else f"{100 * share:.0f}%"


def write_tables(page, measured, vanishing, size):
    positions = page.results["generation_cost"]["positions"]
    rows = []
    for arch in ARCHS:
        m = measured[arch]
        bpb = "diverged" if m["diverged"] else f"{m['val_bpb']:.3f}"
        flops = "0 (counting)" if arch == "ngram" else f"{m['training_flops']:.3g}"
        beat = "—" if arch == "ngram" else ("never" if m["seconds_to_beat_ngram"] is None
                                          else f"{m['seconds_to_beat_ngram']:.0f} s")
        rows.append([label(arch, m), bpb, f"{m['params']:,}", m["steps"], f"{m['train_seconds']:.1f}", flops,
                     beat, percent(m["copy_share"]), f"{m['ms_per_token'][0]:.3f}", f"{m['ms_per_token'][-1]:.3f}"])
    page.table(f"Every architecture at a budget of {size['seconds']:g} s of training (the n-gram: one fit of the "
               "whole train split, steps 0)",
               ["architecture", "val bits/byte", "parameters", "steps", "train s", "training FLOPs",
                "passed the n-gram at", "8-grams copied", "ms/token at 1", f"ms/token at {positions[-1]}"], rows)
    page.table("Gradient through time: ||dLoss_T / dh_0|| / ||dLoss_T / dh_T-1|| over a window of "
               f"{vanishing['rnn']['window']}",
               ["model", "trained", "freshly initialised"],
               [[NAMES[a], f"{vanishing[a]['trained_ratio']:.3g}", f"{vanishing[a]['init_ratio']:.3g}"]
                for a in ("rnn", "lstm")])
    shown = size["shown_chars"]
    page.table(f"The samples, their first {shown} characters (⏎ marks a newline; the copy share is of the whole "
               f"{size['sample_chars']})", ["architecture", "8-grams copied", "sample"],
               [[label(a, measured[a]), percent(measured[a]["copy_share"]),
                 measured[a]["sample"][:shown].replace("\n", " ⏎ ")] for a in ARCHS])


def interpret(page, measured, copying, vanishing, cost, size):
    done = [a for a in ARCHS if measured[a]["val_bpb"] is not None]
    ranked = sorted(done, key=lambda a: measured[a]["val_bpb"])
    best, second = ranked[0], ranked[1:2]  # no second when every neural run diverged
    bpb = {a: measured[a]["val_bpb"] for a in done}
    ng = measured["ngram"]
    order = ", ".join(f"{label(a, measured[a])} {bpb[a]:.3f}" for a in ranked)
    diverged = [NAMES[a] for a in ARCHS if measured[a]["diverged"]]
    margin = "".join(f", {bpb[a] - bpb[best]:.3f} below {label(a, measured[a])}" for a in second)
    page.say(f"With {size['seconds']:g} s of training each, {label(best, measured[best])} reached the lowest "
             f"validation bits per byte, {bpb[best]:.3f}{margin} (ranking: {order})."
             + (f" {', '.join(diverged)} diverged." if diverged else ""))
    neural = [a for a in NEURAL if a in bpb]
    passed = sorted((measured[a]["seconds_to_beat_ngram"], a) for a in neural
                    if measured[a]["seconds_to_beat_ngram"] is not None)
    params = [measured[a]["params"] for a in neural]
    page.say(f"The {ng['config']['order']}-gram spent {ng['train_seconds']:.1f} s of its budget counting all "
             f"{ng['curve'][-1]['tokens']:,} training characters; "
             + (f"the first neural model to pass its {bpb['ngram']:.3f} was {NAMES[passed[0][1]]}, after "
                f"{passed[0][0]:.0f} s" if passed else
                f"no neural model reached its {bpb['ngram']:.3f} within the budget")
             + (f", and at roughly equal size ({min(params) / 1e3:.0f}k-{max(params) / 1e3:.0f}k parameters) the "
                f"neural models ended within {max(bpb[a] for a in neural) - min(bpb[a] for a in neural):.3f} bits "
                f"per byte of each other." if neural else "."))
    share = {a: measured[a]["copy_share"] for a in ARCHS}
    low, high = min(NEURAL, key=share.get), max(NEURAL, key=share.get)
    if share["ngram"] > max(share[high], copying["val_share"]):
        reading = "the n-gram copies the most, its most plausible-looking stretches being training text."
    elif share["ngram"] > copying["val_share"]:
        reading = (f"the n-gram copies more than real text does, but so does the {NAMES[high]}, so at this budget "
                   f"the neural samples too are stitched from training phrases.")
    else:
        reading = "the n-gram copies no more than real unseen text shares with the training text."
    page.say(f"{percent(share['ngram'])} of the n-gram sample's {copying['n']}-grams occur verbatim in the training "
             f"text, against {percent(share[low])} for the {NAMES[low]} to {percent(share[high])} for the "
             f"{NAMES[high]} and {percent(copying['val_share'])} for held-out Shakespeare; {reading}")
    r, l = vanishing["rnn"], vanishing["lstm"]
    page.say(f"In the trained RNN the gradient of the last position's loss reaching the hidden state "
             f"{r['window'] - 1} steps earlier is {r['trained_ratio']:.1e} of its size at the last position "
             f"({r['init_ratio']:.1e} at initialisation); in the LSTM it is {l['trained_ratio']:.1e} "
             f"({l['init_ratio']:.1e} at initialisation), {l['trained_ratio'] / r['trained_ratio']:.1e} times the RNN's"
             + (": the cell's gated sum keeps the signal that the tanh recurrence loses." if l["trained_ratio"] >
                r["trained_ratio"] else ", so at this budget the gates did not keep more of it."))
    L = cost["positions"][-1]
    g = cost["growth"]
    page.say(f"One generated token cost the RNN {measured['rnn']['ms_per_token'][0]:.3f} ms at position 1 and "
             f"{measured['rnn']['ms_per_token'][-1]:.3f} ms at position {L} ({g['rnn']:.2f}x), the LSTM "
             f"{g['lstm']:.2f}x, while the GPT's KV-cached step went from {measured['gpt']['ms_per_token'][0]:.3f} to "
             f"{measured['gpt']['ms_per_token'][-1]:.3f} ms ({g['gpt']:.2f}x): a recurrent state is a cache of "
             f"constant size, attention reads every cached key.")

